"""The trained demo model (EfficientNet-Lite0 + Whisper tiny.en + SmolLM2-135M): the rows of side_by_side.py's third section.

| row | built by |
|---|---|
| pytorch-eager-fp32 | the checkpoint `exporters/demo_sources.build_default` writes (base weights + the committed adapter), as torch modules |
| edgemfm-{fp32,int8,int4} | `edgemfm export --model THAT_CHECKPOINT --device host --precision P`, measured by `edgemfm.bench.measure` |
| edgemfm-pte-int8 | the same with `--format pte --precision int8`, on ExecuTorch |

Every row: vision ms per image (a 320x240 drawing, pre-processing included), audio ms per second
of audio (a 2 s window, log-mel included), first token and decode rate of `tokens` greedy tokens
after the templated text prompt (median of `repeats` after one warm-up), peak RSS after those
runs, size on disk (torch: model.safetensors; edgemfm: the bundle's files), and held-out exact
match on the questions of samples/demo_model/build_dataset.py's eval.jsonl (greedy, 8 tokens at
most, answers compared as `runtimes.cascade.normalize` does).

    python -m benchmarks.side_by_side.demo ROW_SPEC WORK_DIR JSON_SETTINGS   # one row, prints one JSON object
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from .. import ROOT

TITLE = "The demo model"
ROW_MODULE = "benchmarks.side_by_side.demo"
PROMPT = "Tell me a story about the sea."
ROWS = {
    "pytorch-eager-fp32": ("torch:", "fp32"),
    "edgemfm-fp32": ("edgemfm:edgemfm-fp32", "fp32"),
    "edgemfm-int8": ("edgemfm:edgemfm-int8", "host int8 preset"),
    "edgemfm-int4": ("edgemfm:edgemfm-int4", "host int4 preset"),
    "edgemfm-pte-int8": (
        "edgemfm:edgemfm-pte-int8",
        "pte int8: 8da8w decoder, 8-bit embedding, encoders static int8 (PT2E, XNNPACK)",
    ),
}
MAX_NEW_TOKENS = 8


def build_checkpoint(work: Path) -> None:
    from edgemfm.exporters import demo_sources

    demo_sources.build_default(work / "hf.partial").rename(work / "hf")


def build_data(work: Path) -> None:
    from .run import run

    run(
        [sys.executable, str(ROOT / "samples" / "demo_model" / "build_dataset.py"), "--out", str(work / "data")],
        work / "data.log",
    )


def build(work: Path, rows: list[str], options: dict) -> None:
    """The checkpoint, the held-out data and the bundles the rows need, built once: a present one is reused
    (a bundle exported elsewhere can be linked in as WORK/edgemfm-P)."""
    from .run import build_missing, export_edgemfm

    steps = {
        "hf": build_checkpoint,
        "data": build_data,
        **{f"edgemfm-{p}": (lambda w, p=p: export_edgemfm(w, p)) for p in ("fp32", "int8", "int4")},
        "edgemfm-pte-int8": lambda w: export_edgemfm(w, "int8", "pte"),
    }
    needs = {"hf", "data"} | {ROWS[r][0].partition(":")[2] for r in rows} - {""}
    build_missing(work, steps, needs, "demo ")


def settings(work: Path, options: dict) -> dict:
    return {
        "prompt": PROMPT,
        "tokens": options["tokens"],
        "repeats": options["repeats"],
        "threads": options["threads"],
        "questions": options["questions"],
    }


def finish(result: dict, bandwidth: float) -> None:
    """Nothing to add: every figure is measured in the row."""


def caption(report: dict) -> str:
    s = report["settings"]
    n = next((r["questions"] for r in report["results"].values() if "questions" in r), 0)
    return (
        f'{s["tokens"]} tokens after the prompt "{s["prompt"]}", median of {s["repeats"]}; exact match on {n} held-out questions '
        f"(image: digits, shapes, colours; audio: spoken words)"
    )


def _pct(r: dict, kind: str) -> str:
    return f"{100 * r['accuracy'][kind]:.1f}"


COLUMNS = [
    ("vision ms / image", lambda r: f"{r['vision_ms_per_image']:.1f}"),
    ("audio ms / audio s", lambda r: f"{r['audio_ms_per_audio_second']:.1f}"),
    ("first token ms", lambda r: f"{r['ttft_s'] * 1000:.0f}"),
    ("decode tok/s", lambda r: f"{r['decode_tokens_per_s']:.1f}"),
    ("tok / CPU s", lambda r: f"{r['decode_tokens_per_cpu_s']:.1f}"),
    ("peak RSS MiB", lambda r: f"{r['peak_rss_bytes'] / 2**20:.0f}"),
    ("on disk MiB", lambda r: f"{r['size_bytes'] / 2**20:.1f}"),
    (
        "held-out exact match % (image / audio / all)",
        lambda r: f"{_pct(r, 'image')} / {_pct(r, 'audio')} / {_pct(r, 'all')}",
    ),
]
PANELS = [
    ("vision ms per image", lambda r: r["vision_ms_per_image"]),
    ("audio ms per audio second", lambda r: r["audio_ms_per_audio_second"]),
    ("decode tokens per CPU s", lambda r: r["decode_tokens_per_cpu_s"]),
    ("peak RSS (MiB)", lambda r: r["peak_rss_bytes"] / 2**20),
    ("held-out exact match (%)", lambda r: 100 * r["accuracy"]["all"]),
]


def questions(work: Path, n: int) -> list:
    """The held-out questions, or every k-th of them so that about `n` are scored (0: all)."""
    from edgemfm.exporters.trainee import read_examples

    examples = read_examples(work / "data", "eval")
    return examples if not n else examples[:: max(1, len(examples) // n)][:n]


def _accuracy(answers: list[tuple[str, str, str]]) -> dict:
    """{kind: exact match} over (kind, answer given, answer expected), and "all"."""
    from edgemfm.runtimes.cascade import normalize

    right = {
        k: [normalize(got) == normalize(want) for kind, got, want in answers if kind == k] for k in ("image", "audio")
    }
    right["all"] = [x for v in right.values() for x in v]
    return {k: float(np.mean(v)) if v else float("nan") for k, v in right.items()}


def exact_match(pipe, examples: list) -> dict:
    """{kind: held-out exact match} of a loaded bundle over `examples` (greedy, MAX_NEW_TOKENS at most), and "all".

    >>> exact_match(edgemfm.load("demo-host"), questions(work, 0))["image"]  # doctest: +SKIP
    0.942
    """
    answers = []
    for e in examples:
        media = {"images": [str(e.media)]} if e.kind == "image" else {"audio": [str(e.media)]}
        answers.append((e.kind, "".join(pipe.generate(e.prompt, max_new_tokens=MAX_NEW_TOKENS, **media)), e.answer))
    return _accuracy(answers)


def _drawing() -> np.ndarray:
    """The 320x240 drawing `edgemfm bench` encodes (its _media_item): the same pixels for every row."""
    y, x = np.mgrid[0:240, 0:320]
    return np.stack([(x * 255 // 319), (y * 255 // 239), ((x + y) * 255 // 558)], axis=-1).astype(np.uint8)


def edgemfm_row(bundle: Path, work: Path, s: dict) -> dict:
    import edgemfm
    from edgemfm.bench import BenchConfig, measure
    from edgemfm.records import to_dict

    r = measure(bundle, BenchConfig(prompt=s["prompt"], tokens=s["tokens"], repeats=s["repeats"], threads=s["threads"]))
    pipe = edgemfm.load(bundle, threads=s["threads"])
    examples = questions(work, s["questions"])
    return {  # the side-by-side JSON's own row: plain values, read back as a dict
        "ttft_s": r.ttft_s,
        "decode_tokens_per_s": r.decode_tokens_per_s,
        "decode_tokens_per_cpu_s": r.decode_tokens_per_cpu_s,
        "runs": to_dict(r.runs),
        "size_bytes": r.size_bytes,
        "peak_rss_bytes": r.peak_rss_bytes,
        "vision_ms_per_image": r.encoders["vision_encoder"].ms_per_image,
        "audio_ms_per_audio_second": r.encoders["audio_encoder"].ms_per_audio_second,
        "accuracy": exact_match(pipe, examples),
        "questions": len(examples),
    }


def torch_row(work: Path, s: dict) -> dict:
    """The same figures for the torch model: its encoders on the runtime's pre-processing, a per-token forward on the cache."""
    import torch
    from tokenizers import Tokenizer

    from edgemfm.exporters.demo import AUDIO, IMAGE, TEMPLATE, load
    from edgemfm.finetune import answer
    from edgemfm.runtimes.audio import preprocess_audio
    from edgemfm.runtimes.budget import peak_resident_bytes
    from edgemfm.runtimes.preprocess import preprocess_image

    torch.set_num_threads(s["threads"])
    model, tokenizer = load(work / "hf"), Tokenizer.from_file(str(work / "hf" / "tokenizer.json"))
    lm = model.language_model
    tone = (0.1 * np.sin(2 * np.pi * 440 * np.arange(AUDIO.n_samples) / AUDIO.sampling_rate)).astype(np.float32)
    image = lambda: model.embed_image(torch.from_numpy(preprocess_image(_drawing(), IMAGE)[None]))  # noqa: E731
    audio = lambda: model.embed_audio(torch.from_numpy(preprocess_audio(tone, AUDIO)[0][None]))  # noqa: E731
    prompt = torch.tensor([tokenizer.encode(TEMPLATE.format(media="", prompt=s["prompt"])).ids])

    def decode():  # the eager loop of gpt-fast / nanoGPT: one forward per token on the cache
        start = time.perf_counter()
        out = lm(input_ids=prompt, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
        first, cpu = time.perf_counter(), time.process_time()
        for _ in range(s["tokens"] - 1):
            out = lm(input_ids=token, cache=out.cache, use_cache=True)
            token = out.logits[:, -1:].argmax(-1)
        rest = s["tokens"] - 1
        return first - start, rest / (time.perf_counter() - first), rest / (time.process_time() - cpu)

    def timed(fn):
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    with torch.inference_mode():
        runs = [decode() for _ in range(1 + s["repeats"])][1:]
        vision = statistics.median([timed(image) for _ in range(1 + s["repeats"])][1:])
        sound = statistics.median([timed(audio) for _ in range(1 + s["repeats"])][1:])
        peak = peak_resident_bytes()
        answers = []
        for e in questions(work, s["questions"]):  # one question at a time, as the bundles answer
            x = preprocess_image(e.media, IMAGE) if e.kind == "image" else preprocess_audio(e.media, AUDIO)[0]
            feats = (model.image_features if e.kind == "image" else model.audio_features)(torch.from_numpy(x[None]))[0]
            answers.append((e.kind, answer(model, tokenizer, [e], {e.media: feats}, MAX_NEW_TOKENS)[0], e.answer))
    keys = ("ttft_s", "decode_tokens_per_s", "decode_tokens_per_cpu_s")
    return {
        **{k: statistics.median(r[i] for r in runs) for i, k in enumerate(keys)},
        "runs": {k: [r[i] for r in runs] for i, k in enumerate(keys)},
        "vision_ms_per_image": 1000 * vision,
        "audio_ms_per_audio_second": 1000 * sound / (AUDIO.n_samples / AUDIO.sampling_rate),
        "peak_rss_bytes": peak,
        "size_bytes": (work / "hf" / "model.safetensors").stat().st_size,
        "accuracy": _accuracy(answers),
        "questions": len(answers),
    }


def main() -> None:
    from .run import row_arguments

    spec, work, s = row_arguments(__doc__)
    kind, _, arg = spec.partition(":")
    print(json.dumps(torch_row(work, s) if kind == "torch" else edgemfm_row(work / arg, work, s)))


if __name__ == "__main__":
    main()
