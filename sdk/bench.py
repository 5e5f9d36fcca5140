"""`edgemfm bench`: how fast, how big and how good a bundle is on this machine, measured.

For each bundle (the one named and any `--baselines`), in a process of its own so its peak
resident memory is its own:

- time to first token: the templated prompt prefilled, the first token chosen (seconds);
- decode tokens/s (and per CPU second of the process, steadier on a shared machine):
  `tokens - 1` greedy tokens after the first over the time they took, through
  the runtime's own loop (`runtimes/generation.py`), never stopping at an end-of-sequence token;
- encoder latency: ms per image (a 320x240 drawing, pre-processing included) and ms per second
  of audio (a full window of a tone), for the encoders the bundle has;
- peak resident memory of the process (VmHWM) once the decoding and encoding runs are done;
- bundle size on disk and the decoder's weight bytes, which every decode step reads;
- perplexity on a text file (`--text`), where the bundle's decoder is a language model of text;
- decode efficiency: weight bytes per token x tokens/s / the machine's memory read bandwidth,
  measured in the same run (`memory_bandwidth`): 1.0 is the physical limit of a decoder that
  reads its weights once per token.

Times are medians over `repeats` runs after `warmup` runs. No torch, transformers or onnx:
this runs where the bundle runs.

Example:
    >>> report = bench(["bundles/smollm2-int4"], BenchConfig(tokens=64, text="benchmarks/eval_en.txt"))  # doctest: +SKIP
    >>> report.results[0].decode_tokens_per_s > 0                                                       # doctest: +SKIP
    True
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import platform
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgemfm.errors import InputError
from edgemfm.profiles import load_profile
from edgemfm.progress import Progress, counter
from edgemfm.records import from_dict, write_json
from edgemfm.runtimes.decoding import nll

MiB = 2**20


@dataclass(frozen=True)
class BenchConfig:
    """What `bench` runs: the prompt, how many tokens and runs, threads, the perplexity text.

    Example:
        >>> BenchConfig(tokens=32, repeats=3, text="benchmarks/eval_en.txt").threads
        1
    """

    prompt: str = "Write a short story about a lighthouse keeper."  # prefilled before decoding
    tokens: int = 64  # generated per decode run; at least 2 (the first token is timed apart)
    repeats: int = 5  # timed runs; the median is reported
    warmup: int = 1  # untimed runs first: session start-up, arena growth
    threads: int = 1  # per session; 1 is steadier on a shared machine
    text: str | None = None  # perplexity on this file's text; None: not measured
    device: str | None = None  # profile whose execution providers to use (default: the bundle's)

    def check(self) -> None:
        """Raise InputError (UnknownDeviceError for the device) naming the first bad setting."""
        if not (isinstance(self.tokens, int) and self.tokens >= 2):
            raise InputError(
                f"tokens {self.tokens!r} is not allowed; allowed: 2 or more (the first token is timed apart)"
            )
        if not (isinstance(self.repeats, int) and self.repeats >= 1):
            raise InputError(f"repeats {self.repeats!r} is not allowed; allowed: 1 or more")
        if not (isinstance(self.warmup, int) and self.warmup >= 0):
            raise InputError(f"warmup {self.warmup!r} is not allowed; allowed: 0 or more")
        if not (isinstance(self.threads, int) and self.threads >= 0):
            raise InputError(f"threads {self.threads!r} is not allowed; allowed: 0 (one per core) or more")
        if self.text is not None and not Path(self.text).is_file():
            raise InputError(f"text file {self.text!r} does not exist; allowed: a UTF-8 text file for perplexity")
        if self.device is not None:
            load_profile(self.device)  # UnknownDeviceError here, before the bandwidth run and any worker


def memory_bandwidth(threads: int = 1, mib: int = 512, repeats: int = 5) -> float:
    """Bytes per second the CPU reads from memory: `threads` threads summing a buffer far larger than the caches (best of `repeats`).

    numpy's max streams its input once with SIMD compares (cheaper per byte than sum's pairwise
    adds: measured 3.2 against 2.5 GB/s on one loaded core) and releases the GIL, so the threads read in parallel.

    Example:
        >>> memory_bandwidth(threads=1, mib=64, repeats=2) > 1e8
        True
    """
    threads = threads or os.cpu_count() or 1
    data = np.ones(mib * MiB // 4, dtype=np.float32)  # ones: pages really allocated, sums exact
    parts = np.array_split(data, threads)
    best = math.inf
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            start = time.perf_counter()
            list(pool.map(np.max, parts))
            best = min(best, time.perf_counter() - start)
    return data.nbytes / best


@dataclass(frozen=True)
class Machine:
    """The machine the figures were measured on: what a reader needs next to them."""

    cpu: str  # model name from /proc/cpuinfo, else platform's processor
    cores: int | None  # os.cpu_count(); None where the OS does not say
    load_average: tuple[float, ...]  # 1, 5 and 15 minutes: a loaded machine decodes slower
    platform: str  # OS and kernel


@dataclass(frozen=True)
class EncoderTime:
    """One encoder's median latency, pre-processing included: per image, or per second of audio."""

    ms_per_image: float | None = None  # image encoders
    ms_per_audio_second: float | None = None  # audio encoders: a full window over its length


@dataclass(frozen=True)
class Runs:
    """Every timed run's figure, in order: the medians' spread."""

    ttft_s: tuple[float, ...]
    decode_tokens_per_s: tuple[float, ...]
    decode_tokens_per_cpu_s: tuple[float, ...]


@dataclass(frozen=True)
class BenchResult:
    """Every figure of one bundle, measured in a process of its own."""

    bundle: str  # the path given
    model_id: str
    profile: str  # the device profile the bundle was built for
    precision: str  # the report's: fp32, int8, int4, auto ...
    provider: str  # the execution provider the decoder ran on
    size_bytes: int  # the bundle's files on disk
    weights_read_per_token_bytes: int  # the decoder's weight bytes, read once per decode step
    ttft_s: float  # median time to the first token
    decode_tokens_per_s: float  # median, after the first token
    decode_tokens_per_cpu_s: float  # steadier than wall time on a shared machine
    runs: Runs
    encoders: dict[str, EncoderTime]  # encoder component -> latency
    perplexity: float | None  # None: no --text, or a transcriber's decoder
    perplexity_tokens: int  # tokens scored; 0 with no perplexity
    sqnr_db: dict[str, float]  # component -> SQNR from the bundle's report
    peak_rss_bytes: int  # generating and encoding; the perplexity pass comes after
    decode_efficiency: float | None = None  # bench fills it: weight bytes x tokens/s / bandwidth; measure alone: None


@dataclass(frozen=True)
class BenchReport:
    """What `edgemfm bench` writes to --json: the machine, its read bandwidth, the config, one result per bundle.

    These records live here, beside the code that measures them, not in report.py: they are what
    one machine measured of some bundles, never part of a bundle's report (report.py is what a
    bundle says about itself), and a reader of bench.json needs only this torch-free module.

    Example:
        >>> from_dict(BenchReport, to_dict(report)) == report  # doctest: +SKIP
        True
    """

    machine: Machine
    memory_bandwidth_bytes_per_s: float  # measured in the same run
    config: BenchConfig
    results: tuple[BenchResult, ...]  # in the order the bundles were given
    version: int = 1  # of this format


def read_report(path: str | Path) -> BenchReport:
    """The BenchReport a `bench --json` wrote; ConfigError naming the key for a file of another shape.

    Example:
        >>> read_report("bench.json").results[0].precision  # doctest: +SKIP
        'int4'
    """
    return from_dict(BenchReport, json.loads(Path(path).read_text()), where=str(path))


def write_report(report: BenchReport, path: str | Path) -> Path:
    """Write `report` as JSON (records.to_dict), the form read_report reads back.

    Example:
        >>> write_report(report, "bench.json")  # doctest: +SKIP
        PosixPath('bench.json')
    """
    return write_json(path, report)


def machine() -> Machine:
    """The CPU model, core count and load average: what a reader needs next to the figures.

    Example:
        >>> machine().cores == os.cpu_count()
        True
    """
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        model = next(
            (
                line.split(":", 1)[1].strip()
                for line in cpuinfo.read_text().splitlines()
                if line.startswith("model name")
            ),
            model,
        )
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    return Machine(
        cpu=model, cores=os.cpu_count(), load_average=tuple(round(x, 2) for x in load), platform=platform.platform()
    )


def _median_runs(fn, config: BenchConfig) -> list[Any]:
    for _ in range(config.warmup):
        fn()
    return [fn() for _ in range(config.repeats)]


def _decode_once(pipe, config: BenchConfig) -> tuple[float, float, float]:
    """(seconds to the first token, tokens/s and tokens per CPU second after it) for one greedy generation of `config.tokens`."""
    from edgemfm.runtimes.decoding import Sampler
    from edgemfm.runtimes.generation import decode

    media = _media_for_prompt(pipe)
    start = time.perf_counter()
    cache = pipe.decoder.new_cache()
    media, cache.fixed = pipe.attend(media)
    logits = pipe.prefill(cache, config.prompt, media)
    steps = decode(
        pipe.decoder, cache, logits, Sampler(), eos=(), limit=config.tokens
    )  # never stop early: a fixed count
    next(steps)
    first, cpu = time.perf_counter(), time.process_time()
    rest = sum(1 for _ in steps)
    return first - start, rest / (time.perf_counter() - first), rest / (time.process_time() - cpu)


def _media_for_prompt(pipe) -> dict[str, list]:
    """An encoder-decoder bundle (Whisper) needs its one audio clip to decode at all; others decode text alone."""
    cross = pipe.manifest.components[pipe.manifest.generation.decoder].cross_attention
    return {cross.media: [media_item(pipe.manifest, cross.media)]} if cross else {}


def media_item(manifest, kind: str) -> Any:
    """The item an encoder is timed on: a 320x240 RGB gradient, or a 440 Hz tone filling one audio window.

    Example:
        >>> media_item(manifest, "image").shape   # doctest: +SKIP
        (240, 320, 3)
    """
    if kind == "image":
        y, x = np.mgrid[0:240, 0:320]
        return np.stack([(x * 255 // 319), (y * 255 // 239), ((x + y) * 255 // 558)], axis=-1).astype(np.uint8)
    spec = manifest.preprocess.audio
    t = np.arange(spec.n_samples, dtype=np.float32) / spec.sampling_rate
    return (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)  # a full window: the encoder's whole cost


def _encoder_ms(pipe, config: BenchConfig) -> dict[str, EncoderTime]:
    """Per encoder: median ms per image, or per second of audio, pre-processing included."""
    from edgemfm.runtimes.media import needs_preparing

    m = pipe.manifest
    kinds = {kind: spec.encoder for kind, spec in m.prompt.media.items()}
    cross = m.components[m.generation.decoder].cross_attention
    if cross:
        kinds[cross.media] = cross.encoder
    out = {}
    for kind, encoder in kinds.items():
        item = media_item(m, kind)
        if cross and kind == cross.media:
            run = lambda: pipe.attend({kind: [item]})  # noqa: B023, E731
        elif kind == "image" and needs_preparing(m):
            run = lambda: [pipe.encode(kind, c) for c in pipe.prepare({kind: [item]})[kind][0].calls]  # noqa: B023, E731
        else:
            run = lambda: pipe.encode(kind, item)  # noqa: B023, E731
        times = _median_runs(lambda: _timed(run), config)  # noqa: B023
        ms = statistics.median(times) * 1000
        out[encoder] = (
            EncoderTime(ms_per_image=ms)
            if kind == "image"
            else EncoderTime(ms_per_audio_second=ms / (len(item) / m.preprocess.audio.sampling_rate))
        )
    return out


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def perplexity(pipe, text: str) -> tuple[float, int]:
    """(perplexity, tokens scored) of the bundle's decoder on `text`: its first max_seq_len tokens, fed in prefill chunks.

    Example:
        >>> perplexity(edgemfm.load("bundles/smollm2-int4"), Path("benchmarks/eval_en.txt").read_text())  # doctest: +SKIP
        (22.5, 344)
    """
    ids = pipe.tokenizer.encode(text, add_special_tokens=pipe.manifest.prompt.add_special_tokens).ids[
        : pipe.streaming.max_seq_len
    ]
    if len(ids) < 2:
        raise InputError(f"the perplexity text has {len(ids)} tokens; allowed: a text of 2 tokens or more")
    cache, chunk, total = pipe.decoder.new_cache(), pipe.streaming.prefill_chunk, 0.0
    for at in range(0, len(ids) - 1, chunk):
        piece = ids[at : min(at + chunk, len(ids) - 1)]
        total += nll(pipe.decoder.run(cache, pipe.decoder.embed_ids(piece)), ids[at + 1 : at + 1 + len(piece)])
    return math.exp(total / (len(ids) - 1)), len(ids) - 1


def measure(path: str | Path, config: BenchConfig) -> BenchResult:
    """Every figure for one bundle, in this process (call it in a fresh one for a true peak memory).

    Example:
        >>> measure("bundles/demo-host", BenchConfig(repeats=1)).ttft_s  # doctest: +SKIP
        0.21
    """
    from edgemfm.runtimes import budget
    from edgemfm.runtimes.pipeline import load

    # the encoder-output cache off: every timed run encodes the same picture, which would be a hit
    pipe = load(path, device=config.device, threads=config.threads, encoder_cache_mb=0)
    m = pipe.manifest
    runs = _median_runs(lambda: _decode_once(pipe, config), config)
    ttft, rate, cpu_rate = (statistics.median(r[i] for r in runs) for i in range(3))
    decoder = m.components[m.generation.decoder]
    encoders = _encoder_ms(pipe, config)
    peak = budget.peak_resident_bytes()  # generating and encoding; the perplexity pass's full logits come after
    ppl, scored = None, 0
    if (
        config.text is not None and decoder.cross_attention is None
    ):  # a transcriber's decoder is not a language model of free text
        ppl, scored = perplexity(pipe, Path(config.text).read_text(encoding="utf-8"))
    return BenchResult(
        bundle=str(path),
        model_id=m.model_id,
        profile=m.profile,
        precision=m.report.precision,
        provider=pipe.provider,
        size_bytes=sum(f.bytes for f in m.files.values()),
        weights_read_per_token_bytes=decoder.weight_bytes,
        ttft_s=ttft,
        decode_tokens_per_s=rate,
        decode_tokens_per_cpu_s=cpu_rate,
        runs=Runs(tuple(r[0] for r in runs), tuple(r[1] for r in runs), tuple(r[2] for r in runs)),
        encoders=encoders,
        perplexity=ppl,
        perplexity_tokens=scored,
        sqnr_db={name: q.sqnr_db for name, q in m.report.quantization.items() if q.sqnr_db is not None},
        peak_rss_bytes=peak,
    )


def bench(
    bundles: list[str | Path],
    config: BenchConfig = BenchConfig(),  # noqa: B008
    progress: Progress | None = None,
) -> BenchReport:
    """Measure each bundle in a fresh process, one after the other, and the memory bandwidth once.

    `progress` hears each step (see `edgemfm.progress`); without it nothing is printed.

    Example:
        >>> report = bench(["bundles/int4", "bundles/fp32"], BenchConfig(tokens=32, repeats=3))  # doctest: +SKIP
        >>> [r.decode_efficiency < 1 for r in report.results]                                   # doctest: +SKIP
        [True, True]
    """
    from edgemfm.bundle import read_manifest

    config.check()
    for path in bundles:
        read_manifest(path)  # a missing or tampered bundle fails here, before any measuring
    results = []
    advance = counter(progress, "memory bandwidth", len(bundles) + 1)
    bandwidth = memory_bandwidth(config.threads)
    # spawn: a fresh interpreter per bundle, so VmHWM is that bundle's own peak
    context = multiprocessing.get_context("spawn")
    for path in bundles:
        advance(note=f"measuring {path}")
        with context.Pool(1) as pool:
            result = pool.apply(measure, (str(path), config))
        efficiency = result.weights_read_per_token_bytes * result.decode_tokens_per_s / bandwidth
        results.append(replace(result, decode_efficiency=efficiency))
    advance(note="done")
    return BenchReport(machine=machine(), memory_bandwidth_bytes_per_s=bandwidth, config=config, results=tuple(results))


def table(report: BenchReport):
    """The results as a rich Table, one row per bundle.

    Example:
        >>> Console().print(table(report))  # doctest: +SKIP
    """
    from rich.table import Table

    bw, m = report.memory_bandwidth_bytes_per_s, report.machine
    t = Table(
        title=f"edgemfm bench: {m.cpu}, {m.cores} cores, load {m.load_average[0]:g}, read bandwidth {bw / 1e9:.1f} GB/s"
    )
    for col in (
        "bundle",
        "precision",
        "MiB",
        "first token ms",
        "decode tok/s",
        "tok/CPU s",
        "efficiency",
        "encoders",
        "peak RSS MiB",
        "perplexity",
    ):
        t.add_column(col, justify="left" if col in ("bundle", "precision", "encoders") else "right")
    for r in report.results:
        encoders = ", ".join(
            f"{name} {e.ms_per_image:.1f} ms/image"
            if e.ms_per_image is not None
            else f"{name} {e.ms_per_audio_second:.1f} ms/audio s"
            for name, e in r.encoders.items()
        )
        t.add_row(
            Path(r.bundle).name,
            r.precision,
            f"{r.size_bytes / MiB:.1f}",
            f"{r.ttft_s * 1000:.1f}",
            f"{r.decode_tokens_per_s:.1f}",
            f"{r.decode_tokens_per_cpu_s:.1f}",
            f"{r.decode_efficiency:.0%}" if r.decode_efficiency is not None else "-",
            encoders or "-",
            f"{r.peak_rss_bytes / MiB:.0f}",
            f"{r.perplexity:.2f}" if r.perplexity is not None else "-",
        )
    return t


def plotting(out: str | Path) -> Any:
    """matplotlib.pyplot for writing `out`; InputError for a path not ending in .png or without matplotlib installed."""
    if Path(out).suffix.lower() != ".png":
        raise InputError(f"plot file {str(out)!r} is not allowed; allowed: a path ending in .png")
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display on a board or in CI
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError(
            "--plot needs matplotlib, which is not installed; allowed: pip install 'edgemfm[export]' (or pip install matplotlib), or no --plot"
        ) from None
    return plt


def plot(report: BenchReport, out: str | Path) -> Path:
    """A PNG with decode tokens/s, time to first token and peak memory per bundle (matplotlib, from the export extra).

    Example:
        >>> plot(report, "bench.png")  # doctest: +SKIP
        PosixPath('bench.png')
    """
    out, plt = Path(out), plotting(out)
    rows = report.results
    names = [Path(r.bundle).name for r in rows]
    panels = (
        ("decode tokens/s", [r.decode_tokens_per_s for r in rows]),
        ("time to first token (ms)", [r.ttft_s * 1000 for r in rows]),
        ("peak resident memory (MiB)", [r.peak_rss_bytes / MiB for r in rows]),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 0.6 * len(rows) + 1.5), squeeze=False)
    for ax, (title, values) in zip(axes[0], panels):
        ax.barh(names, values, color="tab:blue")
        ax.set_title(title)
        ax.invert_yaxis()
    m = report.machine
    fig.suptitle(f"{m.cpu}, {m.cores} cores, load {m.load_average[0]:g}", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial.png")  # nothing half-written on failure
    fig.savefig(partial, dpi=100)
    plt.close(fig)
    partial.replace(out)
    return out
