"""Everything a report shows, gathered once from run directories into one plain dict.

The model table and McNemar tests come from `mathtune.compare.compare_runs`; this module adds what
a reader needs beyond it: Wilson 95% intervals, loss curves, failure categories and sample problems
with every model's output side by side.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

from mathtune.compare import compare_runs, find_eval_dirs
from mathtune.evaluate.failures import FAILURE_CATEGORIES
from mathtune.evaluate.metrics import wilson_interval
from mathtune.io import read_jsonl_tolerant
from mathtune.runcard import provenance

SAMPLES = 6  # problems shown side by side: those where the models disagree first


def gather(paths: list[Path], samples: int = SAMPLES, seed: int = 0) -> dict[str, Any]:
    """Collect the report's data from run dirs (eval/base, eval/tuned) or single eval dirs."""
    named = find_eval_dirs(paths)
    comparison = compare_runs([path for _, path in named], [label for label, _ in named])
    predictions = {
        label: {row["id"]: row for row in read_jsonl_tolerant(path / "predictions.jsonl")}
        for label, path in named
    }
    rows = [_with_intervals(row, predictions[row["label"]]) for row in comparison["rows"]]
    for row in rows:
        row["failure_counts"] = labelled_failure_counts(predictions[row["label"]], row["failures"])
    return {
        "rows": rows,
        "pairs": [{k: v for k, v in pair.items() if k != "samples"} for pair in comparison["pairs"]],
        "runs": [_run_summary(path) for path in _run_dirs(named)],
        "samples": pick_samples(predictions, samples, seed),
        "generated_by": provenance(),
    }


def _with_intervals(row: dict[str, Any], predictions: dict[str, Any]) -> dict[str, Any]:
    """Add `ci95` (Wilson) and the count of correct answers to each score of a table row."""
    row = dict(row)
    row["scores"] = {name: dict(score) for name, score in row["scores"].items()}
    for name, score in row["scores"].items():
        if predictions:
            correct = sum(bool(p["correct"].get(name)) for p in predictions.values())
            n = len(predictions)
        else:  # metrics.json without predictions: the mean times n is the count
            n, correct = row["n"], round(score["exact_match"] * row["n"])
        score["correct"], score["total"] = correct, n
        score["ci95"] = list(wilson_interval(correct, n)) if n else None
    return row


def labelled_failure_counts(predictions: dict[str, Any], from_metrics: dict[str, int]) -> dict[str, int]:
    """Categories of wrong answers, counted from each prediction's own `failure` label.

    The per-row labels are what the evaluator decided for each output; metrics.json's summary is
    used only when no predictions are at hand.
    """
    labelled = Counter(row["failure"] for row in predictions.values() if row.get("failure"))
    source = labelled if predictions else Counter(from_metrics)
    counts = {name: int(source.get(name, 0)) for name in FAILURE_CATEGORIES}
    counts.update({name: int(n) for name, n in source.items() if name not in counts})
    return counts


def _run_dirs(named: list[tuple[str, Path]]) -> list[Path]:
    seen: list[Path] = []
    for _, path in named:
        run_dir = path.parents[1] if path.parent.name == "eval" else path
        if run_dir not in seen:
            seen.append(run_dir)
    return seen


def read_loss_curve(run_dir: Path, key: str = "loss") -> list[dict[str, float]]:
    return [
        row for row in read_jsonl_tolerant(run_dir / "train_log.jsonl") if "step" in row and key in row
    ]


def _compute_curve(run_dir: Path) -> dict[str, Any] | None:
    """The test-time compute curve of the run's test-split samples (RUN/samples/*/curve.json), if drawn,
    with greedy decoding's accuracy on the same problems under "greedy" when the curve had --greedy."""
    found = sorted((run_dir / "samples").glob("*-test-k*/curve.json"))
    if not found:
        return None
    saved = _read_json(found[-1])
    curve, greedy = saved.get("curve"), ((saved.get("rerank") or {}).get("methods") or {}).get("greedy")
    return {**curve, "greedy": greedy} if curve and greedy else curve


def _run_summary(run_dir: Path) -> dict[str, Any]:
    """What a run was: its config essentials, its train card's numbers and provenance, its loss curve."""
    card = _read_json(run_dir / "train_card.json")
    config = card.get("config") or _read_yaml(run_dir / "config.yaml")
    return {
        "name": run_dir.name,
        "dir": str(run_dir),
        "loss": read_loss_curve(run_dir),
        "reward": read_loss_curve(run_dir, "reward"),  # GRPO runs
        "compute_curve": _compute_curve(run_dir),  # `mathtune curve` on the run's samples
        "model": (config.get("model") or {}).get("name"),
        "method": (config.get("method") or {}).get("name"),
        "prompt": (config.get("prompt") or {}).get("strategy"),
        "train_size": (config.get("data") or {}).get("train_size"),
        "steps": card.get("steps"),
        "final_loss": card.get("final_loss"),
        "trainable_params": card.get("trainable_params"),
        "total_params": card.get("total_params"),
        "peak_rss_mb": card.get("peak_rss_mb"),
        "peak_cuda_mb": card.get("peak_cuda_mb"),
        "git_commit": card.get("git_commit"),
        "versions": card.get("versions", {}),
    }


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return tree if isinstance(tree, dict) else {}


def pick_samples(predictions: dict[str, dict[str, Any]], count: int, seed: int) -> list[dict[str, Any]]:
    """Problems every model answered; those where models disagree on correctness come first."""
    labels = list(predictions)
    if not labels:
        return []
    shared = [i for i in predictions[labels[0]] if all(i in predictions[label] for label in labels[1:])]
    random.Random(seed).shuffle(shared)

    def disagree(pid: str) -> bool:
        return len({bool(predictions[label][pid]["correct"]["strict-match"]) for label in labels}) > 1

    chosen = sorted(shared, key=lambda pid: not disagree(pid))[:count]
    samples = []
    for pid in chosen:
        first = predictions[labels[0]][pid]
        samples.append(
            {
                "id": pid,
                "question": first["question"],
                "reference_answer": first["reference_answer"],
                "disagree": disagree(pid),
                "outputs": [
                    {
                        "label": label,
                        "output": predictions[label][pid]["output"],
                        "extracted": predictions[label][pid].get("extracted", {}).get("strict-match"),
                        "correct": bool(predictions[label][pid]["correct"]["strict-match"]),
                        "failure": predictions[label][pid].get("failure"),
                        "sandbox": predictions[label][pid].get("sandbox"),
                    }
                    for label in labels
                ],
            }
        )
    return samples
