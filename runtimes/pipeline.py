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
from edgemfm.runtimes.decoding import detokenize, greedy
from edgemfm.runtimes.onnxruntime import OrtSession, choose_providers
from edgemfm.runtimes.media import Prepared, prepare
from edgemfm.runtimes.positions import prefill_positions, step_positions
from edgemfm.runtimes.preprocess import ImageLike


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

    def prepare(self, media: dict[str, Sequence] | None) -> dict[str, list[Prepared]]:
        """Pre-process every media item as the manifest describes (tiles, patches or one view).

        Example:
            >>> len(pipe.prepare({"image": ["cat.png"]})["image"][0].calls)  # doctest: +SKIP
            10
        """
        specs = self.manifest.prompt.media
        for kind, items in (media or {}).items():
            if items and kind not in specs:
                raise InputError(f"this bundle takes no {kind} input; it takes: {', '.join(['text', *specs])}")
        return {kind: [prepare(kind, item, self.manifest) for item in items] for kind, items in (media or {}).items() if items}

    def prompt_ids(self, prompt: str, media: dict[str, int | Sequence[Prepared]] | None = None) -> list[int]:
        """The token ids of the templated prompt, with one placeholder token per encoder call.

        `media` gives, per kind, a number of single-call items or the prepared items.

        Example:
            >>> pipe.prompt_ids("What is this?", {"image": 1})[:3]  # doctest: +SKIP
            [256, 85, 83]
        """
        specs = self.manifest.prompt.media
        media = {kind: n for kind, n in (media or {}).items() if n}
        for kind in media:
            if kind not in specs:
                raise InputError(f"this bundle takes no {kind} input; it takes: {', '.join(['text', *specs])}")
        pre = self.manifest.preprocess
        if isinstance(media.get("image"), int) and (pre.image_splitting or pre.image_patches):
            raise InputError("this bundle's images span several slots or a grid; pass items from Pipeline.prepare, not a count")
        texts = {k: specs[k].placeholder * v if isinstance(v, int) else "".join(p.text for p in v) for k, v in media.items()}
        calls = {k: v if isinstance(v, int) else sum(len(p.calls) for p in v) for k, v in media.items()}
        ids = self.tokenizer.encode(self.manifest.prompt.template.format(media="".join(texts.values()), prompt=prompt)).ids
        for kind, spec in specs.items():
            if ids.count(spec.token_id) != calls.get(kind, 0):
                raise InputError(f"the prompt must not contain the {kind} placeholder {spec.placeholder.strip()!r}")
        return ids

    def embed(self, ids: Sequence[int], media: dict[str, Sequence] | None = None) -> np.ndarray:
        """Decoder inputs [1, seq, hidden]: token embeddings with each encoder call's rows spliced in.

        Calls (images, tiles, clips) are encoded one at a time, in prompt order, so only one encoder
        activation is live; `media` holds raw or prepared items per kind.
        """
        return self._splice(ids, media)[0]

    def _splice(self, ids: Sequence[int], media: dict[str, Sequence] | None) -> tuple[np.ndarray, list]:
        """The decoder inputs and their segments: text-run lengths and (t, h, w) grids of image rows."""
        g = self.manifest.generation
        tokens = self.sessions[g.embedding].run({"input_ids": np.asarray([ids], dtype=np.int64)})["inputs_embeds"]
        specs = self.manifest.prompt.media
        prepared = {k: v if all(isinstance(p, Prepared) for p in v) else self.prepare({k: v})[k] for k, v in (media or {}).items() if v}
        calls = {k: iter([(c, grid) for p in v for c, grid in zip(p.calls, p.grids)]) for k, v in prepared.items()}
        slots = sorted((pos, kind) for kind, spec in specs.items() for pos, t in enumerate(ids) if t == spec.token_id)
        pieces, segments, start = [], [], 0
        for pos, kind in slots:
            spec = specs[kind]
            feeds, grid = next(calls[kind])
            rows = self.sessions[spec.encoder].run(feeds)[spec.output]
            rows = rows.reshape(1, -1, rows.shape[-1]).astype(tokens.dtype)
            pieces += [tokens[:, start:pos], rows]
            segments += [pos - start, grid or rows.shape[1]]
            start = pos + 1
        pieces.append(tokens[:, start:])
        segments.append(len(ids) - start)
        return (np.concatenate(pieces, axis=1) if slots else tokens), segments

    def generate_tokens(
        self,
        prompt: str,
        images: Sequence[ImageLike] = (),
        audio: Sequence[str] = (),
        max_new_tokens: int | None = None,
    ) -> Iterator[int]:
        """New token ids, greedily, until an end-of-sequence token or `max_new_tokens`."""
        media = self.prepare({"image": list(images), "audio": list(audio)})
        ids = self.prompt_ids(prompt, media)
        embeds, segments = self._splice(ids, media)
        g, kv = self.manifest.generation, self.manifest.components[self.manifest.generation.decoder].kv_cache
        decoder, embedding = self.sessions[g.decoder], self.sessions[g.embedding]
        past = {
            kv.past.format(layer=i, kind=k): np.zeros((1, kv.kv_heads, 0, kv.head_dim), np.float32)
            for i in range(kv.layers)
            for k in ("key", "value")
        }
        positions, shift = prefill_positions(g.positions, segments)
        total = 0
        limit = g.max_new_tokens if max_new_tokens is None else max_new_tokens
        for _ in range(limit):
            seq = embeds.shape[1]
            out = decoder.run({
                "inputs_embeds": embeds,
                "attention_mask": np.ones((1, total + seq), np.int64),
                "position_ids": positions,
                **past,
            })
            total += seq
            token = greedy(out["logits"][0, -1])
            if token in self.manifest.tokenizer.eos_token_ids:
                return
            yield token
            past = {name: out[kv.present.format(**_layer_kind(name))] for name in past}
            embeds = embedding.run({"input_ids": np.asarray([[token]], dtype=np.int64)})["inputs_embeds"]
            positions = step_positions(g.positions, total + shift)

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
