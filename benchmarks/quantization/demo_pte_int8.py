"""The demo model's pte int8 bundle against its fp32 pte and ONNX bundles: held-out exact match, and what of its
encoders XNNPACK runs and what is int8.

| row | built by |
|---|---|
| NAME=BUNDLE | any demo bundle, e.g. `edgemfm export --device host [--format pte] [--precision int8]` |

Exact match: the test half of DATA/eval.jsonl (every other question from the second, as
benchmarks/runtime/cascade.py measures on: 154 of 308, digits, shapes, colours and spoken words), greedy,
8 tokens at most, compared as `runtimes.cascade.normalize` does (benchmarks/side_by_side/demo.py's
`exact_match`), one thread. "vs first" is the difference in points from the first bundle named, "same answers"
the share of questions answered word for word as the first bundle does. The encoders' columns come from each
bundle's manifest: nodes XNNPACK runs (delegated) and those left on ExecuTorch's portable kernels, and the
quantized weighted ops (PT2E static int8, exporters/pte_encoders.py). Nothing is timed.

    python -m benchmarks.quantization.demo_pte_int8 DATA onnx-fp32=BUNDLE pte-fp32=BUNDLE pte-int8=BUNDLE --work DIR

Answers are kept in --work (one JSON per bundle name): a rerun scores only the bundles without one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .. import record

NAME = "quantization-demo-pte-int8"
ENCODERS = ("vision_encoder", "audio_encoder")


def answers(bundle: Path, examples: list, cache: Path) -> list[str]:
    """The bundle's greedy answer to each example, read from `cache` when it holds them."""
    import edgemfm

    from ..side_by_side.demo import MAX_NEW_TOKENS

    if cache.is_file():
        return json.loads(cache.read_text())
    pipe = edgemfm.load(bundle, threads=1)
    got = []
    for i, e in enumerate(examples):
        media = {"images": [str(e.media)]} if e.kind == "image" else {"audio": [str(e.media)]}
        got.append("".join(pipe.generate(e.prompt, max_new_tokens=MAX_NEW_TOKENS, **media)))
        print(f"{bundle.name} {i + 1}/{len(examples)}: {got[-1]!r} (want {e.answer!r})", flush=True)
    cache.write_text(json.dumps(got))
    return got


def accuracy(examples: list, got: list[str]) -> dict[str, float]:
    """{kind: exact match} and "all", as side_by_side/demo.py scores them."""
    from ..side_by_side.demo import _accuracy

    return _accuracy([(e.kind, g, e.answer) for e, g in zip(examples, got, strict=True)])


def encoders(bundle: Path) -> dict[str, str]:
    """Each encoder's delegation and quantized ops, as its manifest reports them."""
    from edgemfm.bundle import read_manifest

    report = read_manifest(bundle).report
    cells = {}
    for name in ENCODERS:
        d, q = report.delegation.get(name), report.quantization.get(name)
        where = f"{d.delegated_nodes} XNNPACK / {d.non_delegated_nodes} portable" if d else "onnxruntime"
        ops = ", ".join(f"{n} {op}" for op, n in sorted(q.quantized_nodes.items())) if q else "fp32"
        floats = f" ({len(q.float_units)} float)" if q and q.float_units else ""
        cells[name] = f"{where}; {ops}{floats}"
    return cells


def main() -> None:
    from edgemfm.exporters.trainee import read_examples
    from edgemfm.runtimes.cascade import normalize

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", type=Path, help="samples/demo_model/build_dataset.py's folder (eval.jsonl)")
    p.add_argument("bundles", nargs="+", help="NAME=BUNDLE, the first the reference")
    p.add_argument("--work", type=Path, required=True, help="keeps each bundle's answers")
    p.add_argument("--note", type=Path, help="a text file put under the table (what it says)")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    bundles = dict(b.split("=", 1) for b in args.bundles)
    examples = read_examples(args.data, "eval")[1::2]  # cascade.py's test half
    got = {name: answers(Path(b), examples, args.work / f"{name}.json") for name, b in bundles.items()}
    first = next(iter(got))
    base = accuracy(examples, got[first])
    rows = []
    for name, b in bundles.items():
        acc = accuracy(examples, got[name])
        same = sum(normalize(x) == normalize(y) for x, y in zip(got[name], got[first], strict=True))
        size = sum(f.stat().st_size for f in Path(b).iterdir() if f.is_file())
        cells = encoders(Path(b))
        rows.append(
            {
                "demo bundle": name,
                "MiB": f"{size / 2**20:.1f}",
                "exact match % (image / audio / all)": " / ".join(
                    f"{100 * acc[k]:.1f}" for k in ("image", "audio", "all")
                ),
                f"vs {first} (points)": f"{100 * (acc['all'] - base['all']):+.1f}",
                f"same answers as {first}": f"{same}/{len(examples)}",
                "vision encoder": cells["vision_encoder"],
                "audio encoder": cells["audio_encoder"],
            }
        )
        print(rows[-1], flush=True)
    title = "The demo model's pte int8 bundle: held-out exact match against fp32, and its encoders in XNNPACK"
    caption = (
        f"{len(examples)} held-out questions (the test half of the demo's eval.jsonl: "
        f"{sum(e.kind == 'image' for e in examples)} image, {sum(e.kind == 'audio' for e in examples)} audio), "
        "greedy, 8 tokens at most, one thread; encoder cells: nodes XNNPACK runs / nodes on portable kernels; "
        "int8 weighted ops (and those left float)"
    )
    blocks = record.blocks(NAME, title, caption, note=args.note)
    record.write(NAME, rows, title=title, blocks=blocks)


if __name__ == "__main__":
    main()
