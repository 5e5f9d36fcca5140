"""How far a quantized component's outputs are from float: SQNR (dB) and cosine similarity.

SQNR = 10 log10(sum(ref^2) / sum((ref - got)^2)); every 6 dB is about one more bit of precision.

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
    return min(MAX_DB, 10.0 * np.log10(max(signal, 1e-30) / noise))


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
    session = ort.InferenceSession(path if isinstance(path, bytes) else str(path), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return np.concatenate([
        session.run([output], {k: v for k, v in f.items() if k in names})[0].astype(np.float64).ravel() for f in feeds
    ])


def compare(reference: np.ndarray, path: Path | bytes, feeds: Sequence[Feeds], output: str) -> dict[str, float]:
    """SQNR and cosine of a quantized graph's `output` against the float `reference` outputs."""
    got = outputs(path, feeds, output)
    return {"sqnr_db": round(float(sqnr_db(reference, got)), 2), "cosine": round(cosine(reference, got), 6)}
