"""The report from hand-made run dirs: CIs, embedded images, escaping, failure counts, samples, CLI."""

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mathtune.cli import app
from mathtune.errors import MathtuneError
from mathtune.evaluate.metrics import wilson_interval
from mathtune.report.build import write_report
from mathtune.report.data import gather

EVIL = "<script>alert('x')</script> & <b>bold</b>"


def _prediction(pid: str, correct: bool, output: str, failure: str | None = None) -> dict:
    flags = dict.fromkeys(("strict-match", "flexible-extract", "numeric-match"), correct)
    row = {"id": pid, "question": f"Question {pid}: 2 + {pid}?", "reference_answer": str(2 + int(pid)),
           "output": output, "extracted": {"strict-match": "7" if correct else "[invalid]"},
           "correct": flags, "truncated": failure == "truncated"}
    if failure:
        row["failure"] = failure
    return row


def _write_eval(folder: Path, rows: list[dict]) -> None:
    folder.mkdir(parents=True)
    folder.joinpath("predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    k, n = sum(r["correct"]["strict-match"] for r in rows), len(rows)
    score = {"exact_match": k / n, "stderr": 0.1}
    metrics = {"n": n, "scores": dict.fromkeys(("strict-match", "flexible-extract", "numeric-match"), score),
               "perplexity": 3.5, "wall_seconds": 1.0, "failures": {"truncated": 0}}  # summary disagrees on purpose
    folder.joinpath("metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def run_dir(tmp_path) -> Path:
    run = tmp_path / "myrun"
    # base: 1 of 8 right; tuned: 3 of 8 right; problem 0 is right for tuned only, 7 for both
    base = [_prediction(str(i), i == 7, f"base says {i}", None if i == 7 else "no-final-answer") for i in range(8)]
    tuned = [_prediction(str(i), i in (0, 6, 7), f"tuned says {i}" if i else EVIL,
                         None if i in (0, 6, 7) else ("truncated" if i < 3 else "arithmetic-error"))
             for i in range(8)]
    _write_eval(run / "eval" / "base", base)
    _write_eval(run / "eval" / "tuned", tuned)
    card = {"trainable_params": 12345, "total_params": 999999, "peak_rss_mb": 777.0, "wall_seconds": 9.0,
            "steps": 3, "final_loss": 1.25, "git_commit": "abc123", "config": {
                "model": {"name": "tiny"}, "method": {"name": "lora"}, "prompt": {"strategy": "qa"},
                "data": {"train_size": 16}}}
    (run / "train_card.json").write_text(json.dumps(card))
    (run / "train_log.jsonl").write_text("".join(json.dumps({"step": s, "loss": 3.0 / s}) + "\n"
                                                 for s in (1, 2, 3)))
    return run


def test_table_carries_wilson_intervals_from_the_predictions(run_dir):
    rows = {row["label"]: row for row in gather([run_dir])["rows"]}
    tuned = rows["myrun/tuned"]["scores"]["strict-match"]
    assert (tuned["correct"], tuned["total"]) == (3, 8)
    assert tuned["ci95"] == pytest.approx(wilson_interval(3, 8))
    assert tuned["ci95"] == pytest.approx((0.1368, 0.6943), abs=1e-4)  # Wilson (1927) for 3/8, z = 1.96


def test_failures_are_counted_from_per_row_labels(run_dir):
    rows = {row["label"]: row for row in gather([run_dir])["rows"]}
    assert rows["myrun/tuned"]["failure_counts"]["truncated"] == 2
    assert rows["myrun/tuned"]["failure_counts"]["arithmetic-error"] == 3
    assert rows["myrun/base"]["failure_counts"]["no-final-answer"] == 7


def test_samples_put_disagreements_first(run_dir):
    samples = gather([run_dir], samples=3)["samples"]
    assert [s["disagree"] for s in samples] == [True, True, False]
    assert {s["id"] for s in samples[:2]} == {"0", "6"}
    assert [o["label"] for o in samples[0]["outputs"]] == ["myrun/base", "myrun/tuned"]


def test_html_is_self_contained_and_escapes_model_output(run_dir, tmp_path):
    written = write_report([run_dir], tmp_path / "out")
    html = written["html"].read_text()
    pngs = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert pngs == ["accuracy.png", "accuracy_vs_memory.png", "accuracy_vs_params.png", "failures.png", "loss.png"]
    assert html.count('src="data:image/png;base64,') == len(pngs)
    assert not re.search(r'(src|href)="(?!data:)', html)  # nothing fetched from elsewhere
    assert "<script>" not in html and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    assert "<b>bold</b>" not in html
    assert "37.5 [13.7, 69.4]" in html and "12.5 [2.2, 47.1]" in html
    assert "McNemar" in html and "abc123" in html


def test_markdown_links_the_pngs_beside_it(run_dir, tmp_path):
    markdown = write_report([run_dir], tmp_path / "out")["markdown"].read_text()
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", markdown)
    assert links and all((tmp_path / "out" / link).is_file() for link in links)
    assert "| myrun/tuned | 8 | 37.5 [13.7, 69.4]" in markdown
    assert EVIL in markdown  # inside a code fence, where Markdown renders it as text
    assert not list((tmp_path / "out").glob(".*"))  # atomic writes leave no temp files


def test_charts_without_data_are_left_out(run_dir, tmp_path):
    (run_dir / "train_log.jsonl").unlink()
    (run_dir / "train_card.json").unlink()
    write_report([run_dir], tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["accuracy.png", "failures.png"]


def test_cli_report_writes_into_run_dir_by_default(run_dir):
    result = CliRunner().invoke(app, ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert (run_dir / "report" / "report.html").is_file() and (run_dir / "report" / "report.md").is_file()


def test_no_evaluation_is_a_clear_error(tmp_path):
    with pytest.raises(MathtuneError, match="holds no evaluation"):
        write_report([tmp_path], tmp_path / "out")
