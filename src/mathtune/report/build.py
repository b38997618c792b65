"""`mathtune report`: gather -> plot PNGs -> report.html (self-contained) + report.md, all atomic."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mathtune.errors import MathtuneError
from mathtune.io import atomic_write_json, atomic_write_text
from mathtune.report import plots
from mathtune.report.data import gather
from mathtune.report.html import render_html
from mathtune.report.markdown import render_report_markdown


def make_figures(data: dict[str, Any], out_dir: Path) -> list[dict[str, Any]]:
    """Draw every chart the data supports; a chart with nothing to show is left out, not drawn empty."""
    rows = data["rows"]
    groups = plots.by_benchmark(rows)
    main = next(iter(groups.values()), [])  # cost charts: one benchmark's accuracies, not a mix
    tuned = [row for row in main if row.get("trainable_params")]
    specs = [
        (
            plots.chart_path(Path("accuracy.png"), benchmark, index == 0).name,
            f"Accuracy on {plots.benchmark_title(benchmark)}",
            f"Strict-match exact match per model on {plots.benchmark_title(benchmark)} with Wilson 95% intervals.",
            lambda p, group=group: plots.accuracy_ci_chart(group, p),
        )
        for index, (benchmark, group) in enumerate(groups.items())
    ] + [
        (
            "loss.png",
            "Training loss",
            "Loss per optimizer step from each run's train_log.jsonl.",
            lambda p: plots.loss_curves(data["runs"], p),
        ),
        (
            "reward.png",
            "GRPO reward",
            "Mean reward of the sampled completions on the training prompts per step (train_log.jsonl).",
            lambda p: plots.reward_curves(data["runs"], p),
        ),
        (
            "compute_curve.png",
            "Test-time compute",
            "Accuracy against N sampled solutions per problem: pass@N (oracle), maj@N, verifier best-of-N "
            "and verifier-weighted voting (`mathtune curve`, RUN/samples/*/curve.json).",
            lambda p: plots.compute_curves(data["runs"], p),
        ),
        (
            "accuracy_vs_params.png",
            "Accuracy vs trainable parameters",
            "Tuned models only (train_card.json); bars: Wilson 95% intervals.",
            lambda p: plots.accuracy_vs(tuned, "trainable_params", "trainable parameters", p),
        ),
        (
            "accuracy_vs_memory.png",
            "Accuracy vs peak training memory",
            "Peak resident memory of the training process (train_card.json peak_rss_mb).",
            lambda p: plots.accuracy_vs(tuned, "peak_train_rss_mb", "peak training RSS (MB)", p),
        ),
        (
            "failures.png",
            "Failure chart",
            "Wrong answers by the evaluator's per-prediction failure label.",
            lambda p: plots.failure_chart(rows, p),
        ),
    ]
    figures = []
    for name, title, caption, draw in specs:
        path = draw(out_dir / name)
        if path is not None:
            section = "accuracy" if name.startswith("accuracy") and "_vs_" not in name else \
                {"failures.png": "failures"}.get(name, "cost")
            figures.append(
                {"file": name, "path": path, "title": title, "caption": caption, "section": section}
            )
    return figures


def write_report(paths: list[Path], out_dir: Path) -> dict[str, Path]:
    """Write report.html, report.md, report.json and the PNGs into `out_dir`; return their paths."""
    if not paths:
        raise MathtuneError("pass at least one run directory to report on")
    data = gather(paths)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = make_figures(data, out_dir)
    written = {
        "html": out_dir / "report.html",
        "markdown": out_dir / "report.md",
        "json": out_dir / "report.json",
    }
    atomic_write_text(written["html"], render_html(data, figures))
    atomic_write_text(written["markdown"], render_report_markdown(data, figures))
    atomic_write_json(written["json"], data)
    return written
