"""Answer extraction for GSM8K, scored exactly as lm-evaluation-harness scores it.

Two of the three scores are lm-eval's own gsm8k filters (`lm_eval/tasks/gsm8k/gsm8k.yaml`), copied
as data so our numbers are bit-identical to an `lm_eval --tasks gsm8k` run on the same outputs:

- ``strict-match``: regex ``#### (\\-?[0-9\\.\\,]+)``, first match, then ``take_first``.
- ``flexible-extract``: regex ``(-?[$0-9.,]{2,})|(-?[0-9]+)``, last match (``group_select: -1``).

Both are then compared with lm-eval's ``exact_match`` (ignore_case, regexes_to_ignore ``,`` ``\\$``
``(?s).*#### `` ``\\.$``) against the full reference solution. The third score, ``numeric-match``,
is ours: it compares numbers, so ``$29.00`` matches ``29`` where lm-eval says it does not.
The fourth, ``math-verify``, is the `math-verify` library's symbolic check (as lighteval and TRL use
it) of the answer after ``####`` (else a ``\\boxed{}`` or the last number): ``\\frac{1}{2}`` equals
``0.5``. MATH is scored by it. ARC-Challenge (``kind="choice"``) is scored by its letter:
``strict-match`` reads ``#### C``, ``flexible-extract`` also "the answer is C".

Pure functions: nothing here imports torch or transformers.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mathtune.answers import (
    ANSWER_MARK,
    find_numbers,
    format_number,
    numbers_equal,
    parse_number,
    reference_answer,
)

INVALID = "[invalid]"


@dataclass(frozen=True)
class AnswerFilter:
    """One lm-eval ``regex`` filter followed by ``take_first`` (we score one sample per question)."""

    name: str
    pattern: str
    group_select: int = 0
    fallback: str = INVALID
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_regex", re.compile(self.pattern))

    def apply(self, text: str) -> str:
        """Mirror of ``lm_eval.filters.extraction.RegexFilter.apply`` for one response."""
        matches = self._regex.findall(text)
        if not matches:
            return self.fallback
        match = matches[self.group_select]
        if isinstance(match, tuple):
            # An alternation yields one slot per group; lm-eval keeps the first non-empty one.
            non_empty = [group for group in match if group]
            match = non_empty[0] if non_empty else self.fallback
        return match.strip()


TASKS_DIR = Path(__file__).with_name("tasks")  # lm-eval's gsm8k and gsm8k_cot YAMLs, shipped as data
GSM8K_TASK = TASKS_DIR / "gsm8k.yaml"


def _task_filters_and_ignores(path: Path) -> tuple[dict[str, AnswerFilter], tuple[str, ...]]:
    """lm-eval's filters (regex, then take_first) and exact_match's regexes_to_ignore, read from the
    task YAML the lm-eval bridge also runs, so the regexes live in one place."""
    task = yaml.safe_load(path.read_text(encoding="utf-8"))
    filters = {}
    for entry in task["filter_list"]:
        regex = next(step for step in entry["filter"] if step["function"] == "regex")
        filters[entry["name"]] = AnswerFilter(entry["name"], regex["regex_pattern"], regex.get("group_select", 0))
    exact_match = next(m for m in task["metric_list"] if m["metric"] == "exact_match")
    return filters, tuple(exact_match["regexes_to_ignore"])


# FILTERS: strict-match and flexible-extract. The regexes to ignore are applied in this order.
FILTERS, GSM8K_REGEXES_TO_IGNORE = _task_filters_and_ignores(GSM8K_TASK)
# gsm8k_cot reads "The answer is N." (strict) where gsm8k reads "#### N"; flexible-extract and the
# regexes to ignore are gsm8k's (tests/evaluate/test_extraction.py checks both against lm-eval's own).
# Every shipped task YAML, by its `task:` name: a strategy's `task` (prompts.yaml) picks one, so a new
# lm-eval task is one YAML dropped into evaluate/tasks/.
TASK_FILTERS: dict[str, dict[str, AnswerFilter]] = {
    yaml.safe_load(path.read_text(encoding="utf-8"))["task"]: _task_filters_and_ignores(path)[0]
    for path in sorted(TASKS_DIR.glob("*.yaml"))}
SCORE_NAMES: tuple[str, ...] = (*FILTERS, "numeric-match", "math-verify")
SCORE_TITLES = {"strict-match": "EM strict", "flexible-extract": "EM flexible", "numeric-match": "numeric",
                "math-verify": "math-verify"}  # column titles of reports, in SCORE_NAMES order
# Multiple choice: the letter after '####' (strict), or also after "answer is"/"answer:" (flexible).
CHOICE_FILTERS: dict[str, AnswerFilter] = {
    "strict-match": AnswerFilter("strict-match", r"#### \(?([A-J])\b", group_select=0),
    "flexible-extract": AnswerFilter("flexible-extract", r"(?:#### |[Aa]nswer(?: is)?:?\s*)\(?([A-J])\b",
                                     group_select=-1),
}
CHOICE_SCORE_NAMES: tuple[str, ...] = tuple(CHOICE_FILTERS)


def _numpy_str(text: str) -> str:
    """What reading a string back from a numpy ``<U`` array gives: trailing NULs are padding."""
    return text.rstrip("\x00")


def _exact_match_normalize(text: str) -> str:
    """lm-eval's ``exact_match_hf_evaluate`` normalisation of one string, numpy quirks included.

    lm-eval keeps the strings in numpy arrays between steps, so trailing NULs vanish after every
    regex, and ``np.char.lower`` cuts a lowercase form that grew (``İ`` -> ``i̇``) to the old length.
    """
    for pattern in GSM8K_REGEXES_TO_IGNORE:
        stored = re.sub(pattern, "", text)
        text = _numpy_str(stored)
    return _numpy_str(text.lower()[: len(stored)])


def lm_eval_exact_match(prediction: str, reference: str) -> bool:
    """gsm8k's ``exact_match`` for one pair: ignore_case, no punctuation stripping, its regexes."""
    return _exact_match_normalize(prediction) == _exact_match_normalize(reference)


def extract_numeric(output: str) -> float | None:
    """The model's numeric answer: the first number after the first ``####``, else the last number.

    First-after-first mirrors strict-match's choice when a model repeats ``####`` or rambles on
    after it ("#### 18 eggs, 2 per box" answers 18, not 2).
    """
    _, mark, after = output.partition(ANSWER_MARK)
    if mark:
        answer = parse_number(after)
        if answer is not None:
            return answer
    numbers = find_numbers(output)
    return numbers[-1] if numbers else None


def _reference_number(reference_solution_or_answer: str) -> float | None:
    text = reference_solution_or_answer
    if ANSWER_MARK in text:
        text = reference_answer(text)
    return parse_number(text)


def numeric_match(output: str, reference_answer: str) -> bool:
    """Whether the model's numeric answer equals the reference (a solution or a bare answer)."""
    predicted = extract_numeric(output)
    expected = _reference_number(reference_answer)
    if predicted is None or expected is None:
        return False
    return numbers_equal(predicted, expected)


def extract_all(output: str, filters: dict[str, AnswerFilter] = FILTERS) -> dict[str, str]:
    """Every score's extracted answer, ``[invalid]`` where none was found. `filters`: the lm-eval
    task's (`TASK_FILTERS`), gsm8k's by default."""
    extracted = {name: answer_filter.apply(output) for name, answer_filter in filters.items()}
    numeric = extract_numeric(output)
    extracted["numeric-match"] = INVALID if numeric is None else format_number(numeric)
    return extracted


def score_all(output: str, reference_solution_or_answer: str, filters: dict[str, AnswerFilter] = FILTERS
              ) -> dict[str, bool]:
    """Every score for one output. lm-eval compares against the full solution; a bare answer
    normalises to the same string, so either may be passed."""
    scores = {
        name: lm_eval_exact_match(answer_filter.apply(output), reference_solution_or_answer)
        for name, answer_filter in filters.items()
    }
    scores["numeric-match"] = numeric_match(output, reference_solution_or_answer)
    return scores


def _answer_span(output: str) -> str:
    """The line after the first '####' (what strict-match reads), else the whole output."""
    _, mark, after = output.partition(ANSWER_MARK)
    return after.strip().split("\n", 1)[0] if mark and after.strip() else output


def _math_verify_parse(text: str, timeout: int | None) -> list:
    from math_verify import parse

    return parse(text, parsing_timeout=timeout)


def math_verify_answer(output: str, gold: str, kind: str = "number") -> tuple[str, bool]:
    """(the answer math-verify read, whether it is symbolically equal to `gold`).

    The answer is read from the '####' line, else LaTeX-delimited there, else anywhere in the output
    (a ``\\boxed{}`` first, then the last expression). `gold` is the bare reference answer; for
    ``kind="latex"`` (MATH) it is LaTeX."""
    from math_verify import verify

    # math-verify times out with SIGALRM, which exists only in the main thread (the app scores in others).
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    reference = _math_verify_parse(f"${gold}$" if kind == "latex" else gold, timeout)
    span = _answer_span(output)
    predicted = (_math_verify_parse(span, timeout) or _math_verify_parse(f"${span}$", timeout)
                 or _math_verify_parse(output, timeout))
    if not predicted:
        return INVALID, False
    return str(predicted[-1]), bool(reference) and bool(verify(reference, predicted, timeout_seconds=timeout))


def score_answer(output: str, solution: str, answer: str, kind: str = "number", task: str = "gsm8k"
                 ) -> tuple[dict[str, str], dict[str, bool]]:
    """(extracted answers, correctness) under every score that applies to a problem of `kind`:
    number and latex get strict/flexible (the lm-eval `task`'s filters)/numeric/math-verify, choice
    its letter scores."""
    if kind == "choice":
        extracted = {name: f.apply(output) for name, f in CHOICE_FILTERS.items()}
        return extracted, {name: value.upper() == answer.upper() for name, value in extracted.items()}
    filters = TASK_FILTERS[task]
    extracted, correct = extract_all(output, filters), score_all(output, solution, filters)
    if kind == "latex":  # "\\frac{1}{2}" is no number to compare: MATH is scored symbolically only
        del extracted["numeric-match"], correct["numeric-match"]
    extracted["math-verify"], correct["math-verify"] = math_verify_answer(output, answer, kind)
    return extracted, correct
