"""Measure one call of each bundle component on this machine, the calls `cost.predict` predicts.

Each call is timed as process CPU time (`time.process_time`) on a session with one intra-op
thread, and the least of `repeats` calls after warm-up is kept. On a shared machine wall time
swings with other jobs; the CPU time of a one-thread call does not count the time the process
waits for a core, so it is what the cost model's one-thread prediction (`threads=1`) is compared
with. Cache and memory-bus contention from other jobs still slows it; the minimum keeps the
least disturbed call.

Example:
    >>> calls = measure("bundles/demo-host", context=64, prefill=64)   # doctest: +SKIP
    >>> sorted(calls)                                                   # doctest: +SKIP
    ['audio_encoder', 'text_decoder decode', 'text_decoder prefill', 'token_embedding', 'vision_encoder']
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgemfm.manifest import Component, Manifest


def _shape(c: Component) -> list[int]:
    return [1, *(int(d) for d in c.inputs[0].shape[1:])]


def decoder_feeds(c: Component, past_len: int, seq: int) -> dict[str, np.ndarray]:
    """Random inputs of a decoder call: `seq` new tokens after `past_len` cached ones."""
    kv, rng = c.kv_cache, np.random.default_rng(0)
    hidden = int(c.inputs[0].shape[-1])
    past = {kv.past.format(layer=i, kind=k): rng.random((1, kv.kv_heads, past_len, kv.head_dim), np.float32)
            for i in range(kv.layers) for k in ("key", "value")}
    return {
        "inputs_embeds": rng.random((1, seq, hidden), np.float32),
        "attention_mask": np.ones((1, past_len + seq), np.int64),
        "position_ids": np.arange(past_len, past_len + seq, dtype=np.int64)[None],
        **past,
    }


def calls(manifest: Manifest, context: int, prefill: int) -> dict[str, tuple[str, dict[str, np.ndarray]]]:
    """The work `cost.predict` predicts, as (component, feeds): one image or clip, one token, decode, prefill."""
    out = {}
    rng = np.random.default_rng(0)
    for name, c in manifest.components.items():
        if c.kv_cache:
            out[f"{name} decode"] = (name, decoder_feeds(c, context, 1))
            out[f"{name} prefill"] = (name, decoder_feeds(c, 0, prefill))
        elif c.inputs[0].dtype == "int64":  # a lookup of one token
            out[name] = (name, {c.inputs[0].name: np.ones((1, 1), np.int64)})
        elif not c.cross_attention:
            out[name] = (name, {c.inputs[0].name: rng.random(_shape(c), np.float32)})
    return out


def least_cpu_ms(run: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """The least process CPU time of `run()` over `repeats` calls, in milliseconds."""
    for _ in range(warmup):
        run()
    best = float("inf")
    for _ in range(repeats):
        t = time.process_time()
        run()
        best = min(best, time.process_time() - t)
    return 1e3 * best


def measure(bundle: str | Path, context: int = 64, prefill: int = 64, repeats: int = 10) -> dict[str, float]:
    """Least one-thread CPU milliseconds of each call of `calls` on the bundle at `bundle`."""
    from edgemfm.runtimes.pipeline import load

    pipe = load(bundle, threads=1)
    return {work: least_cpu_ms(lambda n=name, f=feeds: pipe.sessions[n].run(f), repeats)
            for work, (name, feeds) in calls(pipe.manifest, context, prefill).items()}
