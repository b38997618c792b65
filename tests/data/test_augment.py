"""Verified number perturbation (data/augment.py): consistent answers, drops counted, seeded, test split kept out."""

from __future__ import annotations

import json
import random
import re
from decimal import Decimal
from fractions import Fraction

import pytest
from helpers import SHARED_DATA, synthetic_problem

from mathtune.arithmetic import evaluate_number
from mathtune.config import build_config
from mathtune.data.augment import (
    ANNOTATION,
    NUMBER,
    Dropped,
    augment,
    overlaps_test_split,
    parse_written,
    perturb,
    perturbed_copies,
)
from mathtune.data.problems import Problem, load_split, parse_reference_answer
from mathtune.data.programs import check_program
from mathtune.errors import MathtuneError

# Real GSM8K train rows where the local copy exists; synthetic GSM8K-shaped rows always.
REAL_TRAIN = SHARED_DATA / "gsm8k" / "train.jsonl"


def synthetic(count: int, seed: int = 0) -> list[Problem]:
    rng = random.Random(seed)
    rows = [synthetic_problem(rng) for _ in range(count)]
    return [Problem(str(i), r["question"], r["answer"], r["answer"].rpartition("####")[2].strip())
            for i, r in enumerate(rows)]


def real(count: int) -> list[Problem]:
    if not REAL_TRAIN.is_file():
        return []
    rows = [json.loads(line) for line in REAL_TRAIN.read_text().splitlines()[:count]]
    return [Problem(f"r{i}", r["question"], r["answer"], r["answer"].rpartition("####")[2].strip().replace(",", ""))
            for i, r in enumerate(rows)]


def assert_consistent(variant: Problem, program: str, original: Problem) -> None:
    """Every annotation recomputes, the last step is the answer, '#### N' is the answer, the program
    computes it, the answer keeps the original's kind, and the question's numbers changed."""
    steps = ANNOTATION.findall(variant.solution)
    assert steps
    for expression, result in steps:
        assert evaluate_number(expression) == pytest.approx(evaluate_number(result)), (expression, result)
    assert parse_reference_answer(variant.solution) == variant.answer
    assert evaluate_number(steps[-1][1]) == pytest.approx(float(variant.answer))
    assert check_program(program, variant.answer)
    if float(original.answer).is_integer():
        assert float(variant.answer).is_integer()
    if float(original.answer) >= 0:
        assert float(variant.answer) >= 0
    assert variant.question != original.question
    assert NUMBER.sub("N", variant.question) == NUMBER.sub("N", original.question)  # same story, new numbers
    assert answer_from_question(variant, original) == pytest.approx(float(variant.answer)), (variant, original)


def answer_from_question(variant: Problem, original: Problem) -> float:
    """The variant's answer recomputed from its *question* (not from its own solution): each number of
    the original question is paired with the variant question's number in the same place, and the
    original's steps are replayed with them, each step's new result standing in for its old one."""

    def value(match: re.Match[str]) -> Fraction:
        return parse_written(match).value

    old, new = ([value(m) for m in NUMBER.finditer(p.question)] for p in (original, variant))
    assert len(old) == len(new)
    values: dict[Fraction, Fraction] = {}
    for before, after in zip(old, new, strict=True):
        assert values.setdefault(before, after) == after, "one number of the question became two"
    for expression, result in ANNOTATION.findall(original.solution):
        replayed = NUMBER.sub(lambda m: "({}/{})".format(*values.get(value(m), value(m)).as_integer_ratio()),
                              expression)
        values[Fraction(evaluate_number(result)).limit_denominator(10**9)] = Fraction(evaluate_number(replayed))
    return float(values[Fraction(Decimal(original.answer))])


def test_the_answer_follows_the_variant_question_of_a_known_story():
    """Synthetic stories are (a + b) x c: read a, b, c back from each variant's question."""
    problems = synthetic(30)
    for variant, _ in augment(problems, 2, seed=1)[0]:
        a, b, c = map(int, re.search(r"has (\d+) \w+ and buys (\d+) more\. .* gets (\d+) times", variant.question)
                      .groups())
        assert float(variant.answer) == (a + b) * c, variant


def test_variants_are_consistent_on_synthetic_and_real_gsm8k_rows():
    problems = synthetic(40) + real(300)
    kept, report = augment(problems, 3, seed=0)
    originals = {p.id: p for p in problems}
    assert report.kept == len(kept) > len(problems) // 2
    assert report.requested == 3 * len(problems) == report.kept + sum(report.dropped.values())
    for variant, program in kept:
        assert_consistent(variant, program, originals[variant.id.rpartition("~")[0]])
    assert len({v.question for v, _ in kept}) == len(kept)  # deduplicated


def test_same_seed_same_variants_other_seed_other_variants():
    problems = synthetic(20)
    first, _ = augment(problems, 2, seed=5)
    again, _ = augment(problems, 2, seed=5)
    other, _ = augment(problems, 2, seed=6)
    assert [v.question for v, _ in first] == [v.question for v, _ in again]
    assert [v.question for v, _ in first] != [v.question for v, _ in other]
    # a problem's variants do not depend on the other problems in the list
    alone, _ = augment(problems[3:4], 2, seed=5)
    assert [v.question for v, _ in alone] == [v.question for v, _ in first if v.id.startswith("3~")]


@pytest.mark.parametrize(("question", "solution", "reason"), [
    ("Tom has 5 pens. How many pens?", "He has 5 pens.\n#### 5", "no calculator annotations"),
    ("Ann has 3 cats and 1 dog. How many pets?", "3+1 = 4 pets.\n#### 4", "no calculator annotations"),
    ("Raj has 2 bags of 1 apple. How many apples?", "2*1=<<2*1=2>>2\n#### 2",
     "no question number used by the solution"),
    ("Mia had 9 coins and found 4. She gave 2 away. How many now?",
     "9+4=<<9+4=13>>13\nThen 13-2 = 11\n#### 11", "a step without an annotation"),
])
def test_degenerate_problems_are_dropped_with_a_reason(question, solution, reason):
    problem = Problem("x", question, solution, solution.rpartition("####")[2].strip())
    kept, report = augment([problem], 2, seed=0)
    assert kept == [] and report.dropped == {reason: 2}


def test_steps_that_stop_being_clean_are_dropped_never_kept():
    """An odd number halved is not an integer, a difference may turn negative: such draws are dropped
    and counted, and every kept variant is clean."""
    halves = Problem("h", "Zoe has 10 cards and gives half away. How many are left?",
                     "10/2=<<10/2=5>>5\n#### 5", "5")
    difference = Problem("d", "Lee has 9 pens and loses 8. How many are left?", "9-8=<<9-8=1>>1\n#### 1", "1")
    reasons: set[str] = set()
    for seed in range(30):
        for problem in (halves, difference):
            try:
                variant, program = perturb(problem, random.Random(seed))
            except Dropped as exc:
                reasons.add(str(exc))
                continue
            assert float(variant.answer).is_integer() and float(variant.answer) >= 0
            assert check_program(program, variant.answer)
    assert {"a step is no longer an integer", "a step turned negative"} <= reasons


def test_units_and_small_numbers_stay_and_money_stays_money():
    problem = Problem("m", "A shirt costs $1,250.50 and socks cost $12. Tom buys 2 shirts and 60 socks. Total cost?",
                      "Shirts: 2*1250.50=<<2*1250.50=2501>>2501\nSocks: 60*12=<<60*12=720>>720\n"
                      "Total 2501+720=<<2501+720=3221>>3221\n#### 3221", "3221")
    kept, _ = augment([problem], 3, seed=0)
    assert kept
    for variant, program in kept:
        assert_consistent(variant, program, problem)
        assert re.search(r"\$[1-9][\d,]*\.\d\d and socks cost \$12\. Tom buys 2 shirts and 60 socks", variant.question)


def test_variants_overlapping_the_test_split_are_found():
    problems = synthetic(4)
    kept, _ = augment(problems, 1, seed=0)
    variant = kept[0][0]
    test = [Problem("t", variant.question + " Explain.", "#### 1", "1"), *synthetic(3, seed=99)]
    assert overlaps_test_split([v for v, _ in kept], test) == {variant.id}
    # an excluded (test) question is never produced
    again, report = augment(problems[:1], 1, seed=0, exclude_questions=[variant.question])
    assert variant.question not in {v.question for v, _ in again}


def test_augment_workflow_reads_only_train_writes_loadable_jsonl(data_dir, tmp_path):
    from mathtune.recipes.augment import augment_workflow

    cfg = build_config({"data": {"data_dir": str(data_dir)}})
    out = tmp_path / "aug.jsonl"
    record = augment_workflow(cfg, out, variants=2, seed=0, include_original=True)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    train = {p.id: p for p in load_split(cfg.data, data_dir, "train")}
    test_questions = {p.question for p in load_split(cfg.data, data_dir, "test")}
    assert record["rows"] == len(rows) == len(train) + record["kept"] and record["kept"] > 0
    assert {row["source_id"] for row in rows} <= set(train)
    assert not {row["question"] for row in rows} & test_questions
    loaded = load_split(build_config({"data": {"dataset": "jsonl", "train_file": str(out)}}).data, None, "train")
    assert len(loaded) == len(rows)
    by_id = {p.id: p for p in loaded}
    for row in rows:
        if "program" in row:
            assert check_program(row["program"], by_id[row["id"]].answer)
    assert json.loads((tmp_path / "aug.jsonl.report.json").read_text())["kept"] == record["kept"]
    before = out.read_bytes()
    with pytest.raises(MathtuneError, match="exists"):
        augment_workflow(cfg, out, variants=1, seed=1)
    assert out.read_bytes() == before


def test_perturbed_copies_keep_ids_and_change_answers():
    problems = synthetic(10)
    copies, report = perturbed_copies(problems, seed=3)
    originals = {p.id: p for p in problems}
    assert len(copies) == report.kept > 0 and [p.id for p in copies] == [p.id for p in problems if p.id in
                                                                          {c.id for c in copies}]
    assert any(c.answer != originals[c.id].answer for c in copies)


def test_robustness_eval_on_a_tiny_model(tiny_models, data_dir, tmp_path):
    """`eval.perturbed`: the same drawn problems with new numbers, scored against recomputed answers."""
    from mathtune.recipes.evaluate import evaluate_model

    tree = {"model": {"name": str(tiny_models["llama"])}, "data": {"data_dir": str(data_dir)},
            "eval": {"num_problems": 6, "batch_size": 6, "max_new_tokens": 4, "dtype": "fp32", "perplexity": False}}
    original = evaluate_model(build_config(tree), tmp_path / "base", "base", show_progress=False)
    tree["eval"]["perturbed"] = True
    perturbed = evaluate_model(build_config(tree), tmp_path / "base-perturbed", "base", show_progress=False)
    assert perturbed["reproducibility"]["problems"]["perturbed"] is True
    ids = perturbed["reproducibility"]["problems"]["ids"]
    assert 0 < len(ids) and set(ids) <= set(original["reproducibility"]["problems"]["ids"])
    rows = {json.loads(line)["id"]: json.loads(line) for line in (tmp_path / "base" / "predictions.jsonl").open()}
    for line in (tmp_path / "base-perturbed" / "predictions.jsonl").open():
        row = json.loads(line)
        assert row["question"] != rows[row["id"]]["question"]
        assert row["reference_answer"] == parse_reference_answer(row["reference"])


def test_a_run_is_tested_on_another_benchmark_with_its_own_model_and_prompt(tmp_path):
    """`mathtune eval RUN --dataset D`: model, method and prompt from the run, the data from the call."""
    from mathtune.config import config_to_yaml
    from mathtune.recipes.evaluate import tuned_config

    run_cfg = build_config({"model": {"name": "some-model"}, "prompt": {"strategy": "program"},
                            "data": {"train_size": 8}, "method": {"name": "full"}})
    (tmp_path / "config.yaml").write_text(config_to_yaml(run_cfg))
    call = build_config({"data": {"dataset": "svamp", "data_dir": "/data"}, "eval": {"num_problems": 5}})
    other = tuned_config(call, tmp_path, own_data=False)
    own = tuned_config(call, tmp_path)
    assert (other.model.name, other.prompt.strategy, other.method.name) == ("some-model", "program", "full")
    assert other.data.dataset == "svamp" and other.data.data_dir == "/data" and other.eval.num_problems == 5
    assert own.data.dataset == "gsm8k" and own.data.train_size == 8 and own.eval.num_problems == 5
