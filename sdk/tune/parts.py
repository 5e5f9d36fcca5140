"""The parts `edgemfm tune` combines: each component graph at each setting and precision, built once.

    float bundle ─► every component at each precision (quantizers.apply, presets.recipe_for the device)
    checkpoint   ─► vision encoder per (image size, grid), audio encoder per window: exported again
                    by the family's `media_knobs` capability (exporters/family.py), where it has one;
                    vision encoder per visual-token budget ("visual tokens", N): the family's
                    `visual_tokens` capability, as `export --visual-tokens N` cuts it
    candidate bundle ─► every component of another float bundle of the model (a pruned one, say) at each
                    precision, its setting ("candidate bundle", PATH) (tune/sources.py)
    every part   ─► its manifest record (shapes, weight bytes, FLOPs), node count, and SQNR / cosine of
                    its output against its float graph on calibration inputs

A candidate picks one part per component; its latency and memory come from the cost model over
those records, its quality from the parts' fidelity or a held-out task (edgemfm.tune.quality).

Example:
    >>> parts = build_parts(space, bundle, manifest, load_profile("pi5"), None, scratch)  # doctest: +SKIP
    >>> parts[("text_decoder", (), "int4")].record.weight_bytes                           # doctest: +SKIP
    89653248
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgemfm.cost import nodes_of
from edgemfm.errors import InputError
from edgemfm.exporters import capability, family_named
from edgemfm.manifest import Component, Manifest
from edgemfm.profiles import DeviceProfile
from edgemfm.progress import Progress, counter
from edgemfm.quantizers import presets
from edgemfm.quantizers.tied_table import standalone

Key = tuple[str, tuple, str]  # (component, setting, precision)
TOKENS = "visual tokens"  # a vision setting (TOKENS, N): the bundle's own image setting, at most N rows per image
# every component's setting (CANDIDATE, PATH) in a candidate of another float bundle (tune --candidates): its own graph
CANDIDATE = "candidate bundle"


@dataclass(frozen=True)
class Part:
    component: str
    setting: tuple  # (): the bundle's own graph; (size, grid) of a vision variant; (window_s,) of an audio one;
    # (TOKENS, N) a visual-token budget; (CANDIDATE, PATH) the graph of the candidate bundle at PATH
    precision: str  # fp32, int8 or int4
    path: Path  # the graph file
    record: Component  # manifest record: shapes, weight bytes at this precision, FLOPs per item
    nodes: int
    sqnr_db: float | None  # output vs the float graph of the same setting on calibration inputs
    cosine: float | None
    preprocess: Any = None  # the pre-processing this graph reads when a visual-token budget changed it; None: not


@dataclass(frozen=True)
class Space:
    """What the tuner searches; media settings only for a model whose family can re-export its encoders."""

    image: tuple[tuple[int, int], ...]  # (image size in pixels, vision grid cells per side)
    audio: tuple[float, ...]  # audio window seconds
    seq_lens: tuple[int, ...]  # KV cache positions
    encoder_precisions: tuple[str, ...]  # for vision_encoder and audio_encoder
    decoder_precisions: tuple[str, ...]  # for every other component (decoder, embedding, projector)
    visual_tokens: tuple[int, ...] = ()  # budgets of rows per image (tile) tried beside the image settings

    def precisions_of(self, component: str, manifest: Manifest) -> tuple[str, ...]:
        return self.encoder_precisions if component in media_encoders(manifest) else self.decoder_precisions


def media_encoders(manifest: Manifest) -> dict[str, str]:
    """encoder component -> media kind ("image", "audio")."""
    return {m.encoder: kind for kind, m in manifest.prompt.media.items()}


def media_knobs(manifest: Manifest) -> Any:
    """The bundle's family's `media_knobs` capability, or a one-line error naming the families that have one."""
    return capability(family_named(manifest.family), "media_knobs")


def token_budget(setting: tuple) -> int | None:
    """N of a visual-token setting (TOKENS, N); None for any other setting.

    Example:
        >>> token_budget((TOKENS, 4)), token_budget((224, 2))
        (4, None)
    """
    return setting[1] if len(setting) == 2 and setting[0] == TOKENS else None


def candidate_bundle(setting: tuple) -> str | None:
    """PATH of a candidate bundle's setting (CANDIDATE, PATH); None for any other setting.

    Example:
        >>> candidate_bundle((CANDIDATE, "bundles/pruned")), candidate_bundle(())
        ('bundles/pruned', None)
    """
    return setting[1] if len(setting) == 2 and setting[0] == CANDIDATE else None


def settings_of(space: Space, manifest: Manifest, component: str) -> tuple[tuple, ...]:
    """The settings a component is built at: the media knobs (and visual-token budgets) for an encoder,
    else only its own graph."""
    kind = media_encoders(manifest).get(component)
    if kind == "image" and space.visual_tokens:
        capability(family_named(manifest.family), "visual_tokens")  # refused in one line, naming those that have it
        own = settings_of(replace(space, visual_tokens=()), manifest, component)  # the image knobs, or its own graph
        return own + tuple((TOKENS, n) for n in space.visual_tokens)
    if kind == "image" and space.image:
        media_knobs(manifest)  # a family without them is refused, not silently searched at one setting
        return space.image
    if kind == "audio" and space.audio:
        media_knobs(manifest)
        return tuple((w,) for w in space.audio)
    return ((),)


def variant_preprocess(manifest: Manifest, kind: str, setting: tuple, part: Part | None = None) -> Any:
    """The bundle's pre-processing with a media setting applied (image size, audio clip length), or the
    one `part` (a visual-token budget's graph) reads."""
    p = manifest.preprocess
    if part is not None and part.preprocess is not None:
        return part.preprocess
    if token_budget(setting) is not None or candidate_bundle(setting) is not None:
        return p  # a pooled grid, or a candidate bundle of the same pre-processing, reads the images as the bundle does
    knobs = family_named(manifest.family).media_knobs if setting else None
    if knobs is not None and knobs.preprocess is not None:  # the family says what its setting means
        return knobs.preprocess(p, kind, setting)
    if kind == "image" and setting:
        return replace(p, image=replace(p.image, size=setting[0], crop=setting[0]))
    if kind == "audio" and setting:
        return replace(p, audio=replace(p.audio, n_samples=round(setting[0] * p.audio.sampling_rate)))
    return p


def _calibration(float_dir: Path, manifest: Manifest) -> dict[str, list[dict[str, np.ndarray]]]:
    from edgemfm.quantizers.calibration import component_feeds

    return component_feeds(float_dir, manifest)


def _image_feeds(manifest: Manifest, setting: tuple, input_name: str) -> list[dict[str, np.ndarray]]:
    from edgemfm.quantizers.calibration import drawings
    from edgemfm.runtimes.preprocess import PREPROCESSORS

    spec = replace(manifest, preprocess=variant_preprocess(manifest, "image", setting)).preprocess
    return [{input_name: PREPROCESSORS["image"](img, spec)[0][None]} for img in drawings()]


def _audio_feeds(manifest: Manifest, setting: tuple) -> list[dict[str, np.ndarray]]:
    """The built-in spoken clips at an audio window `setting`, as the encoder of that window is fed."""
    from edgemfm.quantizers.calibration import speech
    from edgemfm.runtimes.media import item_feeds

    variant = replace(manifest, preprocess=variant_preprocess(manifest, "audio", setting))
    return [item_feeds("audio", clip, variant) for clip in speech(variant.preprocess.audio)]


def _count_nodes(path: Path) -> int:
    import onnx

    return len(onnx.load(str(path), load_external_data=False).graph.node)


def token_export(model_dir: Path, n: int, path: Path) -> tuple[Component, int, Any]:
    """The vision encoder cut to at most `n` rows per image by its family's `visual_tokens` capability, as
    `export --visual-tokens n` writes it: (its record, its node count, the pre-processing it reads)."""
    import torch

    from edgemfm.exporters import find_family
    from edgemfm.exporters.onnx import write_onnx
    from edgemfm.exporters.visual_tokens import ENCODER, budget

    family = find_family(json.loads((model_dir / "config.json").read_text()))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the parity check's example inputs, as export draws them
        split = budget(family, family.split(family.load(model_dir), model_dir), n)
        record, parity = write_onnx(split.units[ENCODER], path, family.tolerance)
    return record, parity.nodes, split.preprocess


def quantized_part(base: Part, precision: str, profile: DeviceProfile, feeds: list, scratch: Path) -> Part:
    """`base` (a float part) quantized to `precision` with the device's preset, measured against it."""
    from edgemfm.quantizers.apply import quantize_component
    from edgemfm.quantizers.context import Context
    from edgemfm.quantizers.metrics import compare

    recipe = presets.recipe_for(profile, precision)
    group = presets.group_size(profile) if 4 in profile.weight_bits else 32
    path = base.path.with_name(f"{base.path.stem}.{precision}.onnx")
    entry = quantize_component(base.path, path, base.component, recipe, Context(feeds, profile, scratch), group)
    output = base.record.outputs[0].name
    fidelity = {"sqnr_db": None, "cosine": None}
    if feeds:
        from edgemfm.quantizers.metrics import outputs

        fidelity = compare(outputs(base.path, feeds, output), path, feeds, output)
    return Part(
        base.component,
        base.setting,
        precision,
        path,
        replace(base.record, weight_bytes=entry.weight_bytes),
        _count_nodes(path),
        fidelity["sqnr_db"],
        fidelity["cosine"],
        base.preprocess,
    )


def build_parts(
    space: Space,
    bundle: Path,
    manifest: Manifest,
    profile: DeviceProfile,
    model_dir: Path | None,
    scratch: Path,
    progress: Progress | None = None,
) -> dict[Key, Part]:
    """Every (component, setting, precision) part the space needs, written under `scratch`."""
    from edgemfm.toolchain import quiet_quantizers

    kinds = media_encoders(manifest)
    jobs = [(n, s) for n in manifest.components for s in settings_of(space, manifest, n)]  # refusals before work
    if any(s for _, s in jobs) and model_dir is None:
        raise InputError(
            "image sizes, grids, visual-token budgets and audio windows need the model checkpoint (--model); a bundle alone has only its own graphs"
        )
    scratch.mkdir(parents=True, exist_ok=True)
    calibration = _calibration(bundle, manifest)
    parts: dict[Key, Part] = {}
    advance = counter(progress, "building parts", len(jobs))
    with quiet_quantizers():
        for name, setting in jobs:
            c = manifest.components[name]
            path = (
                scratch
                / f"{name}{''.join(f'-{v:g}' if isinstance(v, (int, float)) else '-tokens' for v in setting)}.onnx"
            )
            preprocess = None
            if token_budget(setting) is not None:
                record, nodes, preprocess = token_export(model_dir, token_budget(setting), path)
                preprocess = None if preprocess == manifest.preprocess else preprocess
            elif setting:
                record, nodes = media_knobs(manifest).export(model_dir, kinds[name], setting, path)
            else:
                standalone(bundle / c.file, path)  # the bundle's graph as one file (an fp32 tied table: its own)
                record, nodes = c, nodes_of(manifest, name) or _count_nodes(path)
            base = Part(name, setting, "fp32", path, replace(record, file=c.file), nodes, None, 1.0, preprocess)
            parts[(name, setting, "fp32")] = base
            feeds = calibration.get(name, [])
            # a setting that keeps the graph's inputs (Qwen2-VL's pixel budget: dynamic patches) keeps
            # the bundle's calibration; a new input size is calibrated on the built-in drawings or speech
            resized = setting and record.inputs != c.inputs
            if resized and kinds.get(name) == "image":
                feeds = _image_feeds(manifest, setting, c.inputs[0].name)
            elif resized and kinds.get(name) == "audio":
                feeds = _audio_feeds(manifest, setting)
            for precision in (p for p in space.precisions_of(name, manifest) if p != "fp32"):
                parts[(name, setting, precision)] = quantized_part(base, precision, profile, feeds, scratch)
            advance()
    return parts


def media_rows(manifest: Manifest, kind: str, setting: tuple, model_dir: Path | None) -> int:
    """Decoder rows one media item becomes at `setting` (the bundle's own length when no setting; at most N
    with a visual-token budget N)."""
    if token_budget(setting) is not None:
        return token_budget(setting)
    if not setting or candidate_bundle(setting) is not None:  # a candidate bundle's encoder: the model's own rows
        spec = manifest.components[manifest.prompt.media[kind].encoder].outputs[0]
        return int(spec.shape[1])
    return media_knobs(manifest).rows(model_dir, kind, setting)
