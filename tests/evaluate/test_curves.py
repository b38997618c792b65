"""Reranking and the test-time compute curve, on hand-made samples whose answers are known."""

from __future__ import annotations

import json
import math

import pytest

from mathtune.evaluate.curves import (
    best_of_n_correct,
    compute_curve,
    curve_figure,
    curve_sizes,
    majority_correct,
    pass_at,
    rerank_table,
    weighted_correct,
)


def sample(answer: str | None, right: bool) -> dict:
    value = answer if answer is not None else "[invalid]"
    return {"output": f"... #### {answer}", "extracted": {"numeric-match": value}, "correct": {"numeric-match": right}}


def problem(pid: str, answers: list[tuple[str | None, bool]]) -> dict:
    return {"id": pid, "prompt": "Q: ?\nA:", "samples": [sample(a, r) for a, r in answers]}


ROWS = [
    # the right answer 7 is in the minority; the verifier likes it
    problem("p1", [("5", False), ("5", False), ("7", True), ("5.0", False)]),
    # majority right
    problem("p2", [("3", True), ("3", True), ("4", False), (None, False)]),
    # nothing right
    problem("p3", [("1", False), ("2", False), (None, False), ("2", False)]),
]
SCORES = {"p1": [0.1, 0.2, 0.9, 0.1], "p2": [0.2, 0.3, 0.6, 0.0], "p3": [0.5, 0.4, 0.9, 0.3]}


def test_pickers_follow_their_rule():
    samples = ROWS[0]["samples"]
    assert not majority_correct(samples, None, "numeric-match")  # 5 and 5.0 vote together
    assert best_of_n_correct(samples, SCORES["p1"], "numeric-match")  # the highest-scored sample wins
    assert not weighted_correct(samples, [0.3, 0.3, 0.5, 0.3], "numeric-match")  # 0.9 for 5 > 0.5 for 7
    assert weighted_correct(samples, SCORES["p1"], "numeric-match")  # 0.9 for 7 > 0.4 for 5
    # weighted voting: the two 3s score 0.2 + 0.3 = 0.5, the single wrong 4 scores 0.6
    assert not weighted_correct(ROWS[1]["samples"], SCORES["p2"], "numeric-match")
    assert majority_correct(ROWS[1]["samples"], None, "numeric-match")
    assert not majority_correct([sample(None, False)], None, "numeric-match")  # no answer, no vote


def test_pass_at_is_the_unbiased_estimator():
    assert pass_at(4, 1, 1) == pytest.approx(0.25)
    assert pass_at(4, 1, 2) == pytest.approx(0.5)
    assert pass_at(4, 2, 3) == 1.0 and pass_at(4, 0, 4) == 0.0
    assert curve_sizes(16) == [1, 2, 4, 8, 16] and curve_sizes(12) == [1, 2, 4, 8, 12]


def test_curve_recomputes_from_the_saved_samples():
    curve = compute_curve(ROWS, SCORES)
    points = {m: {p["n"]: p["accuracy"] for p in pts} for m, pts in curve["curve"].items()}
    # N = 1: every method is a uniformly drawn sample's correctness (sample means: 1/4, 2/4, 0)
    for method in ("pass", "maj", "verifier", "weighted"):
        assert points[method][1] == pytest.approx((0.25 + 0.5 + 0) / 3)
    # N = k = 4: one outcome per problem
    assert points["pass"][4] == pytest.approx(2 / 3)
    assert points["maj"][4] == pytest.approx(1 / 3)  # p2 only
    assert points["verifier"][4] == pytest.approx(1 / 3)  # p1 only (p2's top score is the wrong 4)
    # pass@N never falls with N and bounds every other method
    for method in ("maj", "verifier", "weighted"):
        assert all(points[method][n] <= points["pass"][n] + 1e-12 for n in (1, 2, 4))
    assert points["pass"][1] <= points["pass"][2] <= points["pass"][4]
    assert compute_curve(ROWS, SCORES) == curve  # seeded


def test_rerank_table_tests_each_method_against_greedy():
    table = rerank_table(ROWS, {"p1": False, "p2": True, "p3": False}, SCORES)
    assert table["methods"]["greedy"]["right"] == 1 and table["methods"]["verifier@4"]["right"] == 1
    test = table["mcnemar"]["verifier@4 vs greedy"]
    assert (test["b"], test["c"]) == (1, 1) and math.isclose(test["p_value"], 1.0)
    assert "weighted@4 vs maj@4" in table["mcnemar"]
    with pytest.raises(ValueError, match="greedy predictions lack"):
        rerank_table(ROWS, {"p1": True}, SCORES)


def test_curve_cli_writes_table_plot_and_json(tmp_path, run_cli):
    samples = tmp_path / "s"
    samples.mkdir()
    (samples / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    done = run_cli("curve", str(samples))
    assert done.code == 0, done.stderr
    assert "maj@N" in done.stdout and "verifier" not in done.stdout  # no scores yet: no verifier columns
    (samples / "verifier_scores.jsonl").write_text(
        "".join(json.dumps({"id": k, "verifier": "v", "scores": v}) + "\n" for k, v in SCORES.items()))
    done = run_cli("curve", str(samples))
    assert done.code == 0 and "verifier best-of-N" in done.stdout
    saved = json.loads((samples / "curve.json").read_text())
    assert saved["curve"] == compute_curve(ROWS, SCORES) and (samples / "curve.png").stat().st_size > 0
    missing = run_cli("curve", str(tmp_path / "nothing"))
    assert missing.code == 2 and missing.stderr.startswith("mathtune: error:")


def test_the_report_draws_a_runs_curve(tmp_path):
    from mathtune.report.data import _compute_curve
    from mathtune.report.plots import compute_curves

    run = tmp_path / "run"
    assert _compute_curve(run) is None and compute_curves([{"compute_curve": None}], tmp_path / "c.png") is None
    (run / "samples" / "tuned-test-k4").mkdir(parents=True)
    (run / "samples" / "tuned-test-k4" / "curve.json").write_text(json.dumps({"curve": compute_curve(ROWS, SCORES)}))
    curve = _compute_curve(run)
    assert curve == compute_curve(ROWS, SCORES)
    assert compute_curves([{"compute_curve": curve}], tmp_path / "c.png").stat().st_size > 0
    # drawn with --greedy: greedy's accuracy on the same problems comes along as a level line
    rerank = rerank_table(ROWS, {"p1": True, "p2": False, "p3": False}, SCORES, "numeric-match")
    (run / "samples" / "tuned-test-k4" / "curve.json").write_text(
        json.dumps({"curve": compute_curve(ROWS, SCORES), "rerank": rerank}))
    curve = _compute_curve(run)
    assert curve["greedy"] == rerank["methods"]["greedy"] and curve["greedy"]["right"] == 1
    figure = curve_figure(curve, curve["greedy"])
    labels = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert f"greedy ({100 / 3:.1f} %)" in labels and "pass" in labels


def test_the_verifier_auc_is_pooled_and_within_problem():
    ranking = rerank_table(ROWS, None, SCORES)["verifier_auc"]
    # pooled: 3 right vs 9 wrong samples, 16.5 of 27 pairs won (ties at 0.9, 0.2 and 0.3 count half)
    assert ranking["all_samples"] == pytest.approx(16.5 / 27)
    # within: p1 1.0 (the 7 on top), p2 0.5 (its wrong 0.6 beats both right ones), p3 has no right sample
    assert ranking["within_problem"] == pytest.approx(0.75) and ranking["problems_with_right_and_wrong"] == 2
    assert "verifier_auc" not in rerank_table(ROWS, None, None)
