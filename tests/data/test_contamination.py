"""Word 13-gram overlap between train and eval questions, on fixture files the tests write."""

from __future__ import annotations

import json

from mathtune.config import build_config
from mathtune.data.contamination import contamination_report, ngrams, problems_report
from mathtune.data.problems import load_split
from mathtune.evaluate.scoring import check_run

LONG = "A baker makes 12 loaves of bread every morning and sells each loaf for 3 dollars at the market"


def test_ngrams_are_lowercased_word_runs():
    assert ngrams("One, two THREE four", n=3) == {("one", "two", "three"), ("two", "three", "four")}
    assert ngrams("Too short", n=13) == {("too", "short")}
    assert ngrams("", n=13) == set()


def test_a_shared_13_gram_flags_the_eval_question():
    train = [("t1", LONG + ". How much does he earn?"), ("t2", "Something else entirely.")]
    evaluation = [("e1", "Every day " + LONG.lower() + "; how much in a week?"), ("e2", "Mia has 3 pens.")]
    report = contamination_report(train, evaluation)
    assert report["contaminated"] == 1 and report["fraction"] == 0.5
    assert report["examples"] == [{"eval_id": "e1", "train_id": "t1"}]


def test_twelve_shared_words_are_not_enough():
    twelve = " ".join(LONG.split()[:12])
    report = contamination_report([("t", twelve + " zebra")], [("e", "quagga " + twelve + " okapi")])
    assert report["contaminated"] == 0


def test_a_short_question_inside_a_train_question_is_flagged():
    report = contamination_report([("t", "Before: how many pens does Mia have now? After.")],
                                  [("e", "How many pens does Mia have now?")])
    assert report["examples"] == [{"eval_id": "e", "train_id": "t"}]


def test_fixture_files_with_a_leaked_test_question(tmp_path):
    folder = tmp_path / "gsm8k"
    folder.mkdir()
    test_rows = [{"question": LONG + f" on day {i}?", "answer": f"#### {i}"} for i in range(4)]
    train_rows = [{"question": "Unrelated question about trains and their speeds?", "answer": "#### 1"},
                  test_rows[2]]  # one test question leaked into train
    for name, rows in (("train.jsonl", train_rows), ("test.jsonl", test_rows)):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = build_config({"data": {"data_dir": str(tmp_path)}, "eval": {"num_problems": None}})
    test = load_split(cfg.data, tmp_path, "test")
    report = check_run(cfg, test)
    # every test question shares the 13-word LONG prefix with the leaked one
    assert report["contaminated"] == 4 and report["train_questions"] == 2
    clean = problems_report(load_split(cfg.data, tmp_path, "train")[:1], test)
    assert clean["contaminated"] == 0


def test_check_run_skips_without_a_train_split(tmp_path):
    test_file = tmp_path / "t.jsonl"
    test_file.write_text(json.dumps({"question": "q?", "answer": "#### 1"}) + "\n")
    cfg = build_config({"data": {"dataset": "jsonl", "test_file": str(test_file)}})
    assert "skipped" in check_run(cfg, [])
