"""The chosen point of `edgemfm tune` on this host: its float source, its bundle written out, its questions timed.

Example:
    >>> check = host_check(result, parts, Path("bundles/demo-host"), Path("/tmp/chosen"), None, 4)  # doctest: +SKIP
    >>> round(check.measured_ms / check.predicted_ms, 1)                                            # doctest: +SKIP
    1.1
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from edgemfm.bundle import read_manifest
from edgemfm.errors import InputError
from edgemfm.profiles import load_profile
from edgemfm.progress import Progress, say
from edgemfm.report import Tune
from edgemfm.tune.parts import Part, media_encoders, media_rows, token_budget, variant_preprocess
from edgemfm.tune.quality import assemble, recipe_of
from edgemfm.tune.search import HostCheck, Result, chosen_parts, precision_specs, predicted


def host_check(
    result: Result,
    parts: dict[Any, Part],
    source: Path,
    out: Path,
    model_dir: Path | None,
    answer_tokens: int,
    repeats: int = 3,
) -> HostCheck:
    """Assemble the chosen point at `out` and time one question per media kind on this machine.

    A question is what the prediction counts: the media item encoded, the templated prompt with
    its media rows prefilled, `answer_tokens` decoded (never stopping early); the median of
    `repeats` runs after a warm-up. The prediction is the cost model's for the host profile, with
    the prompt's real token count.

    Example:
        >>> check = host_check(result, parts, Path("bundles/demo-host"), Path("/tmp/chosen"), None, 4)  # doctest: +SKIP
        >>> round(check.measured_ms / check.predicted_ms, 1)                                            # doctest: +SKIP
        1.1
    """
    import statistics
    import time

    from edgemfm.bench import media_item
    from edgemfm.runtimes.decoding import Sampler
    from edgemfm.runtimes.generation import decode
    from edgemfm.runtimes.pipeline import load

    c, m = result.chosen.candidate, result.manifest
    # the encoder-output cache off: each timed question encodes the same picture, which would be a hit
    pipe = load(write_chosen(result, parts, source, out, force=True, link=True), threads=1, encoder_cache_mb=0)
    kinds = {kind: encoder for encoder, kind in media_encoders(m).items()} or {"text": None}
    measured, predicted_ms = 0.0, 0.0
    for kind, encoder in kinds.items():
        media = {} if encoder is None else {kind: [media_item(pipe.manifest, kind)]}

        def question() -> tuple[float, int]:
            start, cache = time.perf_counter(), pipe.decoder.new_cache()
            # an encoder-decoder's audio is attended to, not prefilled
            left, cache.fixed = pipe.attend(media)  # noqa: B023 (called inside this iteration)
            logits = pipe.prefill(cache, "What is this?", left)
            prompt = cache.length
            for _ in decode(pipe.decoder, cache, logits, Sampler(), eos=(), limit=answer_tokens):
                pass
            return time.perf_counter() - start, prompt

        question()
        runs = [question() for _ in range(repeats)]
        measured = max(measured, 1000 * statistics.median(t for t, _ in runs))
        rows = 0 if encoder is None else media_rows(m, kind, dict(c.settings)[encoder], model_dir)
        prompt_tokens = runs[0][1] - rows
        host = predicted(c, parts, m, load_profile("host"), model_dir, prompt_tokens, answer_tokens, only=(kind,))[0]
        predicted_ms = max(predicted_ms, host)
    return HostCheck(measured, predicted_ms)


def write_chosen(
    result: Result, parts: dict[Any, Part], source: Path, out: Path, force: bool, link: bool = False
) -> Path:
    """Write the chosen point as a bundle for the tuned device at `out` (hard links to the parts with `link`)."""
    m, c = result.manifest, result.chosen.candidate
    kind_of, preprocess, chosen = media_encoders(m), m.preprocess, chosen_parts(c, parts)
    media = dict(m.prompt.media)
    for name, setting in c.settings:
        if name in kind_of:
            preprocess = variant_preprocess(replace(m, preprocess=preprocess), kind_of[name], setting, chosen[name])
            if token_budget(setting) is not None:  # the bundle says its budget, as `export --visual-tokens` writes it
                media[kind_of[name]] = replace(media[kind_of[name]], visual_tokens=token_budget(setting))
    report = Tune(
        device=result.profile.name,
        latency_ms=result.chosen.latency_ms,
        memory_mb=result.chosen.memory_mb,
        quality=result.chosen.quality,
        metric=result.metric,
        components=c.describe(m),
    )
    target = replace(
        m,
        profile=result.profile.name,
        streaming=replace(m.streaming, **vars(result.profile.streaming)),
        prompt=replace(m.prompt, media=media),
    )
    return assemble(
        chosen,
        target,
        preprocess,
        c.seq_len,
        recipe_of(dict(c.precisions), precision_specs(result.profile)),
        source,
        out,
        link=link,
        report=report,
        force=force,
    )


def float_source(
    model: str | Path | None,
    revision: str | None,
    bundle: str | Path | None,
    media: bool,
    tmp: Path,
    progress: Progress | None,
) -> tuple[Path, Path | None]:
    """The float bundle to start from, and the checkpoint (None when a bundle alone will do)."""
    from edgemfm.configs import ExportConfig
    from edgemfm.exporters import demo_sources
    from edgemfm.exporting import export

    model_dir = None
    if model is not None:
        from edgemfm.model_source import resolve_model

        model_dir = resolve_model(model, revision).path
    elif bundle is None or (media and read_manifest(bundle).model_id == demo_sources.MODEL_ID):
        # the built-in model's bundle: its checkpoint is rebuilt from the public pieces

        say(progress, "building the demo model")
        model_dir = demo_sources.build_default(tmp / demo_sources.MODEL_ID)
    if bundle is None:
        say(progress, "exporting the float bundle")
        return export(ExportConfig(model=model_dir, device="host", out=tmp / "float")), model_dir
    m = read_manifest(bundle)
    if m.report.precision != "fp32":
        raise InputError(f"bundle {str(bundle)!r} is {m.report.precision}; allowed: an fp32 bundle (tune quantizes it)")
    if kernels := sorted({k for c in m.components.values() for k in c.kernels}):
        raise InputError(
            f"bundle {str(bundle)!r} calls edgemfm's kernels ({', '.join(kernels)}), which tune's quantizers cannot "
            "read; allowed: an fp32 bundle exported with --kernels ort"
        )
    return Path(bundle), model_dir
