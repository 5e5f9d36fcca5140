"""Where a decode step's time goes: ONNX Runtime's profiler on edgemfm bundles' text decoders, side by side.

    python -m benchmarks.runtime.decode_profile BUNDLE [BUNDLE ...] [--context 64] [--steps 32] [--rounds 5]

Each bundle's decoder (one thread, as benchmarks/side_by_side) is prefilled with the same
`context` token ids, then takes `steps` single-token steps on edgemfm's own cache. Rates: tokens
per CPU second of those steps, the bundles taken in turn for `rounds` rounds (interleaved: the
shared machine's load changes hit each alike), median and range. Then one profiled run per bundle:
kernel calls per step and each op type's share of the kernel time (the profiler's Node events of
the single-token steps only: the prefill runs on a session without the profiler).
A speculative verify's cost: one call of k + 1 tokens (rolled back after it) in single steps' CPU time.
Writes benchmarks/results/NAME.json (--name) through benchmarks.record.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import Counter
from pathlib import Path

import numpy as np

from .. import record


def _sessions(bundle: Path, profile: bool = False):
    """(decoder session, embedding session, the decoder's cache layout) on one thread."""
    import onnxruntime as ort

    from edgemfm.bundle import read_manifest

    manifest = read_manifest(bundle)
    decoder = manifest.components[manifest.generation.decoder]
    made = []
    for file, profiled in ((decoder.file, profile), (manifest.components["token_embedding"].file, False)):
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
        options.enable_profiling = profiled
        options.profile_file_prefix = str(Path("/tmp") / f"decode_profile_{bundle.name}")
        made.append(ort.InferenceSession(str(bundle / file), options, providers=["CPUExecutionProvider"]))
    return made[0], made[1], decoder.kv_cache


def _prefilled(bundle: Path, context: int):
    """A cache holding `context` positions of a fixed id sequence, and the next token."""
    from edgemfm.runtimes.kvcache import KVCache

    decoder, embedding, layout = _sessions(bundle)
    cache = KVCache(layout, max_len=4096, sinks=4)
    ids = [(17 * i + 5) % 190 + 10 for i in range(context)]  # inside any vocabulary of 200 or more
    embeds = embedding.run(None, {"input_ids": np.asarray([ids], np.int64)})[0]
    cache.make_room(context)
    out = dict(
        zip(
            [o.name for o in decoder.get_outputs()],
            decoder.run(None, {"inputs_embeds": embeds, **cache.feeds(context)}),
        )
    )
    cache.advance(out, context)
    return cache, int(np.argmax(out["logits"][0, -1]))


def _steps(decoder, embedding, cache, token: int, steps: int) -> float:
    """CPU seconds per single-token step over `steps` greedy steps."""
    names = [o.name for o in decoder.get_outputs()]
    start = time.process_time()
    for _ in range(steps):
        x = embedding.run(None, {"input_ids": np.asarray([[token]], np.int64)})[0]
        cache.make_room(1)
        out = dict(zip(names, decoder.run(names, {"inputs_embeds": x, **cache.feeds(1)})))
        cache.advance(out, 1)
        token = int(np.argmax(out["logits"][0, -1]))
    return (time.process_time() - start) / steps


def _verify(decoder, embedding, cache, token: int, calls: int, k: int) -> float:
    """CPU seconds per call of k + 1 tokens (a speculative verify), each rolled back after it."""
    names = [o.name for o in decoder.get_outputs()]
    x = embedding.run(None, {"input_ids": np.asarray([[token] * (k + 1)], np.int64)})[0]
    start = time.process_time()
    for _ in range(calls):
        cache.make_room(k + 1)
        cache.advance(dict(zip(names, decoder.run(names, {"inputs_embeds": x, **cache.feeds(k + 1)}))), k + 1)
        cache.rollback(k + 1)
    return (time.process_time() - start) / calls


def rates(bundles: list[Path], context: int, steps: int, rounds: int, k: int) -> dict[str, dict[str, list[float]]]:
    """Per bundle and round (bundles in turn): tokens per CPU second of single-token steps, and the CPU
    cost of one call of k + 1 tokens in single steps."""
    sessions = {b: _sessions(b)[:2] for b in bundles}
    out = {str(b): {"rate": [], "verify": []} for b in bundles}
    for _ in range(rounds):
        for b in bundles:
            cache, token = _prefilled(b, context)
            step = _steps(*sessions[b], cache, token, steps)
            out[str(b)]["rate"].append(1 / step)
            out[str(b)]["verify"].append(_verify(*sessions[b], cache, token, steps // 2, k) / step)
    return out


def profile(bundle: Path, context: int, steps: int) -> dict:
    """Kernel calls per step, kernel microseconds per step and each op type's share, from ORT's profiler."""
    decoder, embedding, _ = _sessions(bundle, profile=True)
    cache, token = _prefilled(bundle, context)
    _steps(decoder, embedding, cache, token, steps)
    events = json.loads(Path(decoder.end_profiling()).read_text())
    kernels = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    time_by_op: Counter = Counter()
    for e in kernels:
        time_by_op[e["args"]["op_name"]] += e["dur"]
    total = sum(time_by_op.values())
    return {
        "kernel_calls_per_step": len(kernels) / steps,
        "kernel_us_per_step": total / steps,
        "share": {op: t / total for op, t in time_by_op.most_common()},
        "calls": dict(Counter(e["args"]["op_name"] for e in kernels)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundles", nargs="+", type=Path)
    p.add_argument("--context", type=int, default=64, help="cached positions before the steps")
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--k", type=int, default=5, help="a verify call takes k + 1 tokens")
    p.add_argument("--name", default="runtime-decode-profile", help="the result file's name")
    p.add_argument("--model", default="", help="what the bundles hold, for the section's title")
    args = p.parse_args()
    measured = rates(args.bundles, args.context, args.steps, args.rounds, args.k)
    rows = []
    for b in args.bundles:
        prof, r, verify = profile(b, args.context, args.steps), measured[str(b)]["rate"], measured[str(b)]["verify"]
        top = ", ".join(f"{op} {share:.0%}" for op, share in list(prof["share"].items())[:5])
        rows.append(
            {
                "bundle": b.name,
                "tok / CPU s (median)": f"{statistics.median(r):.1f}",
                "range": f"{min(r):.1f}-{max(r):.1f}",
                f"{args.k + 1}-token call in steps": f"{statistics.median(verify):.2f}",
                "kernel calls / step": f"{prof['kernel_calls_per_step']:.0f}",
                "kernel µs / step (profiled)": f"{prof['kernel_us_per_step']:.0f}",
                "op types by share of kernel time": top,
            }
        )
        print(rows[-1], flush=True)
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    path = record.write(
        args.name,
        rows,
        title=f"Decode step under ONNX Runtime's profiler ({args.model or 'edgemfm bundles'}, one thread, "
        f"load average {' / '.join(load)})",
        load_average=load,
        settings=vars(args) | {"bundles": [str(b) for b in args.bundles]},
    )
    print(f"wrote {path}; load average {' / '.join(load)}")


if __name__ == "__main__":
    main()
