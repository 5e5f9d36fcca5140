"""The demo model's vision encoder int8 on the host preset (QLinearConv) against fp32: held-out exact match and CPU ms.

| row | built by |
|---|---|
| fp32 | the float demo bundle (`edgemfm export --device host`) |
| vision int8 | the same bundle with its `vision_encoder` alone quantized by the host's int8 preset (EfficientNet-Lite0's chained convs on QLinearConv, the projector's MatMuls int8 blocks), calibrated as `export --precision int8` calibrates (the built-in drawings, or `--calibration DIR`) |
| --also BUNDLE | any other demo bundle, e.g. the whole host int8 export: exact match only, and its encoder timed |

Exact match: the image questions of DATA/eval.jsonl (digits, shapes, colours; greedy, 8 tokens at most,
compared as `runtimes.cascade.normalize` does), the decoder and embedding identical between the first two
rows, so a difference is the encoder's. Encoder time: each bundle's vision_encoder.onnx under ONNX
Runtime, one thread, one held-out picture per call, the encoders interleaved round by round; the median
and the 10th-90th percentile of the per-call process CPU time, with the load average at each round.
`--per-layer N` prints the N activations whose int8 costs the most: the SQNR of the encoder's output
against fp32 with every weight int8, every activation clipped to its int8 range and only that one rounded.

    python -m benchmarks.quantization.demo_vision_int8 FLOAT_BUNDLE DATA --work /tmp/dvi [--also INT8_BUNDLE]

Needs: pip install -e '.[export,demo-data]' (DATA from samples/demo_model/build_dataset.py)
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from .. import record

ENCODER = "vision_encoder"


def vision_int8(float_bundle: Path, out: Path, calibration: Path | None) -> Path:
    """A copy of `float_bundle` whose vision encoder alone carries the host int8 preset's spec."""
    from edgemfm import bundle
    from edgemfm.bundle import read_manifest
    from edgemfm.configs import QuantizeConfig
    from edgemfm.profiles import load_profile
    from edgemfm.quantizers.presets import recipe_for
    from edgemfm.quantizers.quantize import quantize
    from edgemfm.recipe import Recipe, Rule

    if out.exists():
        return out
    profile = load_profile("host")
    spec = recipe_for(profile, "int8").spec_for(f"{ENCODER}/x")
    recipe = Recipe(rules=(Rule(f"{ENCODER}/*", spec), Rule("*", None)))
    manifest = read_manifest(float_bundle)
    with bundle.staging(out, False) as stage, tempfile.TemporaryDirectory() as scratch:
        for f in manifest.files:
            shutil.copyfile(float_bundle / f, stage / f)
        manifest = replace(manifest, profile=profile.name, files={})
        config = QuantizeConfig(precision="int8", calibration=calibration, recipe=recipe)
        bundle.seal(stage, quantize(stage, manifest, profile, config, Path(scratch)))
    return out


def pictures(pipe, examples: list) -> np.ndarray:
    """The held-out pictures as the runtime pre-processes them: [n, 3, 224, 224]."""
    calls = [pipe.prepare({"image": [e.media]})["image"][0].calls[0] for e in examples]
    return np.concatenate([c.feeds["pixel_values"] for c in calls])


def timed(sessions: dict, images: np.ndarray, rounds: int) -> tuple[dict, list[float]]:
    """Per-call process CPU seconds of each session, interleaved round by round; the load at each round."""
    cpu: dict[str, list[float]] = {name: [] for name in sessions}
    load = []
    for r in range(rounds + 1):  # round 0 warms up
        load.append(float(Path("/proc/loadavg").read_text().split()[0]))
        for name, s in sessions.items():
            for i in range(len(images)):
                start = time.process_time()
                s.run(None, {"pixel_values": images[i : i + 1]})
                if r:
                    cpu[name].append(time.process_time() - start)
    return cpu, load[1:]


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    """Signal over quantization noise in dB."""
    return float(10 * np.log10(np.sum(ref**2) / max(np.sum((ref - got) ** 2), 1e-30)))


def per_layer(float_onnx: Path, int8_onnx: Path, images: np.ndarray) -> list[tuple[str, float]]:
    """(tensor, SQNR of the encoder's output against fp32) with every weight int8, every activation clipped to its
    int8 range and only that activation rounded, worst first; the first entry rounds none (what the weights and
    the ranges alone cost)."""
    import onnx

    model = onnx.load(str(int8_onnx))
    ref = _session(float_onnx).run(None, {"pixel_values": images})[0]
    producer = {o: n for n in model.graph.node for o in n.output}

    def sqnr_keeping(keep: set[str]) -> float:
        m = _bypassed(model, keep)
        got = _session_of(m).run(None, {"pixel_values": images})[0]
        return sqnr_db(ref, got)

    def label(q) -> str:  # a conv's output is named by the conv's weight: module paths read better than node names
        conv = producer.get(q.input[0])
        if conv is None or conv.op_type != "Conv":
            return q.input[0]
        return conv.input[1].removesuffix("_DequantizeLinear_Output").removesuffix(".weight")

    quantizers = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    out = sorted(((label(q), sqnr_keeping({q.name})) for q in quantizers), key=lambda x: x[1])
    return [("no activation rounded (weights int8, activations clipped to their ranges)", sqnr_keeping(set())), *out]


def _bypassed(model, keep: set[str]):
    """A copy of QDQ `model` in which each activation's QuantizeLinear -> DequantizeLinear pair, but those of the
    QuantizeLinear nodes named in `keep`, becomes a Clip to the pair's range: no rounding, the same range. The
    range must stay: the quantizer folded each conv's ReLU6 into it and removed the Clip node. Weights (a
    DequantizeLinear of an initializer) stay int8."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    producer = {o: n for n in m.graph.node for o in n.output}
    nodes = []
    for n in m.graph.node:
        q = producer.get(n.input[0]) if n.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear" or q.name in keep:
            nodes.append(n)
            continue
        scale, zero = float(inits[q.input[1]]), int(inits[q.input[2]])
        info = np.iinfo(inits[q.input[2]].dtype)
        bounds = [f"{n.name}_lo", f"{n.name}_hi"]
        for name, v in zip(bounds, ((info.min - zero) * scale, (info.max - zero) * scale), strict=True):
            m.graph.initializer.append(numpy_helper.from_array(np.array(v, np.float32), name))
        nodes.append(helper.make_node("Clip", [q.input[0], *bounds], [n.output[0]], name=f"{n.name}_range"))
    needed, kept = {o.name for o in m.graph.output}, []
    for n in reversed(nodes):  # drop the skipped QuantizeLinear nodes: nothing reads them now
        if any(o in needed for o in n.output):
            kept.append(n)
            needed.update(n.input)
    del m.graph.node[:]
    m.graph.node.extend(reversed(kept))
    return m


def _session_of(model):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _spread(xs: list[float]) -> str:
    ms = [1000 * x for x in xs]
    return f"{statistics.median(ms):.2f} ({np.percentile(ms, 10):.2f}-{np.percentile(ms, 90):.2f})"


def main() -> None:
    import edgemfm

    from ..side_by_side.demo import exact_match

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("float_bundle", type=Path, help="the fp32 demo bundle (edgemfm export --device host)")
    p.add_argument("data", type=Path, help="samples/demo_model/build_dataset.py's folder (eval.jsonl)")
    p.add_argument("--work", type=Path, required=True, help="keeps the vision-int8 bundle")
    p.add_argument("--also", type=Path, action="append", default=[], help="another demo bundle to score and time")
    p.add_argument("--calibration", type=Path, help="folder of images (default: export's built-in drawings)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds after one warm-up round")
    p.add_argument("--timed", type=int, default=12, help="held-out pictures per encoder per round")
    p.add_argument("--per-layer", type=int, default=0, help="print the N convs whose int8 costs the most SQNR")
    p.add_argument("--note", type=Path, help="a text file put under the table (what it says)")
    p.add_argument("--lock", type=Path, help="a lock file held while timing (a machine shared with other benchmarks)")
    args = p.parse_args()
    from edgemfm.exporters.trainee import read_examples

    args.work.mkdir(parents=True, exist_ok=True)
    bundles = {
        "fp32": args.float_bundle,
        "vision int8": vision_int8(args.float_bundle, args.work / "vision-int8", args.calibration),
    }
    bundles.update({b.name: b for b in args.also})
    examples = [e for e in read_examples(args.data, "eval") if e.kind == "image"]
    pipes = {name: edgemfm.load(b, threads=1, encoder_cache_mb=0) for name, b in bundles.items()}
    images = pictures(pipes["fp32"], examples)
    step = max(1, len(images) // args.timed)
    sessions = {name: _session(b / pipes[name].manifest.components[ENCODER].file) for name, b in bundles.items()}
    with record.timing_lock(args.lock):
        cpu, load = timed(sessions, np.ascontiguousarray(images[::step][: args.timed]), args.rounds)
    ref = sessions["fp32"].run(None, {"pixel_values": images})[0]
    base_cpu, base = statistics.median(cpu["fp32"]), None
    rows = []
    for name, pipe in pipes.items():
        acc = exact_match(pipe, examples)
        base = base or acc
        got = sessions[name].run(None, {"pixel_values": images})[0]
        q = pipe.manifest.report.quantization.get(ENCODER)
        rows.append(
            {
                "demo bundle": name,
                "vision encoder CPU ms / image, median (p10-p90)": _spread(cpu[name]),
                "speed-up vs fp32 per CPU ms": f"{base_cpu / statistics.median(cpu[name]):.2f}x",
                "held-out image exact match %": f"{100 * acc['image']:.1f}",
                "vs fp32 (points)": f"{100 * (acc['image'] - base['image']):+.1f}",
                "encoder output SQNR vs fp32 (held-out), dB": f"{sqnr_db(ref, got):.1f}" if name != "fp32" else "-",
                "encoder": ", ".join(f"{n} {op}" for op, n in q.quantized_nodes.items()) if q else "fp32",
            }
        )
        print(rows[-1], flush=True)
    if args.per_layer:
        files = {name: b / pipes[name].manifest.components[ENCODER].file for name, b in bundles.items()}
        worst = per_layer(files["fp32"], files["vision int8"], images[::step][: args.timed])
        for tensor, db in worst[: args.per_layer + 1]:
            print(f"{tensor}: {db:.1f} dB")
    title = "The demo model's vision encoder int8 on the host preset (QLinearConv): held-out exact match and CPU ms"
    caption = (
        f"{len(examples)} held-out image questions (digits, shapes, colours); encoders timed over {args.rounds} "
        f"interleaved rounds x {len(images[::step][: args.timed])} held-out pictures, one per call, one thread; "
        f"load average (1 min) at each round: {' '.join(f'{x:.1f}' for x in load)} on 2 shared cores"
    )
    blocks = record.blocks("quantization-demo-vision-int8", title, caption, note=args.note)
    record.write("quantization-demo-vision-int8", rows, title=title, load_average=load, blocks=blocks)


if __name__ == "__main__":
    main()
