"""What `edgemfm tune` shows: every point as JSON, the frontier as a table, quality against latency as PNG.

Example:
    >>> plot(result, "tune.png", latency_budget_ms=900).name   # doctest: +SKIP
    'tune.png'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgemfm.tune.search import Point, Result


def to_json(result: Result) -> str:
    """Every candidate with its predicted latency and memory, quality and frontier flag, as JSON.

    Example:
        >>> json.loads(to_json(result))["points"][0]["latency_ms"]   # doctest: +SKIP
        61.1
    """
    import json

    def row(p: Point) -> dict[str, Any]:
        return {
            "components": p.candidate.describe(result.manifest),
            "max_seq_len": p.candidate.seq_len,
            "latency_ms": round(p.latency_ms, 3),
            "memory_mb": round(p.memory_mb, 1),
            "quality": p.quality,
            "frontier": p.frontier,
            "chosen": p is result.chosen,
        }

    host = (
        {"measured_ms": round(result.host.measured_ms, 3), "predicted_ms": round(result.host.predicted_ms, 3)}
        if result.host
        else None
    )
    return (
        json.dumps(
            {
                "device": result.profile.name,
                "model": result.manifest.model_id,
                "metric": result.metric,
                "host": host,
                "points": [row(p) for p in sorted(result.points, key=lambda p: p.latency_ms)],
            },
            indent=1,
        )
        + "\n"
    )


def table(result: Result) -> Any:
    """The frontier as a rich table, fastest first; the chosen point starred."""
    from rich.table import Table

    m = result.manifest
    t = Table(
        title=f"Pareto frontier on {result.profile.name} (predicted latency and memory; quality: {result.metric})"
    )
    t.add_column("")
    for name in m.components:
        t.add_column(name, overflow="fold")  # a setting wraps; the numbers never do
    for col in ("max seq", "latency ms", "memory MB", "quality"):
        t.add_column(col, no_wrap=True, justify="right")
    for p in sorted((p for p in result.points if p.frontier), key=lambda p: (p.latency_ms, p.memory_mb)):
        parts = p.candidate.describe(m)
        t.add_row(
            "*" if p is result.chosen else "",
            *(parts[n] for n in m.components),
            str(p.candidate.seq_len),
            f"{p.latency_ms:.1f}",
            f"{p.memory_mb:.0f}",
            f"{p.quality:.3f}",
        )
    return t


def plot(result: Result, path: str | Path, latency_budget_ms: float) -> Path:
    """Quality against predicted latency: every point, the frontier, the budget and the chosen point, as PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display: write the file only
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.scatter(
        [p.latency_ms for p in result.points], [p.quality for p in result.points], s=10, c="0.75", label="candidates"
    )
    front = sorted((p for p in result.points if p.frontier), key=lambda p: p.latency_ms)
    ax.scatter(
        [p.latency_ms for p in front],
        [p.quality for p in front],
        s=24,
        c="tab:blue",
        label="Pareto frontier (latency, memory, quality)",
    )
    best = []  # the latency-quality staircase of the frontier
    for p in front:
        if not best or p.quality > best[-1].quality:
            best.append(p)
    ax.step([p.latency_ms for p in best], [p.quality for p in best], where="post", c="tab:blue", lw=1)
    ax.axvline(latency_budget_ms, c="tab:red", ls="--", lw=1, label=f"budget {latency_budget_ms:g} ms")
    ax.scatter(
        [result.chosen.latency_ms], [result.chosen.quality], s=120, marker="*", c="tab:orange", zorder=3, label="chosen"
    )
    ax.set_xlabel(f"predicted latency of one question on {result.profile.name} (ms)")
    ax.set_ylabel(result.metric)
    ax.set_xscale("log")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(f"edgemfm tune: {result.manifest.model_id} on {result.profile.name}", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
