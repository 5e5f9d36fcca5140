"""Whisper: an audio encoder and a text decoder with self- and cross-attention caches.

Components:

    input_features [b, mels, 3000] ─► audio_encoder ─► cross.{i}.key/value [b, heads, 1500, d]
                                      (encoder + each decoder layer's cross-attention K/V projections,
                                       computed once per clip instead of at every decoding step)
    input_ids ─► token_embedding ─► inputs_embeds
    inputs_embeds, attention_mask, position_ids, past.{i}.*, cross.{i}.* ─► text_decoder ─► logits, present.{i}.*

The manifest says so declaratively: the text_decoder component's `cross_attention` names the
audio encoder and the outputs it feeds to the decoder, so the runtime runs Whisper with no
Whisper-specific code. The decoder prompt is the generation config's start tokens
(`decoder_start_token_id`, then `<|notimestamps|>` where the checkpoint has one, as
`WhisperForConditionalGeneration.generate` starts an English-only transcription).

Exported with the dynamo ONNX exporter; parity within 1e-4 on the tiny test models. For
`--format pte` the decoder keeps its self-attention cache in the program's static buffers
(`StaticTextDecoder`) and still takes the cross-attention K/V as inputs, fed unchanged at every
call as for ONNX: one per clip, so they need no buffer of their own.

Example:
    >>> from edgemfm.exporters.whisper import FAMILY
    >>> FAMILY.architectures
    ('WhisperForConditionalGeneration',)
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import torch

from edgemfm.errors import ExportError, InputError
from edgemfm.exporters.decoder import PAST, PRESENT, embedding_unit
from edgemfm.exporters.family import ExportUnit, Family, Split
from edgemfm.exporters.processor_config import processor_class, processor_settings
from edgemfm.exporters.static_decoder import POSITION, StaticDecoder, static_layout
from edgemfm.exporters.text import tokenizer_spec
from edgemfm.manifest import AudioPreprocess, CrossAttention, Generation, KVCache, Preprocess, Prompt, Transcription
from edgemfm.pruners.checkpoint import TRANSFORMERS

CROSS = "cross.{layer}.{kind}"


class AudioEncoder(torch.nn.Module):
    """The encoder, then every decoder layer's cross-attention key and value projections."""

    def __init__(self, whisper: torch.nn.Module):
        super().__init__()
        self.encoder, self.layers = whisper.encoder, whisper.decoder.layers

    def forward(self, input_features):
        states = self.encoder(input_features=input_features).last_hidden_state
        out = []
        for layer in self.layers:
            attn = layer.encoder_attn
            shape = (states.shape[0], -1, attn.num_heads, attn.head_dim)
            out += [attn.k_proj(states).view(shape).transpose(1, 2), attn.v_proj(states).view(shape).transpose(1, 2)]
        return tuple(out)


class TextDecoder(torch.nn.Module):
    """Decoder layers + proj_out; the self-attention cache grows, the cross-attention one is given."""

    def __init__(self, whisper: torch.nn.Module, proj_out: torch.nn.Module):
        super().__init__()
        self.decoder, self.proj_out = whisper.decoder, proj_out

    def forward(self, inputs_embeds, attention_mask, position_ids, past, cross):
        from transformers import DynamicCache, EncoderDecoderCache

        pairs = lambda flat: [(flat[2 * i], flat[2 * i + 1]) for i in range(len(flat) // 2)]  # noqa: E731
        cache = EncoderDecoderCache(DynamicCache(ddp_cache_data=pairs(past)), DynamicCache(ddp_cache_data=pairs(cross)))
        out = self.decoder(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            # Cross-attention runs only when encoder states are given; with the cross cache filled
            # it reads K/V from the cache and never looks at them, so an empty tensor stands in.
            encoder_hidden_states=inputs_embeds[:, :0],
            cache=cache,
            use_cache=True,
        )
        present = [t for layer in out.past_key_values.self_attention_cache.layers for t in (layer.keys, layer.values)]
        return (self.proj_out(out.last_hidden_state), *present)


class StaticTextDecoder(StaticDecoder):
    """The decoder for pte: the self-attention cache in the program's static buffers; the
    cross-attention K/V come in at every call (computed once per clip by the audio encoder)."""

    def forward(self, inputs_embeds, input_pos, cross):
        from transformers import EncoderDecoderCache

        cache = EncoderDecoderCache(self.bind(input_pos), _held(cross))
        with self.attention() as ops:  # the self-attention on the LLM ops; the cross-attention keeps SDPA
            out = self.language_model(
                inputs_embeds=inputs_embeds,
                position_ids=input_pos[None],
                encoder_hidden_states=inputs_embeds[:, :0],  # unread: the cross cache is filled (see TextDecoder)
                cache=cache,
                use_cache=True,
                **ops,
            )
        return self.lm_head(out.last_hidden_state)


def _held(cross: tuple[torch.Tensor, ...]) -> Any:
    """A cache holding the cross-attention K/V (key, value per layer, flat) as they are.

    transformers' `DynamicCache(ddp_cache_data=...)` concatenates each onto an empty tensor: in a program,
    a copy of all of them at every decode step (18 MB a step for tiny.en, a sixth of the step's time).
    """
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    layers = []
    for key, value in zip(cross[::2], cross[1::2]):
        layer = DynamicLayer()
        layer.lazy_initialization(key, value)
        layer.keys, layer.values = key, value
        layers.append(layer)
    cache = DynamicCache()
    cache.layers = layers
    return cache


def _static_decoder(whisper: Any, proj_out: Any, decoder: ExportUnit, max_seq_len: int, seq: int = 3) -> ExportUnit:
    """`decoder` with a static self-attention cache of `max_seq_len` positions, for --format pte."""
    kv, cross = static_layout(decoder.kv_cache, max_seq_len), decoder.cross_attention
    return ExportUnit(
        module=StaticTextDecoder(whisper.decoder, proj_out, kv).eval(),
        args=(torch.randn(1, seq, whisper.config.d_model), torch.arange(seq), decoder.args[-1]),
        input_names=("inputs_embeds", POSITION, *cross.outputs),
        output_names=("logits",),
        dynamic_axes={
            "inputs_embeds": {0: "batch", 1: "seq"},
            POSITION: {0: "seq"},
            "logits": {0: "batch", 1: "seq"},
            **{n: {0: "batch"} for n in cross.outputs},
        },
        kv_cache=kv,
        items=seq,
        cross_attention=cross,
    )


def load(model_dir: Path) -> Any:
    from transformers import WhisperForConditionalGeneration

    return WhisperForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()


def audio_preprocess(model_dir: Path, config: Any) -> AudioPreprocess:
    """The checkpoint's feature extractor settings, checked against the encoder's positions.

    The encoder takes exactly `max_source_positions` x 2 mel frames (its two convolutions' stride), so
    the window is `n_samples` = that x `hop_length`: a checkpoint without a feature extractor file gets
    that window, and one whose file says otherwise is refused here rather than at run time.

    Example:
        >>> audio_preprocess(Path("models/whisper-tiny"), model.config).n_samples   # doctest: +SKIP
        480000
    """
    cfg = processor_settings(model_dir, "audio") or {}
    processor_class(cfg, ("WhisperFeatureExtractor",), model_dir, default="WhisperFeatureExtractor")
    if cfg.get("dither", 0.0):  # noise added to the signal: the runtime's features are deterministic
        raise ExportError(f"{model_dir}: WhisperFeatureExtractor dither {cfg['dither']} is not supported; allowed: 0.0")
    rate, hop = int(cfg.get("sampling_rate", 16000)), int(cfg.get("hop_length", 160))
    frames = 2 * config.max_source_positions  # conv1 stride 1, conv2 stride 2
    n_samples = int(cfg["n_samples"]) if "n_samples" in cfg else int(cfg.get("chunk_length", 0)) * rate or frames * hop
    n_mels = int(cfg.get("feature_size", config.num_mel_bins))
    if n_samples != frames * hop or n_mels != config.num_mel_bins:
        raise InputError(
            f"{model_dir}: the feature extractor makes {n_mels} mel bins x {n_samples // hop} frames "
            f"({n_samples / rate:g} s windows at hop {hop}); the encoder takes {config.num_mel_bins} x {frames} "
            f"(max_source_positions {config.max_source_positions} x 2); allowed: chunk_length {frames * hop / rate:g}"
        )
    return AudioPreprocess(
        sampling_rate=rate, n_fft=int(cfg.get("n_fft", 400)), hop_length=hop, n_mels=n_mels, n_samples=n_samples
    )


def start_tokens(model: Any) -> list[int]:
    """The decoder's first tokens, as `generate` starts a transcription without timestamps.

    Example:
        >>> start_tokens(whisper_tiny_en)   # doctest: +SKIP
        [50257, 50362]
    """
    gen = model.generation_config
    tokens = [gen.decoder_start_token_id]
    if getattr(gen, "no_timestamps_token_id", None) is not None:
        tokens.append(gen.no_timestamps_token_id)
    return tokens


def _units(model: Any, pre: AudioPreprocess) -> dict[str, ExportUnit]:
    config, whisper = model.config, model.model
    layers, heads = config.decoder_layers, config.decoder_attention_heads
    kv = KVCache(layers, heads, config.d_model // heads, past=PAST, present=PRESENT)
    frames = 2 * config.max_source_positions  # the encoder takes exactly this many mel frames
    names = [(i, k) for i in range(layers) for k in ("key", "value")]
    past_names = tuple(PAST.format(layer=i, kind=k) for i, k in names)
    present_names = tuple(PRESENT.format(layer=i, kind=k) for i, k in names)
    cross_names = tuple(CROSS.format(layer=i, kind=k) for i, k in names)
    seq, past_len = 3, 2
    encoder = ExportUnit(
        module=AudioEncoder(whisper).eval(),
        args=(torch.randn(1, pre.n_mels, frames),),
        input_names=("input_features",),
        output_names=cross_names,
        dynamic_axes={"input_features": {0: "batch"}, **{n: {0: "batch"} for n in cross_names}},
    )
    decoder = ExportUnit(
        module=TextDecoder(whisper, model.proj_out).eval(),
        args=(
            torch.randn(1, seq, config.d_model),
            torch.ones(1, past_len + seq, dtype=torch.int64),
            torch.arange(past_len, past_len + seq)[None],
            tuple(torch.randn(1, heads, past_len, kv.head_dim) for _ in names),
            tuple(torch.randn(1, heads, config.max_source_positions, kv.head_dim) for _ in names),
        ),
        input_names=("inputs_embeds", "attention_mask", "position_ids", *past_names, *cross_names),
        output_names=("logits", *present_names),
        dynamic_axes={
            "inputs_embeds": {0: "batch", 1: "seq"},
            "attention_mask": {0: "batch", 1: "total_seq"},
            "position_ids": {0: "batch", 1: "seq"},
            "logits": {0: "batch", 1: "seq"},
            **{n: {0: "batch", 2: "past_seq"} for n in past_names},
            **{n: {0: "batch"} for n in cross_names},
            **{n: {0: "batch", 2: "total_seq"} for n in present_names},
        },
        kv_cache=kv,
        items=seq,
        cross_attention=CrossAttention(
            media="audio", encoder="audio_encoder", input="input_features", outputs=cross_names
        ),
    )
    decoder.static_cache = partial(_static_decoder, whisper, model.proj_out, decoder)
    return {
        "audio_encoder": encoder,
        "token_embedding": embedding_unit(whisper.decoder.embed_tokens),
        "text_decoder": decoder,
    }


def split(model: Any, model_dir: Path) -> Split:
    from tokenizers import Tokenizer as HFTokenizer

    pre = audio_preprocess(model_dir, model.config)
    tokenizer, tokenizer_file = tokenizer_spec(model_dir, model.generation_config)
    vocab = HFTokenizer.from_file(str(tokenizer_file))
    start = [vocab.id_to_token(t) for t in start_tokens(model)]
    if None in start:
        raise InputError(f"{model_dir}: decoder start tokens {start_tokens(model)} are not all in tokenizer.json")
    transcription = _transcription(model, vocab)
    previous = transcription.previous if transcription else _previous_token(model, vocab)
    return Split(
        units=_units(model, pre),
        # The start tokens are spelled out and the tokenizer file's own specials are not added:
        # Whisper's tokenizer.json would append <|endoftext|> to the prompt. A prompt is earlier text,
        # before the start token (transformers' prompt_ids: <|startofprev|>, then " " + the prompt);
        # a checkpoint without <|startofprev|> takes none.
        prompt=Prompt(
            template="".join(start) + "{media}",
            add_special_tokens=False,
            previous=None if previous is None else vocab.id_to_token(previous) + " {prompt}",
        ),
        preprocess=Preprocess(audio=pre),
        tokenizer=tokenizer,
        tokenizer_file=tokenizer_file,
        generation=Generation(
            suppress_tokens=tuple(model.generation_config.suppress_tokens or ()),
            begin_suppress_tokens=tuple(model.generation_config.begin_suppress_tokens or ()),
            transcription=transcription,
        ),
    )


def _previous_token(model: Any, vocab: Any) -> int | None:
    """<|startofprev|>, after which Whisper reads earlier text; None where the checkpoint has none."""
    token = getattr(model.generation_config, "prev_sot_token_id", None)
    return token if token is not None else vocab.token_to_id("<|startofprev|>")


def _transcription(model: Any, vocab: Any) -> Transcription | None:
    """The long-form tokens, as `WhisperForConditionalGeneration.generate(return_timestamps=True)` reads
    them; None for a checkpoint without timestamp tokens (it transcribes one window)."""
    gen, config, encoder = model.generation_config, model.config, model.model.encoder
    no_timestamps = getattr(gen, "no_timestamps_token_id", None)
    if no_timestamps is None or no_timestamps + 1 >= config.vocab_size:
        return None
    return Transcription(
        start=(gen.decoder_start_token_id,),
        no_timestamps=no_timestamps,
        previous=_previous_token(model, vocab),
        max_target_positions=config.max_target_positions,
        frames_per_position=encoder.conv1.stride[0] * encoder.conv2.stride[0],
        max_initial_timestamp=getattr(gen, "max_initial_timestamp_index", None),
    )


FAMILY = Family(
    name="whisper",
    model_types=("whisper",),
    architectures=("WhisperForConditionalGeneration",),
    tolerance=1e-4,
    load=load,
    split=split,
    prunable=TRANSFORMERS,
)
