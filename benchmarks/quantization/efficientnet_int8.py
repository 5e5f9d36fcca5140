"""EfficientNet-Lite0 (real ImageNet weights): int8 convolutions on int8 kernels against fp32 and weight-only int8.

Side by side in one process, interleaved: each round runs every encoder for `--calls` images in
turn (one image per call, one thread), so the machine's load falls on all of them alike; the
figures are the median and the 10th-90th percentile of the per-call process CPU time over every
round, with the load average at each round. Quality: side_by_side/efficientnet.py's MNIST probe
(trained on the fp32 export's features of 4,000 digits) on 1,000 held-out digits.

| row | built by |
|---|---|
| ort-fp32 | the fp32 export (efficientnet_mnist.export) under ONNX Runtime |
| edgemfm-int8-host | edgemfm's host int8 preset now: QDQ u8 activations / s8 weights per channel, QLinearConv |
| edgemfm-int8-weight-only | the same preset on a profile with `int8_conv = "weight-only"` (pi5): the host preset before |

    python -m benchmarks.quantization.efficientnet_int8 --work /tmp/effnet --note note.txt

Needs: pip install -e '.[export,bench]'
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter
from pathlib import Path

import numpy as np

from .. import record

ROWS = {  # name -> (file in WORK, device profile whose int8 preset builds it; None: the fp32 export)
    "ort-fp32": ("fp32.onnx", None),
    "edgemfm-int8-host": ("edgemfm-int8-host.onnx", "host"),
    "edgemfm-int8-weight-only": ("edgemfm-int8-pi5.onnx", "pi5"),
}


def _session(path: Path, threads: int, optimized: Path | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if optimized:
        options.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def fused_convs(path: Path, work: Path) -> int:
    """QLinearConv nodes in ONNX Runtime's optimized graph of `path` (what runs on int8 kernels)."""
    import onnx

    _session(path, 1, work / "optimized.onnx")
    return Counter(n.op_type for n in onnx.load(str(work / "optimized.onnx")).graph.node)["QLinearConv"]


def timed(sessions: dict, test: np.ndarray, rounds: int, calls: int) -> tuple[dict, list[float]]:
    """Per-call process CPU and wall seconds of each session, interleaved round by round; the load at each round."""
    cpu = {name: [] for name in sessions}
    wall = {name: [] for name in sessions}
    load = []
    for r in range(rounds + 1):  # round 0 warms up
        load.append(float(Path("/proc/loadavg").read_text().split()[0]))
        for name, s in sessions.items():
            for i in range(calls):
                x = np.ascontiguousarray(test[i : i + 1])
                start, start_cpu = time.perf_counter(), time.process_time()
                s.run(None, {"pixel_values": x})
                if r:
                    cpu[name].append(time.process_time() - start_cpu)
                    wall[name].append(time.perf_counter() - start)
    return {"cpu": cpu, "wall": wall}, load[1:]


def quality(session, work: Path) -> tuple[float, float]:
    """(MNIST probe accuracy, mean feature cosine to the fp32 export) on the held-out digits."""
    data, test = np.load(work / "data.npz"), np.load(work / "test.npy", mmap_mode="r")
    got = np.concatenate(
        [
            session.run(None, {"pixel_values": np.ascontiguousarray(test[i : i + 50])})[0]
            for i in range(0, len(test), 50)
        ]
    )
    ref = data["reference"]
    logits = (got - data["mean"]) / data["scale"] @ data["coef"].T + data["intercept"]
    cosine = np.sum(got * ref, 1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    return float(np.mean(np.argmax(logits, 1) == data["labels"])), float(np.mean(cosine))


def _spread(xs: list[float]) -> str:
    ms = [1000 * x for x in xs]
    return f"{statistics.median(ms):.2f} ({np.percentile(ms, 10):.2f}-{np.percentile(ms, 90):.2f})"


def main() -> None:
    from ..side_by_side.efficientnet import build_data, build_edgemfm, build_fp32

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True, help="keeps the export, the digits and the int8 graphs")
    p.add_argument("--rounds", type=int, default=9, help="interleaved rounds after one warm-up round")
    p.add_argument("--calls", type=int, default=10, help="images per encoder per round, one per call")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--note", type=Path, help="a text file put under the table (what it says)")
    args = p.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "fp32.onnx").exists():
        build_fp32(work)
    if not (work / "data.npz").exists():
        build_data(work)
    for file, device in ROWS.values():
        if device and not (work / file).exists():
            build_edgemfm(work, device)
    sessions = {name: _session(work / file, args.threads) for name, (file, _) in ROWS.items()}
    times, load = timed(sessions, np.load(work / "test.npy", mmap_mode="r"), args.rounds, args.calls)
    base_cpu = statistics.median(times["cpu"]["ort-fp32"])
    base_acc, _ = quality(sessions["ort-fp32"], work)
    rows = []
    for name, (file, _) in ROWS.items():
        acc, cos = quality(sessions[name], work)
        rows.append(
            {
                "encoder": name,
                "CPU ms / image, median (p10-p90)": _spread(times["cpu"][name]),
                "wall ms / image": _spread(times["wall"][name]),
                "speed-up vs ort-fp32 per CPU ms": f"{base_cpu / statistics.median(times['cpu'][name]):.2f}x",
                "MNIST probe accuracy %": f"{100 * acc:.1f}",
                "vs fp32 (points)": f"{100 * (acc - base_acc):+.1f}",
                "feature cosine vs fp32": f"{cos:.4f}",
                "QLinearConv (ORT optimized graph)": str(fused_convs(work / file, work)),
                "file MiB": f"{(work / file).stat().st_size / 2**20:.2f}",
            }
        )
    title = "int8 convolutions on int8 kernels: EfficientNet-Lite0 encoder + MNIST probe"
    caption = (
        f"{args.rounds} interleaved rounds x {args.calls} images per encoder, one image per call, {args.threads} "
        f"thread(s); load average (1 min) at each round: {' '.join(f'{x:.1f}' for x in load)} on 2 shared cores"
    )
    blocks = record.blocks("quantization-efficientnet-int8", title, caption, note=args.note)
    record.write("quantization-efficientnet-int8", rows, title=title, load_average=load, blocks=blocks)
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
