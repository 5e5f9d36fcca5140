"""Export time and decode speed of the same model as an ONNX bundle and as a pte bundle.

Exports the built-in default model (or --model DIR) for one device profile in both formats,
then generates the same greedy answer from each on the sample picture and reports export
seconds, prefill seconds and decode tokens/s (the tokens after the first, over the time after
the first). Both bundles' tokens must be equal, or the run fails.

Example:
    $ python -m benchmarks.runtime.pte_vs_onnx --device host --tokens 64
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import edgemfm

from .. import ROOT, record

SAMPLE = ROOT / "samples" / "images" / "shapes.png"


def timed_generation(bundle: Path, prompt: str, tokens: int, threads: int) -> tuple[list[int], float, float]:
    """The tokens, the seconds to the first token (load excluded) and the decode tokens/s after it."""
    pipe = edgemfm.load(bundle, threads=threads)
    list(pipe.generate_tokens(prompt, images=[SAMPLE], max_new_tokens=4))  # warm-up: first-call allocations
    start = time.perf_counter()
    stamps, out = [], []
    for token in pipe.generate_tokens(prompt, images=[SAMPLE], max_new_tokens=tokens):
        stamps.append(time.perf_counter())
        out.append(token)
    return out, stamps[0] - start, (len(stamps) - 1) / (stamps[-1] - stamps[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="checkpoint directory (default: the built-in default model)")
    p.add_argument("--device", default="host")
    p.add_argument("--tokens", type=int, default=64, help="new tokens to generate")
    p.add_argument("--threads", type=int, default=0, help="threads per session (0: the backend's default)")
    p.add_argument("--max-seq-len", type=int, default=None, help="pte static cache length (default: the profile's)")
    args = p.parse_args()
    prompt = "What is in the picture?"
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for format in ("onnx", "pte"):
            start = time.perf_counter()
            bundle = edgemfm.export(
                edgemfm.ExportConfig(
                    model=args.model,
                    device=args.device,
                    out=Path(tmp) / format,
                    format=format,
                    max_seq_len=args.max_seq_len if format == "pte" else None,
                )
            )
            seconds = time.perf_counter() - start
            size = sum(f.stat().st_size for f in bundle.iterdir())
            rows[format] = (seconds, size, *timed_generation(bundle, prompt, args.tokens, args.threads))
    tokens = {format: row[2] for format, row in rows.items()}
    if tokens["onnx"] != tokens["pte"]:
        raise SystemExit(f"the bundles disagree: onnx {tokens['onnx']} vs pte {tokens['pte']}")
    print(f"{len(tokens['pte'])} equal tokens; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print("| format | export s | bundle MiB | first token s | decode tokens/s |")
    print("|---|---|---|---|---|")
    for format, (seconds, size, _, first, rate) in rows.items():
        print(f"| {format} | {seconds:.1f} | {size / 2**20:.1f} | {first:.3f} | {rate:.1f} |")
    record.write(
        "pte_vs_onnx",
        [
            {
                "format": fmt,
                "export_s": round(s, 1),
                "bundle_mib": round(b / 2**20, 1),
                "first_token_s": round(f, 3),
                "decode_tok_s": round(r, 1),
            }
            for fmt, (s, b, _, f, r) in rows.items()
        ],
    )


if __name__ == "__main__":
    main()
