"""Answer extraction: hand-written cases, real GSM8K rows, and a bit-for-bit check against lm-eval."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from mathtune.answers import MissingAnswerError, parse_number, reference_answer
from mathtune.errors import MathtuneError
from mathtune.evaluate.extraction import (
    FILTERS,
    GSM8K_REGEXES_TO_IGNORE,
    INVALID,
    TASK_FILTERS,
    AnswerFilter,
    extract_all,
    lm_eval_exact_match,
    numeric_match,
    score_all,
    score_answer,
)

GSM8K_TEST = Path("/work/shared/datasets/gsm8k/test.jsonl")


def _gsm8k_rows(limit: int) -> list[dict[str, str]]:
    if not GSM8K_TEST.exists():
        pytest.skip(f"{GSM8K_TEST} not present")
    with GSM8K_TEST.open(encoding="utf-8") as handle:
        return [json.loads(line) for _, line in zip(range(limit), handle, strict=False)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$29.00", 29.0),
        ("1,000", 1000.0),
        ("5.0", 5.0),
        ("72 clips.", 72.0),
        ("-3", -3.0),
        ("1/2", 0.5),
        ("-$3.50 each", -3.5),
        ("12,000,000 people", 12_000_000.0),
        ("10 - 5", 10.0),
        ("no number here", None),
        ("", None),
    ],
)
def test_parse_number(text: str, expected: float | None) -> None:
    assert parse_number(text) == expected


def test_reference_answer_strips_commas_and_needs_the_marker() -> None:
    assert reference_answer("so 1,000 in all.\n#### 1,000") == "1000"
    assert reference_answer("#### -3 ") == "-3"
    with pytest.raises(MissingAnswerError) as raised:
        reference_answer("no final line")
    assert isinstance(raised.value, MathtuneError)
    assert isinstance(raised.value, ValueError)


@pytest.mark.parametrize(
    ("output", "reference", "expected"),
    [
        ("So she has\n#### 1,000", "#### 1,000", (True, True, True)),
        ("She lost 3 dollars.\n#### -3", "#### -3", (True, True, True)),
        # lm-eval compares strings: "5.0" is not "5"; numeric-match compares numbers.
        ("#### 5.0", "#### 5", (False, False, True)),
        ("The total is $29.00", "#### 29", (False, False, True)),
        ("I cannot tell.", "#### 7", (False, False, False)),
        # strict-match takes the first "####"; flexible-extract the last number.
        ("#### 12\nWait, recheck.\n#### 18", "#### 18", (False, True, False)),
        ("#### 18 eggs, 2 per box", "#### 18", (True, False, True)),
        ("The answer is 18.", "#### 18", (False, True, True)),
    ],
)
def test_score_all(output: str, reference: str, expected: tuple[bool, bool, bool]) -> None:
    scores = score_all(output, reference)
    assert tuple(scores.values()) == expected
    assert list(scores) == ["strict-match", "flexible-extract", "numeric-match"]


def test_extract_all_reports_what_each_filter_saw() -> None:
    assert extract_all("It costs $29.00") == {
        "strict-match": INVALID,
        "flexible-extract": "$29.00",
        "numeric-match": "29",
    }
    assert extract_all("nothing") == dict.fromkeys(
        ["strict-match", "flexible-extract", "numeric-match"], INVALID
    )


def test_bare_answer_and_full_solution_score_alike() -> None:
    solution = "He pays 500 + 500 = <<500+500=1000>>1000.\n#### 1,000"
    for output in ("#### 1,000", "#### 1000", "1000 dollars", "$1,000.00"):
        assert score_all(output, solution) == score_all(output, "1,000")


def test_numeric_match_tolerance_is_relative() -> None:
    assert numeric_match("#### 0.3333333", "1/3")
    assert not numeric_match("#### 0.333", "1/3")
    assert not numeric_match("no number", "#### 4")


def test_real_gsm8k_solutions_score_as_correct_against_themselves() -> None:
    for row in _gsm8k_rows(200):
        assert parse_number(reference_answer(row["answer"])) is not None
        assert all(score_all(row["answer"], row["answer"]).values()), row["answer"]


def test_a_real_solution_is_wrong_against_another_question() -> None:
    first, second = _gsm8k_rows(2)
    assert reference_answer(first["answer"]) != reference_answer(second["answer"])
    assert not any(score_all(first["answer"], second["answer"]).values())


# --- bit-identical behaviour with lm-evaluation-harness ------------------------------------------

VARIED_OUTPUTS = [
    "#### 18", "#### 1,000", "#### -3", "#### 5.0", "#### $29.00", "The answer is $29.00.",
    "#### 18.", "#### 18\n#### 20", "####18", "#### 18 eggs", "no numbers at all", "", "   ", "18",
    "5.", "1.5", "-0.5", "3/4", "$1,234.56", "#### 1.2.3", "#### ,,,", "#### ...", "#### -",
    "It costs $ 5", "The answer is 72 clips.", "ΣΑΣ #### 5", "#### İ5", "x\x00", "#### 5\x00",
    "#### 5.\x00", "1,2345", "12,000,000", "answer: 007", "#### 0", "#### -0", "(-3)", "10-5",
    "3x4=12", "<<3*4=12>>12", "$$$", "..", "....5", "#### 18\n\nQuestion: how many?",
    "The answer is 18.\nQ: next", "--5", "\u22125", "\u0663 apples", "#### \u0663", "5 . 0",
    "#### 1e5", "18.00", "\t#### 18\t", "#### \n18", "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 eggs.",
    "FINAL: #### 18. Done", "#### 18..", "# 18", "#### 1,000.",
]  # fmt: skip
REFERENCES = ["#### 18", "#### 1,000", "#### -3", "#### 5", "#### 29", "#### 0", "so\n#### 72", "#### İ5"]


class LmEvalGsm8k:
    """lm-eval's gsm8k scoring, assembled from its own YAML the way ``ConfigurableTask`` does."""

    def __init__(self, task_file: str = "gsm8k.yaml") -> None:
        lm_eval = pytest.importorskip("lm_eval")
        yaml = pytest.importorskip("yaml")
        from lm_eval.api.registry import get_metric
        from lm_eval.filters import build_filter_ensemble

        config_path = Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / task_file
        self.config: dict[str, Any] = yaml.safe_load(config_path.read_text(encoding="utf-8"))
        self.ensembles = {
            entry["name"]: build_filter_ensemble(
                entry["name"],
                [(f["function"], {k: v for k, v in f.items() if k != "function"}) for f in entry["filter"]],
            )
            for entry in self.config["filter_list"]
        }
        (metric,) = self.config["metric_list"]
        self.metric_kwargs = {
            k: v for k, v in metric.items() if k not in ("metric", "aggregation", "higher_is_better")
        }
        self.exact_match = get_metric(metric["metric"])

    def filtered(self, name: str, outputs: list[str]) -> list[str]:
        # FilterEnsemble.apply without the Instance plumbing: each filter maps all responses.
        responses: Any = [[output] for output in outputs]
        for make_filter in self.ensembles[name].filters:
            responses = make_filter().apply(responses, [{}] * len(outputs))
        return list(responses)

    def score(self, prediction: str, reference: str) -> bool:
        result = self.exact_match(references=[reference], predictions=[prediction], **self.metric_kwargs)
        return bool(result["exact_match"])


@pytest.fixture(scope="module")
def lm_eval_gsm8k() -> LmEvalGsm8k:
    return LmEvalGsm8k()


def test_our_filter_definitions_are_lm_evals(lm_eval_gsm8k: LmEvalGsm8k) -> None:
    for entry in lm_eval_gsm8k.config["filter_list"]:
        regex_step = entry["filter"][0]
        ours = FILTERS[entry["name"]]
        assert (ours.pattern, ours.group_select) == (
            regex_step["regex_pattern"],
            regex_step.get("group_select", 0),
        )
        assert [f["function"] for f in entry["filter"]] == ["regex", "take_first"]
    assert lm_eval_gsm8k.metric_kwargs == {
        "ignore_case": True,
        "ignore_punctuation": False,
        "regexes_to_ignore": list(GSM8K_REGEXES_TO_IGNORE),
    }


def _fuzz_outputs(count: int) -> list[str]:
    rng = random.Random(1234)
    alphabet = "0123456789012345.,$-#   \n\tabcAİ\x00"
    return ["".join(rng.choices(alphabet, k=rng.randint(0, 24))) for _ in range(count)]


def _assert_identical(lm_eval_gsm8k: LmEvalGsm8k, outputs: list[str], references: list[str]) -> None:
    for name, ours in FILTERS.items():
        theirs = lm_eval_gsm8k.filtered(name, outputs)
        assert [ours.apply(output) for output in outputs] == theirs, name
        for output, extracted in zip(outputs, theirs, strict=True):
            for reference in references:
                expected = lm_eval_gsm8k.score(extracted, reference)
                assert lm_eval_exact_match(extracted, reference) == expected, (name, output, reference)


def test_bit_identical_to_lm_eval_on_varied_outputs(lm_eval_gsm8k: LmEvalGsm8k) -> None:
    _assert_identical(lm_eval_gsm8k, VARIED_OUTPUTS, REFERENCES)


def test_bit_identical_to_lm_eval_on_random_strings(lm_eval_gsm8k: LmEvalGsm8k) -> None:
    outputs = _fuzz_outputs(400)
    _assert_identical(lm_eval_gsm8k, outputs, [*REFERENCES, *outputs[:5]])


def test_bit_identical_to_lm_eval_on_real_solutions(lm_eval_gsm8k: LmEvalGsm8k) -> None:
    solutions = [row["answer"] for row in _gsm8k_rows(40)]
    # Every solution as an "output" against the first three references: a few right, most wrong.
    _assert_identical(lm_eval_gsm8k, solutions, solutions[:3])


RAW_PAIRS = [
    ("i\u0307", "#### İ5"),  # numpy cuts the lowercase of "İ5" to its old length: "i̇"
    ("5", "#### 5.\x00"),  # numpy drops the trailing NUL before "\.$" is applied
    ("5", "5\x00"),
    ("A", "a"),
    ("5", "#### 5\n"),
    ("5.", "5"),
    ("5..", "5"),
    ("$1,000", "1000"),
    ("18", "x\n#### 18 \n"),
]


def test_exact_match_identical_to_lm_eval_on_raw_strings(lm_eval_gsm8k: LmEvalGsm8k) -> None:
    strings = _fuzz_outputs(150)
    pairs = [*RAW_PAIRS, *zip(strings, reversed(strings), strict=True), *((s, s.upper()) for s in strings)]
    for prediction, reference in pairs:
        expected = lm_eval_gsm8k.score(prediction, reference)
        assert lm_eval_exact_match(prediction, reference) == expected, (prediction, reference)
    assert lm_eval_exact_match("i\u0307", "#### İ5")


def test_gsm8k_cot_filters_are_lm_evals_gsm8k_cot() -> None:
    """The lm-eval-gsm8k-cot strategy is scored by lm-eval's gsm8k_cot filters ("The answer is N.")."""
    theirs = LmEvalGsm8k("gsm8k-cot.yaml")
    fuzz = _fuzz_outputs(200)
    outputs = [*VARIED_OUTPUTS, *fuzz, *(f"so it is 4. The answer is {s}" for s in [*VARIED_OUTPUTS, *fuzz]),
               "5 * 4 = 20. The answer is 29.", "The answer is 1,000.", "The answer is -3. The answer is 4."]
    for name, ours in TASK_FILTERS["gsm8k_cot"].items():
        assert [ours.apply(output) for output in outputs] == theirs.filtered(name, outputs), name
    assert TASK_FILTERS["gsm8k_cot"]["strict-match"].apply("So 9 + 20 is 29. The answer is 29.") == "29"
    assert TASK_FILTERS["gsm8k_cot"]["strict-match"].apply("#### 29") == INVALID
    assert theirs.metric_kwargs["regexes_to_ignore"] == list(GSM8K_REGEXES_TO_IGNORE)
    _, correct = score_answer("There were 9. The answer is 29.", "so\n#### 29", "29", task="gsm8k_cot")
    assert correct["strict-match"] and correct["flexible-extract"] and correct["numeric-match"]


def test_answer_filter_fallback_is_configurable() -> None:
    assert AnswerFilter("x", r"(\d+)", fallback="none").apply("abc") == "none"
