"""One frozen config per verb: `ExportConfig`, `QuantizeConfig`, `FinetuneConfig`.

They live in this leaf module (it imports only errors, value checks and the recipe record), not beside their
verbs, so that `import edgemfm; edgemfm.ExportConfig(...)`, the CLI's `--dry-run` and the tuner
can build and print a config without importing the verbs' stacks (torch, onnx, the quantizers).
Like every record they round-trip through JSON with `records.to_dict` / `from_dict`, which
rejects unknown keys. `__post_init__` refuses values that mean nothing whatever the device; the
checks that need the device profile (formats, precisions, sequence length) stay with the verb.
Paths are kept as strings so that the JSON form is the config itself.

Example:
    >>> from edgemfm.records import from_dict, to_dict
    >>> c = ExportConfig(device="pi5", precision="int4", out="llava-pi5")
    >>> from_dict(ExportConfig, to_dict(c)) == c
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from edgemfm import arguments
from edgemfm.errors import InputError
from edgemfm.recipe import Recipe

CONFIG_VERSION = 1
# export --kv-cache: the decoder's own float type, or int8 (onnx: GroupQueryAttention's; pte: ExecuTorch's per token)
KV_CACHES = ("float", "int8")
# export --kernels: every op on ONNX Runtime's own kernels, or the int4, int8 and fp32 matmuls and the decoder's
# attention on edgemfm's (onnx, CPU devices, the edgemfm runtime)
KERNEL_SETS = ("ort", "edgemfm")
DEFAULT_TOLERANCE_DB = 20.0  # least SQNR of each component's output under auto: ~3.3 bits of agreement


def _paths_as_text(config: object, *names: str) -> None:
    """Store Path arguments as strings (frozen: through object.__setattr__), as JSON will hold them."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, Path):
            object.__setattr__(config, name, str(value))


def _positive_budget(memory_budget_mb: float | None, accuracy_tolerance_db: float | None = None) -> None:
    ok = isinstance(memory_budget_mb, (int, float)) and 0 < memory_budget_mb < math.inf  # NaN and inf too
    if memory_budget_mb is not None and not ok:
        raise InputError(f"memory budget {memory_budget_mb!r} MB must be a positive number")
    if accuracy_tolerance_db is not None:
        arguments.number("accuracy tolerance (dB)", accuracy_tolerance_db)


@dataclass(frozen=True)
class ExportConfig:
    """What `export` builds: which model, for which device, in which format and precision.

    Example:
        >>> ExportConfig(device="jetson", out="bundles/default-jetson", force=True).precision
        'fp32'
    """

    model: str | None = None  # Hugging Face checkpoint directory or Hub id (org/name); None: the built-in demo model
    device: str = "host"  # profile name or alias: what the bundle must fit and run on
    out: str | None = None  # bundle directory; None: MODEL-DEVICE in the working directory
    format: str = "onnx"  # onnx or pte: the runtimes the profile lists decide which are allowed
    precision: str = "fp32"  # fp32, fp16, int8, int4 or auto (bits per layer under the budget and tolerance)
    force: bool = False  # replace an existing `out`: never overwrite by surprise
    calibration: str | None = None  # folder of images, .wav clips and prompt .txt files; None: the built-in set
    memory_budget_mb: float | None = None  # MiB the weights must fit in under auto; None: the profile's
    accuracy_tolerance_db: float = DEFAULT_TOLERANCE_DB  # least SQNR of each component's output under auto
    max_seq_len: int | None = (
        None  # positions the KV cache holds (pte static cache, onnx rotary table); None: the profile's
    )
    fuse: bool = True  # False keeps plain ONNX ops, for runtimes without the contrib fused ops
    prune: tuple[str, ...] = ()  # prune specs ("mlp=0.2", "vision_encoder:blocks=1"), applied first
    recover: int = 0  # with prune: distillation steps from the unpruned model; 0: none
    revision: str | None = None  # with a Hub id: branch, tag or commit; None: main
    # at most this many decoder rows per image (per tile where the family tiles), cut inside the encoder graph
    # by the family's method (exporters/visual_tokens.py); None: the family's own count
    visual_tokens: int | None = None
    # the decoder's KV cache: "float" (its activations' type) or "int8": onnx, ONNX Runtime's GroupQueryAttention
    # cache, a quarter of float32's bytes, with static scales calibrated at export (not per token, which it lacks);
    # pte, ExecuTorch's cache with a scale and zero point per token and head, set as each token is written
    kv_cache: str = "float"
    # "ort": every op on ONNX Runtime's own kernels (any ONNX Runtime); "edgemfm": int4, int8 and fp32 matmuls and the
    # decoder's attention on edgemfm's (runtimes/kernels/: built on the device by the edgemfm runtime, stock ONNX
    # Runtime lacks them)
    kernels: str = "ort"
    # a draft bundle's head over this many tokens (the lowest ids: BPE's most frequent) and the end tokens, so each
    # proposal reads fewer bytes (exporters/draft_vocab.py); None: the whole vocabulary. Onnx only.
    draft_vocab: int | None = None
    # a lookahead head (`edgemfm lookahead` wrote it) put in the decoder graph: each position also proposes the token
    # after next, a draft that runs inside the target's own call (exporters/lookahead.py). Onnx only.
    lookahead: str | None = None
    version: int = CONFIG_VERSION  # of this record's layout, so a saved config says what it was written for

    def __post_init__(self) -> None:
        _paths_as_text(self, "model", "out", "calibration", "lookahead")
        object.__setattr__(self, "prune", tuple(self.prune))  # a CLI list or a JSON array
        _positive_budget(self.memory_budget_mb, self.accuracy_tolerance_db)
        if self.visual_tokens is not None and (isinstance(self.visual_tokens, bool) or self.visual_tokens < 1):
            raise InputError(f"visual tokens {self.visual_tokens!r} must be a whole number of at least 1")
        if self.kv_cache not in KV_CACHES:
            raise InputError(f"KV cache {self.kv_cache!r} is not known; allowed: {', '.join(KV_CACHES)}")
        if self.kernels not in KERNEL_SETS:
            raise InputError(f"kernels {self.kernels!r} are not known; allowed: {', '.join(KERNEL_SETS)}")
        if self.draft_vocab is not None and (isinstance(self.draft_vocab, bool) or self.draft_vocab < 1):
            raise InputError(f"draft vocab {self.draft_vocab!r} must be a whole number of tokens of at least 1")
        if self.draft_vocab is not None and self.format != "onnx":
            raise InputError(f"draft vocab with format {self.format!r} is not supported; allowed: onnx")
        if self.lookahead is not None and self.format != "onnx":
            raise InputError(f"a lookahead head with format {self.format!r} is not supported; allowed: onnx")


@dataclass(frozen=True)
class QuantizeConfig:
    """How `quantize` compresses a staged float bundle.

    Example:
        >>> QuantizeConfig(precision="auto", memory_budget_mb=60).accuracy_tolerance_db
        20.0
    """

    precision: str = "fp32"  # fp32 (nothing to do), fp16, int8, int4 or auto; with `recipe`: only the report's label
    calibration: str | None = None  # folder of images, .wav clips and prompt .txt files; None: the built-in set
    memory_budget_mb: float | None = None  # MiB the weights must fit in under auto; None: the profile's
    accuracy_tolerance_db: float = DEFAULT_TOLERANCE_DB  # least SQNR of each component's output under auto
    recipe: Recipe | None = None  # an explicit recipe in place of the precision's preset (benchmarks, tune)
    version: int = CONFIG_VERSION  # of this record's layout

    def __post_init__(self) -> None:
        _paths_as_text(self, "calibration")
        _positive_budget(self.memory_budget_mb, self.accuracy_tolerance_db)


@dataclass(frozen=True)
class FinetuneConfig:
    """What `finetune` trains on and how long (the defaults produced the committed demo adapter).

    Example:
        >>> FinetuneConfig(model="models/demo-base", data="data/demo", out="models/demo").steps
        240
    """

    model: str  # checkpoint directory or Hub id to start from (a family finetune knows how to train)
    data: str  # training JSONL file, or a folder with train.jsonl and eval.jsonl
    out: str  # checkpoint directory to write, atomically
    steps: int = 240  # end-to-end steps through the frozen decoder: the ten digits need the longer run
    align_steps: int = 100  # stage 1 steps aligning the projectors to the answers' embeddings
    batch_size: int = 8  # questions per end-to-end step, taken from the question types in turn
    lr: float = 1e-3  # peak learning rate of the end-to-end stage (half cosine to a tenth)
    align_lr: float = 1e-3  # learning rate of the alignment stage
    seed: int = 0  # the same seed trains the same weights
    checkpoint_every: int = 20  # steps between adapter checkpoints under out/checkpoints/
    force: bool = False  # replace an existing `out`
    cache: str | None = None  # folder keeping the frozen towers' features by content; None: no cache
    revision: str | None = None  # with a Hub id as `model`: branch, tag or commit; None: main
    lora_rank: int = 0  # LoRA rank on the decoder's attention and MLP layers, merged on save; 0: projectors only
    lora_alpha: float = 16.0  # LoRA scale numerator: the update is B @ A * alpha / rank
    eval: str | None = None  # held-out JSONL file; None: the folder's eval.jsonl, or every fifth of a file's questions
    version: int = CONFIG_VERSION  # of this record's layout

    def __post_init__(self) -> None:
        _paths_as_text(self, "model", "data", "out", "cache", "eval")
        for name in ("steps", "align_steps", "lora_rank"):
            if getattr(self, name) < 0:
                raise InputError(f"{name} must be 0 or more, got {getattr(self, name)}")
        if self.batch_size < 1 or self.checkpoint_every < 1:
            raise InputError(
                f"batch size and checkpoint interval must be at least 1, got {self.batch_size} and {self.checkpoint_every}"
            )
