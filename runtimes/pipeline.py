"""`load` a bundle into a `Pipeline`, and `generate` text from a prompt with images (or audio).

The pipeline reads only the manifest: which component embeds tokens, which encodes each kind
of media, which placeholder token receives the encoder's rows, the decoder's KV layout and the
streaming settings. Media may be lists or live iterators; each item is encoded as it arrives
(`streaming.py`), prefilled in chunks and the cache bounded (`generation.py`, `kvcache.py`),
all within a memory budget checked at load (`budget.py`).

Example:
    >>> import edgemfm
    >>> pipe = edgemfm.load("bundles/default-jetson", memory_budget=512)                  # doctest: +SKIP
    >>> "".join(pipe.generate("What is this?", images=["cat.png"], max_new_tokens=8))  # doctest: +SKIP
    'A cat on a mat.'
"""

from __future__ import annotations

import dataclasses
import importlib
import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from edgemfm import arguments, bundle, validate
from edgemfm.errors import BundleError, InputError
from edgemfm.manifest import Manifest, StreamingSettings
from edgemfm.profiles import DeviceProfile, load_profile
from edgemfm.runtimes import budget, live, longform, streaming
from edgemfm.runtimes.chat import ChatSession
from edgemfm.runtimes.decoding import Sampler, detokenize, logprob, stop_at
from edgemfm.runtimes.encoder_cache import CacheStats, EncoderCache
from edgemfm.runtimes.generation import Decoder, decode, decode_checked
from edgemfm.runtimes.kvcache import in_place
from edgemfm.runtimes.live import LiveUpdate
from edgemfm.runtimes.longform import Segment, TranscribeConfig
from edgemfm.runtimes.lookahead import LookaheadDraft
from edgemfm.runtimes.media import Call, Prepared, grid_segments, item_feeds, needs_preparing, prepare
from edgemfm.runtimes.positions import mrope_prompt
from edgemfm.runtimes.preprocess import PREPROCESSORS, ImageLike
from edgemfm.runtimes.prompt_lookup import PromptLookup
from edgemfm.runtimes.speculative import BundleDraft, Costs, speculate

# Component format -> backend module (an `open_components` function), imported only when a bundle needs it.
BACKENDS = {"onnx": "edgemfm.runtimes.onnxruntime", "pte": "edgemfm.runtimes.executorch"}


# How a prompt longer than the bundle's window can be run: a longer window at load (dynamic cache) or export (pte).
_LONGER = "the bundle's streaming.max_seq_len (raise it with load(max_seq_len=...) or export --max-seq-len)"


@dataclass(frozen=True)
class RuntimeStats:
    encoder_cache: CacheStats  # hits, misses, bytes and entries of the encoder-output cache
    decoder_calls: int  # text decoder runs since load (prefill chunks and decode steps)
    decoder_positions: int  # token positions fed to the text decoder since load


class Generates:
    """generate_scored, generate_tokens and generate over `generate_steps` and `tokenizer`: shared by Pipeline and Cascade."""

    def generate_scored(
        self,
        prompt: str,
        images: Iterable[ImageLike] = (),
        audio: Iterable[Any] = (),
        max_new_tokens: int | None = None,
        sampler: Sampler | None = None,
    ) -> Iterator[tuple[int, float]]:
        """(token id, its log-probability under the model) pairs: what the cascade's self-test reads.

        Example:
            >>> [round(lp, 2) for _, lp in pipe.generate_scored("Hi", max_new_tokens=3)]  # doctest: +SKIP
            [-0.41, -1.3, -0.02]
        """
        steps = self.generate_steps(prompt, images, audio, max_new_tokens, sampler)
        return ((token, logprob(logits, token)) for token, logits in steps)

    def generate_tokens(
        self,
        prompt: str,
        images: Iterable[ImageLike] = (),
        audio: Iterable[Any] = (),
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> Iterator[int]:
        """New token ids until an end-of-sequence token or `max_new_tokens`: greedy at temperature 0.

        Example:
            >>> list(pipe.generate_tokens("Hi", max_new_tokens=4, temperature=0.7, top_p=0.9, seed=1))  # doctest: +SKIP
            [85, 101, 33, 74]
        """
        sampler = Sampler(temperature, top_k, top_p, seed)
        return (token for token, _ in self.generate_steps(prompt, images, audio, max_new_tokens, sampler))

    def generate(
        self,
        prompt: str,
        images: Iterable[ImageLike] = (),
        audio: Iterable[Any] = (),
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] = (),
    ) -> Iterator[str]:
        """Pieces of the answer's text as they are generated, ending before any `stop` string.

        Example:
            >>> for piece in pipe.generate("Describe the image.", images=["photo.jpg"], stop=["\\n"]):  # doctest: +SKIP
            ...     print(piece, end="", flush=True)
        """
        tokens = self.generate_tokens(prompt, images, audio, max_new_tokens, temperature, top_k, top_p, seed)
        return stop_at(detokenize(self.tokenizer, tokens), stop)


class Pipeline(Generates):
    """A loaded bundle: one session per component, the tokenizer, pre-processors and the decode loop.

    Threads: an onnx bundle's Pipeline may be shared. Each generate call keeps its own KV cache,
    sampler, media and answer; what the calls share is read-only while they run (the manifest,
    the tokenizer, onnxruntime sessions, whose `run` is thread-safe). Two threads get the answers
    they would get one after the other, sharing the cores. Do not change a pipeline's attributes
    (`draft`, `speculate_k`, `streaming`) while another thread generates with it. A pte bundle's
    program owns its static KV cache: load one Pipeline per thread for it.
    """

    def __init__(
        self,
        path: Path,
        manifest: Manifest,
        profile: DeviceProfile,
        threads: int = 0,
        memory_budget: float | None = None,
        streaming_settings: StreamingSettings | None = None,
        reserved: int = 0,
        encoder_cache_mb: float | None = None,
    ):
        self.path, self.manifest, self.profile = path, manifest, profile
        self.streaming = streaming_settings or manifest.streaming
        _check_streaming(self.streaming)
        _check_window(path, manifest, self.streaming)
        self.memory_budget = int((memory_budget or profile.default_memory_budget_mb) * budget.MiB)
        what = f"bundle {str(path)!r}"
        self.encoder_cache = _encoder_cache(manifest, encoder_cache_mb)
        cached = self.encoder_cache.capacity
        # `reserved`: the KV cache and activations of pipelines already loaded in this process (a draft, a cascade)
        decoder_name = manifest.generation.decoder
        kv = manifest.components[decoder_name].kv_cache
        # before loading, the cache counted as the shared layout allows on the CPU; the loaded session says for sure
        budget.check(
            budget.estimate(
                manifest,
                self.streaming,
                budget.resident_bytes() + reserved,
                encoder_cache=cached,
                in_place=in_place(kv, "CPUExecutionProvider"),
            ),
            self.memory_budget,
            what,
        )
        self.sessions = {}
        for format in dict.fromkeys(c.format for c in manifest.components.values()):
            components = {name: c for name, c in manifest.components.items() if c.format == format}
            self.sessions |= importlib.import_module(BACKENDS[format]).open_components(
                path, components, manifest, profile, threads
            )
        self.memory = budget.check(
            budget.estimate(
                manifest,
                self.streaming,
                budget.resident_bytes() + reserved,
                True,
                cached,
                in_place(kv, self.sessions[decoder_name].provider),
            ),
            self.memory_budget,
            what,
        )
        self.tokenizer = _tokenizer(path, manifest)
        # characters of the longest vocabulary entry: a text of n characters is at least n / this tokens
        self.longest_token = max(1, *(len(t) for t in self.tokenizer.get_vocab(with_added_tokens=True)))
        self.decoder = Decoder(
            self.sessions[decoder_name], self.sessions[manifest.generation.embedding], manifest, self.streaming
        )
        # set by load(..., draft=): speculative decoding
        self.draft: BundleDraft | PromptLookup | LookaheadDraft | None = None
        self.speculate_k: int | None = None  # tokens the draft proposes per target pass; None: chosen by cost
        self.speculation_costs = Costs()  # measured by speculate, kept between answers

    @property
    def provider(self) -> str:
        """The execution provider the decoder runs on."""
        return self.sessions[self.manifest.generation.decoder].provider

    @property
    def working_bytes(self) -> int:
        """The KV cache and activations this pipeline allocates while generating (reserved for others loaded after it)."""
        return self.memory.kv_cache + sum(self.memory.activations.values()) + self.memory.encoder_cache

    def stats(self) -> RuntimeStats:
        """Counters since load: the encoder-output cache's, and the decoder's calls and positions fed.

        Example:
            >>> pipe.stats().encoder_cache.hits  # doctest: +SKIP
            1
        """
        return RuntimeStats(self.encoder_cache.stats(), self.decoder.calls, self.decoder.positions)

    def chat(self) -> ChatSession:
        """A multi-turn conversation that keeps the KV cache between turns.

        Example:
            >>> session = pipe.chat()                                                  # doctest: +SKIP
            >>> "".join(session.ask("What is this?", images=["cat.png"]))              # doctest: +SKIP
            >>> "".join(session.ask("What colour is it?"))  # prefills only this turn  # doctest: +SKIP
        """
        return ChatSession(self)

    def prepare(self, media: dict[str, Iterable[Any]] | None) -> dict[str, list[Prepared]]:
        """Pre-process every media item as the manifest describes (tiles, patches or one view).

        Example:
            >>> len(pipe.prepare({"image": ["cat.png"]})["image"][0].calls)  # doctest: +SKIP
            10
        """
        specs = self.manifest.prompt.media
        media = {kind: list(items) for kind, items in (media or {}).items()}
        for kind, items in media.items():
            if items and kind not in specs:
                raise InputError(f"this bundle takes no {kind} input; it takes: {', '.join(['text', *specs])}")
        return {kind: [prepare(kind, item, self.manifest) for item in items] for kind, items in media.items() if items}

    def prompt_ids(
        self, prompt: str, counts: dict[str, int | Sequence[Prepared]] | None = None, first_turn: bool = True
    ) -> list[int]:
        """The token ids of the templated prompt, with one placeholder token per encoder call.

        `counts` gives, per kind, a number of single-call items or the prepared items. A chat's
        later turns (`first_turn=False`) follow the conversation: no tokenizer special tokens (BOS).

        Example:
            >>> pipe.prompt_ids("What is this?", {"image": 1})[:3]  # doctest: +SKIP
            [256, 85, 83]
        """
        media = self.manifest.prompt.media
        cross = self.manifest.components[self.manifest.generation.decoder].cross_attention
        counts = {kind: n for kind, n in (counts or {}).items() if n}
        takes = ["text", *media, *([cross.media] if cross else [])]
        for kind in counts:
            if kind not in takes:
                raise InputError(f"this bundle takes no {kind} input; it takes: {', '.join(takes)}")
        if isinstance(counts.get("image"), int) and needs_preparing(self.manifest):
            raise InputError(
                "this bundle's images span several slots or a grid; pass items from Pipeline.prepare, not a count"
            )
        texts = [
            media[k].placeholder * v if isinstance(v, int) else "".join(p.text for p in v)
            for k, v in counts.items()
            if k in media
        ]
        calls = {k: v if isinstance(v, int) else sum(len(p.calls) for p in v) for k, v in counts.items()}
        text = self._with_prompt(prompt, first_turn).format(media="".join(texts), prompt=prompt)
        limit = self.streaming.max_seq_len
        if len(text) > limit * self.longest_token:  # at least `limit` tokens: refused without tokenizing 1 MB
            raise InputError(
                f"the prompt of {len(prompt)} characters is at least {len(text) // self.longest_token} tokens; "
                f"allowed: at most {limit} with the template, {_LONGER}"
            )
        special = self.manifest.prompt.add_special_tokens and first_turn  # a later turn adds no second BOS
        ids = self.tokenizer.encode(text, add_special_tokens=special).ids
        if len(ids) > limit:  # the window would slide over the prompt itself and drop its beginning
            raise InputError(f"the prompt is {len(ids)} tokens with the template; allowed: at most {limit}, {_LONGER}")
        for kind, spec in media.items():
            found, wanted = ids.count(spec.token_id), calls.get(kind, 0)
            if found < wanted:
                raise BundleError(
                    f"the {kind} placeholder {spec.placeholder!r} does not tokenize to its token id {spec.token_id} "
                    "with this bundle's tokenizer; allowed: a manifest whose placeholder is one token of the tokenizer"
                )
            if found > wanted:
                raise InputError(f"the prompt must not contain the {kind} placeholder {spec.placeholder.strip()!r}")
        return ids

    def _with_prompt(self, prompt: str, first_turn: bool = True) -> str:
        """The template with `prompt` placed where the model reads it: in {prompt}, or before the template
        as earlier text (Whisper's `<|startofprev|>`, as transformers' `generate(prompt_ids=...)`). A chat's
        later turn takes the manifest's `turn` template where it has one (a checkpoint's chat template)."""
        p = self.manifest.prompt
        template = p.template if first_turn or p.turn is None else p.turn
        if p.previous is not None:
            return template if not prompt.strip() else p.previous.format(prompt=prompt.strip()) + template
        if prompt and "{prompt}" not in template:
            raise InputError(
                f"this bundle takes no text prompt (its checkpoint has no token for earlier text); got {prompt!r}; "
                "allowed: an empty prompt"
            )
        return template

    def encode(self, kind: str, item: Any) -> np.ndarray:
        """One media item's (or prepared call's) rows [1, n, hidden] for the decoder: pre-processed, then its encoder run."""
        spec = self.manifest.prompt.media[kind]
        feeds = item.feeds if isinstance(item, Call) else item_feeds(kind, item, self.manifest)
        key = self.encoder_cache.key(spec.encoder, feeds) if self.encoder_cache.capacity else None
        if key is not None and (rows := self.encoder_cache.get(key)) is not None:
            return rows
        rows = self.sessions[spec.encoder].run(feeds)[spec.output]
        rows = rows.reshape(1, -1, rows.shape[-1]).astype(
            self.manifest.components[self.manifest.generation.decoder].dtype
        )
        del feeds
        budget.release_free_heap()  # the encoder's freed buffers leave the process before the decoder's peak
        return rows if key is None else self.encoder_cache.put(key, rows)

    def attend(self, media: dict[str, Iterable[Any]]) -> tuple[dict[str, Iterable[Any]], dict[str, np.ndarray]]:
        """The media left for the prompt, and what an encoder-decoder bundle's decoder attends to at
        every step (Whisper: each layer's cross-attention keys and values), encoded once.

        Example:
            >>> media, fixed = pipe.attend({"image": [], "audio": ["speech.wav"]})  # doctest: +SKIP
            >>> sorted(fixed)[:2]                                                    # doctest: +SKIP
            ['cross.0.key', 'cross.0.value']
        """
        cross = self.manifest.components[self.manifest.generation.decoder].cross_attention
        if cross is None:
            return media, {}
        items = list(media.get(cross.media, ()))
        if len(items) != 1:
            raise InputError(f"this bundle transcribes exactly one {cross.media} input per call; got {len(items)}")
        x, _ = PREPROCESSORS[cross.media](items[0], self.manifest.preprocess)
        out = self.sessions[cross.encoder].run({cross.input: x[None]})
        return {k: v for k, v in media.items() if k != cross.media}, {name: out[name] for name in cross.outputs}

    def plan(self, prompt: str, media: dict[str, Iterable[Any]], first_turn: bool = True) -> Iterator[streaming.Entry]:
        """The prompt's token ids and media items in order; iterators are pulled only as they are reached."""
        given = {kind: items for kind, items in media.items() if not (isinstance(items, Sequence) and len(items) == 0)}
        if given.get("image") is not None and needs_preparing(self.manifest):
            # Tiles or a patch grid set the image's prompt text: pre-process first, then encode call by call.
            prepared = self.prepare(given)
            calls = {kind: [c for p in items for c in p.calls] for kind, items in prepared.items()}
            placeholders = {kind: spec.token_id for kind, spec in self.manifest.prompt.media.items()}
            return streaming.from_ids(self.prompt_ids(prompt, prepared, first_turn), placeholders, calls)
        self.prompt_ids(
            prompt, {kind: 1 for kind in given}, first_turn
        )  # names an unsupported kind or a placeholder in the prompt
        placeholders = {kind: self.manifest.prompt.media[kind].token_id for kind in given}
        layout = streaming.split_template(
            lambda counts: self.prompt_ids(prompt, counts, first_turn), list(given), placeholders
        )
        if layout is not None:
            return streaming.planned(layout, given)
        items = {kind: list(items) for kind, items in given.items()}  # the tokenizer merges across items: collect them
        counts = {k: len(v) for k, v in items.items()}
        return streaming.from_ids(self.prompt_ids(prompt, counts, first_turn), placeholders, items)

    def embed(self, ids: Sequence[int], media: dict[str, Sequence] | None = None) -> np.ndarray:
        """Decoder inputs [1, seq, hidden]: token embeddings with each media item's rows spliced in.

        Items are encoded one at a time, in prompt order, so only one encoder activation is live.
        """
        placeholders = {kind: spec.token_id for kind, spec in self.manifest.prompt.media.items()}
        entries = streaming.from_ids(ids, placeholders, media or {})
        return np.concatenate(list(streaming.decoder_inputs(entries, self.decoder.embed_ids, self.encode)), axis=1)

    def transcribe(self, audio: Any, config: TranscribeConfig | None = None) -> Iterator[Segment]:
        """Timed segments of a recording of any length (a WAV path, or 1-D float samples at the model's
        rate), window by window with Whisper's long-form rule (`longform.py`), in flat memory.

        Example:
            >>> for s in pipe.transcribe("lecture.wav", TranscribeConfig(condition_on_previous=True)):  # doctest: +SKIP
            ...     print(f"[{s.start:.1f} → {s.end:.1f}]{s.text}")
        """
        return longform.transcribe(self, audio, config)

    def transcribe_stream(
        self,
        chunks: Iterable[np.ndarray],
        config: TranscribeConfig | None = None,
        step_s: float = 1.0,
        commit_delay_s: float = live.COMMIT_DELAY_S,
    ) -> Iterator[LiveUpdate]:
        """Live transcription of chunks of float samples at the model's rate: every `step_s` of new audio an
        update whose `committed` text (agreed by two hypotheses in a row, and followed by `commit_delay_s` of
        audio) is final (`live.py`).

        Example:
            >>> for update in pipe.transcribe_stream(microphone()):   # doctest: +SKIP
            ...     print(update.committed, end="", flush=True)
        """
        return live.transcribe_stream(self, chunks, config, step_s, commit_delay_s)

    def generate_steps(
        self,
        prompt: str,
        images: Iterable[ImageLike] = (),
        audio: Iterable[Any] = (),
        max_new_tokens: int | None = None,
        sampler: Sampler | None = None,
    ) -> Iterator[tuple[int, np.ndarray]]:
        """(token id, the logits it was chosen from) pairs: the core every generate method wraps.

        Example:
            >>> [t for t, _ in pipe.generate_steps("Hi", max_new_tokens=3)]  # doctest: +SKIP
            [85, 101, 33]
        """
        sampler = sampler or Sampler()
        check_request(prompt, images, audio, max_new_tokens)
        if self.draft is not None and not sampler.is_greedy:
            raise InputError(
                f"speculative decoding (--draft) needs greedy decoding; temperature {sampler.temperature:g} is not allowed; allowed: 0"
            )
        limit = self.manifest.generation.max_new_tokens if max_new_tokens is None else max_new_tokens
        media = {"image": images, "audio": audio}
        eos = self.manifest.tokenizer.eos_token_ids
        if self.draft is not None:
            return speculate(self, self.draft, prompt, media, eos, limit, self.speculate_k)
        return self._decode(prompt, media, sampler, eos, limit)

    def _decode(self, prompt, media, sampler, eos, limit) -> Iterator[tuple[int, np.ndarray]]:
        cache = self.decoder.new_cache()
        media, cache.fixed = self.attend(media)
        logits = self.prefill(cache, prompt, media)
        yield from decode(self.decoder, cache, logits, sampler, eos, limit)

    def prefill(self, cache, prompt: str, media: dict[str, Iterable[Any]]) -> np.ndarray:
        """Stream the prompt and its media into `cache`; the logits after the last prompt token."""
        return self.decoder.prefill(cache, self._inputs(cache, prompt, media))

    def generate_checked(
        self,
        prompt: str,
        images: Iterable[ImageLike] = (),
        audio: Iterable[Any] = (),
        proposal: Sequence[int] = (),
        max_new_tokens: int | None = None,
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Greedy `generate_steps` with a proposed answer (a cascade's small bundle's) fed in the prompt's own
        prefill: the same tokens whatever the proposal, and the single-token steps that a right proposal makes
        needless are not run (`generation.decode_checked`).

        Example:
            >>> tokens = [t for t, _ in small.generate_steps("Colour?", ["ball.png"])]                   # doctest: +SKIP
            >>> [t for t, _ in large.generate_checked("Colour?", ["ball.png"], proposal=tokens)] == tokens  # doctest: +SKIP
            True
        """
        check_request(prompt, images, audio, max_new_tokens)
        limit = self.manifest.generation.max_new_tokens if max_new_tokens is None else max_new_tokens
        cache, proposal = self.decoder.new_cache(), list(proposal)
        media, cache.fixed = self.attend({"image": images, "audio": audio})
        pieces = itertools.chain(
            self._inputs(cache, prompt, media), [self.decoder.embed_ids(proposal)] if proposal else []
        )
        checked = self.decoder.prefill_rows(cache, pieces, len(proposal) + 1)
        return decode_checked(self.decoder, cache, checked, proposal, self.manifest.tokenizer.eos_token_ids, limit)

    def _inputs(self, cache, prompt: str, media: dict[str, Iterable[Any]]) -> Iterator[np.ndarray]:
        """The prompt's decoder inputs, media encoded as they are reached (M-RoPE's positions set on `cache`)."""
        entries = self.plan(prompt, media)
        if self.manifest.generation.positions == "mrope":
            entries = list(entries)  # 3-D positions need every image's grid before the first chunk
            cache.mrope = mrope_prompt(grid_segments(entries))
        return streaming.decoder_inputs(entries, self.decoder.embed_ids, self.encode)


def _tokenizer(path: Path, manifest: Manifest) -> Tokenizer:
    """The bundle's tokenizer, and every token id the manifest names checked against its vocabulary."""
    file = path / manifest.tokenizer.file
    try:
        tokenizer = Tokenizer.from_file(str(file))
    except Exception as e:  # the tokenizers library raises a bare Exception for any malformed file
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BundleError(
            f"bundle file {manifest.tokenizer.file!r} is not a tokenizer the tokenizers library reads ({reason}); "
            "allowed: a Hugging Face tokenizer.json"
        ) from None
    validate.token_ids(manifest, tokenizer.get_vocab_size(with_added_tokens=True), str(path / bundle.MANIFEST))
    return tokenizer


def check_request(prompt: Any, images: Any, audio: Any, max_new_tokens: Any) -> None:
    """Refuse what the API would otherwise misread: a prompt that is not text (None would become
    "None"), one media path given bare instead of in a list (a str would be read letter by letter).

    Example:
        >>> check_request("Hi", ["cat.png"], (), 8)
        >>> check_request("Hi", "cat.png", (), 8)
        Traceback (most recent call last):
        edgemfm.errors.InputError: images='cat.png' is one str; allowed: a list or iterator of items, e.g. images=['cat.png']
    """
    if not isinstance(prompt, str):
        raise InputError(f'prompt {prompt!r} is a {type(prompt).__name__}; allowed: a str ("" for none)')
    arguments.utf8("prompt", prompt)
    for kind, items in (("images", images), ("audio", audio)):
        if isinstance(items, (str, bytes, Path, np.ndarray)) or not isinstance(items, Iterable):
            shown = repr(items) if isinstance(items, (str, Path)) else f"a {type(items).__name__}"
            raise InputError(
                f"{kind}={shown} is one {type(items).__name__}; allowed: a list or iterator of items, e.g. {kind}=[{shown}]"
            )
    if max_new_tokens is not None:
        arguments.number("max_new_tokens", max_new_tokens, low=0, integer=True)


def _encoder_cache(manifest: Manifest, mb: float | None) -> EncoderCache:
    """The encoder-output cache bounded at `mb` MiB (None: the budget's default for this bundle)."""
    if mb is not None and not mb >= 0:  # `not >=` also refuses NaN
        raise InputError(f"encoder cache {mb!r} MiB is not allowed; allowed: 0 (off) or more")
    return EncoderCache(budget.default_encoder_cache_bytes(manifest) if mb is None else int(mb * budget.MiB))


def _check_streaming(s: StreamingSettings) -> None:
    if not 0 <= s.sink_tokens < s.max_seq_len or not 0 < s.prefill_chunk <= s.max_seq_len - s.sink_tokens:
        raise InputError(
            f"streaming settings prefill_chunk={s.prefill_chunk}, max_seq_len={s.max_seq_len}, sink_tokens={s.sink_tokens} "
            "are not allowed; allowed: 0 <= sink_tokens < max_seq_len and 0 < prefill_chunk <= max_seq_len - sink_tokens"
        )


def _check_window(path: Path, manifest: Manifest, s: StreamingSettings) -> None:
    """The window fits what the decoder can hold: a decoder rotating inside GroupQueryAttention reads a cos/sin
    row for every cached entry (the table's positions), a static cache has its program's buffers (both: the
    export's max_seq_len)."""
    component = manifest.components.get(manifest.generation.decoder)
    kv = component.kv_cache if component is not None else None
    if kv is not None and kv.kind == "static" and s.max_seq_len > kv.max_seq_len:
        raise InputError(
            f"bundle {str(path)!r}: max_seq_len {s.max_seq_len} is past the decoder's static KV cache of "
            f"{kv.max_seq_len} positions; allowed: 1 to {kv.max_seq_len} (or export with a larger --max-seq-len)"
        )
    table = kv.rotary_table if kv is not None else 0
    if table and s.max_seq_len > table:
        raise InputError(
            f"bundle {str(path)!r}: max_seq_len {s.max_seq_len} is past the decoder's rotary table of {table} positions; "
            f"allowed: 1 to {table} (or export with a larger --max-seq-len)"
        )


PROMPT_DRAFT = "prompt"  # load(draft=...) / run --draft: prompt lookup instead of a draft bundle
LOOKAHEAD_DRAFT = "lookahead"  # load(draft=...) / run --draft: the bundle's own lookahead head (runtimes/lookahead.py)


def load(
    path: str | Path,
    device: str | None = None,
    threads: int = 0,
    memory_budget: float | None = None,
    draft: str | Path | None = None,
    draft_k: int | None = None,
    trusted_keys: Sequence[str | Path] | None = None,
    encoder_cache_mb: float | None = None,
    **streaming_overrides: int,
) -> Pipeline:
    """Open a bundle, verify every file's sha256, check the memory budget and start a session per component.

    `device` picks the profile whose execution providers are tried and whose default memory
    budget applies (default: the bundle's); `memory_budget` is in MiB. `draft` adds a small bundle
    for speculative decoding, "prompt" for prompt lookup (`prompt_lookup.py`), or "lookahead" for the bundle's
    own lookahead head (`lookahead.py`: one token a call, prompt lookup's first where the answer repeats itself),
    proposing `draft_k` tokens per target call (default: the k that pays by measured costs, `speculative.Costs`,
    at most 8 for a bundle and 10 for "prompt" and "lookahead"). A small-to-large cascade is `edgemfm.runtimes.cascade.load`. `encoder_cache_mb` bounds the encoder-output cache, counted
    in the budget (default: `budget.ENCODER_CACHE_BYTES` for a bundle with media; 0: off). `trusted_keys`
    (public key files from `edgemfm keygen`): every bundle loaded must carry a signature one of them verifies
    (see `edgemfm.signing`). Keyword overrides of the manifest's streaming settings: `prefill_chunk`,
    `max_seq_len`, `sink_tokens`.

    Example:
        >>> pipe = edgemfm.load("bundles/llava-jetson", device="jetson", memory_budget=2048, draft="bundles/tiny-jetson")  # doctest: +SKIP
    """
    path = Path(path)
    if device is not None:
        arguments.text("device", device)  # "" is a mistake, not the default
    arguments.number("threads", threads, low=0, high=arguments.THREADS_MAX, integer=True)
    if memory_budget is not None:
        arguments.number("memory budget (MiB)", memory_budget, low=0, above=True)
    if trusted_keys is not None and (isinstance(trusted_keys, (str, Path)) or not trusted_keys):
        raise InputError(f"trusted_keys={trusted_keys!r}; allowed: a non-empty list of public key files")
    manifest = bundle.read_manifest(path, trusted_keys)
    profile = load_profile(device or manifest.profile)
    known = {f.name for f in dataclasses.fields(StreamingSettings)}
    if bad := sorted(set(streaming_overrides) - known):
        raise InputError(f"unknown streaming setting {bad[0]!r}; allowed: {', '.join(sorted(known))}")
    settings = dataclasses.replace(manifest.streaming, **streaming_overrides)
    if draft_k is not None and not (isinstance(draft_k, int) and draft_k >= 1):
        raise InputError(f"draft_k {draft_k!r} is not allowed; allowed: a positive number of proposed tokens")
    pipe = Pipeline(path, manifest, profile, threads, memory_budget, settings, encoder_cache_mb=encoder_cache_mb)
    if draft == PROMPT_DRAFT:
        pipe.draft = PromptLookup(pipe.tokenizer)
    elif draft == LOOKAHEAD_DRAFT:
        pipe.draft = LookaheadDraft(pipe)
    elif draft is not None:
        small = Pipeline(
            Path(draft),
            bundle.read_manifest(draft, trusted_keys),
            profile,
            threads,
            memory_budget,
            settings,
            reserved=pipe.working_bytes,
        )
        if pipe.tokenizer.get_vocab() != small.tokenizer.get_vocab():
            raise InputError(
                f"the draft bundle {str(draft)!r} has another tokenizer than {str(path)!r}; allowed: bundles sharing one tokenizer"
            )
        if same_encoders(pipe.manifest, small.manifest):
            small.encoder_cache = pipe.encoder_cache  # the draft's media rows are the target's: encoded once
        pipe.draft = BundleDraft(small)
    pipe.speculate_k = draft_k
    return pipe


def same_encoders(a: Manifest, b: Manifest) -> bool:
    """Whether bundles `a` and `b` turn every media item into the same decoder rows: the same media kinds and
    settings, pre-processing, encoder files (by sha256) and decoder dtype. A draft pruned or quantized in its
    decoder alone has its target's encoders.

    Example:
        >>> same_encoders(bundle.read_manifest("bundles/demo-int4"), bundle.read_manifest("bundles/demo-draft"))  # doctest: +SKIP
        True
    """
    if a.prompt.media != b.prompt.media or a.preprocess != b.preprocess or not a.prompt.media:
        return False
    if a.components[a.generation.decoder].dtype != b.components[b.generation.decoder].dtype:
        return False
    for spec in a.prompt.media.values():
        if spec.encoder not in b.components:
            return False
        stem = a.components[spec.encoder].file.split(".")[0]  # its graph and any external data beside it
        files = [{n: f.sha256 for n, f in m.files.items() if n.split(".")[0] == stem} for m in (a, b)]
        if not files[0] or files[0] != files[1]:
            return False
    return True
