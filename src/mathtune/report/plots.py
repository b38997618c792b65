"""Matplotlib charts written as PNG files (Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


BENCHMARK_NAMES = {"gsm8k": "GSM8K", "svamp": "SVAMP", "svamp-all": "SVAMP (all 1,000)", "math": "MATH",
                   "arc-challenge": "ARC-Challenge"}


def benchmark_title(benchmark: str) -> str:
    return BENCHMARK_NAMES.get(benchmark, benchmark)


def by_benchmark(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Rows grouped by the benchmark they were evaluated on, in order of first appearance: an accuracy
    chart holds one benchmark, never bars of different problems side by side."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row.get("benchmark") or "gsm8k", []).append(row)
    return groups


def chart_path(path: Path, benchmark: str, first: bool) -> Path:
    """The first benchmark's chart keeps the given name; the others get `-<benchmark>` added."""
    return path if first else path.with_name(f"{path.stem}-{benchmark}{path.suffix}")


def accuracy_bar_chart(rows: list[dict[str, Any]], path: Path, score: str = "strict-match") -> Path:
    """Accuracy per model with one-standard-error bars (rows of one benchmark, which the title names)."""
    plt = _pyplot()
    labels = [row["label"] for row in rows]
    values = [100 * row["scores"][score]["exact_match"] for row in rows]
    errors = [100 * (row["scores"][score]["stderr"] or 0) for row in rows]
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(rows) + 2), 3.5))
    ax.bar(labels, values, yerr=errors, capsize=4, color="#4C72B0")
    ax.set_ylabel(f"exact match, {score} (%)")
    ax.set_title(f"{benchmark_title(rows[0].get('benchmark') or 'gsm8k')} accuracy (± 1 s.e.)")
    ax.set_ylim(0, max([v + e for v, e in zip(values, errors, strict=True)] + [5]) * 1.2)
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    return _save(plt, fig, path)


def _save(plt: Any, fig: Any, path: Path) -> Path:
    """Write the figure atomically (temp file + rename) and free it."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path


def _ci_percent(row: dict[str, Any], score: str) -> tuple[float, float, float]:
    """Accuracy and the distances down/up to its Wilson 95% bounds, in percent."""
    value = 100 * row["scores"][score]["exact_match"]
    low, high = row["scores"][score].get("ci95") or (value / 100, value / 100)
    return value, max(0.0, value - 100 * low), max(0.0, 100 * high - value)


def accuracy_ci_chart(rows: list[dict[str, Any]], path: Path, score: str = "strict-match") -> Path:
    """Accuracy per model with Wilson 95% intervals (rows carry `ci95`, see report.data), of one benchmark."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(rows) + 2), 3.5))
    stats = [_ci_percent(row, score) for row in rows]
    ax.bar([r["label"] for r in rows], [s[0] for s in stats], color="#4C72B0",
           yerr=[[s[1] for s in stats], [s[2] for s in stats]], capsize=4)
    ax.set_ylabel(f"exact match, {score} (%)")
    ax.set_title(f"{benchmark_title(rows[0].get('benchmark') or 'gsm8k')} accuracy (Wilson 95% interval)")
    ax.set_ylim(0, min(100, max([s[0] + s[2] for s in stats] + [5]) * 1.15))
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    return _save(plt, fig, path)


def loss_curves(runs: list[dict[str, Any]], path: Path) -> Path | None:
    """Training loss against optimizer step, one line per run; None when no run logged a loss."""
    return train_curves(runs, "loss", "training loss", "Training loss", path)


def compute_curves(runs: list[dict[str, Any]], path: Path) -> Path | None:
    """Accuracy against N samples (pass@N, maj@N, verifier best-of-N, weighted voting) of the first
    run with a curve; None when no run has one."""
    from mathtune.evaluate.curves import plot_curve

    curve = next((run["compute_curve"] for run in runs if run.get("compute_curve")), None)
    if curve is None:
        return None
    plot_curve(curve, path, greedy=curve.get("greedy"))
    return path


def reward_curves(runs: list[dict[str, Any]], path: Path) -> Path | None:
    """Mean reward on the training prompts per step (GRPO runs); None when no run logged a reward."""
    return train_curves(runs, "reward", "mean reward (training prompts)", "GRPO reward", path)


def train_curves(runs: list[dict[str, Any]], key: str, ylabel: str, title: str, path: Path) -> Path | None:
    """One line per run of train_log.jsonl's `key` against the optimizer step."""
    runs = [run for run in runs if run.get(key)]
    if not runs:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for run in runs:
        steps = [point["step"] for point in run[key]]
        ax.plot(steps, [point[key] for point in run[key]], marker="o" if len(steps) < 30 else None,
                label=run["name"])
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def accuracy_vs(rows: list[dict[str, Any]], key: str, xlabel: str, path: Path,
                score: str = "strict-match") -> Path | None:
    """Accuracy (Wilson 95% bars) against a cost column such as trainable params or peak memory."""
    points = [row for row in rows if row.get(key)]
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for row in points:
        value, down, up = _ci_percent(row, score)
        ax.errorbar([row[key]], [value], yerr=[[down], [up]], fmt="o", capsize=4, label=row["label"])
    if key == "trainable_params" and max(r[key] for r in points) / min(r[key] for r in points) > 50:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"exact match, {score} (%)")
    ax.set_title(f"Accuracy vs {xlabel}")
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def failure_chart(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Wrong answers per failure category, one bar group per category; None when nothing failed."""
    if not any(sum(row["failure_counts"].values()) for row in rows):
        return None
    plt = _pyplot()
    categories = list(rows[0]["failure_counts"])
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / len(rows)
    for index, row in enumerate(rows):
        xs = [c + index * width - 0.4 + width / 2 for c in range(len(categories))]
        ax.bar(xs, [row["failure_counts"].get(c, 0) for c in categories], width, label=row["label"])
    ax.set_xticks(range(len(categories)), categories, rotation=20, ha="right")
    ax.set_ylabel("wrong answers")
    ax.set_title("Why answers were wrong")
    ax.legend(fontsize=8)
    return _save(plt, fig, path)
