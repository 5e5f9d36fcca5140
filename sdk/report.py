"""What a bundle's report says, as records: parity, fusion, delegation, quantization, plan, pruning, tune.

Every verb that writes into a bundle's report builds these records, and every reader reads their
attributes; the manifest holds one `Report`. They go to and from JSON only through
`records.to_dict` / `records.from_dict`, so a key nobody declared is refused with the known ones
listed. Fields a bundle may lack (an fp32 export has no quantization, an unpruned one no pruning)
are optional. A leaf module: it imports nothing of edgemfm but the records.

Example:
    >>> from edgemfm.records import from_dict
    >>> r = from_dict(Report, {"precision": "int8", "parity": {"text_decoder": {"max_abs_diff": 1e-5, "nodes": 212}}})
    >>> r.parity["text_decoder"].nodes
    212
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class SplitReport:
    """What a model family's split says beside its graphs."""

    notes: dict[str, str] = field(default_factory=dict)  # component -> how the runtime must feed it (tiles, patches)


@dataclass(frozen=True)
class Fusion:
    """What graph fusion did to one ONNX component (never silent about what stayed unfused)."""

    nodes_before: int = 0  # nodes of the exported graph
    nodes_after: int = 0  # nodes of the graph that ships
    fused_ops: dict[str, int] = field(default_factory=dict)  # fused kernel -> count in the final graph
    unfused_ops: dict[str, int] = field(default_factory=dict)  # telltale primitives left: a pattern not fused
    rules_fired: dict[str, int] = field(default_factory=dict)  # "file.rule" -> times it matched
    skipped: str | None = None  # why no fusion ran ("export --no-fuse"); the counts are then empty


@dataclass(frozen=True)
class Parity:
    """How closely one exported component reproduces PyTorch on its example inputs."""

    max_abs_diff: float | None = None  # of the graph that ships; None where only the node count is known (tune)
    scale: float | None = None  # max |output|: the diff is judged against tolerance x scale
    tolerance: float | None = None  # the family's, per unit of scale
    max_abs_diff_unfused: float | None = None  # onnx: the export itself, before any rewrite
    nodes: int = 0  # graph nodes (onnx; 0 where not counted): the cost model's fixed cost per node
    fusion: Fusion | None = None  # onnx only: what fusion did


@dataclass(frozen=True)
class Delegation:
    """What ExecuTorch's partitioner gave the backend in one method of a pte program."""

    backend: str  # e.g. "XnnpackBackend"
    subgraphs: int  # delegated subgraphs
    delegated_nodes: int  # nodes the backend runs
    non_delegated_nodes: int  # these run in ExecuTorch's portable kernels
    non_delegated_ops: dict[str, int] = field(default_factory=dict)  # operator -> nodes left outside the backend


@dataclass(frozen=True)
class AppliedScheme:
    """One quantization pass used on a component."""

    bits: int  # 4, 8 or 16 (fp16)
    group_size: int  # 0: per channel
    method: str  # how the values were chosen: rtn, gptq, static ...


@dataclass(frozen=True)
class Judged:
    """The SQNR a component is judged by when its own output is not what matters (the token embedding)."""

    by: str  # the component whose output judges it (the text decoder's next-token distribution)
    sqnr_db: float  # of that output, with this component quantized and the rest float


@dataclass(frozen=True)
class Quantization:
    """How one component was quantized and how close it stays to float on calibration data."""

    schemes: tuple[AppliedScheme, ...]  # the passes applied, sorted
    quantized_units: int  # weighted units (MatMul, Conv, Gather tables) given integer weights
    float_units: dict[str, str]  # unit -> why it stayed float (never silent)
    notes: dict[str, str]  # unit -> how it was quantized where that differs from its spec
    quantized_nodes: dict[str, int]  # quantized op type -> count in the graph
    weight_bytes: int  # initializer bytes as stored (int4 packed two to a byte)
    sqnr_db: float | None = None  # of its first output vs float; None: no calibration item reaches it
    cosine: float | None = None  # of the same output; None where sqnr_db is
    judged: Judged | None = None  # the decoder and the token embedding: SQNR on the next-token distribution
    output: str = ""  # the output the figures are measured on


@dataclass(frozen=True)
class PlanGroup:
    """One layer (or a unit outside any block) as the auto planner saw it."""

    bits: int  # what it got; 32: float
    int4_alone_sqnr_db: float  # its component's SQNR with this group alone at int4 (its sensitivity)
    params: int  # weights in the group
    estimated: bool = False  # the sensitivity is its block's measured noise shared out by role


@dataclass(frozen=True)
class Plan:
    """The auto planner's choice: bits per layer under a memory budget and an accuracy tolerance."""

    tolerance_db: float  # the least SQNR asked of each judged output
    memory_budget_mb: float  # MiB the weights had to fit in
    tolerance_met: bool  # False: the budget allowed no more bits (the CLI says so in red)
    measured_sqnr_db: dict[str, float]  # judging component -> SQNR of the final plan
    judged_by: dict[str, str]  # component -> the component whose output judges it
    groups: dict[str, PlanGroup]  # layer name -> bits and sensitivity


@dataclass(frozen=True)
class Share:
    """How the removed units' importance compares with the kept ones' (the margin of a cut)."""

    removed_mean: float  # mean importance score of what went
    kept_mean: float  # ... and of what stayed: below it, the cut took the least important
    removed_share: float  # of the summed score: below the share of units removed, the cut was cheap


@dataclass(frozen=True)
class ChannelScores:
    """An MLP layer's cut: every removed channel's score and the weakest kept one."""

    removed: tuple[float, ...]  # each removed channel's score
    lowest_kept: float  # the weakest kept channel's score: the margin of the cut


@dataclass(frozen=True)
class PruneStage:
    """One granularity pruned in one component."""

    granularity: Literal["blocks", "heads", "mlp"]  # what was cut: whole blocks, KV head groups, MLP channels
    count: int  # blocks removed, or KV groups / channels removed in each layer
    removed: tuple[int, ...] | dict[str, tuple[int, ...]]  # blocks: indices; heads / mlp: layer -> indices
    why: str  # the score used and why it picks what matters least
    component: str = "text_decoder"  # which stack: text_decoder, vision_encoder, audio_encoder
    parameters_removed: int = 0  # by this stage alone
    summary: Share | None = None  # the importance margin of the cut
    # pruning.json only (a bundle's report leaves them out): blocks: one score per block; heads: layer ->
    # per group; mlp: layer -> the cut's margin
    scores: tuple[float, ...] | dict[str, tuple[float, ...]] | dict[str, ChannelScores] | None = None


@dataclass(frozen=True)
class PruneCalibration:
    """What the importance scores were measured on."""

    samples: int  # calibration texts
    tokens: int  # calibration tokens the text decoder was scored on
    items: dict[str, str]  # component -> what calibrated it, in words
    data: str | None = None  # the folder given, or the built-in set named


@dataclass(frozen=True)
class Parameters:
    """Parameter counts of the whole model around a prune."""

    before: int  # of the checkpoint pruned
    after: int  # of the checkpoint written
    removed: int  # before - after, kept so a reader need not subtract


@dataclass(frozen=True)
class Loss:
    """A training loss at the start and at the end of a run."""

    first: float  # mean over the first few steps
    last: float  # mean over the last few steps


@dataclass(frozen=True)
class Recovery:
    """The distillation that followed pruning."""

    method: str  # in words: what was trained towards what
    config: dict[str, Any]  # the RecoveryConfig, as its fields
    sequences: int  # teacher sequences trained on
    tokens: int  # in those sequences
    loss: Loss  # KL at the start and at the end: the recovery's effect
    seconds: float  # wall time of the distillation


@dataclass(frozen=True)
class LookaheadAccuracy:
    """A lookahead head's share of right proposals on held-out answers."""

    before: float  # the untrained head's
    after: float  # the trained head's
    positions: int  # held-out answer positions scored


@dataclass(frozen=True)
class Lookahead:
    """What `edgemfm lookahead` trained: kept in the head file's metadata (`sdk/lookahead.py`)."""

    method: str  # in words: what was trained towards what
    config: dict[str, Any]  # the LookaheadConfig, as its fields
    data: str  # the questions and what answered them
    answers: str  # the bundle whose greedy answers were learnt
    positions: int  # answer positions trained on
    accuracy: LookaheadAccuracy  # on the held-out questions
    loss: Loss  # cross-entropy plus KL, at the start and at the end
    seconds: float  # wall time, the answers and hidden states included


@dataclass(frozen=True)
class Pruning:
    """What `prune` removed, where and why: `pruning.json` beside a pruned checkpoint, and (without the
    scores, version, architecture and config) the report of a bundle exported from it."""

    uniform: str  # why every layer lost the same count
    parameters: Parameters  # of the whole model
    stages: tuple[PruneStage, ...]  # in the order they ran (blocks, heads, mlp per component)
    calibration: PruneCalibration  # what the scores were measured on
    source: str | None = None  # the unpruned checkpoint
    recovery: Recovery | str | None = None  # str: why it did not run
    version: int | None = None  # pruning.json's own format version
    architecture: str | None = None  # the transformers class pruned
    config: tuple[dict[str, Any], ...] = ()  # each PruneConfig, as its fields


@dataclass(frozen=True)
class Tune:
    """The point `edgemfm tune --apply` chose, as predicted for its device."""

    device: str  # the profile tuned for
    latency_ms: float  # predicted: the slowest one-media question
    memory_mb: float  # predicted: weights + KV cache + the largest activation
    quality: float  # measured on the host, by `metric`
    metric: str  # what quality measures (held-out exact match, or the worst component cosine)
    components: dict[str, str]  # component -> precision and media setting


@dataclass(frozen=True)
class FinetuneReport:
    """What `finetune` did and how well the result answers the held-out questions (`finetune.json`)."""

    base: str  # the checkpoint trained from
    seed: int  # everything is seeded: a run is repeatable
    train_questions: int  # questions trained on
    align_steps: int  # projector alignment steps before fine-tuning
    steps: int  # fine-tuning steps
    batch_size: int  # questions per step
    lr: float  # fine-tuning learning rate
    align_lr: float  # alignment learning rate
    align_loss: float | None  # the last alignment step's; None: no alignment steps
    loss: tuple[float, ...]  # about 20 samples of the training loss, and the last
    seconds: float  # wall time
    accuracy: dict[str, float]  # media kind -> exact match on the held-out questions
    questions: dict[str, int]  # media kind -> held-out questions
    misses: tuple[dict[str, str], ...]  # each wrong answer: media, prompt, answer, got
    accuracy_before: dict[str, float] = field(default_factory=dict)  # the base model's, on the same questions
    lora_rank: int = 0  # LoRA rank on the decoder, merged into the saved weights; 0: projectors only


@dataclass(frozen=True)
class Report:
    """A bundle's quality report: how each component was exported, compressed and checked."""

    precision: str = "fp32"  # what export was asked for: fp32, fp16, int8, int4, auto; "tune" for a tuned bundle
    parity: dict[str, Parity] = field(default_factory=dict)  # component -> export parity
    float_units: dict[str, str] = field(default_factory=dict)  # unit (or component) -> why it is float
    quantization: dict[str, Quantization] = field(default_factory=dict)  # empty: nothing quantized
    plan: Plan | None = None  # precision auto only
    pruning: Pruning | None = None  # exported from a pruned checkpoint
    delegation: dict[str, Delegation] = field(default_factory=dict)  # pte: per method
    notes: dict[str, str] = field(default_factory=dict)  # the family split's, per component
    tune: Tune | None = None  # a tuned bundle's chosen point
