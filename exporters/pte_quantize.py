"""Quantize a pte program's modules in PyTorch, the way ExecuTorch's own LLM export does for XNNPACK.

ONNX bundles are quantized by rewriting graphs (quantizers/); an ExecuTorch program is quantized
before capture, on the modules, and XNNPACK's partitioner takes the quantized patterns:

| unit                         | int4 (8da4w)                                   | int8 (8da8w)                     |
|------------------------------|------------------------------------------------|----------------------------------|
| text_decoder linears         | int8 dynamic activations x int4 weights, PerGroup(g) | x int8 weights, per channel |
| text_decoder lm_head         | the same, PerGroup(min(g, 32))                 | the same, its final LayerNorm folded in (pte_head.py) |
| token_embedding table        | 8-bit rows, per row (embedding_byte)           | the same                         |
| vision / audio encoders      | static int8, per-channel weights (PT2E, exporters/pte_encoders.py) | the same         |

`g` is the device preset's int4 group size (presets.group_size). int8 weights are per channel:
XNNPACK has per-channel int8 kernels (qc8w), no blockwise int8 ones. torchao's
`Int8DynamicActivationIntxWeightConfig` for the linears and ExecuTorch's `EmbeddingQuantHandler`
for the tables are what `export_llm --quantization.qmode 8da4w --quantization.embedding_quantize 8,0`
applies (symmetric, scales chosen by HQQ's scale-only search: `use_hqq` is on there too), but for the
output head: at int4 its groups are finer. The head's int4 error costs the most perplexity of any
layer, and a table lookup reads one row per token, so an 8-bit table costs file size, not decode
time (BENCHMARKS.md, "ExecuTorch: SmolLM2-135M-Instruct int4 beside ExecuTorch's own export").
`auto` plans the table and the head per layer instead (4-bit tables in groups of g among its choices).
A linear whose input width the group does not divide stays float and is named in the report, as
does a table whose rows a 4-bit group does not divide.
A group's scale is rounded to bfloat16 before its weights are quantized: XNNPACK's blockwise kernels keep it so.

The modules quantized in place ARE the fake-quantized PyTorch model the program is checked against;
run them under `xnnpack_rounding()` and their dynamic int8 activations round as the program's do.

Example:
    >>> recipe = pte_recipe(load_profile("pi5"), "int4")  # doctest: +SKIP
    >>> recipe.spec_for("text_decoder/lm_head").group_size  # doctest: +SKIP
    64
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from edgemfm.errors import InputError
from edgemfm.exporters import pte_encoders, pte_head
from edgemfm.profiles import DeviceProfile
from edgemfm.quantizers import presets
from edgemfm.quantizers.units import unit_name
from edgemfm.recipe import FLOAT32, QuantSpec, Recipe, Rule
from edgemfm.report import AppliedScheme, Quantization

PRECISIONS = ("fp32", "int8", "int4", "auto")  # what --format pte runs; no fp16 (XNNPACK's fp16 is not built here)
SCHEME = "torchao-xnnpack"  # the report's name for what was applied
METHOD = "hqq"  # torchao's "hqq_scale_only": HQQ's search for the scales, as export_llm's default use_hqq
TABLES = "token_embedding"  # the one component that looks tokens up: a decoder's own table is unused (it takes
# inputs_embeds) and stays as it is
HEAD = "text_decoder/lm_head"  # the output head's unit, as quantize_module names it (every family's static decoder)
TOLERANCE = 0.1  # of the outputs' scale: XNNPACK rounds its dynamic int8 activations unlike torchao's emulation
# or this share of its quantization noise, RMS (exporters/executorch.py's check): a deep decoder's max difference on
# random inputs is chaotic, where a program that skips its quantization is the whole noise from its module
NOISE_SHARE = 0.5


def runnable(profile: DeviceProfile) -> list[str]:
    """The precisions a pte program runs at on `profile`: fp32, and each of int8/int4/auto it has weight kernels for.

    Example:
        >>> runnable(load_profile("pi5"))  # doctest: +SKIP
        ['fp32', 'int8', 'int4', 'auto']
    """
    bits = {"int8": (8,), "int4": (4,), "auto": (4, 8)}
    return [p for p in PRECISIONS if p == "fp32" or set(bits[p]) & set(profile.weight_bits)]


def check_precision(profile: DeviceProfile, precision: str) -> None:
    """A one-line InputError for a precision the pte preset of `profile` cannot run, naming those it can.

    Example:
        >>> check_precision(load_profile("pi5"), "fp16")  # doctest: +SKIP
        InputError: precision 'fp16' is not available for --format pte on raspberry-pi-5-8gb; allowed: fp32, int8, int4, auto
    """
    allowed = runnable(profile)
    if precision not in allowed:
        raise InputError(
            f"precision {precision!r} is not available for --format pte on {profile.name}; allowed: {', '.join(allowed)}"
        )


def pte_recipe(profile: DeviceProfile, precision: str, planned: Recipe | None = None) -> Recipe:
    """The recipe a pte program gets for `precision` on `profile`; a one-line InputError for one it cannot run.

    `auto`: `planned`, the ONNX planner's per-layer bits for the decoder and the token table
    (quantizers.quantize.plan), each int4 or int8 layer given the pte spec of its bits.

    Example:
        >>> pte_recipe(load_profile("pi5"), "int8").spec_for("token_embedding/embed").bits  # doctest: +SKIP
        8
    """
    check_precision(profile, precision)
    if precision == "fp32":
        return FLOAT32
    group = presets.group_size(profile)
    # XNNPACK: blockwise int4, per-channel int8 (no blockwise int8 kernels)
    linear = {b: QuantSpec(bits=b, group_size=group if b == 4 else 0, method=METHOD, activation_bits=8) for b in (4, 8)}
    table = {b: QuantSpec(bits=b, group_size=group if b == 4 else 0, method=METHOD) for b in (4, 8)}
    if precision == "auto":
        assert planned is not None, "auto: the planner's recipe is given (quantizers.quantize.plan)"
        text = tuple(
            Rule(pattern, r.spec and (table if r.pattern.startswith(TABLES) else linear)[r.spec.bits])
            for r in planned.rules
            if r.pattern != "*"
            for pattern in _unpacked(r.pattern)
        )
    elif precision == "int4":
        # the head in finer groups: a few percent more of its time, where a per-channel int8 head would cost
        # more than the whole margin over ExecuTorch's program; the table as 8-bit rows: only looked up
        head = QuantSpec(bits=4, group_size=min(group, presets.HEAD_GROUP), method=METHOD, activation_bits=8)
        text = (Rule(HEAD, head), Rule("text_decoder/*", linear[4]), Rule(f"{TABLES}/*", table[8]))
    else:
        text = (Rule("text_decoder/*", linear[8]), Rule(f"{TABLES}/*", table[8]))
    # encoders at int8 under every precision: XNNPACK's convolutions have no int4 kernels, and the ONNX presets
    # keep them w8a8
    encoder = QuantSpec(bits=8, method=pte_encoders.METHOD, activation_bits=8)
    return Recipe(rules=(*text, *(Rule(f"{name}/*", encoder) for name in pte_encoders.ENCODERS), Rule("*", None)))


# The ONNX graphs' packed projections (exporters/fusions/packed_projections.py) -> the modules they pack: a plan's
# rule for a packed unit applies to each of them in the PyTorch model
PACKED = {
    "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
}


def _unpacked(pattern: str) -> tuple[str, ...]:
    """`pattern`, and the patterns of the modules a packed unit packs (a model with its own packed module keeps it).

    >>> _unpacked("text_decoder/layers.1/mlp.gate_up_proj")
    ('text_decoder/layers.1/mlp.gate_up_proj', 'text_decoder/layers.1/mlp.gate_proj', 'text_decoder/layers.1/mlp.up_proj')
    """
    head, _, unit = pattern.rpartition("/")
    return (pattern, *(f"{head}/{m}" for m in PACKED.get(unit, ())))


def quantize_module(name: str, module: Any, recipe: Recipe, others: tuple[Any, ...] = ()) -> Quantization | None:
    """Quantize `module` (component `name`) in place per `recipe`; what was done, or None if nothing was.

    `others`: modules other components run that `module` holds too; they stay as they are here.

    Example:
        >>> quantize_module("text_decoder", unit.module, pte_recipe(load_profile("pi5"), "int4")).quantized_units  # doctest: +SKIP
        22
    """
    import torch

    if name in pte_encoders.ENCODERS:  # calibrated static int8, by pte_encoders.quantize_encoder
        return None
    # Whisper's decoder holds the cross-attention K/V projections the audio encoder runs: they are the encoder's
    # (static int8, or float with its reason), and quantized here they would change it behind its back
    theirs = {id(m) for other in others for m in other.modules()}
    linears = {f: m for f, m in module.named_modules() if isinstance(m, torch.nn.Linear) and id(m) not in theirs}
    # exactly nn.Embedding: a subclass (Gemma-3's scaled table) does more than a lookup
    tables = {f: m for f, m in module.named_modules() if type(m) is torch.nn.Embedding and name == TABLES}
    # named as the ONNX planner names its units (text_decoder/layers.3/mlp.down_proj): an auto plan's rules apply
    specs = {f: recipe.spec_for(unit_name(name, f)) for f in (*linears, *tables)}
    if not any(specs.values()):
        return None
    floats = {f: "float in the recipe" for f, s in specs.items() if s is None}
    notes = _fold_head(module, specs.get("lm_head"))
    done: dict[str, int] = {}
    chosen: dict[QuantSpec, set[str]] = {}
    for fqn, linear in linears.items():
        spec = specs[fqn]
        if spec is not None and spec.group_size and linear.in_features % spec.group_size:
            floats[fqn] = f"its {linear.in_features} inputs are not a multiple of the group size {spec.group_size}"
        elif spec is not None:
            chosen.setdefault(spec, set()).add(fqn)
    for spec, fqns in chosen.items():
        _linears(module, fqns, spec)
        done[f"linear_8da{spec.bits}w"] = done.get(f"linear_8da{spec.bits}w", 0) + len(fqns)
    for fqn, table in tables.items():
        spec = specs[fqn]
        if spec is not None and spec.group_size and table.embedding_dim % spec.group_size:
            # ExecuTorch's grouped embedding kernels take whole groups of a row, as XNNPACK's linears do
            floats[fqn] = f"its {table.embedding_dim}-wide rows are not a multiple of the group size {spec.group_size}"
        elif spec is not None:
            _set(module, fqn, _embedding(table, spec))
            done[f"embedding_{specs[fqn].bits}bit"] = done.get(f"embedding_{specs[fqn].bits}bit", 0) + 1
    used = sorted({s for s in specs.values() if s is not None}, key=lambda s: (s.bits, s.group_size))
    return Quantization(
        schemes=tuple(AppliedScheme(bits=s.bits, group_size=s.group_size, method=f"{SCHEME} {s.method}") for s in used),
        quantized_units=sum(done.values()),
        float_units=floats,
        notes=notes,
        quantized_nodes=done,
        weight_bytes=0,  # filled by the writer from the captured program
    )


def fake_quantized(name: str, module: Any, recipe: Recipe) -> Any:
    """`module` quantized in place per `recipe` as the program runs it, for measuring in eager PyTorch: its linears'
    weights dequantized (torchao's quantized linears run their integer weights far slower there, same values) and
    their inputs rounded per token as XNNPACK rounds them. Returns `module`.

    Example:
        >>> logits = fake_quantized("text_decoder", copy.deepcopy(unit.module), recipe)(*unit.args)  # doctest: +SKIP
    """
    import torch

    quantize_module(name, module, recipe)
    for linear in module.modules():
        if isinstance(linear, torch.nn.Linear) and type(linear.weight) is not torch.nn.Parameter:  # torchao's
            linear.weight = torch.nn.Parameter(linear.weight.dequantize().float(), requires_grad=False)
            linear.register_forward_pre_hook(lambda _m, a: (_xnnpack_quant_dequant(a[0]), *a[1:]))
    return module


def _fold_head(module: Any, head: QuantSpec | None) -> dict[str, str]:
    """A head at 8 bits per channel reads its final LayerNorm folded into it and rotated (exporters/pte_head.py),
    before it is quantized; the report's note for it. Measured there at 8da8w only: other heads stay as they are."""
    if head is None or head.bits != 8 or head.group_size:
        return {}
    note = pte_head.fold_head(module)
    return {HEAD: note} if note else {}


def _linears(module: Any, fqns: set[str], spec: QuantSpec) -> None:
    import torch
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerAxis, PerGroup

    config = Int8DynamicActivationIntxWeightConfig(
        weight_dtype=torch.int4 if spec.bits == 4 else torch.int8,
        weight_granularity=PerGroup(spec.group_size) if spec.group_size else PerAxis(0),
        # XNNPACK keeps a group's scale in bfloat16 (its blockwise kernels' format; ExecuTorch's lowering casts
        # it): rounded here too, and the weights quantized against the rounded scales, the modules compute what
        # the program runs. Per-channel scales stay float32 there and here.
        weight_scale_dtype=torch.bfloat16 if spec.group_size else None,
        intx_choose_qparams_algorithm="hqq_scale_only" if spec.method == METHOD else "affine",
    )
    quantize_(module, config, filter_fn=lambda _m, fqn: fqn in fqns)


def _embedding(table: Any, spec: QuantSpec) -> Any:
    import executorch.kernels.quantized  # noqa: F401  (quantized_decomposed::embedding_* kernels, eager and runtime)
    import torch
    from executorch.examples.models.llama.source_transformation.quantize import EmbeddingQuantHandler

    holder = torch.nn.Sequential(table)
    EmbeddingQuantHandler(
        holder,
        bitwidth=spec.bits,
        group_size=spec.group_size or None,
        packed=spec.bits == 4,
        quantize_with_hqq=spec.method == METHOD,
    ).quantized_model()
    return holder[0]


def _set(module: Any, fqn: str, child: Any) -> None:
    parent, _, leaf = fqn.rpartition(".")
    setattr(module.get_submodule(parent) if parent else module, leaf, child)


@contextmanager
def xnnpack_rounding() -> Iterator[None]:
    """Inside the block, the fake-quantized linears quantize their int8 activations as XNNPACK's program does.

    Only for running a reference: capture a module outside it (XNNPACK's partitioner matches torchao's own ops).

    Example:
        >>> with xnnpack_rounding():  # doctest: +SKIP
        ...     reference = module(inputs)
    """
    from torchao.quantization.quantize_.workflows.intx import intx_unpacked_to_int8_tensor as intx

    torchao_rounding = intx._apply_int8_act_asym_per_token_quant_dequant
    intx._apply_int8_act_asym_per_token_quant_dequant = _xnnpack_quant_dequant
    try:
        yield
    finally:
        intx._apply_int8_act_asym_per_token_quant_dequant = torchao_rounding


def _xnnpack_quant_dequant(x: Any) -> Any:
    import torch

    # XNNPACK's qd8 (xnn_f32_qd8_asymmetric_quantization_params, f32-qs8 convert) multiplies by 255 / (max - min),
    # rounds, then adds the zero point; torchao divides by (max - min) / 255: a row near a tie rounds the other way.
    x32 = x.float()
    rmin, rmax = x32.amin(-1, keepdim=True).clamp(max=0), x32.amax(-1, keepdim=True).clamp(min=0)
    scale = torch.where(rmin == rmax, 1.0, 255.0 / (rmax - rmin))
    low, high = rmin * scale, rmax * scale
    zero = torch.where((-128 + low) + (127 + high) > 0, -128 - low, 127 - high).clamp(-128, 127).round()
    q = (torch.round(x32 * scale) + zero).clamp(-128, 127)
    return ((q - zero) * (1 / scale)).to(x.dtype)
