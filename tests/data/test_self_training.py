"""The self-training filter: wrong answers, duplicates and test problems never enter the training data;
programs need the sandbox's confirmation; the same samples give the same bytes."""

from __future__ import annotations

import json

from mathtune.data.row import Problem
from mathtune.data.self_training import (
    DUPLICATE,
    NO_ANSWER_LINE,
    OVER_CAP,
    TEST_OVERLAP,
    UNCONFIRMED,
    WRONG,
    drop_test_problems,
    human_rows,
    verified_solutions,
    write_rows,
)
from mathtune.prompts import extract_program

QUESTION = "Tom has 3 apples and buys 4 more. Then Tom gets 2 times as many. How many apples does he have now?"
HUMAN = "Tom has 3 + 4 = 7 apples.\nThen 7 * 2 = 14 apples.\n#### 14"


def _sample(output: str, right: bool, sandbox: dict | None = None) -> dict:
    sample = {"output": output, "extracted": {}, "correct": {"numeric-match": right, "strict-match": right}}
    if sandbox is not None:
        sample["sandbox"] = sandbox
    return sample


def _row(samples: list[dict], problem_id: str = "p1", question: str = QUESTION) -> dict:
    return {"id": problem_id, "question": question, "reference_answer": "14", "prompt": "Q: ...", "samples": samples}


def test_only_distinct_right_solutions_with_the_right_answer_line_are_kept():
    rows = [_row([
        _sample(" 3 + 4 = 7, 7 * 2 = 14\n#### 14", True),
        _sample(" 3 + 4 = 7, 7 * 3 = 21\n#### 21", False),  # wrong
        _sample("  3 + 4 = 7,   7 * 2 = 14\n####  14 ", True),  # the first one again, other spacing
        _sample(HUMAN.upper(), True),  # the human solution again, other case
        _sample("The answer is 14.", True),  # right by numeric match, but no '#### N' line to learn
        _sample("7 apples, doubled: 14\n#### 14.0", True),
    ])]
    kept, report = verified_solutions(rows, programs=None, human={"p1": HUMAN})
    assert [row["answer"] for row in kept] == ["3 + 4 = 7, 7 * 2 = 14\n#### 14", "7 apples, doubled: 14\n#### 14.0"]
    assert [row["id"] for row in kept] == ["p1~self0", "p1~self5"]
    assert all(row["source"] == "self" and row["source_id"] == "p1" for row in kept)
    assert report.kept == 2 and report.samples == 6 and report.problems_with_a_kept_sample == 1
    assert report.dropped == {WRONG: 1, DUPLICATE: 2, NO_ANSWER_LINE: 1}


def test_a_right_score_with_a_wrong_answer_line_is_dropped_and_the_cap_holds():
    rows = [_row([_sample(f"step {i}\n#### 14", True) for i in range(4)] + [_sample("x\n#### 15", True)])]
    kept, report = verified_solutions(rows, programs=None, max_per_problem=2)
    assert [row["answer"] for row in kept] == ["step 0\n#### 14", "step 1\n#### 14"]
    assert report.dropped == {OVER_CAP: 2, NO_ANSWER_LINE: 1}


def test_programs_need_the_sandbox_to_confirm_the_right_answer():
    program = "```python\nanswer = (3 + 4) * 2\n```"
    rows = [_row([
        _sample(program, True),  # no sandbox record: not confirmed
        _sample(program, True, {"ok": False, "answer": None, "reason": "timeout"}),
        _sample(program, True, {"ok": False, "answer": "14", "reason": "exit code 1"}),
        _sample(program, True, {"ok": True, "answer": "15", "reason": None}),  # a score that disagrees
        _sample(program, True, {"ok": True, "answer": "14", "reason": None}),
        _sample(program, True, {"ok": True, "answer": "14", "reason": None}),  # duplicate
    ])]
    kept, report = verified_solutions(rows, programs=extract_program, human={"p1": HUMAN})
    assert len(kept) == 1 and kept[0]["id"] == "p1~self4"
    assert "answer = (3 + 4) * 2" in kept[0]["program"] and kept[0]["answer"] == HUMAN
    assert report.dropped == {UNCONFIRMED: 4, DUPLICATE: 1}


def test_test_problems_never_enter_the_training_data():
    test = [("t1", QUESTION), ("t2", "Ann reads 5 books a week for 3 weeks, then gives away 2. How many are left?")]
    near = QUESTION.replace("now?", "today?")  # shares a 13-word n-gram with t1
    rows = [
        *human_rows([Problem("h1", "Mia has 9 pens and loses 2 of them on the way home. How many are left?",
                             "9 - 2 = 7\n#### 7", "7")]),
        *verified_solutions([_row([_sample("a\n#### 14", True)], "p1", near),
                             _row([_sample("b\n#### 14", True)], "p2", test[1][1].upper())], programs=None)[0],
    ]
    _, report = verified_solutions([_row([_sample("a\n#### 14", True)], "p1", near),
                                    _row([_sample("b\n#### 14", True)], "p2", test[1][1].upper())],
                                   programs=None)
    kept = drop_test_problems(rows, test, report)
    assert [row["id"] for row in kept] == ["h1"]
    assert report.dropped[TEST_OVERLAP] == 2 and report.kept == 0


def test_the_same_samples_give_byte_identical_files(tmp_path):
    rows = [_row([_sample(f"{i} ways to 14 — ünïcode\n#### 14", i % 2 == 0) for i in range(6)], f"p{j}")
            for j in range(3)]
    paths = []
    for name in ("first.jsonl", "second.jsonl"):
        kept, _ = verified_solutions(json.loads(json.dumps(rows)), programs=None)
        digest = write_rows(tmp_path / name, kept)
        paths.append((tmp_path / name, digest))
    assert paths[0][0].read_bytes() == paths[1][0].read_bytes() and paths[0][1] == paths[1][1]
    # untouched when the data is the same (its mtime dates the data), rewritten when it is not
    before = paths[0][0].stat().st_mtime_ns
    write_rows(paths[0][0], verified_solutions(rows, programs=None)[0])
    assert paths[0][0].stat().st_mtime_ns == before
    assert write_rows(paths[0][0], verified_solutions(rows[:2], programs=None)[0]) != paths[0][1]


def test_a_jsonl_rows_program_is_read_checked_and_fingerprinted(tmp_path):
    import pytest

    from mathtune.data.records import read_records
    from mathtune.errors import MathtuneError
    from mathtune.fingerprint import problems_digest

    path = tmp_path / "train.jsonl"
    rows = [{"id": "a", "question": QUESTION, "answer": HUMAN, "program": "answer = (3 + 4) * 2"},
            {"id": "b", "question": QUESTION, "answer": HUMAN}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    from mathtune.data.problems import problems_from_rows

    with_program, without = problems_from_rows(read_records(path), str(path))
    assert with_program.program == "answer = (3 + 4) * 2" and without.program is None
    # a row without a program hashes as before programs existed; another program is another digest
    assert problems_digest([without]) == problems_digest([Problem("b", QUESTION, HUMAN, "14")])
    assert problems_digest([with_program]) != problems_digest([Problem("a", QUESTION, HUMAN, "14")])
    path.write_text(json.dumps({**rows[0], "program": 7}) + "\n")
    with pytest.raises(MathtuneError, match=r"train.jsonl:1: field 'program' must be non-empty text"):
        problems_from_rows(read_records(path), str(path))
