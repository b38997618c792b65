"""Messages that used to mislead: each says what is really there and what to do."""

from __future__ import annotations

import json


def test_train_resume_into_an_unrelated_dir_is_refused(run_cli, tiny_llama, data_dir, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    result = run_cli("train", "--model", str(tiny_llama), "--data-dir", str(data_dir), "-o", str(out),
                     "--max-steps", "1", "-s", "train.precision=fp32", "--resume")
    assert result.code == 2 and "mathtune did not write (thesis.tex)" in result.stderr, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]


def test_eval_into_a_dir_of_unrelated_files_is_refused(run_cli, tiny_llama, data_dir, tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "cat.jpg").write_bytes(b"\xff\xd8")
    result = run_cli("eval", "--base", "--model", str(tiny_llama), "--data-dir", str(data_dir), "-o", str(out),
                     "--eval-size", "2", "-s", "eval.max_new_tokens=4")
    assert result.code == 2 and "mathtune did not write (cat.jpg)" in result.stderr, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["cat.jpg"]


def test_a_finished_eval_rerun_says_so(run_cli, tiny_llama, data_dir, tmp_path):
    argv = ["eval", "--base", "--model", str(tiny_llama), "--data-dir", str(data_dir), "-o", str(tmp_path / "e"),
            "--eval-size", "2", "-s", "eval.max_new_tokens=4", "-s", "eval.perplexity=false"]
    first = run_cli(*argv)
    assert first.code == 0 and "predictions and metrics written" in first.stdout
    again = run_cli(*argv)
    assert again.code == 0 and "already finished" in again.stdout and "written" not in again.stdout


def test_augment_records_the_data_dir_it_read_from_the_environment(run_cli, data_dir, tmp_path, monkeypatch):
    out = tmp_path / "aug.jsonl"
    monkeypatch.setenv("MATHTUNE_DATA_DIR", str(data_dir))
    result = run_cli("augment", "-o", str(out), "--variants", "1", "--train-size", "4")
    assert result.code == 0, result.stderr
    report = json.loads((tmp_path / "aug.jsonl.report.json").read_text())
    assert report["source"]["data_dir"] == str(data_dir)
