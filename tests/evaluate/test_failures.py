"""Failure categories: one hand-written wrong answer per category, plus the safe evaluator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mathtune.errors import MathtuneError
from mathtune.evaluate.failures import (
    FAILURE_CATEGORIES,
    classify_failure,
    failure_counts,
    safe_arithmetic,
    written_steps,
)

GSM8K_TEST = Path("/work/shared/datasets/gsm8k/test.jsonl")


def _gsm8k_rows() -> list[dict[str, str]]:
    if not GSM8K_TEST.exists():
        pytest.skip(f"{GSM8K_TEST} not present")
    with GSM8K_TEST.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


QUESTION = (
    "Janet’s ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins "
    "for her friends every day with four. She sells the remainder at the farmers' market daily for $2 "
    "per fresh duck egg. How much in dollars does she make every day at the farmers' market?"
)
SOLUTION = (
    "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\n"
    "She makes 9 * 2 = $<<9*2=18>>18 every day at the farmer’s market.\n#### 18"
)

ONE_PER_CATEGORY = {
    "truncated": ("Janet starts with 16 eggs. She eats 3, so 16 - 3 = 13. Then she bakes", True),
    "no-final-answer": ("She sells whatever is left over at the market, so she earns money.", False),
    "answer-format": ("She sells 9 eggs for $2 each, so she makes $18.00.", False),
    "arithmetic-error": ("16 - 3 - 4 = <<16-3-4=9>>9 eggs.\n9 * 2 = $<<9*2=16>>16.\n#### 16", False),
    "hallucinated-number": ("Janet has 18 - 3 - 4 = 11 eggs.\nShe makes 11 * 2 = $22.\n#### 22", False),
    "wrong-reasoning": ("She has 16 - 3 = 13 eggs left.\nShe makes 13 * 2 = 26 dollars.\n#### 26", False),
}  # fmt: skip


def test_categories_are_listed_in_precedence_order() -> None:
    assert FAILURE_CATEGORIES == tuple(ONE_PER_CATEGORY)


@pytest.mark.parametrize("category", FAILURE_CATEGORIES)
def test_one_output_per_category(category: str) -> None:
    output, truncated = ONE_PER_CATEGORY[category]
    assert classify_failure(QUESTION, output, "18", truncated) == category
    assert classify_failure(QUESTION, output, SOLUTION, truncated) == category


def test_precedence_truncation_beats_everything() -> None:
    output, _ = ONE_PER_CATEGORY["arithmetic-error"]
    assert classify_failure(QUESTION, output, "18", truncated=True) == "truncated"
    assert classify_failure(QUESTION, "", "18", truncated=True) == "truncated"


def test_rounded_results_and_earlier_results_are_not_failures() -> None:
    question = "A rope of 10 meters is cut into 3 equal pieces. Each piece is sold for $45. What is ..."
    output = "10 / 3 = 3.33 meters each.\n3 * 45 = 135 dollars.\n135 * 3.33 = 449.55\n#### 449.55"
    assert classify_failure(question, output, "135", False) == "wrong-reasoning"


def test_an_unwritten_product_of_question_numbers_is_not_hallucinated() -> None:
    question = "Tom buys 3 packs of 24 pens and gives 15 away. He then buys 40 more. How many pens?"
    output = "Tom has 72 - 15 = 57 pens.\n57 + 40 = 97\n#### 97"
    assert classify_failure(question, output, "98", False) == "wrong-reasoning"


@pytest.mark.parametrize(
    "output",
    [
        "If I can only eat 4/5 of a serving, I eat 60g * 4/5 = 240g/5 = 48 grams",  # a unit cuts in
        "The chance is 3 / 6 = 50%, and then 50% * 50% = 25%.",  # percentages both ways
        "The charge before was 45 + 21 + 28 = 94%.",
        "So he used 25 / 1/3 = 75 decorations.",  # division by a loosely written fraction
        "The sun sets at 6:00+48=6:48 PM",
        "Let x be the silver coins. x+x+30=110\n2*x=80\nx=<<40=40>>40\nGold: 40+30=<<40+30=70>>70",
        "the seagull ate 14 * 1/2 = 14 / 2 = <<14*1/2=7>>7 fries.",
        "We have 100 = 5A, so 100/5 = 5A/5 or 20 = A.",
    ],
)
def test_notation_that_cannot_be_read_for_sure_is_not_judged(output: str) -> None:
    steps = written_steps(output)
    assert not any(step.is_wrong for step in steps), steps


def test_few_false_alarms_on_real_gsm8k_solutions() -> None:
    rows = _gsm8k_rows()
    flagged = [
        category
        for row in rows
        if (category := classify_failure(row["question"], row["answer"], "-123456", False))
        in ("arithmetic-error", "hallucinated-number")
    ]
    # The references are correct (a handful of real slips aside): they must hardly ever be flagged.
    assert len(flagged) <= 0.01 * len(rows)


def test_written_steps_reads_prose_and_calculator_notes() -> None:
    steps = written_steps(SOLUTION)
    assert [(step.operands, step.computed, step.written) for step in steps] == [
        (("16", "3", "4"), 9.0, 9.0),
        (("9", "2"), 18.0, 18.0),
    ]
    assert not any(step.is_wrong for step in steps)
    assert [step.written for step in written_steps("He had 5. 1,200 x 3 = 3,600 and (2 + 3) * 4 = 20")] == [
        3600.0,
        20.0,
    ]


@pytest.mark.parametrize(
    ("expression", "value"),
    [("(3 + 4) * 2", 14.0), ("$1,200 x 3 / 4", 900.0), ("-2 * 3", -6.0), ("7 ÷ 2", 3.5)],
)
def test_safe_arithmetic_evaluates(expression: str, value: float) -> None:
    assert safe_arithmetic(expression) == value


@pytest.mark.parametrize(
    "expression",
    [
        '__import__("os").system("true")',
        "2 ** 100",
        "1 / 0",
        "(" * 300 + "1" + ")" * 300,
        "3x + 2",
        "5",
        "9" * 40 + " * 2",
    ],
)
def test_safe_arithmetic_refuses_anything_else(expression: str) -> None:
    assert safe_arithmetic(expression) is None


def test_failure_counts_skips_correct_rows_and_names_missing_keys() -> None:
    rows = [
        {"question": QUESTION, "output": output, "reference_answer": "18", "truncated": truncated}
        for output, truncated in ONE_PER_CATEGORY.values()
    ]
    rows.append({"correct": True})
    assert failure_counts(rows) == dict.fromkeys(FAILURE_CATEGORIES, 1)
    with pytest.raises(MathtuneError, match="reference_answer"):
        failure_counts([{"question": QUESTION, "output": "", "truncated": False}])


def test_failure_counts_reads_prediction_rows():
    rows = [
        {"correct": {"strict-match": False, "numeric-match": False}, "failure": "truncated"},
        {"correct": {"strict-match": True, "numeric-match": True}},
        {"correct": {"strict-match": False, "numeric-match": False}, "failure": "arithmetic-error"},
    ]
    counts = failure_counts(rows)
    assert counts["truncated"] == 1 and counts["arithmetic-error"] == 1 and sum(counts.values()) == 2
