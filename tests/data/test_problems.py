import json
from pathlib import Path

import pytest
from helpers import SHARED_DATA

from mathtune.config import build_config
from mathtune.data.problems import load_split, parse_reference_answer, problems_from_rows, sample_problems
from mathtune.data.records import read_jsonl
from mathtune.errors import MathtuneError


@pytest.mark.parametrize(
    ("solution", "answer"),
    [("so 3+4=7\n#### 7", "7"), ("#### 1,000", "1000"), ("#### -3", "-3"), ("#### 2.5", "2.5"),
     ("#### $18", "18"), ("no marker 7", None), ("#### abc", None)],
)
def test_parse_reference_answer(solution, answer):
    assert parse_reference_answer(solution) == answer


@pytest.mark.skipif(not (SHARED_DATA / "gsm8k" / "test.jsonl").is_file(), reason="GSM8K not in ../shared")
def test_real_gsm8k_rows_parse_and_sample_is_seeded():
    cfg = build_config({"data": {"data_dir": str(SHARED_DATA)}})
    test = load_split(cfg.data, cfg.resolved_data_dir(), "test")
    assert len(test) == 1319
    assert test[0].answer == "18"  # Janet's ducks
    first = sample_problems(test, 200, 1234)
    assert [p.id for p in first] == [p.id for p in sample_problems(test, 200, 1234)]
    assert len({p.id for p in first}) == 200


def test_malformed_jsonl_names_file_and_line(tmp_path: Path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": "#### 1"}) + "\n{broken\n")
    with pytest.raises(MathtuneError, match=r"d.jsonl:2: malformed JSON"):
        read_jsonl(path)


def test_missing_field_and_non_numeric_answer():
    with pytest.raises(MathtuneError, match="missing field"):
        problems_from_rows([{"question": "q"}], "x.jsonl")
    with pytest.raises(MathtuneError, match="no numeric answer"):
        problems_from_rows([{"question": "q", "answer": "#### many"}], "x.jsonl")


def test_missing_data_dir_says_where(tmp_path: Path):
    cfg = build_config({"data": {"data_dir": str(tmp_path / "nowhere")}})
    with pytest.raises(MathtuneError, match="nowhere"):
        load_split(cfg.data, cfg.resolved_data_dir(), "train")
