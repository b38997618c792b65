"""`compare` and `report` name an eval dir by its run and benchmark, say when two evaluations decoded
differently, and never chart two benchmarks' accuracies as one."""

from __future__ import annotations

import json
from pathlib import Path

from test_compare import write_eval

from mathtune.compare import compare_runs, find_eval_dirs, render_comparison_markdown


def _svamp_eval(run: Path, outcomes: list[tuple[bool, bool]], calculator: bool) -> Path:
    path = write_eval(run / "eval" / "svamp" / "tuned", outcomes)
    metrics = json.loads((path / "metrics.json").read_text())
    metrics.update(benchmark="svamp", reproducibility={"generation": {
        "greedy": True, "max_new_tokens": 256, "calculator": calculator, "batch_size": 16}})
    (path / "metrics.json").write_text(json.dumps(metrics))
    return path


def test_two_runs_on_another_benchmark_are_told_apart(tmp_path):
    a = _svamp_eval(tmp_path / "A", [(True, True), (False, False)] * 3, calculator=True)
    b = _svamp_eval(tmp_path / "B", [(False, False), (True, True)] * 3, calculator=False)
    assert [label for label, _ in find_eval_dirs([a, b])] == ["A/svamp/tuned", "B/svamp/tuned"]
    text = render_comparison_markdown(compare_runs([a, b]))
    assert "only tuned right" not in text
    assert "only A/svamp/tuned right: 3, only B/svamp/tuned right: 3" in text
    assert "Decoded with different settings" in text and "calculator: True vs False" in text


def test_same_settings_say_nothing_about_decoding(tmp_path):
    a = _svamp_eval(tmp_path / "A", [(True, True)] * 4, calculator=True)
    b = _svamp_eval(tmp_path / "B", [(True, True)] * 4, calculator=True)
    assert "Decoded with different settings" not in render_comparison_markdown(compare_runs([a, b]))


def test_runs_of_the_same_folder_name_get_their_parent(tmp_path):
    a = _svamp_eval(tmp_path / "x" / "run", [(True, True)] * 2, calculator=True)
    b = _svamp_eval(tmp_path / "y" / "run", [(True, True)] * 2, calculator=True)
    assert [label for label, _ in find_eval_dirs([a, b])] == ["x/run/svamp/tuned", "y/run/svamp/tuned"]


def test_report_charts_one_benchmark_per_accuracy_chart(tmp_path):
    from mathtune.report.build import write_report

    run = tmp_path / "run"
    write_eval(run / "eval" / "tuned", [(True, True), (False, False)] * 2)
    _svamp_eval(run, [(True, True)] * 4, calculator=False)
    out = tmp_path / "report"
    write_report([run], out)
    assert (out / "accuracy.png").is_file() and (out / "accuracy-svamp.png").is_file()
    html = (out / "report.html").read_text()
    assert "Accuracy on GSM8K" in html and "Accuracy on SVAMP" in html
