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

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from edgemfm import bundle
from edgemfm.errors import InputError
from edgemfm.manifest import Manifest
from edgemfm.profiles import DeviceProfile, load_profile
from edgemfm.runtimes.decoding import detokenize, greedy, suppress
from edgemfm.runtimes.onnxruntime import OrtSession, choose_providers
from edgemfm.runtimes.preprocess import PREPROCESSORS, ImageLike


class Pipeline:
    """A loaded bundle: one session per component, the tokenizer and the pre-processors."""

    def __init__(self, path: Path, manifest: Manifest, profile: DeviceProfile, threads: int = 0):
        self.path, self.manifest, self.profile = path, manifest, profile
        providers = choose_providers(profile.execution_providers)
        several = len(manifest.components) > 1
        self.sessions = {
            name: OrtSession.load(path / c.file, providers, threads=threads, spin=not several)
            for name, c in manifest.components.items()
        }
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
        cross = self.manifest.components[self.manifest.generation.decoder].cross_attention
        counts = {kind: n for kind, n in (counts or {}).items() if n}
        takes = ["text", *media, *([cross.media] if cross else [])]
        for kind in counts:
            if kind not in takes:
                raise InputError(f"this bundle takes no {kind} input; it takes: {', '.join(takes)}")
        placeholders = "".join(media[kind].placeholder * n for kind, n in counts.items() if kind in media)
        text = self.manifest.prompt.template.format(media=placeholders, prompt=prompt)
        ids = self.tokenizer.encode(text, add_special_tokens=self.manifest.prompt.add_special_tokens).ids
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
            x, length = PREPROCESSORS[kind](next(items[kind]), self.manifest.preprocess)
            feeds = {spec.input: x[None], **({spec.length: np.asarray([length], np.int64)} if spec.length else {})}
            rows = self.sessions[spec.encoder].run(feeds)[spec.output]
            pieces += [tokens[:, start:pos], rows.reshape(1, -1, rows.shape[-1]).astype(tokens.dtype)]
            start = pos + 1
        pieces.append(tokens[:, start:])
        return np.concatenate(pieces, axis=1) if slots else tokens

    def cross_attention_feeds(self, media: dict[str, Sequence]) -> dict[str, np.ndarray]:
        """What an encoder-decoder bundle's decoder attends to at every step (Whisper: each
        layer's cross-attention keys and values), encoded once; empty for decoder-only bundles."""
        cross = self.manifest.components[self.manifest.generation.decoder].cross_attention
        if cross is None:
            return {}
        items = media.get(cross.media, [])
        if len(items) != 1:
            raise InputError(f"this bundle transcribes exactly one {cross.media} input per call; got {len(items)}")
        x, _ = PREPROCESSORS[cross.media](items[0], self.manifest.preprocess)
        out = self.sessions[cross.encoder].run({cross.input: x[None]})
        return {name: out[name] for name in cross.outputs}

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
        embeds = self.embed(ids, media)
        attended = self.cross_attention_feeds(media)
        g, kv = self.manifest.generation, self.manifest.components[self.manifest.generation.decoder].kv_cache
        decoder, embedding = self.sessions[g.decoder], self.sessions[g.embedding]
        past = {
            kv.past.format(layer=i, kind=k): np.zeros((1, kv.kv_heads, 0, kv.head_dim), np.float32)
            for i in range(kv.layers)
            for k in ("key", "value")
        }
        total = 0
        limit = g.max_new_tokens if max_new_tokens is None else max_new_tokens
        for step in range(limit):
            seq = embeds.shape[1]
            out = decoder.run({
                "inputs_embeds": embeds,
                "attention_mask": np.ones((1, total + seq), np.int64),
                "position_ids": np.arange(total, total + seq, dtype=np.int64)[None],
                **past,
                **attended,
            })
            total += seq
            banned = g.suppress_tokens + (g.begin_suppress_tokens if step == 0 else ())
            token = greedy(suppress(out["logits"][0, -1], banned))
            if token in self.manifest.tokenizer.eos_token_ids:
                return
            yield token
            past = {name: out[kv.present.format(**_layer_kind(name))] for name in past}
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


def _layer_kind(past_name: str) -> dict[str, str]:
    _, layer, kind = past_name.split(".")
    return {"layer": layer, "kind": kind}


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
