"""Hold a decoder that cross-attends to an encoder (Whisper's) to a next-token KL on its calibration clips at 8da8w.

An int8 encoder is held to an output SQNR (exporters/pte_encoders.py); a decoder's output is a distribution over
its next token, read greedily. Whisper's decoder writes a whole transcript from the audio encoder's keys and
values, and every token it gets wrong is read back as the prefix of the next ones. So its linears are judged on
what it writes: each calibration clip through the float audio encoder, the float decoder's own greedy tokens
after the transcription's start (`decoder_inputs`), then, teacher-forced on those tokens, the mean next-token
KL(float || int8) of the program's arithmetic (pte_quantize.fake_quantized). While that is over `TARGET_KL`,
the linear whose int8 costs it the most (judged alone, each float in the otherwise int8 decoder) stays float,
and the whole decoder is measured again (errors judged alone do not add up): `linears_to_keep`.

    clip ─► float encoder ─► cross K/V ─┐
    start tokens ─► float decoder, greedy ─► tokens ─► float logits ─┐
                                         └─► int8 decoder (teacher-forced) ─► KL ─► the costliest linear float

The head is not a candidate: it is most of a step's multiply-adds (tiny.en: 19.9M of 28M), its 8-bit per-channel
error is folded away first (exporters/pte_head.py), and a float head would double the step.

Example:
    >>> feeds = decoder_inputs(split, calibration, max_seq_len=448)  # doctest: +SKIP
    >>> kept = linears_to_keep("text_decoder", unit.module, recipe, feeds["text_decoder"])  # doctest: +SKIP
    >>> kept.note  # doctest: +SKIP
    '4 linears float: next-token KL 0.00162 -> 0.00049 on 8 calibration clips (target 0.0005)'
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any

from edgemfm.quantizers.units import unit_name
from edgemfm.recipe import Recipe, Rule
from edgemfm.report import Quantization

# the mean next-token KL (nats) a cross-attending int8 decoder is held to on its calibration clips. Real Whisper
# tiny.en (its 8 calibration clips, 498 positions, head folded): all linears int8 0.00103, the head's own share
# ~0.00013; the costliest three (L0 fc2, L0 self v, L3 fc2: the same three on 14 long-form windows) 0.00058, this
# target at 9 float of 32. On the long-form windows the same greedy path went 0.00134 -> 0.00075 (3) -> 0.00058 (11)
TARGET_KL = 0.0005
STEPS = 96  # tokens the float decoder writes greedily after the start for each clip (a 30 s window: ~100)
HEAD = "lm_head"  # never a candidate (see the module docstring)
REASON = "int8 costs the decoder's next-token KL the most"  # a kept linear's reason in the report starts so


@dataclass(frozen=True)
class Kept:
    """What `linears_to_keep` measured: the linears kept float (module path -> the KL once it is float), and the
    whole decoder's KL at int8 before and after."""

    linears: dict[str, float] = field(default_factory=dict)
    before: float = 0.0
    after: float = 0.0
    clips: int = 0
    target: float = TARGET_KL

    @property
    def note(self) -> str:
        return (
            f"{len(self.linears)} linears float: next-token KL {self.before:.5f} -> {self.after:.5f} "
            f"on {self.clips} calibration clips (target {self.target:g})"
        )


def decoder_inputs(split: Any, calibration: dict[str, list[tuple]], max_seq_len: int) -> dict[str, list[tuple]]:
    """The teacher-forced feeds of each decoder of `split` that cross-attends to an encoder with calibration inputs,
    as its static-cache (pte) module takes them: (inputs_embeds, positions, cross K/V), one per clip, over the start
    tokens and the float decoder's greedy continuation of them (at most STEPS, to an end-of-text token).

    Example:
        >>> decoder_inputs(split, {"audio_encoder": clips}, 448)["text_decoder"][0][1].shape  # doctest: +SKIP
        torch.Size([97])
    """
    import torch

    tr = split.generation.transcription
    start = list(tr.start) if tr is not None else [split.tokenizer.bos_token_id]
    stop = set(split.tokenizer.eos_token_ids)
    embed = split.units[split.generation.embedding].module
    feeds: dict[str, list[tuple]] = {}
    for name, unit in split.units.items():
        cross = unit.cross_attention
        if cross is None or cross.encoder not in calibration or None in start or unit.static_cache is None:
            continue
        decoder = unit.static_cache(max_seq_len).module
        encoder = split.units[cross.encoder].module
        steps = min(STEPS, max_seq_len - len(start))
        with torch.no_grad():
            feeds[name] = [
                _teacher(decoder, embed, tuple(encoder(*item)), start, stop, steps)
                for item in calibration[cross.encoder]
            ]
    return feeds


def _teacher(decoder: Any, embed: Any, cross: tuple, start: list[int], stop: set[int], steps: int) -> tuple:
    """One clip's feed: the float decoder's greedy tokens after `start`, one step at a time on its static cache
    (written from position 0: nothing carried over from the clip before)."""
    import torch

    ids = list(start)
    logits = decoder(embed(torch.tensor([ids])), torch.arange(len(ids)), cross)
    for _ in range(steps):
        token = int(logits[0, -1].argmax())
        if token in stop:
            break
        ids.append(token)
        logits = decoder(embed(torch.tensor([[token]])), torch.tensor([len(ids) - 1]), cross)
    return embed(torch.tensor([ids])), torch.arange(len(ids)), cross


def linears_to_keep(
    name: str, module: Any, recipe: Recipe, feeds: list[tuple], target: float = TARGET_KL, others: tuple = ()
) -> Kept:
    """The linears of decoder `name` (`module`, quantized per `recipe`) kept float, costliest first, until its mean
    next-token KL against float on `feeds` (`decoder_inputs`) is at most `target`; what was measured. `others`: the
    modules other components run (Whisper's cross K/V projections: the encoder's), never candidates.

    Example:
        >>> linears_to_keep("text_decoder", unit.module, recipe, feeds).linears  # doctest: +SKIP
        {'language_model.layers.0.fc2': 0.00101, ...}
    """
    import torch

    from edgemfm.exporters.pte_quantize import fake_quantized

    state = {key: b.clone() for key, b in module.named_buffers()}  # the program is captured from a zero cache
    theirs = {id(m) for other in others for m in other.modules()}
    with torch.no_grad():
        reference = _log_probs(module, feeds)
        quantized = fake_quantized(name, copy.deepcopy(module), recipe)
        floats = {
            f: m
            for f, m in module.named_modules()
            if isinstance(m, torch.nn.Linear)
            and id(m) not in theirs
            and f != HEAD
            and recipe.spec_for(unit_name(name, f))
        }
        ints = {f: quantized.get_submodule(f) for f in floats}
        kl = lambda: _kl(reference, _log_probs(quantized, feeds))  # noqa: E731
        before = after = kl()
        kept: dict[str, float] = {}
        if before > target:
            gain = {}
            for f in floats:
                _set(quantized, f, floats[f])
                gain[f] = before - kl()
                _set(quantized, f, ints[f])
            for f in sorted(floats, key=lambda f: -gain[f]):
                if after <= target:
                    break
                _set(quantized, f, floats[f])
                kept[f] = after = kl()
        for key, b in module.named_buffers():
            b.copy_(state[key])
    return Kept(kept, before, after, len(feeds), target)


def keeping(recipe: Recipe, name: str, kept: Kept) -> Recipe:
    """`recipe` with a float rule first for each linear of decoder `name` that `kept` keeps float.

    Example:
        >>> keeping(recipe, "text_decoder", kept).spec_for("text_decoder/layers.0/fc2")  # doctest: +SKIP
    """
    return replace(recipe, rules=(*(Rule(unit_name(name, f), None) for f in kept.linears), *recipe.rules))


def with_float_linears(recipe: Recipe, quantization: dict[str, Quantization]) -> Recipe:
    """`recipe` with a float rule first for each decoder linear a quantization kept float for its KL (`REASON`),
    so the manifest's recipe says what the program runs (as pte_encoders.with_float_convs for the encoders).

    Example:
        >>> with_float_linears(recipe, quantization).spec_for("text_decoder/layers.0/fc2")  # doctest: +SKIP
    """
    kept = tuple(
        Rule(unit_name(name, f), None)
        for name, q in quantization.items()
        for f, why in q.float_units.items()
        if why.startswith(REASON)
    )
    return replace(recipe, rules=(*kept, *recipe.rules))


def reasons(kept: Kept) -> dict[str, str]:
    """The report's reason for each linear `kept` keeps float (module path -> reason)."""
    return {f: f"{REASON}: KL {kl:.5f} with it float (target {kept.target:g})" for f, kl in kept.linears.items()}


def _log_probs(module: Any, feeds: list[tuple]) -> Any:
    import torch

    return torch.cat([module(*feed)[0].double().log_softmax(-1) for feed in feeds])


def _kl(reference: Any, got: Any) -> float:
    return float((reference.exp() * (reference - got)).sum(-1).mean())


def _set(module: Any, fqn: str, child: Any) -> None:
    parent, _, leaf = fqn.rpartition(".")
    setattr(module.get_submodule(parent) if parent else module, leaf, child)
