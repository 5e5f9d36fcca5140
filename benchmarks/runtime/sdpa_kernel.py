"""Decode attention kernels alone, by cached position: what one layer's single-token step costs.

    python -m benchmarks.runtime.sdpa_kernel [--heads 9] [--kv-heads 3] [--head-dim 64] [--capacity 2048]
        [--positions 64 1024] [--layers 30] [--rounds 5]

ExecuTorch's llama::custom_sdpa (the float cache) and llama::custom_quantized_sdpa (the int8 cache, per-token
scales) through `torch.ops.llama`, which run the same C++ source as the kernels ExecuTorch's runtime registers,
and edgemfm's own edgemfm::sdpa_int8 (runtimes/kernels/int8_cache.cpp, built for this machine), on a cache-hot
layer of the given shape (SmolLM2-135M's by default), one thread, the kernels and positions taken in turn for
`rounds` rounds. Per kernel and position: CPU µs per call (median and range), the step of `layers` such layers,
its multiply-accumulates per second, and how long reading that cache from memory alone takes at the machine's
measured read bandwidth. What a bound on a step's growth with its positions asks of the kernel is read beside
the bandwidth line: the kernel, not the memory, is what grows.
Writes benchmarks/results/NAME.json (--name) through benchmarks.record.
"""

from __future__ import annotations

import argparse
import statistics
import time

from .. import record


def _float_call(heads: int, kv_heads: int, head_dim: int, capacity: int, position: int):
    import torch

    q = torch.randn(1, 1, heads, head_dim)
    k, v = torch.randn(1, capacity, kv_heads, head_dim), torch.randn(1, capacity, kv_heads, head_dim)
    return lambda: torch.ops.llama.custom_sdpa(q, k, v, position, None, 0.0, True, None)


def _int8_call(heads: int, kv_heads: int, head_dim: int, capacity: int, position: int):
    import torch

    ops = torch.ops.quantized_decomposed  # the query and the cache per token, as ExecuTorch's own LLM export does

    def rows(shape):
        x = torch.randn(shape)
        scales, zeros = ops.choose_qparams_per_token_asymmetric.default(x, torch.int8)
        return ops.quantize_per_token(x, scales, zeros, -128, 127, torch.int8), scales.float(), zeros.to(torch.int8)

    q, q_scales, q_zeros = rows((1, 1, heads, head_dim))
    k, k_scales, k_zeros = rows((1, capacity, kv_heads, head_dim))
    v, v_scales, v_zeros = rows((1, capacity, kv_heads, head_dim))
    return lambda: torch.ops.llama.custom_quantized_sdpa(
        q, k, v, position, None, 0.0, True, None, q_zeros, q_scales, k_zeros, k_scales, v_zeros, v_scales
    )


def _edgemfm_call(heads: int, kv_heads: int, head_dim: int, capacity: int, position: int):
    """edgemfm::sdpa_int8 (runtimes/kernels/int8_cache.cpp) through its C entry, on a cache its write filled."""
    import ctypes

    import torch

    from edgemfm.exporters import llm_ops
    from edgemfm.runtimes import native

    kernel = ctypes.CDLL(str(native.load("int8_cache")))
    layer = llm_ops.Int8OpsLayer(capacity, kv_heads, head_dim, torch.float32)
    caches = [layer.keys, layer.key_scales, layer.key_zeros, layer.values, layer.value_scales, layer.value_zeros]
    for keys, buffers in ((True, caches[:3]), (False, caches[3:])):
        llm_ops.cache_int8_reference(torch.randn(1, capacity, kv_heads, head_dim), *buffers, 0, keys)
    q, out = torch.randn(1, 1, heads, head_dim), torch.zeros(1, 1, heads, head_dim)
    args = [ctypes.c_void_p(q.data_ptr()), *map(ctypes.c_int64, (1, heads, head_dim))]
    args += [ctypes.c_void_p(t.data_ptr()) for t in caches]
    args += [*map(ctypes.c_int64, (kv_heads, layer.key_scales.shape[1], position)), ctypes.c_float(head_dim**-0.5)]
    args.append(ctypes.c_void_p(out.data_ptr()))
    return lambda _alive=(caches, q, out): kernel.edgemfm_sdpa_int8(*args)  # the tensors live as long as the call


HEADING = "pte decode attention, the kernels alone by cached position (#19)"
KERNELS = {  # name -> (call maker, cache bytes per cached position, KV head and channel)
    "custom_sdpa, float32 cache": (_float_call, 4),
    "custom_quantized_sdpa, int8 cache": (_int8_call, 1 + 5 / 64),  # its float32 scale and int8 zero per row of 64
    "edgemfm::sdpa_int8, int8 cache": (_edgemfm_call, 1 + 5 / 64),
}


def _cpu_us(call, calls: int) -> float:
    start = time.process_time()
    for _ in range(calls):
        call()
    return (time.process_time() - start) / calls * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--heads", type=int, default=9)
    p.add_argument("--kv-heads", type=int, default=3)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--capacity", type=int, default=2048)
    p.add_argument("--layers", type=int, default=30, help="a step's layers: the step's figures")
    p.add_argument("--positions", type=int, nargs="+", default=[64, 1024])
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--name", default="runtime-sdpa-kernel")
    p.add_argument("--note", help="a text file: what the figures say, printed under the table")
    args = p.parse_args()
    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401  (torch.ops.llama)

    from edgemfm.bench import memory_bandwidth
    from edgemfm.runtimes.executorch import set_threads

    set_threads(1)
    bandwidth = memory_bandwidth(1)
    shape = (args.heads, args.kv_heads, args.head_dim, args.capacity)
    calls = {(k, pos): make(*shape, pos) for k, (make, _) in KERNELS.items() for pos in args.positions}
    times = {key: [] for key in calls}
    for _ in range(args.rounds):
        for key, call in calls.items():
            _cpu_us(call, 10)
            times[key].append(_cpu_us(call, args.calls))
    rows = []
    for (kernel, pos), t in times.items():
        us = statistics.median(t)
        macs = 2 * args.heads * (pos + 1) * args.head_dim  # q·k and p·v over the positions up to this one
        cache = 2 * args.kv_heads * args.head_dim * (pos + 1) * KERNELS[kernel][1] * args.layers
        rows.append(
            {
                "kernel": kernel,
                "position": pos,
                "µs per layer (median)": f"{us:.1f}",
                "range": f"{min(t):.1f}-{max(t):.1f}",
                f"ms per step of {args.layers} layers": f"{us * args.layers / 1e3:.2f}",
                "GMAC/s": f"{macs / us / 1e3:.1f}",
                "cache read per step, MB": f"{cache / 1e6:.1f}",
                "that read at the bandwidth, ms": f"{cache / bandwidth * 1e3:.2f}",
            }
        )
        print(rows[-1], flush=True)
    title = (
        f"Decode attention kernels alone by cached position ({args.heads} query heads over {args.kv_heads} KV heads "
        f"of {args.head_dim}, one thread, read bandwidth {bandwidth / 1e9:.1f} GB/s, load average "
        f"{record.load_average()})"
    )
    caption = (
        f"One layer of attention ({args.heads} query heads over {args.kv_heads} KV heads of {args.head_dim}, a "
        f"{args.capacity:,}-position cache), cache-hot, one thread, the kernels and positions taken in turn for "
        f"{args.rounds} rounds of {args.calls} calls; median and range. The step's figures are {args.layers} such "
        "layers; the last column is what reading that step's cache from memory alone takes at the read bandwidth "
        f"measured in the run ({bandwidth / 1e9:.1f} GB/s)."
    )
    blocks = record.blocks(args.name, HEADING, caption, note=args.note)
    path = record.write(
        args.name,
        rows,
        title=title,
        settings=vars(args) | {"memory_bandwidth_bytes_per_s": bandwidth},
        blocks=blocks,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
