"""How far a quantized component's outputs are from float: SQNR (dB) and cosine similarity.

SQNR = 10 log10(sum(ref^2) / sum((ref - got)^2)); every 6 dB is about one more bit of precision.

A decoder's logits are judged as the next-token distribution they stand for (`distribution_sqnr_db`):
a shift of every logit by the same amount changes nothing, and an error on a token the model gives
no probability to barely matters. Errors and logits are centred and weighted by the float
probabilities, the quadratic form of the KL divergence (KL ~ noise / 2 per position). On
SmolLM2-135M with one kind of layer at int4, it ranks `down_proj` and the tied head worst, as
perplexity does; plain logits SQNR ranks the head fifth, behind `gate_proj` and `up_proj`
(BENCHMARKS.md, result quantization-smollm2: benchmarks/quantization/smollm2_layer_kinds.py).

Example:
    >>> import numpy as np
    >>> ref = np.array([1.0, 2.0, 3.0]); got = ref + 0.01
    >>> round(sqnr_db(ref, got), 1), round(cosine(ref, got), 4)
    (46.7, 1.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

Feeds = dict[str, np.ndarray]
MAX_DB = 200.0  # identical outputs: report a finite number JSON can hold


def sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio of `got` against `ref`, in dB."""
    ref, got = np.asarray(ref, np.float64).ravel(), np.asarray(got, np.float64).ravel()
    noise = float(np.sum((ref - got) ** 2))
    signal = float(np.sum(ref**2))
    if noise == 0.0:
        return MAX_DB
    return min(MAX_DB, float(10.0 * np.log10(max(signal, 1e-30) / noise)))


def distribution_power(ref: np.ndarray, vocab: int, got: np.ndarray | None = None) -> float:
    """Probability-weighted power of the centred logits `ref` (the signal), or of the centred error
    `got - ref` (the noise); flattened logits of `vocab` entries per position.

    Example:
        >>> ref = np.log(np.array([0.7, 0.2, 0.1]))
        >>> round(distribution_power(ref, 3, ref + 5.0), 12)   # the same distribution
        0.0
    """
    total = 0.0
    rows = np.asarray(ref).reshape(-1, vocab)
    errs = None if got is None else np.asarray(got).reshape(-1, vocab)
    for at in range(0, len(rows), 256):  # [positions, vocab] float64 in slices: SmolLM2's logits are 49,152 wide
        z = rows[at : at + 256].astype(np.float64)
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        x = z if errs is None else errs[at : at + 256].astype(np.float64) - z
        x = x - np.sum(p * x, axis=1, keepdims=True)
        total += float(np.sum(p * x * x))
    return total


def distribution_sqnr_db(ref: np.ndarray, got: np.ndarray, vocab: int) -> float:
    """SQNR of the next-token distribution: logits centred and weighted by their float probabilities.

    Example:
        >>> ref = np.log(np.array([[0.7, 0.2, 0.1]]))
        >>> round(distribution_sqnr_db(ref, ref + [[0.01, 0.0, 0.0]], 3), 1)
        43.7
    """
    noise = distribution_power(ref, vocab, got)
    return (
        MAX_DB
        if noise == 0.0
        else min(MAX_DB, float(10.0 * np.log10(max(distribution_power(ref, vocab), 1e-30) / noise)))
    )


def cosine(ref: np.ndarray, got: np.ndarray) -> float:
    """Cosine similarity of the flattened outputs."""
    ref, got = np.asarray(ref, np.float64).ravel(), np.asarray(got, np.float64).ravel()
    denom = float(np.linalg.norm(ref) * np.linalg.norm(got))
    return float(ref @ got / denom) if denom else float(np.array_equal(ref, got))


def outputs(path: Path | bytes, feeds: Sequence[Feeds], output: str) -> np.ndarray:
    """`output` of the graph at `path` (or serialized bytes) on every feed, flattened and joined."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        path if isinstance(path, bytes) else str(path), options, providers=["CPUExecutionProvider"]
    )
    names = {i.name for i in session.get_inputs()}
    return np.concatenate(
        [session.run([output], {k: v for k, v in f.items() if k in names})[0].astype(np.float64).ravel() for f in feeds]
    )


def compare(reference: np.ndarray, path: Path | bytes, feeds: Sequence[Feeds], output: str) -> dict[str, float]:
    """SQNR and cosine of a quantized graph's `output` against the float `reference` outputs."""
    return agreement(reference, outputs(path, feeds, output))


def agreement(reference: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """SQNR and cosine of outputs `got` against the float `reference`, rounded as the report keeps them.

    Example:
        >>> agreement(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.01]))
        {'sqnr_db': 51.46, 'cosine': 0.999999}
    """
    return {"sqnr_db": round(float(sqnr_db(reference, got)), 2), "cosine": round(cosine(reference, got), 6)}
