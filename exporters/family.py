"""What a model family gives the exporter and the other verbs: how to load, split and describe a
checkpoint, and the capabilities a verb needs from it.

A capability is a field of `Family` that the family's own file fills in, or leaves None when the
family has no such thing: `media_knobs` (what `tune` may turn on the encoders, and how to export
one again at another setting), `finetune` (what is trained and how a training sequence is built),
`prunable` (how `prune` opens the checkpoint, finds its stacks and writes it back), `visual_tokens`
(how `export --visual-tokens N` cuts the encoder's rows). A verb asks
`edgemfm.exporters.capability(family, name)`; no verb tests a family's name.

Example:
    >>> from edgemfm.exporters import find_family
    >>> family = find_family({"model_type": "llava"})
    >>> family.tolerance
    0.0001
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgemfm.manifest import Component, CrossAttention, Generation, KVCache, Preprocess, Prompt, Tokenizer
from edgemfm.report import SplitReport


@dataclass
class ExportUnit:
    """One component as a torch module with example inputs and named dynamic axes."""

    module: Any  # torch.nn.Module
    args: tuple[Any, ...]  # example inputs; a nested tuple becomes consecutive flat inputs
    input_names: tuple[str, ...]  # flat, in order
    output_names: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]]  # flat input or output name -> {dim: axis name}
    kv_cache: KVCache | None = None
    cross_attention: CrossAttention | None = None  # encoder-decoder models: what the decoder attends to
    items: int = 1  # images, audio windows or new tokens in the example call (for FLOPs per item)
    # The same component with a static KV cache of the given length, for formats whose buffers
    # are planned ahead (pte); None where the component has no cache.
    static_cache: Callable[[int], ExportUnit] | None = None
    # Axes whose length is always a whole multiple (Qwen2-VL's patches: merge x merge per decoder
    # row), for exporters that must state it to trace a dynamic axis (torch.export for pte).
    axis_multiples: dict[str, int] = field(default_factory=dict)


@dataclass
class Split:
    """A checkpoint split into components, plus what the runtime needs beside the graphs."""

    units: dict[str, ExportUnit]
    prompt: Prompt
    preprocess: Preprocess
    tokenizer: Tokenizer
    tokenizer_file: Path  # copied into the bundle as tokenizer.json
    report: SplitReport = field(default_factory=SplitReport)
    generation: Generation = field(
        default_factory=Generation
    )  # a family's decoding settings (Whisper's suppressed tokens, Qwen2-VL's M-RoPE positions)


@dataclass(frozen=True)
class MediaKnobs:
    """What `tune` may turn on this family's encoders, and how an encoder is exported at a setting.

    A setting is a tuple: (image size in pixels, grid cells per side) for images, (window seconds,)
    for audio; `()` is the bundle's own graph.
    """

    image: tuple[tuple[int, int], ...]  # the image settings tune tries by default
    audio: tuple[float, ...]  # the audio windows tune tries by default
    export: Callable[
        [Path, str, tuple, Path], tuple[Component, int]
    ]  # (model dir, kind, setting, .onnx) -> record, nodes
    rows: Callable[[Path, str, tuple], int]  # (model dir, kind, setting) -> decoder rows one item becomes (at most)
    # (bundle's Preprocess, kind, setting) -> the pre-processing at that setting; None: the setting's
    # first value is the image size and crop (or the audio window), as for a fixed-size tower
    preprocess: Callable[[Any, str, tuple], Any] | None = None


@dataclass(frozen=True)
class Finetuning:
    """What `finetune` trains in this family's model (per media kind) and how it writes the result.

    Everything else a training sequence needs is the family's `split`: the prompt template and
    placeholders, the pre-processing, the encoder units (run frozen; a hook on the projector keeps
    its input as the cached feature) and the decoder unit (trained through, LoRA optional), so
    finetune trains exactly the modules `export` writes.
    """

    load: Callable[[Path], Any]  # model dir -> torch model, fp32, eval mode
    save: Callable[[Any, Path], None]  # model -> a checkpoint directory in the family's layout (tokenizer aside)
    trainable: dict[str, str]  # media kind -> dotted path of the module trained for it (its projector)
    towers: dict[str, str]  # media kind -> dotted path of the frozen tower whose weights key the feature cache


def save_pretrained(model: Any, out: Path) -> None:
    """`Finetuning.save` of a transformers family: its own `save_pretrained` layout (config, safetensors).

    Example:
        >>> save_pretrained(model, Path("models/llava-med"))  # doctest: +SKIP
    """
    model.save_pretrained(out)


@dataclass(frozen=True)
class Prunable:
    """How `prune` opens this family's checkpoint, finds a component's stack, and writes it back."""

    components: tuple[str, ...]  # what can be pruned: text_decoder, vision_encoder, audio_encoder
    load: Callable[[Path], Any]  # model dir -> torch model in its saved dtype, eval mode
    tokenizer: Callable[[Path], Any]  # model dir -> a transformers tokenizer (calibration text)
    stack: Callable[[Any, str], Any]  # (model, component) -> edgemfm.pruners.structure.Stack
    save: Callable[[Any, Path], None]  # pruned model -> weights and config in a directory


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]  # config.json model_type values
    architectures: tuple[str, ...]  # config.json architectures values
    tolerance: float  # max abs difference of component outputs, ONNX Runtime vs PyTorch, per unit of max |output|
    load: Callable[[Path], Any]  # model dir -> torch model in eval mode, fp32
    split: Callable[[Any, Path], Split]  # (model, model dir) -> Split
    # capabilities for the other verbs; None: the verb refuses this family, naming those that have it
    media_knobs: MediaKnobs | None = None
    finetune: Finetuning | None = None
    prunable: Prunable | None = None
    # (split, N, family name) -> (the split whose encoder emits at most N rows per image, the report's note);
    # refuses an N the family cannot meet, naming the allowed ones (exporters/visual_tokens.py)
    visual_tokens: Callable[[Split, int, str], tuple[Split, str]] | None = None
