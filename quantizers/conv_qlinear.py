"""int8 convolutions on int8 kernels: QDQ with u8 activations and s8 per-channel weights, as ONNX Runtime fuses it.

The int8 CPU presets give a Conv int8 weights; on a CPU whose profile says `int8_conv = "qlinear"`
(measured faster there) `conv_weight_only` hands the chained convolutions of a CNN to this module
instead of de-quantizing their weights at every call. `quantize_static` writes QuantizeLinear /
DequantizeLinear around them and ONNX Runtime's QDQ fusion turns each
`DQ -> Conv -> Q` into one QLinearConv (u8 activations, s8 weights, per output channel) and each
residual `DQ, DQ -> Add -> Q` into QLinearAdd:

    x(u8) ─► QLinearConv ─► u8 ─► QLinearConv (depthwise) ─► u8 ─► QLinearConv ─► QLinearAdd ─► ...

What makes it pay is the ReLU / ReLU6 (Clip) after each conv: quantized with its conv, the activation
is folded into the conv's output range (zero point 0, at most 6), so the int8 tensor goes from conv
to conv with no re-quantization between them. Left out, every conv pays a DequantizeLinear and a
QuantizeLinear and the graph ties fp32 (BENCHMARKS.md, result quantization-efficientnet-int8).
Depthwise convs are quantized too: their int8 kernel costs what the float one does, and keeping them
float would put a DQ / Q pair on each side. A conv with no conv neighbour (a ViT's patch embedding,
Whisper's convs around a GELU) stays weight-only: it would pay the Q / DQ pair and gain nothing. A conv
too small to be a unit (under `units.MIN_PARAMS` weights: EfficientNet's stem, its first depthwise
convs) joins the int8 chain when it touches one: left float it would cost a DQ / Q pair on each side;
the report names it in `notes` (`ctx.cache["qlinear"]`), not among the float units.
Activation ranges: MinMax over the calibration feeds (percentile measured the same accuracy at twice
the calibration time).

A conv whose int8 weights alone (per output channel, every other conv float) bring the component's output
under `SENSITIVE_DB` on the calibration feeds stays float, named in the report's float units: on the demo
model's EfficientNet-Lite0 the first depthwise conv alone took its output to 17.6 dB on the built-in
drawings, the stem and the second depthwise to under 29, and the whole int8 encoder lost 3.5 points of
held-out exact match (BENCHMARKS.md, result quantization-demo-vision-int8). The early, small, high-resolution
convs are the ones: few weights per channel, each rounding error carried through every later block.

Each quantized conv's bias absorbs the mean shift its rounded weights cause (`corrected`, bias correction: the
rounding error summed over the kernel times the calibration feeds' mean of each input channel), and `sensitive`
judges a conv with its bias so corrected. On the demo encoder the weights of every conv after the first two went from
30.7 to 39.7 dB of output SQNR with it (held-out pictures); the first depthwise conv alone from 17.6 to 26.2 dB and the
stem 28.7 on the drawings, so only those two stay float (were five); the whole int8 encoder went from 29.7 to 31.7 dB,
held-out exact match from -1.2 to -0.6 points against fp32, 1.53x to 1.79x per CPU ms.

Example:
    >>> model = apply(onnx.load("effnet.onnx"), *select(model, units, ctx), ctx)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from edgemfm.quantizers.units import Unit

if TYPE_CHECKING:
    from edgemfm.quantizers.context import Context

ACTIVATIONS = ("Relu", "Clip")  # folded into the conv's output range when quantized with it
SENSITIVE_DB = 30.0  # output SQNR under which a conv's int8 weights alone keep it float (see above)
_THROUGH = (*ACTIVATIONS, "Add")  # what lies between two chained convs of a CNN


def chained(model: Any, units: list[Unit]) -> list[Unit]:
    """The Conv `units` with another of them before or after (through an activation or a residual Add).

    Example:
        >>> [u.node for u in chained(model, units)][:1]  # doctest: +SKIP
        ['node_conv2d']
    """
    nodes = {n.name: n for n in model.graph.node}
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    convs = {u.node for u in units}

    def reaches(node: Any, step: Any, depth: int = 3) -> bool:
        for nxt in step(node):
            if nxt.name in convs or (depth and nxt.op_type in _THROUGH and reaches(nxt, step, depth - 1)):
                return True
        return False

    def before(n: Any) -> list[Any]:
        return [producer[i] for i in n.input[:1] if i in producer]

    def after(n: Any) -> list[Any]:
        return [c for o in n.output for c in consumers.get(o, [])]

    return [u for u in units if reaches(nodes[u.node], before) or reaches(nodes[u.node], after)]


def sensitive(model: Any, convs: list[Unit], feeds: list) -> dict[str, float]:
    """Unit name -> the component's output SQNR (dB) on `feeds` with only that conv's weights int8 (bias-corrected
    as `apply` corrects them), for the `convs` under SENSITIVE_DB.

    Example:
        >>> sensitive(model, units, ctx.feeds)  # doctest: +SKIP
        {'vision_encoder/vision_tower._blocks.0._depthwise_conv': 26.2}
    """
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    means = input_means(model, [u.node for u in convs], feeds)

    def outputs(m: Any) -> list[np.ndarray]:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return [session.run(None, f)[0] for f in feeds]

    ref, out = outputs(model), {}
    for u in convs:
        trial = onnx.ModelProto()
        trial.CopyFrom(model)
        init = next(i for i in trial.graph.initializer if i.name == u.weight)
        corrected(trial, {u.node: means[u.node]})
        init.CopyFrom(numpy_helper.from_array(rounded(numpy_helper.to_array(init)), u.weight))
        got = outputs(trial)
        noise = sum(float(np.sum((a - b) ** 2)) for a, b in zip(ref, got, strict=True))
        db = 10 * math.log10(sum(float(np.sum(a**2)) for a in ref) / max(noise, 1e-30))
        if db < SENSITIVE_DB:
            out[u.name] = db
    return out


def rounded(w: np.ndarray) -> np.ndarray:
    """A conv's float weights [out, in / groups, kh, kw] as quantize_static rounds them: symmetric int8, one scale per
    output channel (-127..127).

    Example:
        >>> rounded(np.array([[[[0.5, -1.0]]]], np.float32)).tolist()
        [[[[0.5039370059967041, -1.0]]]]
    """
    scale = np.maximum(np.abs(w).reshape(len(w), -1).max(1), 1e-12).reshape(-1, *[1] * (w.ndim - 1)) / 127
    return (np.round(w / scale) * scale).astype(w.dtype)


def input_means(model: Any, nodes: list[str], feeds: list) -> dict[str, np.ndarray]:
    """Conv node name -> the mean of each channel of its input over `feeds` (the float graph).

    Example:
        >>> input_means(model, ["node_conv2d_1"], ctx.feeds)["node_conv2d_1"].shape  # doctest: +SKIP
        (96,)
    """
    import onnx
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    by_name = {n.name: n for n in m.graph.node}
    given = {i.name for i in m.graph.input}
    names = list(dict.fromkeys(by_name[n].input[0] for n in nodes))
    wanted = [x for x in names if x not in given]
    present = {o.name for o in m.graph.output}
    m.graph.output.extend(onnx.helper.make_tensor_value_info(x, 1, None) for x in wanted if x not in present)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
    outs = [o.name for o in session.get_outputs()]
    sums: dict[str, np.ndarray] = {}
    for f in feeds:
        got = dict(zip(outs, session.run(None, f), strict=True))
        for x in names:
            sums[x] = sums.get(x, 0) + np.asarray(f[x] if x in given else got[x], np.float64).mean(axis=(0, 2, 3))
    return {n: sums[by_name[n].input[0]] / len(feeds) for n in nodes}


def corrected(model: Any, means: dict[str, np.ndarray]) -> None:
    """Give each conv named in `means` (node -> its input's channel means) its int8-rounded weights' output bias back
    (`rounded(w)` moves each output channel's mean by the rounding error summed over the kernel times the input's
    means: Nagel et al. 2019's bias correction), in place: its bias minus that shift. The weights stay float for
    quantize_static, which rounds them to `rounded(w)`; `sensitive` measures with the rounded weights in place.

    Example:
        >>> corrected(model, input_means(model, nodes, ctx.feeds))  # doctest: +SKIP
    """
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.name not in means:
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        groups = next((a.i for a in node.attribute if a.name == "group"), 1)
        err = (rounded(w) - w).sum(axis=(2, 3)).reshape(groups, len(w) // groups, w.shape[1])
        shift = np.einsum("goi,gi->go", err, means[node.name].reshape(groups, w.shape[1])).reshape(-1)
        if len(node.input) > 2 and node.input[2]:
            bias = numpy_helper.to_array(inits[node.input[2]])
            inits[node.input[2]].CopyFrom(numpy_helper.from_array((bias - shift).astype(w.dtype), node.input[2]))
        else:
            name = f"{node.name}_bias_corrected"
            model.graph.initializer.append(numpy_helper.from_array((-shift).astype(w.dtype), name))
            del node.input[2:]
            node.input.append(name)


def select(model: Any, units: list[Unit], ctx: Context) -> tuple[list[Unit], list[str], list[Unit]]:
    """The Conv `units` chained to another conv, the nodes of the small convs chained to them (their notes go
    to `ctx.cache["qlinear"]`, unit name -> note, for the report), and the `units` kept float because their
    int8 weights cost the output too much (`sensitive`; why in `ctx.cache["qlinear_float"]`)."""
    from edgemfm.quantizers.units import MIN_PARAMS, module_path, unit_name

    inits = {i.name: i for i in model.graph.initializer}
    small = [
        Unit(unit_name(units[0].name.split("/")[0], module_path(n)), n.name, "Conv", n.input[1], tuple(w.dims))
        for n in model.graph.node
        if n.op_type == "Conv" and len(n.input) > 1 and (w := inits.get(n.input[1])) is not None
        if w.data_type == 1 and 0 < math.prod(w.dims) < MIN_PARAMS  # float32 and too small to be a unit
    ]
    joined = chained(model, [*units, *small])
    worst = sensitive(model, joined, list(ctx.feeds))
    # a float conv inside the int8 chain: ONNX Runtime's optimized graph drifts from the QDQ graph's own
    # numbers (the demo's encoder: 28.9 dB unoptimized, 14.1 optimized), so the chain starts after the last
    # sensitive conv and everything before it stays float
    order = {n.name: i for i, n in enumerate(model.graph.node)}
    last = max((order[u.node] for u in joined if u.name in worst), default=-1)
    prefix = {u.name for u in joined if order[u.node] <= last}
    kept = ctx.cache.setdefault("qlinear_float", {})
    kept.update(
        {
            name: f"int8 weights alone: output {worst[name]:.1f} dB < {SENSITIVE_DB:g} on calibration"
            if name in worst
            else "before a sensitive conv: the int8 chain starts after it"
            for name in prefix
        }
    )
    worst = {name: worst.get(name, 0.0) for name in prefix}
    joined = [u for u in joined if u.name not in prefix]
    notes = ctx.cache.setdefault("qlinear", {})
    notes.update(
        {
            u.name: f"{u.params} weights: int8 on QLinearConv, in its neighbours' int8 chain"
            for u in joined
            if u in small
        }
    )
    float_units = [u for u in units if u.name in worst]
    return [u for u in joined if u not in small], [u.node for u in joined if u in small], float_units


def apply(given: Any, units: list[Unit], small: list[str], ctx: Context) -> Any:
    """Quantize the Conv `units` and `small` conv nodes (and the Relu / Clip right after each) to QDQ u8s8, their
    biases corrected for the weights' rounding (`corrected`); returns the new ModelProto."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from edgemfm.quantizers.context import FeedReader

    names = {u.node for u in units} | set(small)
    producer = {o: n.name for n in given.graph.node for o in n.output}
    folded = [
        n.name for n in given.graph.node if n.op_type in ACTIVATIONS and n.input and producer.get(n.input[0]) in names
    ]
    src, out = ctx.scratch / "conv_qlinear.in.onnx", ctx.scratch / "conv_qlinear.onnx"
    means = input_means(given, sorted(names), list(ctx.feeds))
    model = onnx.ModelProto()
    model.CopyFrom(given)
    corrected(model, means)  # the biases absorb what rounding the weights shifts (the weights stay float here)
    onnx.save(model, str(src))  # quantize_static rewrites a ModelProto's external-data fields: give it a file
    quantize_static(
        str(src),
        str(out),
        FeedReader(ctx.feeds),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["Conv", *ACTIVATIONS],
        nodes_to_quantize=[*names, *folded],
        per_channel=True,
        activation_type=QuantType.QUInt8,  # u8 x s8: the operand pair of x86's VPDPBUSD and MLAS's int8 kernels
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
    )
    return onnx.load(str(out))
