"""Loaders on small fixture files the tests write: SVAMP, JSONL/CSV with field mapping, MATH, ARC."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from mathtune.config import build_config
from mathtune.data.hub_sets import last_boxed, load_hub_set
from mathtune.data.problems import load_split
from mathtune.errors import MathtuneError

SVAMP_ROWS = [
    {"ID": "chal-1", "Body": "Each pack of dvds costs 76 dollars. If there is a discount of 25 dollars on each pack",
     "Question": "How much do you have to pay to buy each pack?", "Equation": "( 76.0 - 25.0 )", "Answer": 51.0,
     "Type": "Subtraction"},
    {"ID": "chal-2", "Body": "Dan has 32 pens.", "Question": " He gives 2.5 away. How many are left?",
     "Equation": "( 32.0 - 2.5 )", "Answer": 29.5, "Type": "Subtraction"},
]


def _svamp_dir(root: Path, rows=SVAMP_ROWS) -> Path:
    (root / "svamp").mkdir(parents=True)
    (root / "svamp" / "SVAMP.json").write_text(json.dumps(rows))
    return root


def test_svamp_local_file(tmp_path):
    cfg = build_config({"data": {"dataset": "svamp", "data_dir": str(_svamp_dir(tmp_path)), "svamp_test": "all"}})
    problems = load_split(cfg.data, cfg.resolved_data_dir(), "test")
    assert [p.id for p in problems] == ["chal-1", "chal-2"]
    assert problems[0].question.endswith("on each pack How much do you have to pay to buy each pack?")
    assert (problems[0].answer, problems[1].answer) == ("51", "29.5")
    assert problems[0].solution == "( 76.0 - 25.0 ) = 51\n#### 51"


def test_svamp_bad_row_names_the_row(tmp_path):
    rows = [SVAMP_ROWS[0], {"ID": "x", "Body": "b"}]
    cfg = build_config({"data": {"dataset": "svamp", "data_dir": str(_svamp_dir(tmp_path, rows))}})
    with pytest.raises(MathtuneError, match=r"SVAMP.json:1 \(item 2\)"):  # json.dumps: the whole list on line 1
        load_split(cfg.data, cfg.resolved_data_dir(), "test")


def test_svamp_missing_file_says_where(tmp_path):
    cfg = build_config({"data": {"dataset": "svamp", "data_dir": str(tmp_path)}})
    with pytest.raises(MathtuneError, match="SVAMP.json"):
        load_split(cfg.data, cfg.resolved_data_dir(), "test")


def test_jsonl_with_field_mapping(tmp_path):
    path = tmp_path / "mine.jsonl"
    rows = [{"id": "a", "prompt": "What is 2+3?", "target": "2+3=5\n#### 5"}, {"prompt": "Half of 9?", "target": 4.5}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = build_config({"data": {"dataset": "jsonl", "test_file": str(path), "question_field": "prompt",
                                 "answer_field": "target"}})
    problems = load_split(cfg.data, None, "test")
    assert [(p.id, p.answer) for p in problems] == [("a", "5"), ("1", "4.5")]
    assert problems[1].solution == "#### 4.5"  # a bare number becomes a GSM8K-style answer line
    with pytest.raises(MathtuneError, match="train_file"):
        load_split(cfg.data, None, "train")


def test_csv_with_field_mapping_and_missing_field(tmp_path):
    path = tmp_path / "mine.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["q", "a"])
        writer.writeheader()
        writer.writerows([{"q": "3 times 4?", "a": "12"}, {"q": "1,000 plus 1?", "a": "1,001"}])
    cfg = build_config({"data": {"dataset": "jsonl", "train_file": str(path), "question_field": "q",
                                 "answer_field": "a"}})
    assert [p.answer for p in load_split(cfg.data, None, "train")] == ["12", "1001"]
    wrong = build_config({"data": {"dataset": "jsonl", "train_file": str(path), "question_field": "question"}})
    with pytest.raises(MathtuneError, match="mine.csv:2: missing field"):  # line 1 is the header
        load_split(wrong.data, None, "train")


@pytest.mark.parametrize(("solution", "boxed"), [
    ("so $x = \\boxed{5}$.", "5"), ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("first \\boxed{1} then \\boxed{2}", "2"), ("\\fbox{7}", "7"), ("no box", None), ("\\boxed{open", None)])
def test_last_boxed(solution, boxed):
    assert last_boxed(solution) == boxed


def test_math_fixture_file(tmp_path):
    path = tmp_path / "math.jsonl"
    rows = [{"problem": "What is $2+2$?", "solution": "$2+2=\\boxed{4}$.", "level": "Level 1", "type": "Algebra"},
            {"problem": "Simplify $2/4$.", "solution": "It is $\\boxed{\\frac{1}{2}}$.", "level": "Level 2",
             "type": "Prealgebra"},
            {"problem": "Cost?", "solution": "\\boxed{\\$1,250}", "level": "Level 1", "type": "Algebra"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    problems = load_hub_set("math", "test", path)
    assert [p.answer for p in problems] == ["4", "\\frac{1}{2}", "1250"]
    assert problems[0].solution.endswith("\n#### 4")
    assert [p.answer for p in load_hub_set("math", "test", path, numeric_only=True)] == ["4", "1250"]
    path.write_text(json.dumps({"problem": "p", "solution": "no answer"}) + "\n")
    with pytest.raises(MathtuneError, match="boxed"):
        load_hub_set("math", "test", path)


def test_arc_challenge_fixture_file(tmp_path):
    path = tmp_path / "arc.jsonl"
    row = {"id": "Mercury_7175875", "question": "Which gas do plants take in?",
           "choices": {"text": ["oxygen", "carbon dioxide", "helium", "neon"], "label": ["A", "B", "C", "D"]},
           "answerKey": "B"}
    path.write_text(json.dumps(row) + "\n" + json.dumps({**row, "id": "bad", "answerKey": "E"}) + "\n")
    with pytest.raises(MathtuneError, match="arc.jsonl:2: answerKey 'E'"):
        load_hub_set("arc-challenge", "test", path)
    path.write_text(json.dumps(row) + "\n")
    (problem,) = load_hub_set("arc-challenge", "test", path)
    assert problem.id == "Mercury_7175875" and problem.answer == "B" and problem.solution == "#### B"
    assert problem.question.splitlines()[1:] == ["A. oxygen", "B. carbon dioxide", "C. helium", "D. neon"]


def test_unknown_hub_set():
    with pytest.raises(MathtuneError, match="unknown data set"):
        load_hub_set("mmlu", "test")
