"""What a model family gives the exporter: how to load, split and describe a checkpoint.

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

from edgemfm.manifest import CrossAttention, Generation, KVCache, Preprocess, Prompt, Tokenizer
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
class Family:
    name: str
    model_types: tuple[str, ...]  # config.json model_type values
    architectures: tuple[str, ...]  # config.json architectures values
    tolerance: float  # max abs difference of component outputs, ONNX Runtime vs PyTorch, per unit of max |output|
    load: Callable[[Path], Any]  # model dir -> torch model in eval mode, fp32
    split: Callable[[Any, Path], Split]  # (model, model dir) -> Split
