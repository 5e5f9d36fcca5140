"""Measure the cost model's [cost] figures of this machine with ONNX Runtime kernels, one thread.

The roofline needs to know how close real kernels come to the published peaks and what a node
costs when it does almost nothing. Four single-node (or chain) graphs answer that, each timed as
process CPU time (`time.process_time`: time other jobs take on a shared machine is not counted)
with `intra_op_num_threads=1`, the minimum of `--repeats` calls after warm-up:

    call_us             a graph of one Identity node on 4 floats: the cost of one `session.run`
    node_us             (a chain of 200 tiny Add nodes - call_us) / 200: the cost of dispatching a node
    compute_fraction    a [256, 1024] x [1024, 1024] fp32 MatMul: achieved FLOP/s / (peak_fp32 / cores)
    core_bandwidth_gbps a [1, 4096] x [4096, 4096] fp32 MatMul (64 MiB of weights, beyond every cache):
                        weight bytes / time, what one core streams from DRAM

    python benchmarks/cost_figures.py --device host      # prints the TOML lines for [cost]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgemfm.profiles import load_profile


def _session(nodes: list, inputs: list, outputs: list, initializers: list) -> ort.InferenceSession:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    # no load-time fusion: the Add chain must stay 200 nodes
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def cpu_seconds(session: ort.InferenceSession, feeds: dict, repeats: int) -> float:
    """The least process CPU time of one call over `repeats` calls, after 3 warm-up calls."""
    for _ in range(3):
        session.run(None, feeds)
    best = float("inf")
    for _ in range(repeats):
        t = time.process_time()
        session.run(None, feeds)
        best = min(best, time.process_time() - t)
    return best


def _tensor(name: str, shape: list[int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def call_and_node_us(repeats: int) -> tuple[float, float]:
    x = {"x": np.ones((1, 4), np.float32)}
    one = _session([helper.make_node("Identity", ["x"], ["y"])], [_tensor("x", [1, 4])], [_tensor("y", [1, 4])], [])
    n = 200
    chain = [helper.make_node("Add", [f"t{i}", "x"], [f"t{i + 1}"]) for i in range(n)]
    chain = _session([helper.make_node("Identity", ["x"], ["t0"]), *chain],
                     [_tensor("x", [1, 4])], [_tensor(f"t{n}", [1, 4])], [])
    call = cpu_seconds(one, x, repeats * 10)
    return 1e6 * call, 1e6 * (cpu_seconds(chain, x, repeats * 10) - call) / n


def matmul_seconds(m: int, k: int, n: int, repeats: int) -> float:
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((k, n)).astype(np.float32), "w")
    s = _session([helper.make_node("MatMul", ["x", "w"], ["y"])], [_tensor("x", [m, k])], [_tensor("y", [m, n])], [w])
    return cpu_seconds(s, {"x": np.ones((m, k), np.float32)}, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="host")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    profile = load_profile(args.device)
    call_us, node_us = call_and_node_us(args.repeats)
    gemm = matmul_seconds(256, 1024, 1024, args.repeats)
    gemv = matmul_seconds(1, 4096, 4096, args.repeats)
    achieved = 2 * 256 * 1024 * 1024 / gemm / 1e9
    stamp = time.strftime("%Y-%m-%d")
    print("[cost]")
    print(f"call_us = {call_us:.1f}")
    print(f"node_us = {node_us:.2f}")
    print(f"compute_fraction = {achieved / (profile.peak_fp32_gflops / profile.cpu_cores):.2f}")
    print(f"core_bandwidth_gbps = {4096 * 4096 * 4 / gemv / 1e9:.1f}")
    print(f"# measured {stamp} by benchmarks/cost_figures.py: one thread, least process time of {args.repeats}+ calls;"
          f" MatMul {achieved:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
