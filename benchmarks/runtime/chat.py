"""A second question about the same image: first-token time against the first question's.

Each repeat takes a picture the process has not seen and, interleaved:
  1. first question   a new chat session asks about it: pre-processing, the encoder, the whole prefill;
  2. chat turn 2      the same session asks a follow-up: only the new turn's text is prefilled;
  3. new generate     a separate `generate` asks about the same picture: the encoder-output cache
                      answers the image's rows, the whole prompt is prefilled again.
Medians and spreads (min-max) of the repeats, wall and process CPU time, the load average read
beside each repeat (the development machine is shared). Without a bundle it exports the
placeholder model (about 2 min on 2 loaded cores).

    python -m benchmarks.runtime.chat [BUNDLE] --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

import edgemfm

from .. import record

QUESTION, FOLLOW_UP = "What is in the picture?", "What colour is the biggest shape?"
TITLE = "Chat: a second question about the same image (encoder-output cache, multi-turn session)"
STEPS = ("first question", "chat turn 2 (KV cache kept)", "new generate, same image (encoder cache)")


def first_token(tokens) -> tuple[float, float]:
    """Wall and CPU milliseconds until the first token of `tokens` (then the rest is read, untimed)."""
    wall, cpu = time.perf_counter(), time.process_time()
    next(tokens)
    times = (time.perf_counter() - wall) * 1e3, (time.process_time() - cpu) * 1e3
    for _ in tokens:
        pass
    return times


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def repeat(pipe, image, answer: int) -> dict[str, tuple[float, float]]:
    session = pipe.chat()
    return {
        STEPS[0]: first_token(session.ask_tokens(QUESTION, images=[image], max_new_tokens=answer)),
        STEPS[1]: first_token(session.ask_tokens(FOLLOW_UP, max_new_tokens=answer)),
        STEPS[2]: first_token(iter(pipe.generate_tokens(FOLLOW_UP, images=[image], max_new_tokens=answer))),
    }


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def measure(bundle: Path, repeats: int, answer: int) -> list[dict]:
    pipe = edgemfm.load(bundle, threads=1)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)) for _ in range(repeats + 1)]
    repeat(pipe, images[-1], answer)  # warm-up: sessions' first runs allocate
    runs, loads = [], []
    for image in images[:repeats]:
        loads.append(loadavg())
        runs.append(repeat(pipe, image, answer))
    rows = []
    for step in STEPS:
        # each repeat's time over the same repeat's first question, then the median of those ratios
        wall, cpu = ([r[step][i] / r[STEPS[0]][i] for r in runs] for i in (0, 1))
        rows.append(
            {
                "step": step,
                "first-token ms, median (min-max)": spread([r[step][0] for r in runs]),
                "of the first question's": f"{statistics.median(wall):.0%}",
                "first-token CPU ms": spread([r[step][1] for r in runs]),
                "CPU, of the first question's": f"{statistics.median(cpu):.0%}",
                "load average (1 min) at each repeat": " ".join(f"{x:.1f}" for x in loads),
            }
        )
    s = pipe.stats()
    print(f"encoder cache {s.encoder_cache}; decoder calls {s.decoder_calls}, positions {s.decoder_positions}")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", nargs="?", help="bundle directory (default: the placeholder model, exported here)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--answer", type=int, default=8, help="tokens per answer")
    p.add_argument("--note", help="a text file: what the figures say, printed under the table")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        bundle = Path(args.bundle) if args.bundle else _placeholder(Path(scratch))
        rows = measure(bundle, args.repeats, args.answer)
    for row in rows:
        print(row)
    blocks = record.blocks("runtime-chat", TITLE, note=args.note)
    record.write("runtime-chat", rows, title=TITLE, bundle=bundle.name, blocks=blocks)


def _placeholder(scratch: Path) -> Path:
    from edgemfm.exporters import placeholder

    model = placeholder.build(scratch / placeholder.MODEL_ID)
    return edgemfm.export(edgemfm.ExportConfig(model=model, device="host", out=scratch / "placeholder-host"))


if __name__ == "__main__":
    main()
