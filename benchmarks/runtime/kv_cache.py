"""The int8 KV cache (`export --kv-cache int8`) beside the float one: perplexity, peak RSS and CPU ms per step at a long cache.

    python -m benchmarks.runtime.kv_cache FLOAT_BUNDLE INT8_BUNDLE [MORE ...] [--timed 2] [--positions 4096] [--steps 32]

- Perplexity: `edgemfm.bench.perplexity` on benchmarks/eval_en.txt (the side-by-side's text), each bundle
  through the runtime's own decoder and cache; and, finer than a perplexity over 343 tokens, the mean KL
  divergence of each bundle's next-token distributions from the first bundle's over a longer English
  text (eval_en.txt, then pruners/calibration_en.txt: none of it is what `--kv-cache int8` calibrates on).
- At `positions` cached positions: each bundle in a fresh process (its own peak RSS), one thread, the
  runtime's decoder prefilling `positions` fixed token ids in prefill chunks, then `steps` single-token
  greedy steps timed in CPU time; the bundles taken in turn for `rounds` rounds (interleaved: the
  shared machine's load changes hit each alike), median and range. Peak RSS is the process's VmHWM
  (the prefill's activations included, the same for both); "after load" is its RSS before the prefill.
- The budget's estimate of the cache at `positions` (past + present; one buffer where the runtime appends in
  place), from each manifest.
- `--grown`: each timed bundle beside its `grown_copy`, the same graph with the cache grown and returned at
  every call instead of appended to one buffer in place (runtimes/kvcache.SharedKVCache).

A bundle's rotary table holds its export's --max-seq-len positions (the host profile's at most 2,048),
and the kernel wants a row per cached entry: the timed copies (under --work) get a table of
positions + steps rows computed from the manifest's frequencies, and that many positions of streaming;
nothing else in them changes. Writes benchmarks/results/NAME.json through benchmarks.record.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from .. import ROOT, record

TEXT = ROOT / "benchmarks" / "eval_en.txt"
LONGER = ROOT / "pruners" / "calibration_en.txt"  # appended to TEXT for the divergence: 1,137 SmolLM2 tokens
MiB = 2**20


def long_copy(bundle: Path, rows: int, work: Path) -> Path:
    """A copy of `bundle` under `work` whose decoder's rotary table and streaming hold `rows` positions."""
    import onnx
    from onnx import numpy_helper

    from edgemfm.bundle import read_manifest, seal

    manifest = read_manifest(bundle)
    name = manifest.generation.decoder
    decoder = manifest.components[name]
    out = work / f"{bundle.name}-{rows}"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(bundle, out)
    (out / "manifest.json").unlink()
    model = onnx.load(str(out / decoder.file), load_external_data=False)
    angles = np.arange(rows)[:, None] * np.asarray(decoder.kv_cache.rotary_frequencies)
    tables = {"rotary_cos_cache": np.cos(angles), "rotary_sin_cache": np.sin(angles)}
    for i, t in enumerate(model.graph.initializer):
        if t.name in tables:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(tables[t.name].astype(np.float32), t.name))
    onnx.save(model, str(out / decoder.file))
    kv = replace(decoder.kv_cache, rotary_table=rows)
    components = {**manifest.components, name: replace(decoder, kv_cache=kv)}
    s = manifest.streaming
    streaming = replace(s, max_seq_len=rows, prefill_chunk=min(s.prefill_chunk, rows - s.sink_tokens))
    seal(out, replace(manifest, components=components, streaming=streaming))
    return out


def grown_copy(bundle: Path, out: Path) -> Path:
    """A copy of `bundle` at `out` whose decoder's cache the runtime grows and returns at every call (the
    manifest's kv_cache.shared off): the same graph, run without appending to one buffer in place."""
    from edgemfm.bundle import read_manifest, seal

    manifest = read_manifest(bundle)
    name = manifest.generation.decoder
    decoder = manifest.components[name]
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(bundle, out)
    (out / "manifest.json").unlink()
    components = {**manifest.components, name: replace(decoder, kv_cache=replace(decoder.kv_cache, shared=False))}
    seal(out, replace(manifest, components=components))
    return out


def child(bundle: Path, positions: int, steps: int) -> dict:
    """In a fresh process: RSS after load, CPU ms per single-token step after `positions` cached ones, peak RSS."""
    import edgemfm
    from edgemfm.runtimes import budget

    pipe = edgemfm.load(bundle, threads=1, memory_budget=64 * 1024)
    loaded = budget.resident_bytes()
    decoder = pipe.decoder
    cache = decoder.new_cache()
    vocab = pipe.tokenizer.get_vocab_size()
    ids = [(17 * i + 5) % (vocab - 10) + 10 for i in range(positions)]
    logits = decoder.prefill(cache, [decoder.embed_ids(ids)])
    token = int(np.argmax(logits))
    start = time.process_time()
    for _ in range(steps):
        token = int(np.argmax(decoder.run(cache, decoder.embed_ids([token]))[-1]))
    ms = (time.process_time() - start) / steps * 1e3
    assert cache.length == positions + steps and cache.evicted == 0, "the steps run on the whole cache"
    return {"ms_per_step": ms, "loaded_rss": loaded, "peak_rss": budget.peak_resident_bytes()}


def estimate_bytes(bundle: Path, positions: int) -> int:
    """The budget's estimate of the cache at `positions` entries (past + present, or one buffer in place on the CPU)."""
    from edgemfm.bundle import read_manifest
    from edgemfm.runtimes.budget import kv_cache_bytes
    from edgemfm.runtimes.kvcache import in_place

    decoder = (m := read_manifest(bundle)).components[m.generation.decoder]
    return kv_cache_bytes(decoder, positions, in_place(decoder.kv_cache, "CPUExecutionProvider"))


def perplexity(bundle: Path) -> tuple[float, int]:
    import edgemfm
    from edgemfm.bench import perplexity as ppl

    return ppl(edgemfm.load(bundle, threads=1), TEXT.read_text(encoding="utf-8"))


def divergence(reference: Path, bundle: Path, text: str) -> tuple[float, int]:
    """(mean KL(reference || bundle) of the next-token distributions, positions) over `text`'s first
    max_seq_len tokens, both fed the same prefill chunks through the runtime's decoder and cache."""
    import edgemfm

    pipes = [edgemfm.load(b, threads=1) for b in (reference, bundle)]
    ids = pipes[0].tokenizer.encode(text).ids[: pipes[0].streaming.max_seq_len]
    caches, chunk, total = [p.decoder.new_cache() for p in pipes], pipes[0].streaming.prefill_chunk, 0.0
    for at in range(0, len(ids), chunk):
        logits = [p.decoder.run(c, p.decoder.embed_ids(ids[at : at + chunk])) for p, c in zip(pipes, caches)]
        p, q = (x.astype(np.float64) - x.max(-1, keepdims=True) for x in logits)
        p, q = (x - np.log(np.exp(x).sum(-1, keepdims=True)) for x in (p, q))
        total += float((np.exp(p) * (p - q)).sum())
    return total / len(ids), len(ids)


def timed(bundles: list[Path], args: argparse.Namespace) -> tuple[dict[Path, list[dict]], list[str]]:
    """Each bundle's runs at `positions` (each in its own process, the bundles in turn), and the load after each."""
    copies = [long_copy(b, args.positions + args.steps, args.work) for b in bundles]
    runs: dict[Path, list[dict]] = {b: [] for b in bundles}
    loads = []
    with record.timing_lock(args.lock):
        for _ in range(args.rounds):
            for b, c in zip(bundles, copies):
                cmd = [sys.executable, "-m", "benchmarks.runtime.kv_cache", "--child", str(c)]
                cmd += ["--positions", str(args.positions), "--steps", str(args.steps)]
                done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
                runs[b].append(json.loads(done.stdout.splitlines()[-1]))
                loads.append(Path("/proc/loadavg").read_text().split()[0])
                print(b.name, runs[b][-1], "load", loads[-1], flush=True)
    return runs, loads


def measure(bundles: list[Path], args: argparse.Namespace) -> list[dict]:
    """A row per bundle: perplexity, divergence from the first bundle, the timed figures of the first `timed` ones."""
    runs, loads = timed(bundles[: args.timed], args)
    text = TEXT.read_text(encoding="utf-8") + "\n" + LONGER.read_text(encoding="utf-8")
    rows = []
    for b in bundles:
        ppl, scored = perplexity(b)
        kl, positions = divergence(bundles[0], b, text)
        m, r = runs.get(b, []), [x["ms_per_step"] for x in runs.get(b, [])]
        median = lambda values, digits: f"{statistics.median(values):.{digits}f}" if values else "-"  # noqa: E731
        rows.append(
            {
                "bundle": b.name,
                f"perplexity (eval_en.txt, {scored} tokens)": f"{ppl:.3f}",
                f"KL from {bundles[0].name}, nats ({positions} tokens)": f"{kl:.4f}",
                f"CPU ms / step at {args.positions} (median)": median(r, 2),
                "range": f"{min(r):.2f}-{max(r):.2f}" if r else "-",
                "peak RSS MiB (median)": median([x["peak_rss"] / MiB for x in m], 0),
                "RSS after load MiB": median([x["loaded_rss"] / MiB for x in m], 0),
                f"budget's KV estimate at {args.positions}, MiB": f"{estimate_bytes(b, args.positions) / MiB:.1f}",
            }
        )
        print(rows[-1], flush=True)
    rows.append({"bundle": "load average (1 min) after each timed run", "range": " ".join(loads)})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundles", nargs="*", type=Path, help="the float-cache bundle (the reference), then int8-cache ones")
    p.add_argument("--timed", type=int, default=2, help="the first TIMED bundles are timed at --positions")
    p.add_argument("--positions", type=int, default=4096, help="cached positions before the timed steps")
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--work", type=Path, default=Path("/tmp/kv_cache_bench"), help="where the long copies go")
    p.add_argument("--lock", type=Path, help="hold this file lock (flock) while timing")
    p.add_argument("--grown", action="store_true", help="time each timed bundle's grown copy too (grown_copy)")
    p.add_argument("--name", default="runtime-kv-cache-int8", help="the results file's name")
    p.add_argument("--title", default="The int8 KV cache beside the float one (#26)")
    p.add_argument("--note", help="a text file: what the figures say, printed under the table")
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)  # one timed run, in its own process
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.positions, args.steps)))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    bundles = args.bundles
    if args.grown:  # each timed bundle, then its grown copy
        bundles = [c for b in bundles[: args.timed] for c in (b, grown_copy(b, args.work / f"{b.name}-grown"))]
        bundles += args.bundles[args.timed :]
        args.timed *= 2
    rows = measure(bundles, args)
    blocks = record.blocks(args.name, args.title, note=args.note)
    settings = {"positions": args.positions, "steps": args.steps, "rounds": args.rounds, "timed": args.timed}
    record.write(args.name, rows, title=args.title, blocks=blocks, settings=settings)


if __name__ == "__main__":
    main()
