"""The bundle manifest: everything the runtime needs to know, so it never parses file names.

A bundle is a directory holding `manifest.json` and the files it lists; each file's sha256 and
size are recorded and checked at load.

Example:
    >>> m = Manifest.from_json(open("bundle/manifest.json").read())  # doctest: +SKIP
    >>> m.components["text_decoder"].kv_cache.layers                 # doctest: +SKIP
    4
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from edgemfm.errors import BundleError, ConfigError
from edgemfm.recipe import Recipe
from edgemfm.records import from_dict, to_dict
from edgemfm.report import Report

# 2: the report is a typed `Report` (version 1's was a free dict; `_from_v1` reads those bundles)
SCHEMA_VERSION = 2
READS = (1, 2)  # the schema versions this edgemfm loads
BUNDLE_KIND = "edgemfm-bundle"  # tells a bundle's manifest apart from any other manifest.json


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: float32, int64 ...
    shape: tuple[int | str, ...]  # str entries are named dynamic axes


@dataclass(frozen=True)
class KVCache:
    layers: int
    kv_heads: int
    head_dim: int
    past: str  # input name template, e.g. "past.{layer}.{kind}" with kind in key/value ("" when static)
    present: str  # output name template ("" when static)
    # "dynamic": the cache enters and leaves as tensors that grow by each call's tokens (onnx).
    # "static": the program owns fixed [max_seq_len] buffers and writes each call's tokens at the
    # positions fed as `position` (pte); nothing about the cache crosses the boundary.
    kind: Literal["dynamic", "static"] = "dynamic"
    max_seq_len: int = 0  # static: positions the buffers hold (prompt + answer)
    position: str = ""  # static: input taking the cache positions [seq] of this call's tokens
    # dynamic, rotary inside GroupQueryAttention (exporters/fusions/rotary_attention.py): positions of its
    # cos/sin table (0: rotated outside the kernel, positions unbounded) and the angle per position of each
    # rotated pair, with which the runtime re-bases the cached keys when a stream passes the table
    rotary_table: int = 0
    rotary_frequencies: tuple[float, ...] = ()
    # the cached tensors' numpy dtype; "" the component's own. "int8" (export --kv-cache int8): dynamic, ONNX
    # Runtime's GroupQueryAttention stores and reads the cache as int8 with static scales calibrated at export
    # (quantizers/kv_cache.py), a quarter of float32's bytes per position; static, the pte program's own buffers
    # hold int8 with a scale per token and head (exporters/llm_ops.py), (head_dim + 5) / (4 x head_dim) of float32's
    dtype: str = ""
    # with an int8 cache, how its scales are laid out: "per_tensor" (one per layer for K, one for V) or "per_channel"
    # (per head and channel; the keys' shared by each rotated pair (i, i + d/2)): either way a re-base turns the
    # stored integers without them. "per_token" (pte): a float32 scale and int8 zero point per position and head,
    # beside the cache in the program, which sets them as it writes each token (no calibration)
    scales: str = ""
    # dynamic: nothing in the graph reads a past tensor but GroupQueryAttention (exporters/fusions/shared_cache.py),
    # so the runtime may bind one max-length buffer per tensor as both past and present, appended in place
    shared: bool = False


@dataclass(frozen=True)
class CrossAttention:
    """An encoder-decoder model's link: one media item is encoded once, and the named encoder
    outputs (e.g. each layer's cross-attention keys and values) feed the decoder inputs of the
    same names at every step. The item takes no place in the token sequence."""

    media: str  # "audio": the kind of item the decoder attends to, exactly one per generation
    encoder: str  # component name
    input: str  # encoder input fed with the pre-processed item
    outputs: tuple[str, ...]  # encoder outputs passed unchanged to the decoder inputs of the same names


@dataclass(frozen=True)
class Component:
    file: str
    format: Literal["onnx", "pte"]
    dtype: str  # the float type of its activations
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    weight_bytes: int  # bytes of weights the runtime maps
    peak_activation_bytes: int  # largest live activation at the example shapes (encoders: measured in ONNX Runtime)
    kv_cache: KVCache | None = None
    cross_attention: CrossAttention | None = None  # encoder-decoder models (Whisper): what the decoder attends to
    flops_per_item: int = 0  # per image / audio window / token, counted by torch at export
    method: str | None = None  # the named method in a multi-method program (pte); None for onnx
    # onnx: edgemfm kernels its graph calls beyond ONNX Runtime's own (runtimes/kernels/<name>.cpp), built and
    # registered by the runtime: "matmul_int4" (int4 and int8 matmuls), "matmul_f32", "attention" (export
    # --kernels edgemfm)
    kernels: tuple[str, ...] = ()


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    bytes: int


@dataclass(frozen=True)
class Media:
    placeholder: str  # text in the prompt that stands for one item (an image, an audio clip)
    token_id: int  # the placeholder's token; its positions receive the encoder's output rows
    encoder: str  # component name
    input: str  # encoder input fed with the pre-processed item
    output: str  # encoder output whose rows are merged into the token sequence
    # encoder input fed with each patch's (row, col), in the order of ImagePatches (None: no such input)
    patch_positions: str | None = None
    length: str | None = None  # encoder input fed the item's unpadded length (Qwen2-Audio masks padded mel frames)
    visual_tokens: int | None = None  # export --visual-tokens: at most this many rows per image (tile); None: all


@dataclass(frozen=True)
class Prompt:
    template: str  # with {media} and {prompt}: "USER: {media}{prompt} ASSISTANT:"
    media: dict[str, Media] = field(default_factory=dict)  # "image" / "audio" -> Media
    add_special_tokens: bool = True  # False: the template spells out every special token itself (Whisper)
    # where a prompt goes when the model reads it as earlier text rather than the start of its answer
    # (Whisper: "<|startofprev|> {prompt}" before <|startoftranscript|>); None: into the template's {prompt},
    # and a template without {prompt} takes no prompt
    previous: str | None = None
    # a chat's later turn, after an answer and its end-of-sequence token (the checkpoint's chat template: the text
    # it writes between an answer and the next one); None: the template again, without the tokenizer's special tokens
    turn: str | None = None


@dataclass(frozen=True)
class ImagePreprocess:
    """resize -> centre crop -> rescale -> normalize, as the checkpoint's image processor does it.

    A processor's do_rescale false is `rescale` 1.0 and its do_normalize false is mean 0 / std 1:
    the same numbers, with no flag for the runtime to read.
    """

    size: int  # shortest edge after resize (resize "shortest_edge")
    crop: int  # centre crop, square
    resample: Literal["bicubic", "bilinear", "nearest", "lanczos", "box", "hamming"]
    rescale: float  # multiply pixel values (0..255) by this
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # "shortest_edge" keeps the aspect (CLIP), "height_width" stretches to height x width (SigLIP),
    # "none" leaves the image as it is (do_resize false). The default is what bundles before it meant.
    resize: Literal["shortest_edge", "height_width", "none"] = "shortest_edge"
    height: int = 0  # resize "height_width": the target height in pixels
    width: int = 0  # resize "height_width": the target width in pixels
    center_crop: bool = True  # False: no crop after the resize (SigLIP, or do_center_crop false)


@dataclass(frozen=True)
class ImageSplitting:
    """Idefics3-style tiling: one encoder call per tile, then one for the whole image (the global view).

    The image's text is, for a grid of tiles, `tile` (with {row} {col} from 1) + placeholder per tile,
    `row_end` after each row, then `split_global` + placeholder + `end`; an image that needed no
    splitting is `single` + placeholder + `end`. Each placeholder receives one call's rows.
    """

    longest_edge: int  # first resize: the longest edge to this (aspect kept, height/width made even)
    tile: int  # tile side in pixels; the image is resized up to multiples of it, then cut
    tile_text: str  # e.g. "<fake_token_around_image><row_{row}_col_{col}>"
    row_end: str  # e.g. "\n"
    split_global: str  # e.g. "\n<fake_token_around_image><global-img>"
    single: str  # e.g. "<fake_token_around_image><global-img>"
    end: str  # e.g. "<fake_token_around_image>"


@dataclass(frozen=True)
class ImagePatches:
    """Qwen2-VL-style dynamic resolution: resize to multiples of patch * merge, cut into flat patches.

    Patches are ordered block-major (merge x merge blocks, row by row); one encoder call per image
    returns (grid_h / merge) * (grid_w / merge) rows, which fill the image's one placeholder.
    """

    patch: int  # patch side in pixels
    temporal_patch: int  # frames per patch; a still image is repeated this many times
    merge: int  # patches merged per side into one decoder row
    min_pixels: int
    max_pixels: int
    vision_start: str = ""  # text before the placeholder, e.g. "<|vision_start|>"
    vision_end: str = ""  # text after it


@dataclass(frozen=True)
class AudioPreprocess:
    """Whisper-style log-mel settings (WhisperFeatureExtractor's, which Qwen2-Audio shares)."""

    sampling_rate: int  # Hz; WAV files at other rates are resampled to it
    n_fft: int
    hop_length: int
    n_mels: int
    n_samples: int  # clips are zero-padded or cut to this many samples (30 s for Whisper)
    min_frequency: float = 0.0  # Hz, the mel filters' span
    max_frequency: float = 8000.0


@dataclass(frozen=True)
class Preprocess:
    image: ImagePreprocess | None = None
    image_splitting: ImageSplitting | None = None  # with `image`: cut each image into tiles
    image_patches: ImagePatches | None = None  # with `image`: dynamic resolution patches
    audio: AudioPreprocess | None = None


@dataclass(frozen=True)
class Tokenizer:
    file: str  # a Hugging Face tokenizers JSON file
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]  # the file's own post-processor adds BOS where the model wants it


@dataclass(frozen=True)
class Transcription:
    """Whisper's tokens for audio of any length: windows with timestamps, and earlier text before the start.

    A window's decoder prompt is `previous` + earlier tokens (optional), then `start`; the decoder then
    writes text between pairs of timestamp tokens, and the last timestamp says where the next window
    starts (the OpenAI/transformers long-form rule, runtimes/longform.py).
    """

    start: tuple[int, ...]  # <|startoftranscript|> (and language, task): a window's first tokens with timestamps
    no_timestamps: int  # <|notimestamps|>; the timestamp tokens <|0.00|>, <|0.02|> ... follow it
    previous: int | None  # <|startofprev|>: earlier text goes after it, before `start`; None: the checkpoint has none
    max_target_positions: int  # the decoder's positions: prompt and generated tokens of one window together
    frames_per_position: int = 2  # mel frames per encoder position (the convolutions' stride): timestamps step by it
    time_precision: float = 0.02  # seconds per timestamp step
    max_initial_timestamp: int | None = 50  # steps the first timestamp of a window may reach (1 s)


@dataclass(frozen=True)
class HeadSubset:
    """A draft's head over part of the vocabulary (`export --draft-vocab`): its logits' columns are `ids`.

    The runtime hands on logits over the whole vocabulary, -inf outside `ids`, so every caller
    (greedy, sampling, scoring) reads the same shape; a target checks every draft token, so a draft's
    answer stays the target's own.
    """

    vocab_size: int  # the model's whole vocabulary: the width of the logits the runtime hands on
    ids: tuple[int, ...]  # the token of each of the head's output columns, in order


@dataclass(frozen=True)
class Generation:
    max_new_tokens: int = 64
    embedding: str = "token_embedding"  # component turning token ids into decoder inputs
    decoder: str = "text_decoder"
    # "arange": position i for token i; "mrope": 3-D (temporal, height, width) ids from each image's
    # patch grid (Qwen2-VL), fed to the decoder as position_ids [3, batch, seq]
    positions: Literal["arange", "mrope"] = "arange"
    suppress_tokens: tuple[int, ...] = ()  # never generated (Whisper's non-speech symbols)
    begin_suppress_tokens: tuple[int, ...] = ()  # not generated first (Whisper: a blank, or end of text)
    transcription: Transcription | None = None  # a speech model's long-form tokens (Whisper with timestamps)
    head_subset: HeadSubset | None = None  # a draft's head over a vocabulary subset; None: the whole vocabulary


@dataclass(frozen=True)
class StreamingSettings:
    audio_window_s: float
    image_tile: int
    prefill_chunk: int
    max_seq_len: int
    sink_tokens: int


@dataclass(frozen=True)
class Manifest:
    schema_version: int
    kind: str
    model_id: str
    family: str
    profile: str
    recipe: Recipe
    components: dict[str, Component]
    files: dict[str, FileEntry]
    tokenizer: Tokenizer
    prompt: Prompt
    preprocess: Preprocess
    generation: Generation
    streaming: StreamingSettings
    report: Report = field(default_factory=Report)

    def to_json(self) -> str:
        return json.dumps(to_dict(self), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = "manifest.json") -> Manifest:
        """Parse and check a manifest; anything foreign or malformed raises BundleError."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise BundleError(f"{where}: not valid JSON ({e.msg} at line {e.lineno})") from None
        if not isinstance(data, dict) or data.get("kind") != BUNDLE_KIND:
            raise BundleError(f"{where}: not an edgemfm bundle manifest (kind must be {BUNDLE_KIND!r})")
        if data.get("schema_version") not in READS:
            raise BundleError(
                f"{where}: schema version {data.get('schema_version')!r} is not supported; "
                f"this edgemfm reads versions {', '.join(map(str, READS))}"
            )
        if data["schema_version"] == 1:
            data = _from_v1(data)
        try:
            return from_dict(cls, data, where=where)
        except ConfigError as e:
            raise BundleError(str(e)) from None

    def with_files(self, files: dict[str, FileEntry]) -> Manifest:
        return replace(self, files=files)


def _from_v1(data: dict[str, Any]) -> dict[str, Any]:
    """A version 1 manifest as version 2: the same keys, its free report read into the typed one.

    Version 1 wrote the report's keys as version 2 names them, but left out what a record now
    defaults (a pruning stage's component, a plan layer's `estimated: false`, the notes, the
    delegation of an onnx bundle); `from_dict` fills those in. A bundle assembled by `tune` for
    measuring wrote `"tune": {}` where version 2 writes null. A key neither version knows is refused.
    """
    old = data.get("report")
    if isinstance(old, dict) and old.get("tune") == {}:
        data = {**data, "report": {**old, "tune": None}}
    return {**data, "schema_version": SCHEMA_VERSION}
