"""Measure one call of each bundle component on this machine, the calls `cost.predict` predicts.

Each call is timed as process CPU time (`time.process_time`) on a session with one intra-op
thread, and the least of `repeats` calls after warm-up is kept. On a shared machine wall time
swings with other jobs; the CPU time of a one-thread call does not count the time the process
waits for a core, so it is what the cost model's one-thread prediction (`threads=1`) is compared
with. Cache and memory-bus contention from other jobs still slows it; the minimum keeps the
least disturbed call.

`cost_figures` measures the profile's `[cost]` figures the same way, on graphs of one kind of
node each, so a prediction can rest on figures taken in the same run as the measurement.

Example:
    >>> calls = measure("bundles/demo-host", context=64, prefill=64)   # doctest: +SKIP
    >>> sorted(calls)                                                   # doctest: +SKIP
    ['audio_encoder', 'text_decoder decode', 'text_decoder prefill', 'token_embedding', 'vision_encoder']
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgemfm.manifest import Component, Manifest


def _shape(c: Component) -> list[int]:
    return [1, *(int(d) for d in c.inputs[0].shape[1:])]


def decoder_feeds(c: Component, past_len: int, seq: int) -> dict[str, np.ndarray]:
    """Random inputs of a decoder call: `seq` new tokens after `past_len` cached ones."""
    kv, rng = c.kv_cache, np.random.default_rng(0)
    hidden = int(c.inputs[0].shape[-1])
    past = {
        kv.past.format(layer=i, kind=k): rng.random((1, kv.kv_heads, past_len, kv.head_dim), np.float32)
        for i in range(kv.layers)
        for k in ("key", "value")
    }
    return {
        "inputs_embeds": rng.random((1, seq, hidden), np.float32),
        "attention_mask": np.ones((1, past_len + seq), np.int64),
        "position_ids": np.arange(past_len, past_len + seq, dtype=np.int64)[None],
        **past,
    }


def calls(manifest: Manifest, context: int, prefill: int) -> dict[str, tuple[str, dict[str, np.ndarray]]]:
    """The work `cost.predict` predicts, as (component, feeds): one image or clip, one token, decode, prefill."""
    out = {}
    rng = np.random.default_rng(0)
    for name, c in manifest.components.items():
        if c.kv_cache:
            out[f"{name} decode"] = (name, decoder_feeds(c, context, 1))
            out[f"{name} prefill"] = (name, decoder_feeds(c, 0, prefill))
        elif c.inputs[0].dtype == "int64":  # a lookup of one token
            out[name] = (name, {c.inputs[0].name: np.ones((1, 1), np.int64)})
        elif not c.cross_attention:
            out[name] = (name, {c.inputs[0].name: rng.random(_shape(c), np.float32)})
    return out


def least_cpu_ms(run: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """The least process CPU time of `run()` over `repeats` calls, in milliseconds."""
    for _ in range(warmup):
        run()
    best = float("inf")
    for _ in range(repeats):
        t = time.process_time()
        run()
        best = min(best, time.process_time() - t)
    return 1e3 * best


def measure(bundle: str | Path, context: int = 64, prefill: int = 64, repeats: int = 10) -> dict[str, float]:
    """Least one-thread CPU milliseconds of each call of `calls` on the bundle at `bundle`."""
    from edgemfm.runtimes.pipeline import load

    pipe = load(bundle, threads=1)
    return {
        work: least_cpu_ms(lambda n=name, f=feeds: pipe.sessions[n].run(f), repeats)
        for work, (name, feeds) in calls(pipe.manifest, context, prefill).items()
    }


def _session(
    nodes: list, inputs: list, output: tuple[str, list[int]], weights: dict[str, np.ndarray]
) -> Callable[[dict], object]:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    def info(name: str, shape: list[int]) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)

    graph = helper.make_graph(
        nodes,
        "g",
        [info(*i) for i in inputs],
        [info(*output)],
        [numpy_helper.from_array(w, n) for n, w in weights.items()],
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the Add chain must stay 200 nodes
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return lambda feeds: session.run(None, feeds)


def _chain(op: str, n: int, width: int, rows: int = 1) -> tuple[Callable[[dict], object], dict]:
    """`n` nodes in a row on a [rows, width] tensor: Add of the input, or MatMul by its own [width, width] weight."""
    from onnx import helper

    from_ = lambda i: f"t{i}"  # noqa: E731
    if op == "Add":
        nodes = [helper.make_node("Add", [from_(i), "x"], [from_(i + 1)]) for i in range(n)]
        weights: dict[str, np.ndarray] = {}
    else:
        rng = np.random.default_rng(0)
        weights = {f"w{i}": rng.standard_normal((width, width), np.float32) for i in range(n)}
        nodes = [helper.make_node("MatMul", [from_(i), f"w{i}"], [from_(i + 1)]) for i in range(n)]
    run = _session(
        [helper.make_node("Identity", ["x"], ["t0"]), *nodes],
        [("x", [rows, width])],
        (from_(n), [rows, width]),
        weights,
    )
    return run, {"x": np.ones((rows, width), np.float32)}


def cost_figures(peak_fp32_gflops_per_core: float, repeats: int = 20) -> dict[str, float]:
    """The `[cost]` figures of this machine with ONNX Runtime, one thread, least process CPU time.

        call_us              one Identity node on 4 floats: the cost of one session.run
        node_us              (200 chained Add nodes on 4 floats - call_us) / 200
        compute_fraction     [256, 1024] x [1024, 1024] fp32 MatMul: FLOP/s over `peak_fp32_gflops_per_core`
        core_bandwidth_gbps  64 chained [1, 1024] x [1024, 1024] fp32 MatMuls (256 MiB of weights, beyond
                             every cache, in the mid-size matrices decoders are made of): weight bytes / time

    Example:
        >>> cost_figures(83.0)["core_bandwidth_gbps"]   # doctest: +SKIP
        21.5
    """
    one, feeds = _chain("Add", 0, 4)
    call = least_cpu_ms(lambda: one(feeds), repeats * 10) / 1e3
    adds, feeds = _chain("Add", 200, 4)
    node = (least_cpu_ms(lambda: adds(feeds), repeats * 10) / 1e3 - call) / 200
    gemm, x = _chain("MatMul", 1, 1024, rows=256)
    gemm_s = least_cpu_ms(lambda: gemm(x), repeats) / 1e3
    stream, feeds = _chain("MatMul", 64, 1024)
    stream_s = least_cpu_ms(lambda: stream(feeds), max(3, repeats // 4)) / 1e3
    return {
        "call_us": 1e6 * call,
        "node_us": 1e6 * node,
        "compute_fraction": 2 * 256 * 1024 * 1024 / gemm_s / 1e9 / peak_fp32_gflops_per_core,
        "core_bandwidth_gbps": 64 * 1024 * 1024 * 4 / stream_s / 1e9,
    }
