"""Matplotlib charts written as PNG files (Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def accuracy_bar_chart(rows: list[dict[str, Any]], path: Path, score: str = "strict-match") -> Path:
    """Accuracy per model with one-standard-error bars."""
    plt = _pyplot()
    labels = [row["label"] for row in rows]
    values = [100 * row["scores"][score]["exact_match"] for row in rows]
    errors = [100 * (row["scores"][score]["stderr"] or 0) for row in rows]
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(rows) + 2), 3.5))
    ax.bar(labels, values, yerr=errors, capsize=4, color="#4C72B0")
    ax.set_ylabel(f"exact match, {score} (%)")
    ax.set_title("GSM8K accuracy (± 1 s.e.)")
    ax.set_ylim(0, max([v + e for v, e in zip(values, errors, strict=True)] + [5]) * 1.2)
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path
