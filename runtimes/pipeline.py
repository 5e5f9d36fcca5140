"""`load` a bundle into a `Pipeline`, and `generate` text from a prompt with images.

The pipeline reads only the manifest: which component embeds tokens, which encodes each kind
of media, which placeholder token receives the encoder's rows, and the decoder's KV layout.

Example:
    >>> import edgemfm
    >>> pipe = edgemfm.load("bundles/default-jetson")                          # doctest: +SKIP
    >>> "".join(pipe.generate("What is this?", images=["cat.png"], max_new_tokens=8))  # doctest: +SKIP
    'A cat on a mat.'
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from edgemfm import bundle
from edgemfm.errors import InputError
from edgemfm.manifest import Manifest
from edgemfm.profiles import DeviceProfile, load_profile
from edgemfm.runtimes.decoding import detokenize, greedy
from edgemfm.runtimes.kv_cache import KV_CACHES
from edgemfm.runtimes.preprocess import PREPROCESSORS, ImageLike

log = logging.getLogger("edgemfm")
# Component format -> backend module (an `open_components` function), imported only when a bundle needs it.
BACKENDS = {"onnx": "edgemfm.runtimes.onnxruntime", "pte": "edgemfm.runtimes.executorch"}


class Pipeline:
    """A loaded bundle: one session per component, the tokenizer and the pre-processors."""

    def __init__(self, path: Path, manifest: Manifest, profile: DeviceProfile, threads: int = 0):
        self.path, self.manifest, self.profile = path, manifest, profile
        self.sessions = {}
        for format in dict.fromkeys(c.format for c in manifest.components.values()):
            components = {name: c for name, c in manifest.components.items() if c.format == format}
            self.sessions |= importlib.import_module(BACKENDS[format]).open_components(path, components, profile, threads)
        self.tokenizer = Tokenizer.from_file(str(path / manifest.tokenizer.file))

    @property
    def provider(self) -> str:
        """The execution provider the decoder runs on."""
        return self.sessions[self.manifest.generation.decoder].provider

    def prompt_ids(self, prompt: str, counts: dict[str, int] | None = None) -> list[int]:
        """The token ids of the templated prompt, with one placeholder token per media item.

        Example:
            >>> pipe.prompt_ids("What is this?", {"image": 1})[:3]  # doctest: +SKIP
            [256, 85, 83]
        """
        media = self.manifest.prompt.media
        counts = {kind: n for kind, n in (counts or {}).items() if n}
        for kind in counts:
            if kind not in media:
                raise InputError(f"this bundle takes no {kind} input; it takes: {', '.join(['text', *media])}")
        placeholders = "".join(media[kind].placeholder * n for kind, n in counts.items())
        ids = self.tokenizer.encode(self.manifest.prompt.template.format(media=placeholders, prompt=prompt)).ids
        for kind, spec in media.items():
            if ids.count(spec.token_id) != counts.get(kind, 0):
                raise InputError(f"the prompt must not contain the {kind} placeholder {spec.placeholder.strip()!r}")
        return ids

    def embed(self, ids: Sequence[int], media: dict[str, Sequence] | None = None) -> np.ndarray:
        """Decoder inputs [1, seq, hidden]: token embeddings with each media item's rows spliced in.

        Items are encoded one at a time, in prompt order, so only one encoder activation is live.
        """
        g = self.manifest.generation
        tokens = self.sessions[g.embedding].run({"input_ids": np.asarray([ids], dtype=np.int64)})["inputs_embeds"]
        specs = self.manifest.prompt.media
        items = {kind: iter(media.get(kind, ())) for kind in specs} if media else {}
        slots = sorted((pos, kind) for kind, spec in specs.items() for pos, t in enumerate(ids) if t == spec.token_id)
        pieces, start = [], 0
        for pos, kind in slots:
            spec = specs[kind]
            x = PREPROCESSORS[kind](next(items[kind]), self.manifest.preprocess)
            rows = self.sessions[spec.encoder].run({spec.input: x[None]})[spec.output]
            pieces += [tokens[:, start:pos], rows.reshape(1, -1, rows.shape[-1]).astype(tokens.dtype)]
            start = pos + 1
        pieces.append(tokens[:, start:])
        return np.concatenate(pieces, axis=1) if slots else tokens

    def generate_tokens(
        self,
        prompt: str,
        images: Sequence[ImageLike] = (),
        audio: Sequence[str] = (),
        max_new_tokens: int | None = None,
    ) -> Iterator[int]:
        """New token ids, greedily, until an end-of-sequence token or `max_new_tokens`."""
        media = {"image": list(images), "audio": list(audio)}
        ids = self.prompt_ids(prompt, {kind: len(items) for kind, items in media.items()})
        g, kv = self.manifest.generation, self.manifest.components[self.manifest.generation.decoder].kv_cache
        decoder, embedding = self.sessions[g.decoder], self.sessions[g.embedding]
        cache = KV_CACHES[kv.kind](kv)
        cache.check(len(ids))  # before any work: the prompt's tokens alone may not fit
        embeds = self.embed(ids, media)
        limit = g.max_new_tokens if max_new_tokens is None else max_new_tokens
        for _ in range(limit):
            seq = embeds.shape[1]
            out = decoder.run({"inputs_embeds": embeds, **cache.feeds(seq)})
            cache.advance(out, seq)
            token = greedy(out["logits"][0, -1])
            if token in self.manifest.tokenizer.eos_token_ids:
                return
            yield token
            if cache.free < 1:
                log.warning("edgemfm: the KV cache's %d positions are full; the answer stops here", kv.max_seq_len)
                return
            embeds = embedding.run({"input_ids": np.asarray([[token]], dtype=np.int64)})["inputs_embeds"]

    def generate(
        self,
        prompt: str,
        images: Sequence[ImageLike] = (),
        audio: Sequence[str] = (),
        max_new_tokens: int | None = None,
    ) -> Iterator[str]:
        """Pieces of the answer's text as they are generated.

        Example:
            >>> for piece in pipe.generate("Describe the image.", images=["photo.jpg"]):  # doctest: +SKIP
            ...     print(piece, end="", flush=True)
        """
        return detokenize(self.tokenizer, self.generate_tokens(prompt, images, audio, max_new_tokens))


def load(path: str | Path, device: str | None = None, threads: int = 0) -> Pipeline:
    """Open a bundle, verify every file's sha256, and start a session per component.

    `device` picks the profile whose execution providers are tried (default: the bundle's).

    Example:
        >>> pipe = edgemfm.load("bundles/default-jetson", device="jetson")  # doctest: +SKIP
    """
    path = Path(path)
    manifest = bundle.read_manifest(path)
    profile = load_profile(device or manifest.profile)
    return Pipeline(path, manifest, profile, threads=threads)
