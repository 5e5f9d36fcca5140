"""Calibration calls for pruning each component: each runs the model on one sample.

- text decoder: token ids of calibration texts (`importance.calibration_samples`); an
  encoder-decoder's (Whisper's) reads each text against the encoder's states of a calibration clip;
- vision encoder: calibration images (the folder's, or the quantizers' seeded drawings), each
  pre-processed by the runtime's own code (tiles, patches or one crop, as the family's manifest
  says) and passed through the family's export unit — the module the bundle will hold;
- audio encoder: the folder's WAV files, or seeded synthetic clips (tone sweeps, harmonics and
  noise bursts) when it has none, through the runtime's log-mel and the export unit.

The encoders' calls go through the same `split()` the exporter uses, so a family that exports
also prunes, and the scores see exactly the inputs the device will feed.

Example:
    >>> calls = media_calls(model, Path("models/llava"), "vision_encoder", folder=None)   # doctest: +SKIP
    >>> len(calls)                                                                      # doctest: +SKIP
    8
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from edgemfm.pruners import importance
from edgemfm.quantizers.calibration import MAX_ITEMS, drawings, synthetic_audio

AUDIO_SUFFIXES = (".wav",)
KIND = {"vision_encoder": "image", "audio_encoder": "audio"}


def text_calls(model: Any, tokenizer: Any, texts: Sequence[str]) -> list[Callable[[], Any]]:
    """One forward of `model` per calibration text."""
    return [
        lambda ids=ids: model(input_ids=ids, use_cache=False)
        for ids in importance.calibration_samples(tokenizer, texts)
    ]


def cross_text_calls(
    model: Any, model_dir: Path, tokenizer: Any, texts: Sequence[str], folder: str | Path | None
) -> tuple[list[Callable[[], Any]], str]:
    """One forward of an encoder-decoder `model` (Whisper) per calibration text, its decoder reading the
    text as the continuation of a transcript and cross-attending to the encoder's states of one of the
    clips its encoder is scored on (`media_calls`), in turn: the decoder never runs without them."""
    from edgemfm.exporters import find_family
    from edgemfm.runtimes.preprocess import PREPROCESSORS

    split = find_family(json.loads((model_dir / "config.json").read_text())).split(model, model_dir)
    cross = next(u.cross_attention for u in split.units.values() if u.cross_attention)
    items, source = _items(cross.media, folder, split.preprocess)
    encoder = model.get_encoder()
    with torch.no_grad():
        states = [
            encoder(**{cross.input: torch.from_numpy(PREPROCESSORS[cross.media](item, split.preprocess)[0][None])})
            for item in items
        ]
    limit = model.config.max_target_positions  # the decoder's position table
    samples = [ids[:, :limit] for ids in importance.calibration_samples(tokenizer, texts)]
    pairs = [(ids, states[i % len(states)]) for i, ids in enumerate(samples)]
    calls = [lambda ids=ids, s=s: model(encoder_outputs=s, decoder_input_ids=ids, use_cache=False) for ids, s in pairs]
    return calls, f"{len(texts)} texts, cross-attending to {source}"


def _items(kind: str, folder: str | Path | None, preprocess: Any) -> tuple[list[Any], str]:
    """The calibration items of `kind` and where they came from."""
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file()) if folder is not None else []
    if kind == "image":
        from edgemfm.quantizers.calibration import IMAGE_SUFFIXES

        images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES][:MAX_ITEMS]
        return (images, f"{len(images)} images from {folder}") if images else (drawings(), "built-in seeded drawings")
    clips = [p for p in files if p.suffix.lower() in AUDIO_SUFFIXES][:MAX_ITEMS]
    if clips:
        return clips, f"{len(clips)} WAV files from {folder}"
    spec = preprocess.audio
    return synthetic_audio(
        8, spec.sampling_rate, spec.n_samples
    ), "built-in seeded synthetic clips (tone sweeps, noise)"


def media_calls(
    model: Any, model_dir: Path, component: str, folder: str | Path | None
) -> tuple[list[Callable[[], Any]], str]:
    """One call of the family's `component` export unit per calibration item (per tile, for tiled images)."""
    from edgemfm.exporters import find_family
    from edgemfm.runtimes.media import prepare
    from edgemfm.runtimes.preprocess import PREPROCESSORS

    family = find_family(json.loads((model_dir / "config.json").read_text()))
    split = family.split(model, model_dir)
    kinds = [k for k, m in split.prompt.media.items() if m.encoder == component]
    # an encoder-decoder model (Whisper) links its encoder by cross-attention, not a prompt placeholder
    cross = [
        u.cross_attention for u in split.units.values() if u.cross_attention and u.cross_attention.encoder == component
    ]
    assert component in split.units and (kinds or cross), (
        f"{family.name} has no {component} unit"
    )  # find_stack found its layers
    unit, kind = split.units[component], kinds[0] if kinds else cross[0].media
    items, source = _items(kind, folder, split.preprocess)
    if kinds:
        manifest = SimpleNamespace(prompt=split.prompt, preprocess=split.preprocess)  # what `prepare` reads
        feeds = [call.feeds for item in items for call in prepare(kind, item, manifest).calls]
    else:
        feeds = [{cross[0].input: PREPROCESSORS[kind](item, split.preprocess)[0][None]} for item in items]
    calls = [lambda f=f: unit.module(*(torch.from_numpy(np.asarray(f[n])) for n in unit.input_names)) for f in feeds]
    return calls, source
