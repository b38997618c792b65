"""`mathtune compare`: McNemar on every filter, so a format-only gain is told from an answer gain."""

from __future__ import annotations

import json
from pathlib import Path

from mathtune.compare import compare_runs, render_comparison_markdown


def write_eval(path: Path, outcomes: list[tuple[bool, bool]]) -> Path:
    """An eval dir whose problem i is (strict-match, numeric-match) = outcomes[i]."""
    path.mkdir(parents=True)
    rows = [{"id": str(i), "question": f"q{i}", "reference_answer": "1", "output": "o",
             "correct": {"strict-match": strict, "flexible-extract": numeric, "numeric-match": numeric}}
            for i, (strict, numeric) in enumerate(outcomes)]
    (path / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    scores = {name: {"exact_match": 0.0, "stderr": 0.0} for name in ("strict-match", "flexible-extract",
                                                                       "numeric-match")}
    (path / "metrics.json").write_text(json.dumps({"n": len(rows), "scores": scores}))
    return path


def test_mcnemar_is_reported_for_strict_and_for_the_answer_only_filters(tmp_path):
    # base: right answers without '####' (numeric only); tuned: the same answers, now in format
    base = write_eval(tmp_path / "eval" / "base", [(False, True)] * 8 + [(False, False)] * 4)
    tuned = write_eval(tmp_path / "eval" / "tuned", [(True, True)] * 8 + [(False, False)] * 4)
    comparison = compare_runs([base, tuned], ["base", "tuned"])
    pair = comparison["pairs"][0]
    assert (pair["mcnemar"]["c"], pair["mcnemar"]["p_value"]) == (8, 2 * 0.5**8)
    assert pair["mcnemar_by_score"]["numeric-match"]["discordant"] == 0
    assert pair["mcnemar_by_score"]["numeric-match"]["p_value"] == 1.0
    assert "On numeric-match: only base right: 0, only tuned right: 0, p = 1." in render_comparison_markdown(comparison)


def _mark(eval_dir: Path, adapter: str | None, perturbed: bool) -> Path:
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    metrics["reproducibility"] = {"model": "m", "adapter": adapter, "problems": {"perturbed": perturbed}}
    (eval_dir / "metrics.json").write_text(json.dumps(metrics))
    return eval_dir


def test_a_perturbed_eval_pairs_with_its_own_models_original_only(tmp_path):
    # perturbed copies keep the original ids: pairing the base's originals with the tuned model's
    # perturbed problems would test two different things at once
    outcomes = [(True, True), (False, False)] * 3
    base = _mark(write_eval(tmp_path / "b" / "eval" / "base", outcomes), None, False)
    base_p = _mark(write_eval(tmp_path / "b" / "eval" / "base-perturbed", outcomes), None, True)
    tuned = _mark(write_eval(tmp_path / "t" / "eval" / "tuned", outcomes), "t/adapter", False)
    tuned_p = _mark(write_eval(tmp_path / "t" / "eval" / "tuned-perturbed", outcomes), "t/adapter", True)
    labels = ["base", "base-p", "tuned", "tuned-p"]
    pairs = compare_runs([base, base_p, tuned, tuned_p], labels)["pairs"]
    assert sorted((p["first"], p["second"]) for p in pairs) == [
        ("base", "base-p"), ("base", "tuned"), ("base-p", "tuned-p"), ("tuned", "tuned-p")]
    pairs = compare_runs([base, tuned_p], ["base", "tuned-p"])["pairs"]
    assert pairs == []
