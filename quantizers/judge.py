"""How the auto plan and the report judge a quantized component: the noise it adds where it matters.

- an encoder or projector: the squared error of its output (SQNR);
- the text decoder: its next-token distribution (`metrics.distribution_power`): logits centred
  and weighted by their float probabilities, so a common shift of every logit, or an error on a
  token the model never picks, counts for nothing;
- the token embedding: through the float decoder, on that same distribution (an encoder-decoder's
  decoder attending to the cross-attention keys/values of its own feeds, in turn). Its own output's
  SQNR says little about the answer: on SmolLM2-135M the table at int4 loses the most at its own
  output, yet costs the next-token distribution and perplexity the least of any kind of layer
  (BENCHMARKS.md, result quantization-smollm2: benchmarks/quantization/smollm2_layer_kinds.py).
  Judged by the decoder, its bytes compete with the decoder's layers on one scale.

Example:
    >>> judge = Judge(float_dir, manifest, feeds, probe)   # doctest: +SKIP
    >>> judge.judged_by("token_embedding"), judge.sqnr_db("token_embedding", Path("b/token_embedding.onnx"))   # doctest: +SKIP
    ('text_decoder', 31.2)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from edgemfm.manifest import Manifest
from edgemfm.quantizers.calibration import decoder_feeds
from edgemfm.quantizers.context import Feeds
from edgemfm.quantizers.metrics import MAX_DB, agreement, distribution_power, outputs
from edgemfm.recipe import Recipe
from edgemfm.report import Judged


class Judge:
    """Signal and noise of every measured component, each on the output that judges it.

    `feeds`: component -> the calibration feeds the plan and the report measure on; `probe(component,
    recipe)`: the path of that component's graph quantized by `recipe`.
    """

    def __init__(
        self, float_dir: Path, manifest: Manifest, feeds: dict[str, list[Feeds]], probe: Callable[[str, Recipe], Path]
    ):
        self.float_dir, self.manifest, self.probe = float_dir, manifest, probe
        self.feeds = {name: f for name, f in feeds.items() if f}
        g = manifest.generation
        self.decoder = g.decoder if g.decoder in self.feeds and self._first(g.decoder) == "logits" else None
        self.embedding = g.embedding if self.decoder and g.embedding in self.feeds else None

    def _first(self, component: str) -> str:
        return self.manifest.components[component].outputs[0].name

    def _file(self, component: str) -> Path:
        return self.float_dir / self.manifest.components[component].file

    def judged_by(self, component: str) -> str:
        """The component whose output judges `component`: the decoder for the token embedding, else itself."""
        return self.decoder if component == self.embedding else component

    @cached_property
    def refs(self) -> dict[str, np.ndarray]:
        """Every measured component's float output on its feeds, flattened."""
        return {name: outputs(self._file(name), f, self._first(name)) for name, f in self.feeds.items()}

    @cached_property
    def _positions(self) -> int:
        return sum(f["inputs_embeds"].shape[1] for f in self.feeds[self.decoder])

    @cached_property
    def _vocab(self) -> int:
        return self.refs[self.decoder].size // self._positions

    @cached_property
    def _embedding_windows(self) -> list[Feeds]:
        """The embedding's windows the decoder judges it on: no more positions than the decoder's own feeds."""
        budget = self._positions
        windows, used = [], 0
        for f in self.feeds[self.embedding]:
            if windows and used + f["input_ids"].shape[1] > budget:
                break
            windows.append(f)
            used += f["input_ids"].shape[1]
        return windows

    def _through_decoder(self, embedding_file: Path) -> np.ndarray:
        """Float decoder logits on the rows `embedding_file` gives the embedding windows' ids."""
        kv = self.manifest.components[self.decoder].kv_cache
        rows = outputs(embedding_file, self._embedding_windows, self._first(self.embedding))
        sizes = [f["input_ids"].shape[1] for f in self._embedding_windows]
        rows = rows.reshape(sum(sizes), -1).astype(np.float32)
        starts = np.cumsum([0, *sizes])
        mrope = self.manifest.generation.positions == "mrope"
        fixed = [self._fixed(i) for i in range(len(sizes))]
        feeds = [decoder_feeds(rows[None, a:b], kv, mrope, f) for a, b, f in zip(starts[:-1], starts[1:], fixed)]
        return outputs(self._file(self.decoder), feeds, "logits")

    def _fixed(self, window: int) -> Feeds:
        """What the decoder attends to beside `window`'s rows (Whisper's cross-attention keys/values):
        those of the decoder's own feeds, in turn."""
        cross = self.manifest.components[self.decoder].cross_attention
        if cross is None:
            return {}
        own = self.feeds[self.decoder][window % len(self.feeds[self.decoder])]
        return {name: own[name] for name in cross.outputs}

    @cached_property
    def _embedding_ref(self) -> np.ndarray:
        return self._through_decoder(self._file(self.embedding))

    @cached_property
    def _distribution_signal(self) -> float:
        return distribution_power(self.refs[self.decoder], self._vocab) / self._positions

    def signal(self, component: str) -> float:
        """The power noise is compared with: the next-token distribution's per position for the decoder,
        else the output's."""
        return self._distribution_signal if component == self.decoder else float(np.sum(self.refs[component] ** 2))

    def noise(self, component: str, recipe: Recipe) -> float:
        """The noise `component` quantized by `recipe` adds to the output that judges it."""
        return self.noise_of(component, self.probe(component, recipe))

    def noise_of(self, component: str, probe: Path) -> float:
        """The noise the graph `probe` (a quantized `component`) adds to the output that judges it (per
        position on the decoder's distribution: the embedding's windows and the decoder's feeds differ in length)."""
        if component == self.embedding:
            got = self._through_decoder(probe)
            return distribution_power(self._embedding_ref, self._vocab, got) * self._vocab / got.size
        return self._own_noise(component, outputs(probe, self.feeds[component], self._first(component)))

    def _own_noise(self, component: str, got: np.ndarray) -> float:
        """The noise in `got`, a component's own outputs on its feeds (any component but the embedding)."""
        if component == self.decoder:
            return distribution_power(self.refs[component], self._vocab, got) / self._positions
        return float(np.sum((self.refs[component] - got) ** 2))

    def _db(self, component: str, noise: float) -> float:
        signal = self.signal(self.judged_by(component))
        return MAX_DB if noise == 0 else round(min(MAX_DB, 10 * math.log10(signal / noise)), 2)

    def sqnr_db(self, component: str, graph: Path) -> float:
        """SQNR of `graph` (a quantized `component`) on the output that judges it."""
        return self._db(component, self.noise_of(component, graph))

    def report(self, component: str, graph: Path) -> dict[str, Any]:
        """The report's figures for `graph` (a quantized `component`): SQNR and cosine of its own output,
        and, for the decoder and the token embedding, the SQNR they are judged by. The graph runs once
        on its feeds (the embedding's judgement runs the float decoder too). The keys are
        `report.Quantization`'s fields."""
        got = outputs(graph, self.feeds[component], self._first(component))
        out: dict[str, Any] = agreement(self.refs[component], got)
        if component in (self.decoder, self.embedding):
            noise = self._own_noise(component, got) if component == self.decoder else self.noise_of(component, graph)
            out["judged"] = Judged(by=self.decoder, sqnr_db=self._db(component, noise))
        return out
