"""Calibration inputs for every component, made by the runtime's own pre-processing.

From a folder (`--calibration DIR`): its images (png, jpg, jpeg, bmp, webp), audio clips (wav)
and prompts (each non-empty line of its .txt files). Without one: a built-in set of Pillow
drawings, six short English phrases spoken by espeak-ng in six accents (`speech/`, 16 kHz mono,
made offline with `espeak-ng -v VOICE -s 175 -w OUT.wav TEXT`, resampled and trimmed) and fixed
English prompts, so every export can be calibrated and measured offline.

Each prompt, with one media item when the bundle takes media (images and clips in turn), goes
through the bundle's template and tokenizer (a checkpoint's chat template as one conversation: the
first prompt in the first turn's template, the rest in the later turns', so its system message counts
once), each item through the manifest's pre-processing and
its float encoder, and their rows are spliced into the token embeddings exactly as
`Pipeline.embed` does: the decoder is calibrated on the inputs it will see. An encoder no item of
the folder reaches (an audio encoder, a folder without clips) gets no feeds: weight-only and
dynamic schemes quantize it unmeasured (the report says so); static int8 refuses it, naming it
(`apply.check_calibrated`).

An encoder-decoder bundle (Whisper) attends to its audio by cross-attention, not by placeholder
rows: each clip (the folder's WAVs or the built-in speech; a folder without WAVs: seeded synthetic clips) goes through the runtime's log-mel
and the float audio encoder exactly as `Pipeline.attend` does, and each decoder window is fed the
cross-attention keys/values of one clip in turn, beside the prompts' tokens (a folder's .txt lines
read as the clips' transcripts). The synthetic clips are for measuring, not for fitting: a scheme
that fits to activations (smoothing, clip search, GPTQ) gets none of them (`made_up`). The built-in
speech reaches such an encoder as whole windows of speech (`speech_windows`), as a long recording's
windows are: a phrase padded to its window fits the encoder to the padding (tiny.en: see there).

Example:
    >>> feeds = component_feeds(float_dir, manifest, folder=None)   # doctest: +SKIP
    >>> sorted(feeds)                                                # doctest: +SKIP
    ['text_decoder', 'token_embedding', 'vision_encoder']
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from edgemfm.errors import InputError
from edgemfm.manifest import AudioPreprocess, KVCache, Manifest
from edgemfm.profiles import load_profile
from edgemfm.quantizers.context import Feeds
from edgemfm.runtimes.audio import read_wav, resample
from edgemfm.runtimes.media import Call, item_feeds, needs_preparing
from edgemfm.runtimes.preprocess import PREPROCESSORS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
AUDIO_SUFFIXES = (".wav",)  # what runtimes/audio.py reads
PROMPTS = (
    "What is in the picture?",
    "Describe the image in one sentence.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Count the objects and name their colours.",
    "Once upon a time, in a small village by the sea, there lived an old fisherman.",
    "Is there a person in this photo? Answer yes or no.",
    "Explain how a bicycle works to a child.",
    "Where could this picture have been taken?",
)
MAX_ITEMS = 16  # calibration items per kind: enough for stable ranges, cheap on 2 cores
# real speech, not synthetic tones: static int8 fixes the audio encoder's activation ranges on these
SPEECH = Path(__file__).parent / "speech"
BUILTIN_CLIPS = 4  # synthetic clips when a bundle attends to audio and no WAV is given: one encoder run each
SPEECH_WINDOWS = 3  # whole windows of the built-in speech an encoder-decoder's encoder is calibrated on


def drawings(n: int = 8, seed: int = 0) -> list[Image.Image]:
    """`n` seeded drawings of shapes, lines and gradients on varied backgrounds, of varied sizes."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        w, h = (int(v) for v in rng.integers(160, 400, size=2))
        base = np.linspace(rng.integers(0, 255, 3), rng.integers(0, 255, 3), w).astype(np.uint8)
        img = Image.fromarray(np.repeat(base[None], h, axis=0), "RGB")
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(2, 6))):
            x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
            box = (x0, y0, x0 + int(rng.integers(10, w - x0)), y0 + int(rng.integers(10, h - y0)))
            colour = tuple(int(c) for c in rng.integers(0, 255, 3))
            [draw.ellipse, draw.rectangle, draw.line][int(rng.integers(0, 3))](box, fill=colour)
        images.append(img)
    return images


def speech(spec: AudioPreprocess) -> list[np.ndarray]:
    """The built-in spoken clips at the model's sampling rate, each cut to its window (the runtime
    refuses a longer clip; a phrase cut short is still speech).

    Example:
        >>> [len(c) for c in speech(AudioPreprocess(16000, 400, 160, 80, 16000))]
        [16000, 15379, 16000, 16000, 16000, 16000]
    """
    clips = []
    for path in sorted(SPEECH.glob("*.wav")):
        samples, rate = read_wav(path)
        clips.append(resample(samples.mean(axis=1), rate, spec.sampling_rate)[: spec.n_samples])
    return clips


def speech_windows(spec: AudioPreprocess, n: int = SPEECH_WINDOWS) -> list[np.ndarray]:
    """`n` whole windows of the built-in speech: the phrases end to end, a tenth of a second apart, repeated
    to fill each window, the k-th window starting at the k-th phrase. On real Whisper tiny.en the phrases
    one per window (28 s of padding each) judged SmoothQuant's scales 2 dB better than none, and with
    these windows beside them smoothing still won at export; on these windows alone it lost, as it did on
    605 s of long-form speech (6-9 dB; teacher-forced next-token KL against fp32 0.0117 vs 0.0015).

    Example:
        >>> [len(w) for w in speech_windows(AudioPreprocess(16000, 400, 160, 80, 16000), 2)]
        [16000, 16000]
    """
    clips, gap = speech(spec), np.zeros(spec.sampling_rate // 10, np.float32)
    windows = []
    for k in range(n):
        order = clips[k % len(clips) :] + clips[: k % len(clips)]
        joined = np.concatenate([part for c in order for part in (c, gap)])
        windows.append(np.resize(joined, spec.n_samples))  # repeated from its start to fill the window
    return windows


def synthetic_audio(n: int, rate: int, samples: int, seed: int = 0) -> list[np.ndarray]:
    """`n` seeded clips of `samples` samples: a tone sweep with harmonics, bursts of noise, silences.

    Example:
        >>> [c.shape for c in synthetic_audio(2, 16000, 8000)]
        [(8000,), (8000,)]
    """
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / rate
    clips = []
    for _ in range(n):
        f0, f1 = rng.uniform(80, 400), rng.uniform(200, 3000)
        phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * t[-1]))  # a linear sweep f0 -> f1
        tone = sum(rng.uniform(0.1, 0.5) / k * np.sin(k * phase) for k in range(1, 4))
        gate = (np.sin(2 * np.pi * rng.uniform(0.5, 4) * t) > rng.uniform(-0.5, 0.5)).astype(float)  # syllables
        clips.append((tone * gate + rng.normal(0, 0.02, samples)).astype(np.float32))
    return clips


def read_folder(folder: str | Path) -> tuple[list[Path], list[Path], list[str]]:
    """The images, audio clips and prompts of a calibration folder; refuses a missing or empty one.

    Example:
        >>> images, clips, prompts = read_folder("my-domain-data")  # doctest: +SKIP
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"calibration folder {str(folder)!r} does not exist")
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES][:MAX_ITEMS]
    clips = [p for p in files if p.suffix.lower() in AUDIO_SUFFIXES][:MAX_ITEMS]
    prompts = [
        line.strip()
        for p in files
        if p.suffix.lower() == ".txt"
        for line in p.read_text(errors="replace").splitlines()
        if line.strip()
    ]
    if not images and not clips and not prompts:
        raise InputError(
            f"calibration folder {str(folder)!r} has no images ({', '.join(IMAGE_SUFFIXES)}), no audio ({', '.join(AUDIO_SUFFIXES)}) "
            "and no prompts (.txt, one per line)"
        )
    return images, clips, prompts[:MAX_ITEMS]


def decoder_feeds(embeds: np.ndarray, kv: KVCache, mrope: bool = False, fixed: Feeds | None = None) -> Feeds:
    """The decoder's inputs for a prefill of `embeds` [1, seq, hidden] with an empty KV cache.

    `mrope`: 3-D position ids [3, 1, seq] (Qwen2-VL), each axis at the text position, as for text tokens;
    `fixed`: what an encoder-decoder's decoder attends to (Whisper's cross-attention keys/values).
    """
    past = {
        kv.past.format(layer=layer, kind=kind): np.zeros((1, kv.kv_heads, 0, kv.head_dim), kv.dtype or np.float32)
        for layer in range(kv.layers)
        for kind in ("key", "value")
    }
    seq = embeds.shape[1]
    positions = np.arange(seq, dtype=np.int64)[None]
    return {
        "inputs_embeds": np.ascontiguousarray(embeds, np.float32),
        "attention_mask": np.ones((1, seq), np.int64),
        "position_ids": np.ascontiguousarray(np.broadcast_to(positions, (3, 1, seq))) if mrope else positions,
        **past,
        **(fixed or {}),
    }


def component_feeds(float_dir: Path, manifest: Manifest, folder: str | Path | None = None) -> dict[str, list[Feeds]]:
    """Calibration feeds of every component of the float bundle in `float_dir`."""
    from edgemfm.runtimes.pipeline import Pipeline

    if folder is not None:
        images, clips, prompts = read_folder(folder)
    else:
        audio = manifest.preprocess.audio
        images, clips, prompts = drawings(), speech(audio) if audio is not None else [], list(PROMPTS)
    prompts = prompts or list(PROMPTS)
    # The float graphs run on the CPU here, whatever the target device.
    pipe = Pipeline(float_dir, manifest, load_profile("host"), threads=0)
    media, g = manifest.prompt.media, manifest.generation
    feeds: dict[str, list[Feeds]] = {name: [] for name in manifest.components}
    cross = manifest.components[g.decoder].cross_attention
    if cross is not None:  # it transcribes window by window: the built-in speech fills them
        clips = speech_windows(manifest.preprocess.audio) if folder is None else clips or _builtin_clips(manifest)
    given = {kind: items for kind, items in (("image", images), ("audio", clips)) if kind in media and items}
    kv = manifest.components[g.decoder].kv_cache
    ids_stream, embeds_stream, shortest = [], [], None
    for i, prompt in enumerate(prompts):
        kind = list(given)[i % len(given)] if given else None  # images and clips in turn
        items = {kind: [given[kind][i // len(given) % len(given[kind])]]} if kind else {}
        if cross is None:  # a checkpoint's chat template: one conversation, its system message once
            ids, items = _prompt(pipe, prompt, items, first_turn=i == 0 or manifest.prompt.turn is None)
        else:  # the text as a transcript after the start tokens: what the decoder reads while transcribing
            ids = pipe.prompt_ids("") + pipe.tokenizer.encode(" " + prompt, add_special_tokens=False).ids
        embeds = pipe.embed(ids, items)
        ids_stream += ids
        embeds_stream.append(embeds[0])
        shortest = min(shortest or embeds.shape[1], embeds.shape[1], len(ids))
    # Equal-length windows over the joined prompts, at most MAX_ITEMS of them (static int8 collects
    # one feed at a time, so the encoders' feeds may differ in shape: Qwen2-VL's patch counts).
    stream = np.concatenate(embeds_stream)
    # no longer than the decoder's positions (Whisper's learned table ends at max_target_positions; a
    # rotation inside GroupQueryAttention reads a table of kv.rotary_table positions)
    width = min(
        max(shortest, stream.shape[0] // MAX_ITEMS), manifest.streaming.max_seq_len, kv.rotary_table or 1 << 62
    )  # at most MAX_ITEMS windows
    for at in range(0, len(ids_stream) - width + 1, width):
        feeds[g.embedding].append({"input_ids": np.asarray([ids_stream[at : at + width]], np.int64)})
    attended = [] if cross is None else [_attended(pipe, clip) for clip in clips]
    for n, at in enumerate(range(0, stream.shape[0] - width + 1, width)):
        fixed = attended[n % len(attended)] if attended else None  # one clip's keys/values per window, in turn
        feeds[g.decoder].append(decoder_feeds(stream[None, at : at + width], kv, g.positions == "mrope", fixed))
    for kind, items in given.items():
        calls = _calls(pipe, kind, items)[:MAX_ITEMS]
        feeds[media[kind].encoder] = [c.feeds if isinstance(c, Call) else item_feeds(kind, c, manifest) for c in calls]
    if cross is not None:
        feeds[cross.encoder] = [
            {cross.input: PREPROCESSORS[cross.media](c, manifest.preprocess)[0][None]} for c in clips
        ]
    return feeds


def made_up(manifest: Manifest, folder: str | Path | None = None) -> set[str]:
    """The components whose calibration feeds are the seeded synthetic clips (a Whisper audio encoder whose
    --calibration folder holds no WAV; without a folder it gets the built-in speech): judged on them, never
    fitted to them. SmoothQuant scales fitted to tone sweeps cost the real
    tiny.en encoder 14 dB of output SQNR on speech (29 dB unsmoothed, 15 dB smoothed) while the judge, on the
    same sweeps, saw 27.5 dB; its int8 bundle lost 7.8 WER points against fp32 on 142 s of speech.

    Example:
        >>> made_up(whisper_manifest, "prompts-only/")   # doctest: +SKIP
        {'audio_encoder'}
    """
    cross = manifest.components[manifest.generation.decoder].cross_attention
    if cross is None or folder is None or read_folder(folder)[1]:
        return set()
    return {cross.encoder}


def _calls(pipe: Any, kind: str, items: list[Any]) -> list[Any]:
    """The encoder calls of `items`: a tiled or patched image is several calls (Idefics3's tiles,
    Qwen2-VL's patches and their positions), prepared as the runtime prepares them; others are one."""
    if kind == "image" and needs_preparing(pipe.manifest):
        return [c for p in pipe.prepare({kind: items})[kind] for c in p.calls]
    return items


def _prompt(
    pipe: Any, prompt: str, items: dict[str, list[Any]], first_turn: bool = True
) -> tuple[list[int], dict[str, list[Any]]]:
    """The prompt's token ids (a chat's later turn unless `first_turn`) and the items (or prepared calls) that fill
    its placeholders, in order."""
    if "image" in items and needs_preparing(pipe.manifest):  # the image's prompt text depends on its tiles or grid
        prepared = pipe.prepare(items)
        calls = {kind: [c for p in v for c in p.calls] for kind, v in prepared.items()}
        return pipe.prompt_ids(prompt, prepared, first_turn), calls
    return pipe.prompt_ids(prompt, {k: len(v) for k, v in items.items()}, first_turn), items


def _builtin_clips(manifest: Manifest) -> list[np.ndarray]:
    """Seeded synthetic clips of one window each, for a bundle that attends to audio with no WAV given."""
    spec = manifest.preprocess.audio
    return synthetic_audio(BUILTIN_CLIPS, spec.sampling_rate, spec.n_samples)


def _attended(pipe: Any, clip: Any) -> Feeds:
    """What the decoder attends to for `clip` (Whisper's cross-attention keys/values), as the runtime computes it."""
    return pipe.attend({"audio": [clip]})[1]
