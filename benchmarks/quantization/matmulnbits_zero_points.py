"""int4 MatMulNBits with and without zero points: one decode-step MatMul, interleaved in one process.

The CPU int4 presets keep each block's own [min, max] range with an integer zero point
(`clip_search`, symmetric=False). This checks that ONNX Runtime's int8 compute path
(`accuracy_level=4`) runs it as fast as the symmetric layout: SmolLM2-135M's down_proj shape
(K 1536, N 576, blocks of 64), one token, one thread, the two layouts timed in turns.

    python -m benchmarks.quantization.matmulnbits_zero_points [--calls 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgemfm.quantizers.clip_search import pack, pack_zero_points, quantize_blocks, quantize_blocks_asymmetric

from .. import record

K, N, BLOCK = 1536, 576, 64


def session(q: np.ndarray, scales: np.ndarray, zeros: np.ndarray | None) -> ort.InferenceSession:
    """One MatMulNBits (int8 compute) holding the packed codes, with zero points when given."""
    inits = [numpy_helper.from_array(pack(q, 4), "q"), numpy_helper.from_array(scales.reshape(-1), "s")]
    if zeros is not None:
        inits.append(numpy_helper.from_array(pack_zero_points(zeros, 4).reshape(-1), "z"))
    node = helper.make_node(
        "MatMulNBits",
        ["x", *(i.name for i in inits)],
        ["y"],
        domain="com.microsoft",
        K=K,
        N=N,
        bits=4,
        block_size=BLOCK,
        accuracy_level=4,
    )
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, N])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    w = rng.standard_t(4, size=(K, N)).astype(np.float32) * 0.02
    x = rng.standard_normal((1, K)).astype(np.float32)
    sessions = {
        "symmetric": session(*quantize_blocks(w, 4, BLOCK, None), None),
        "zero points": session(*quantize_blocks_asymmetric(w, 4, BLOCK, None)),
    }
    best = dict.fromkeys(sessions, float("inf"))
    for _ in range(args.rounds):
        for name, s in sessions.items():
            s.run(None, {"x": x})
            t = time.perf_counter()
            for _ in range(args.calls):
                s.run(None, {"x": x})
            best[name] = min(best[name], (time.perf_counter() - t) / args.calls * 1e3)
    print("| layout | ms per call (best of rounds) |\n|---|---|")
    for name, ms in best.items():
        print(f"| {name} | {ms:.4f} |")
    record.write("matmulnbits_zero_points", [{"layout": n, "ms_per_call": round(ms, 4)} for n, ms in best.items()])


if __name__ == "__main__":
    main()
