"""The PyTorch reference of a quantized pte bundle: the family's own units quantized by the bundle's recipe, run where
the pipeline runs the program's methods, and a teacher-forced comparison of the program's decoder with them.

Why teacher-forced and against a noise floor: the decoder's int8 activations are quantized per token at run time.
XNNPACK sums in int32, PyTorch's fake-quantized linears in float, so a value within float rounding of a level's edge
rounds to one level in the program and the next in the reference; that row's output jumps by a whole level, the next
layer's rows move by more than float noise, and more of them round the other way. On the tiny test models (std 0.3
weights, 2-3 layers) the logits of a 100-row media prompt part by a few tenths: a greedy choice whose two best logits
are closer than that goes either way, in the program or in the reference re-run with its inputs moved by 1e-6. So a
comparison feeds the reference the program's own calls (its media rows and its chosen tokens) and measures how far
the reference is from ITSELF under 1e-6 input noise (the floor): the program must be as close as that, where a program
that skipped a quantization step is about twice as far.

Example:
    >>> forced = teacher_forced(checkpoint, bundle, "Describe the picture.", {"images": [photo]}, 16)  # doctest: +SKIP
    >>> forced.distance(forced.program) <= 1.4 * forced.floor  # doctest: +SKIP
    True
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import edgemfm
from edgemfm.bundle import read_manifest

NUDGE = (
    1e-6  # relative input noise of the floor's re-runs: float32 rounding's size, as XNNPACK's sums part from torch's
)
NUDGES = 3  # re-runs the floor is the largest of


class ModuleSession:
    """A PyTorch module where a pipeline runs a program's method (the backend protocol's `run`), its inputs regrouped
    as the module takes them (Whisper's decoder: the cross-attention K/V as one tuple), under XNNPACK's rounding."""

    provider = "PyTorch (fake-quantized)"  # the backend protocol's: what runs it

    def __init__(self, unit):
        from torch.utils._pytree import tree_flatten

        self.unit, self.spec = unit, tree_flatten(unit.args)[1]

    def run(self, feeds: dict) -> dict:
        from torch.utils._pytree import tree_unflatten

        from edgemfm.exporters.pte_quantize import xnnpack_rounding

        flat = [torch.from_numpy(feeds[n].copy()) for n in self.unit.input_names]
        with torch.no_grad(), xnnpack_rounding():
            out = self.unit.module(*tree_unflatten(flat, self.spec))
        return {n: t.numpy() for n, t in zip(self.unit.output_names, out if isinstance(out, tuple) else (out,))}


def fake_quantized_units(checkpoint: Path, bundle: Path) -> dict:
    """The family's token embedding and static decoder units, quantized by the bundle's recipe as the export quantized
    them (a head is `text_decoder/lm_head` there whatever transformers calls it: Whisper's `proj_out`); checked to give
    the report's quantized nodes. The encoders' modules stay theirs, as in write_program (Whisper's decoder holds its
    cross-attention K/V ones)."""
    from edgemfm.exporters import find_family
    from edgemfm.exporters.executorch import _leaves_run
    from edgemfm.exporters.pte_encoders import ENCODERS
    from edgemfm.exporters.pte_quantize import quantize_module
    from edgemfm.exporters.pte_rotation import rotate

    manifest = read_manifest(bundle)
    family = find_family(json.loads((checkpoint / "config.json").read_text()))
    units = family.split(family.load(checkpoint), checkpoint).units
    units["text_decoder"] = units["text_decoder"].static_cache(manifest.components["text_decoder"].kv_cache.max_seq_len)
    theirs = tuple(m for name, unit in units.items() if name in ENCODERS for m in _leaves_run(unit))
    if manifest.recipe.rotation is not None:  # the export rotated the residual stream before quantizing it
        rotate(
            units["text_decoder"].module.language_model, units["text_decoder"].module.lm_head, manifest.recipe.rotation
        )
    for name in ("token_embedding", "text_decoder"):
        done = quantize_module(name, units[name].module, manifest.recipe, others=theirs)
        assert done.quantized_nodes == manifest.report.quantization[name].quantized_nodes, name
    return {name: units[name] for name in ("token_embedding", "text_decoder")}


def fake_quantized_tokens(checkpoint: Path, bundle: Path, prompt: str, media: dict, tokens: int) -> list[int]:
    """The bundle's greedy answer with its token embedding and decoder run in PyTorch (`fake_quantized_units`). The
    encoders stay the program's (calibrated int8 ones are checked against their PT2E modules at export), and so does
    the prompt and media handling the pipeline shares with test_pte.py's float rows."""
    units = fake_quantized_units(checkpoint, bundle)
    pipe = edgemfm.load(bundle)
    pipe.decoder.embedding = ModuleSession(units["token_embedding"])
    pipe.decoder.session = ModuleSession(units["text_decoder"])
    return list(pipe.generate_tokens(prompt, **media, max_new_tokens=tokens))


class _Recorded:
    """A program's decoder method that keeps each call's feeds and logits, for the reference to replay."""

    def __init__(self, session):
        self.session, self.calls, self.provider = session, [], session.provider

    def run(self, feeds: dict) -> dict:
        out = self.session.run(feeds)
        self.calls.append(({n: v.copy() for n, v in feeds.items()}, out["logits"][0].copy()))
        return out


def _replayed(unit, calls: list, nudge: float, seed: int) -> np.ndarray:
    """`unit`'s logits [rows, vocab] for the program's calls in order (its cache fills as the program's did), each
    call's input rows scaled by 1 + nudge x N(0, 1)."""
    session, rng = ModuleSession(unit), np.random.default_rng(seed)
    out = []
    for feeds, _ in calls:
        rows = feeds["inputs_embeds"]
        moved = rows * (1 + nudge * rng.standard_normal(rows.shape)) if nudge else rows
        out.append(session.run({**feeds, "inputs_embeds": moved.astype(rows.dtype)})["logits"][0])
    return np.concatenate(out)


@dataclass(frozen=True)
class TeacherForced:
    """Logits [rows, vocab] of every row the program's decoder ran (prompt, media and answer rows): the program's,
    the fake-quantized reference's on the same feeds, and the reference's under NUDGE input noise."""

    tokens: list[int]  # the program's greedy answer
    program: np.ndarray
    reference: np.ndarray
    nudged: tuple[np.ndarray, ...]

    def distance(self, logits: np.ndarray) -> float:
        """Mean over rows of the RMS (over the vocabulary) of `logits` - reference."""
        return float(np.sqrt(((logits - self.reference) ** 2).mean(-1)).mean())

    @property
    def floor(self) -> float:
        """How far the reference is from itself when only float rounding moves its per-token int8 activations."""
        return max(self.distance(n) for n in self.nudged)

    @property
    def bound(self) -> float:
        """The largest move of any logit of any row under that noise: two logits closer than it are a tie."""
        return max(float(np.abs(n - self.reference).max()) for n in self.nudged)

    def regret(self, logits: np.ndarray) -> np.ndarray:
        """Per row: how far below the reference's best logit is the reference's logit of the token `logits` choose."""
        choice = self.reference[np.arange(len(logits)), logits.argmax(-1)]
        return self.reference.max(-1) - choice


def teacher_forced(checkpoint: Path, bundle: Path, prompt: str, media: dict, tokens: int) -> TeacherForced:
    """The bundle's greedy answer to `prompt` and `media`, its decoder's calls replayed on fake-quantized units (a
    fresh static cache per replay)."""
    pipe = edgemfm.load(bundle)
    recorded = pipe.decoder.session = _Recorded(pipe.decoder.session)
    answer = list(pipe.generate_tokens(prompt, **media, max_new_tokens=tokens))
    runs = [_replayed(fake_quantized_units(checkpoint, bundle)["text_decoder"], recorded.calls, 0.0, 0)]
    runs += [
        _replayed(fake_quantized_units(checkpoint, bundle)["text_decoder"], recorded.calls, NUDGE, seed)
        for seed in range(NUDGES)
    ]
    program = np.concatenate([logits for _, logits in recorded.calls])
    return TeacherForced(tokens=answer, program=program, reference=runs[0], nudged=tuple(runs[1:]))
