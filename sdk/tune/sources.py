"""`edgemfm tune --candidates`: other float bundles of the same model (pruned ones, say) searched beside the source.

    edgemfm prune --model CKPT --out CKPT-pruned ... ; edgemfm export --model CKPT-pruned --out PRUNED
    PRUNED ─► checked: fp32, the source's family, components, media kinds, pre-processing and tokenizer
           ─► its own graphs at each precision of the space (parts.build_parts, no media settings: those
              re-export encoders from the source's checkpoint), each part's setting (CANDIDATE, PATH)
           ─► candidates: every precision mix x sequence length, all of their components from PATH

A candidate never mixes graphs of two bundles (a pruned decoder was recovered with its own projectors),
so its quality and cost are those of one bundle. Quality is the held-out task's (tune needs --data with
candidates): a component's fidelity to its own float graph says nothing of a pruned model against the source.

Example:
    >>> extra = candidate_source("bundles/demo-pruned", source, manifest)                  # doctest: +SKIP
    >>> parts, cands = candidate_space(extra, space, profile, tmp / "candidate-0")         # doctest: +SKIP
    >>> cands[0].describe(manifest)["text_decoder"]                                         # doctest: +SKIP
    'fp32 (demo-pruned)'
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from edgemfm.bundle import read_manifest
from edgemfm.errors import BundleError, InputError
from edgemfm.manifest import Manifest
from edgemfm.profiles import DeviceProfile
from edgemfm.progress import Progress
from edgemfm.tune.parts import CANDIDATE, Key, Part, Space, build_parts, media_encoders
from edgemfm.tune.search import Candidate, candidates

ALLOWED = "an fp32 bundle of the source's model and tokenizer (edgemfm prune, then edgemfm export)"


@dataclass(frozen=True)
class CandidateSource:
    path: Path  # the candidate bundle
    manifest: Manifest


def _tokenizer_sha(m: Manifest) -> str:
    return m.files[m.tokenizer.file].sha256


def candidate_source(path: str | Path, source: Path, manifest: Manifest) -> CandidateSource:
    """The bundle at `path`, checked to be a float bundle of the model `source` (with `manifest`) is; else a
    one-line error naming what differs and what is allowed.

    Example:
        >>> candidate_source("bundles/demo-pruned", Path("bundles/demo-host"), manifest).manifest.family  # doctest: +SKIP
        'edgemfm-demo'
    """
    path = Path(path)
    if path.resolve() == source.resolve():
        raise InputError(f"candidate {str(path)!r} is the source bundle itself; allowed: {ALLOWED}")
    try:
        m = read_manifest(path)
    except BundleError as e:  # not a bundle, or a damaged one
        raise InputError(f"candidate {str(path)!r} is not a bundle ({e}); allowed: {ALLOWED}") from None
    checks = (
        ("precision", m.report.precision, "fp32"),
        ("model family", m.family, manifest.family),
        ("components", sorted(m.components), sorted(manifest.components)),
        ("media", sorted(media_encoders(m).items()), sorted(media_encoders(manifest).items())),
        ("pre-processing", m.preprocess, manifest.preprocess),
        ("tokenizer sha256", _tokenizer_sha(m), _tokenizer_sha(manifest)),
    )
    for what, theirs, ours in checks:
        if theirs != ours:
            shown = (theirs, ours) if what != "pre-processing" else ("its own", "the source's")
            raise InputError(
                f"candidate {str(path)!r} differs from the source in its {what} ({shown[0]} vs {shown[1]}); allowed: {ALLOWED}"
            )
    return CandidateSource(path, m)


def candidate_space(
    extra: CandidateSource,
    space: Space,
    profile: DeviceProfile,
    scratch: Path,
    progress: Progress | None = None,
) -> tuple[dict[Key, Part], list[Candidate]]:
    """The candidate bundle's parts (its own graphs at each precision of `space`) and its candidates (every
    precision mix x sequence length), each component's setting (CANDIDATE, PATH).

    Example:
        >>> parts, cands = candidate_space(extra, space, load_profile("pi5"), tmp / "candidate-0")  # doctest: +SKIP
        >>> {s for c in cands for _, s in c.settings}                                               # doctest: +SKIP
        {('candidate bundle', 'bundles/demo-pruned')}
    """
    own = replace(space, image=(), audio=(), visual_tokens=())
    tag = (CANDIDATE, str(extra.path))
    built = build_parts(own, extra.path, extra.manifest, profile, None, scratch, progress)
    parts = {(name, tag, precision): replace(p, setting=tag) for (name, _, precision), p in built.items()}
    cands = [
        Candidate(tuple((name, tag) for name, _ in c.settings), c.precisions, c.seq_len)
        for c in candidates(own, extra.manifest)
    ]
    return parts, cands
