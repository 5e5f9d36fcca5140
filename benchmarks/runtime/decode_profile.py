"""Where a decode step's time goes: ONNX Runtime's profiler on edgemfm bundles' text decoders, side by side.

    python -m benchmarks.runtime.decode_profile BUNDLE [BUNDLE ...] [--context 64] [--steps 32] [--rounds 5] [--graphs ONNX ...] [--executorch PTE]

Each bundle's decoder (one thread, as benchmarks/side_by_side) is prefilled with the same
`context` token ids, then takes `steps` single-token steps on edgemfm's own cache. Rates: tokens
per CPU second of those steps, the bundles taken in turn for `rounds` rounds (interleaved: the
shared machine's load changes hit each alike), median and range. Then one profiled run per bundle:
kernel calls per step and each op type's share of the kernel time (the profiler's Node events of
the single-token steps only, not the prefill's).
A speculative verify's cost: one call of k + 1 tokens (rolled back after it) in single steps' CPU time; the
prefill's: the `context` ids in one call, CPU ms.
The kernel floor: the decoder's matmuls on weights alone (MatMulNBits or an fp32 MatMul, or edgemfm.MatMulInt4 /
MatMulInt8 / MatMulF32 in a bundle exported with --kernels edgemfm), taken out into one graph with their own weights and run back to back on one row
(CPU ms per step and the rate at which they read their weights), taken in the same rounds; `--graphs` adds other decoders' (onnxruntime-genai's model.onnx) for that column alone, and
`--executorch` an ExecuTorch LLM program's whole single-token step at the same position, in the same rounds.
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

from edgemfm.runtimes import native

from .. import record

# ONNX Runtime's, and edgemfm's (export --kernels edgemfm): the decoder's matmuls on weights, int4, int8 or fp32
WEIGHT_MATMULS = ("MatMulNBits", "MatMul", "FusedMatMul", "MatMulInt4", "MatMulInt8", "MatMulF32")
LIBRARIES = {"edgemfm.int4": "matmul_int4", "edgemfm.f32": "matmul_f32"}  # edgemfm's ops' domains: their kernels


def _decoder_file(bundle: Path) -> Path:
    """The bundle's text decoder graph."""
    from edgemfm.bundle import read_manifest

    manifest = read_manifest(bundle)
    return bundle / manifest.components[manifest.generation.decoder].file


def _decoder(bundle: Path, profile: bool = False):
    """The bundle's decoder as the runtime loads it (one thread; its cache appended in place where the manifest
    allows it), on a session with ONNX Runtime's profiler when `profile`."""
    import onnxruntime as ort

    import edgemfm
    from edgemfm.runtimes.onnxruntime import OrtSession

    pipe = edgemfm.load(bundle, threads=1)
    if profile:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
        options.enable_profiling = True
        options.profile_file_prefix = str(Path("/tmp") / f"decode_profile_{bundle.name}")
        file = _decoder_file(bundle)
        for kernel in pipe.manifest.components[pipe.manifest.generation.decoder].kernels:
            options.register_custom_ops_library(str(native.build(kernel)))
        session = ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
        pipe.decoder.session = OrtSession(session, file.name)
    return pipe.decoder


def _prefilled(decoder, context: int):
    """A fresh cache holding `context` positions of a fixed id sequence, and the next token."""
    cache = decoder.new_cache()
    ids = [(17 * i + 5) % 190 + 10 for i in range(context)]  # inside any vocabulary of 200 or more
    return cache, int(np.argmax(decoder.run(cache, decoder.embed_ids(ids))[-1]))


def _steps(decoder, cache, token: int, steps: int) -> float:
    """CPU seconds per single-token step over `steps` greedy steps."""
    start = time.process_time()
    for _ in range(steps):
        token = int(np.argmax(decoder.run(cache, decoder.embed_ids([token]))[-1]))
    return (time.process_time() - start) / steps


def _verify(decoder, cache, token: int, calls: int, k: int) -> float:
    """CPU seconds per call of k + 1 tokens (a speculative verify), each rolled back after it."""
    x = decoder.embed_ids([token] * (k + 1))
    start = time.process_time()
    for _ in range(calls):
        decoder.run(cache, x)
        cache.rollback(k + 1)
    return (time.process_time() - start) / calls


def matmuls_alone(graph: Path):
    """(a session running `graph`'s matmuls on weights alone, back to back on one row each, its feeds, their
    weights' bytes): the kernel floor of one decode step."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    model = onnx.load(str(graph))  # external data from beside the file
    weights = {i.name: i for i in model.graph.initializer}
    nodes, used, widths = [], {}, set()
    for n in model.graph.node:
        if n.op_type in WEIGHT_MATMULS and len(n.input) > 1 and n.input[1] in weights:
            attributes = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            dims = weights[n.input[1]].dims  # an fp32 MatMul's [K, N]; the tied head's FusedMatMul [N, K]
            K = attributes.get("K") or dims[1 if attributes.get("transB") else 0]
            widths.add(K)
            out = f"out{len(nodes)}"
            nodes.append(helper.make_node(n.op_type, [f"row{K}", *n.input[1:]], [out], **attributes, domain=n.domain))
            used |= {name: weights[name] for name in n.input[1:] if name in weights}
    inputs = [helper.make_tensor_value_info(f"row{k}", TensorProto.FLOAT, [1, k]) for k in sorted(widths)]
    outputs = [helper.make_tensor_value_info(n.output[0], TensorProto.FLOAT, None) for n in nodes]
    alone = helper.make_model(
        helper.make_graph(nodes, "matmuls", inputs, outputs, initializer=list(used.values())),
        opset_imports=list(model.opset_import),
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    for domain in sorted({n.domain for n in nodes} & LIBRARIES.keys()):
        options.register_custom_ops_library(str(native.build(LIBRARIES[domain])))
    session = ort.InferenceSession(alone.SerializeToString(), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {f"row{k}": rng.standard_normal((1, k)).astype(np.float32) for k in widths}
    return session, feeds, sum(onnx.numpy_helper.to_array(w).nbytes for w in used.values())


def _alone(session, feeds: dict, steps: int) -> float:
    """CPU seconds per run of the matmuls-alone graph."""
    start = time.process_time()
    for _ in range(steps):
        session.run(None, feeds)
    return (time.process_time() - start) / steps


def rates(
    bundles: list[Path],
    context: int,
    steps: int,
    rounds: int,
    k: int,
    graphs: list[Path] = (),
    llm_program: Path | None = None,
) -> dict[str, dict[str, list[float]]]:
    """Per bundle and round (bundles in turn): tokens per CPU second of single-token steps, CPU seconds of the
    `context` prefill, the CPU cost of one call of k + 1 tokens in single steps, and CPU seconds per step of its
    matmuls on weights alone
    (`graphs`: that last one only); `llm_program`: an ExecuTorch LLM program's single-token step at `context`
    in the same rounds."""
    decoders = {b: _decoder(b) for b in bundles}
    files = {str(b): _decoder_file(b) for b in bundles} | {str(g): g for g in graphs}
    alone = {name: matmuls_alone(f) for name, f in files.items()}
    out = {name: {"rate": [], "verify": [], "prefill": [], "alone": [], "bytes": [alone[name][2]]} for name in alone}
    if llm_program is not None:
        import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401  (the llama:: kernels)
        import executorch.kernels.quantized  # noqa: F401  (embedding_byte)

        from edgemfm.runtimes.executorch import set_threads

        from .pte_step_profile import Program

        set_threads(1)
        program, out[str(llm_program)] = Program(llm_program, etdump=False, bundle=False), {"rate": []}
    for _ in range(rounds):
        if llm_program is not None:
            program.cpu_ms(context, 3)
            out[str(llm_program)]["rate"].append(1e3 / program.cpu_ms(context, steps))
        for b in bundles:
            start = time.process_time()
            cache, token = _prefilled(decoders[b], context)
            out[str(b)]["prefill"].append(time.process_time() - start)
            step = _steps(decoders[b], cache, token, steps)
            out[str(b)]["rate"].append(1 / step)
            out[str(b)]["verify"].append(_verify(decoders[b], cache, token, steps // 2, k) / step)
        for name, (session, feeds, _) in alone.items():
            _alone(session, feeds, 3)  # warm: its weights were last read a round ago
            out[name]["alone"].append(_alone(session, feeds, steps))
    return out


def profile(bundle: Path, context: int, steps: int) -> dict:
    """Kernel calls per step, kernel microseconds per step and each op type's share, from ORT's profiler."""
    decoder = _decoder(bundle, profile=True)
    cache, token = _prefilled(decoder, context)
    _steps(decoder, cache, token, steps)
    events = json.loads(Path(decoder.session.session.end_profiling()).read_text())
    first = [e for e in events if e.get("name") == "model_run"][-steps]["ts"]  # the steps' runs, not the prefill's
    kernels = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= first]
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
    p.add_argument("--graphs", nargs="*", type=Path, default=[], help="other decoders: their matmuls on weights alone")
    p.add_argument("--executorch", type=Path, help="an ExecuTorch LLM program (export_llm's): its whole step")
    args = p.parse_args()
    measured = rates(args.bundles, args.context, args.steps, args.rounds, args.k, args.graphs, args.executorch)
    rows = []
    for name in [*map(str, args.bundles), *map(str, args.graphs), *([str(args.executorch)] if args.executorch else [])]:
        m = measured[name]
        row = {"decoder": Path(name).name if Path(name).is_dir() else f"{Path(name).parent.name}/{Path(name).name}"}
        if m.get("rate"):
            r = m["rate"]
            row |= {
                "tok / CPU s (median)": f"{statistics.median(r):.1f}",
                "range": f"{min(r):.1f}-{max(r):.1f}",
                "CPU ms / step": f"{1e3 / statistics.median(r):.2f}",
            }
        if "alone" not in m:  # ExecuTorch's program: its step only
            rows.append(row)
            print(rows[-1], flush=True)
            continue
        alone, mb = statistics.median(m["alone"]), m["bytes"][0] / 1e6
        if m["rate"]:
            prof = profile(Path(name), args.context, args.steps)
            row |= {
                f"prefill of {args.context}, CPU ms": f"{statistics.median(m['prefill']) * 1e3:.0f}",
                f"{args.k + 1}-token call in steps": f"{statistics.median(m['verify']):.2f}",
                "kernel calls / step": f"{prof['kernel_calls_per_step']:.0f}",
                "kernel µs / step (profiled)": f"{prof['kernel_us_per_step']:.0f}",
                "op types by share of kernel time": ", ".join(
                    f"{op} {share:.0%}" for op, share in list(prof["share"].items())[:5]
                ),
            }
        row |= {
            "matmuls alone, CPU ms / step": f"{alone * 1e3:.2f} ({min(m['alone']) * 1e3:.2f}-{max(m['alone']) * 1e3:.2f})",
            "their weights, MB": f"{mb:.1f}",
            "read at, GB/s": f"{mb / 1e3 / alone:.1f}",
        }
        rows.append(row)
        print(rows[-1], flush=True)
    load = record.load_average()
    path = record.write(
        args.name,
        rows,
        title=f"Decode step under ONNX Runtime's profiler ({args.model or 'edgemfm bundles'}, one thread, "
        f"load average {load})",
        settings=vars(args)
        | {
            "bundles": [str(b) for b in args.bundles],
            "graphs": [str(g) for g in args.graphs],
            "executorch": str(args.executorch or ""),
        },
    )
    print(f"wrote {path}; load average {load}")


if __name__ == "__main__":
    main()
