"""Why was a wrong answer wrong? A cheap, explainable heuristic, not a judge model.

``classify_failure`` returns the first category that applies, in this order of precedence
(``FAILURE_CATEGORIES`` lists them in the same order):

1. ``truncated``: generation hit the token cap, so everything else is a symptom of being cut off.
2. ``no-final-answer``: the output contains no number at all, so nothing could be extracted.
3. ``answer-format``: the numeric answer equals the reference, but not in the form lm-eval's
   filters accept (``$29.00``, ``The answer is 18`` without ``####``); the maths was right.
4. ``arithmetic-error``: some written step, ``3 * 4 = 13`` or a calculator note ``<<3*4=13>>``,
   does not evaluate to the value written after its ``=``.
5. ``hallucinated-number``: a step uses an operand found neither in the question (digits, words,
   percentages) nor among the results of earlier steps, nor as a product or quotient of two such
   numbers or unit constants; numbers up to 10 and unit constants (12, 24, 60, 100, ...) are never
   flagged.
6. ``wrong-reasoning``: the steps are internally consistent but solve the wrong problem.

On the correct reference solutions of GSM8K (train and test, 8,792) categories 4 and 5 fire on
about 0.3% each; about half of the arithmetic hits are real slips in the references themselves.
Notation that cannot be read for sure (algebra, "6:48", "3/ 1/4", a unit cutting into a
calculation) is skipped rather than judged.

Expressions are evaluated by walking a size-capped ``ast`` that may hold only numbers, + - * /
and parentheses; nothing is ever passed to ``eval``.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import product
from typing import Any

from mathtune.answers import find_numbers, numbers_equal
from mathtune.arithmetic import FOUR_OPERATIONS, evaluate_number
from mathtune.errors import MathtuneError
from mathtune.evaluate.extraction import extract_numeric, numeric_match

FAILURE_CATEGORIES: tuple[str, ...] = (
    "truncated",
    "no-final-answer",
    "answer-format",
    "arithmetic-error",
    "hallucinated-number",
    "wrong-reasoning",
)

# Longer left-hand sides are prose that happens to contain operators, not one calculation.
_MAX_EXPRESSION_CHARS = 120
_MAX_AST_NODES = 60
_MAX_OPERAND = 1e15
# Numbers a solution may use without the question stating them: small counts and unit constants.
_SMALL_NUMBER = 10
# Dozen, ounces, hours, days, weeks, minutes, percent, fluid ounces a gallon, feet a mile, million.
_COMMON_CONSTANTS = frozenset(
    {12.0, 16.0, 24.0, 28.0, 30.0, 31.0, 52.0, 60.0, 100.0, 128.0, 365.0, 1000.0, 3600.0, 5280.0, 1e6}
)
_WORD_NUMBERS = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14,
    "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20,
    "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90,
    "hundred": 100, "thousand": 1000, "dozen": 12, "half": 0.5, "quarter": 0.25, "third": 1 / 3,
    "million": 1e6, "billion": 1e9,
}  # fmt: skip

# Characters a written calculation may contain ('x' and '×' only between numbers mean "times").
_EXPRESSION_CHARS = frozenset("0123456789 \t.,$%()+-*/x×÷")
_TIMES = re.compile(r"(?<=[\d)%])\s*[x×]\s*(?=[\d($.])")
_PERCENT = re.compile(r"(\d+(?:\.\d+)?|\.\d+)%")
_SENTENCE_BREAK = re.compile(r"[.,](?:\s|$)")
# Something glued to the number makes it algebra ("= 5A / 5"), a time ("= 6:48") or a number with
# spaced thousands ("= 18 000"), not a result we can read.
_RESULT = re.compile(r"\s*(-?)\$?\s?(\d{1,3}(?:,\d{3})+(?!\d)|\d+)(\.\d+)?(\s?%)?(?![A-Za-z\d:]| \d)")
# "14 * 1/2 = 14 / 2 = 7": the 14 after the first '=' starts an expression, it is no result.
_RESULT_CONTINUES = re.compile(r"\s*(?:[+*/×÷–—−]|[-x]\s*[\d($.])")
# "3/ 1/4" and "25 / 1/3" divide by a fraction; Python would read them as (3 / 1) / 4.
_LOOSE_FRACTION = re.compile(r"/\s+\d+/\d")
# What may stand right before a calculation with no space: "<<3*4=12>>", "a=3*4", "(3*4".
_GLUE_BEFORE_CALCULATION = frozenset("<=[\"'")
_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_OPERAND = re.compile(r"(?:\d*\.\d+|\d+)%?")
_SPACED_THOUSANDS = re.compile(r"\b\d{1,3}(?: \d{3})+\b")


@dataclass(frozen=True)
class Step:
    """One ``... = result`` in the output: the operands and true value of its left-hand side (empty
    and None when that is no calculation, as in ``x = 40``) and the result as written."""

    operands: tuple[str, ...]
    computed: float | None
    written: float
    resolution: float  # one unit in the last digit written: 0.01 for "3.33", 0.0001 for "33.33%"

    @property
    def is_wrong(self) -> bool:
        # A written result may round the true one in either direction to the digits shown
        # ("10 / 3 = 3.33", "7 / 2 = 4 boxes"); anything further off is an arithmetic slip.
        if self.computed is None:
            return False
        off_by = abs(self.computed - self.written)
        return not numbers_equal(self.computed, self.written) and off_by >= self.resolution


def safe_arithmetic(expression: str) -> float | None:
    """Evaluate a written calculation ("$1,200 x 3 / 4", "50% * 30"), or None if it is not one.

    The arithmetic is `mathtune.arithmetic`'s, narrowed to + - * / and operands a word problem has."""
    text = _THOUSANDS_COMMA.sub("", expression).replace("$", "")
    text = _TIMES.sub(" * ", text).replace("÷", "/")
    text = _PERCENT.sub(r"(\1/100)", text).strip()
    if not text or len(text) > _MAX_EXPRESSION_CHARS:
        return None
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    if sum(1 for _ in ast.walk(tree)) > _MAX_AST_NODES or not isinstance(tree.body, ast.BinOp):
        return None  # a bare number such as "x = 5" is a statement, not a calculation
    if any(isinstance(node, ast.Constant) and isinstance(node.value, int | float) and abs(node.value) > _MAX_OPERAND
           for node in ast.walk(tree)):
        return None
    value = evaluate_number(text, operators=FOUR_OPERATIONS)
    return None if value is None else float(value)


def _left_hand_side(text: str, equals_at: int) -> str | None:
    """The calculation just before an '=' (the run of expression characters on its line), or None
    when a word cuts into it ("60g * 4/5 =") and only its tail would be checked."""
    line_start = text.rfind("\n", 0, equals_at) + 1
    start = equals_at
    while start > line_start and text[start - 1] in _EXPRESSION_CHARS:
        start -= 1
    if start > line_start and text[start - 1].isalpha() and text[start] in "x×":
        start += 1  # the x ends a word ("box 3 * 4"); it is no multiplication sign
    glued = (
        start > line_start and not text[start].isspace() and text[start - 1] not in _GLUE_BEFORE_CALCULATION
    )
    candidate = _SENTENCE_BREAK.split(text[start:equals_at])[-1].strip()  # "he had 5. 3 * 4"
    if glued or candidate[:1] in tuple("+*/x×÷") or candidate[:2] in ("- ", "-\t"):
        return None  # "6:00+48", "60g * 4/5": the calculation began before what we can see
    return None if _LOOSE_FRACTION.search(candidate) else candidate


def _step_at(text: str, equals_at: int) -> Step | None:
    result = _RESULT.match(text, equals_at + 1)
    if result is None or _RESULT_CONTINUES.match(text, result.end()):
        return None
    sign, digits, fraction, percent = result.groups()
    written = float(sign + digits.replace(",", "") + (fraction or ""))
    resolution = 10.0 ** -len((fraction or ".")[1:])
    left = _left_hand_side(text, equals_at)
    computed = safe_arithmetic(left) if left else None
    if percent and not _percent_means_number(left, computed, written):
        written, resolution = written / 100, resolution / 100
    operands = tuple(_OPERAND.findall(_THOUSANDS_COMMA.sub("", left))) if computed is not None else ()
    return Step(operands, computed, written, resolution)


def _percent_means_number(left: str | None, computed: float | None, written: float) -> bool:
    """Whether "= 94%" means 94, as after "45 + 21 + 28", rather than 0.94 as after "3 / 6 = 50%".

    A left side with its own % signs is already scaled; otherwise the closer reading wins.
    """
    if computed is None or left is None or "%" in left:
        return False
    return abs(computed - written) < abs(computed - written / 100)


def written_steps(output: str) -> list[Step]:
    """Every ``... = number`` in the output, in the order written; see `Step`."""
    steps = (_step_at(output, match.start()) for match in re.finditer("=", output))
    return [step for step in steps if step is not None]


def _question_numbers(question: str) -> set[float]:
    numbers = set(find_numbers(question))
    numbers |= {float(match.replace(" ", "")) for match in _SPACED_THOUSANDS.findall(question)}
    # "25%" is used as 0.25, and "-48 degrees" turns up as "-48 + 21" whose operand reads 48.
    numbers |= {value / 100 for value in numbers} | {abs(value) for value in numbers}
    numbers |= _word_numbers(question)
    return numbers


def _word_numbers(text: str) -> set[float]:
    """Numbers spelled out: "dozen" -> 12, "fifty-four" -> 54 (tens and units are added)."""
    numbers: set[float] = set()
    for compound in re.findall(r"[a-z]+(?:-[a-z]+)*", text.lower()):
        words = compound.split("-")
        values = [float(_WORD_NUMBERS[word]) for word in words if word in _WORD_NUMBERS]
        numbers.update(values)
        if len(words) == len(values) == 2:
            numbers.add(sum(values))
    return numbers


def _one_step_values(known: set[float]) -> set[float]:
    """Products and quotients of two known numbers or unit constants: "3 packs of 24" is often used
    as 72 and "4 feet" as 48 inches without the step being written.

    Sums and differences are left out on purpose: with a 2 in the question, 16 + 2 would excuse an
    invented 18 in place of the question's 16, which is the typical hallucination.
    """
    values = set()
    for a, b in product(known | _COMMON_CONSTANTS, repeat=2):
        values.add(a * b)
        if b != 0:
            values.add(a / b)
    return values


def _is_accounted_for(operand: str, known: set[float], derived: set[float]) -> bool:
    """Whether an operand as written ("3.33", "25%") is small, a constant, known or derived.

    Operands are read without their sign, so known numbers are compared by magnitude.
    """
    digits = operand.rstrip("%")
    value = float(digits)
    if value <= _SMALL_NUMBER or value in _COMMON_CONSTANTS:
        return True
    # Half a unit in the last digit: "3.33" may stand for 10/3, but 18 must not stand for 17.2.
    tolerance = 0.5 * 10.0 ** -len(digits.partition(".")[2])
    readings = [(value, tolerance)]
    if operand.endswith("%"):
        readings.append((value / 100, tolerance / 100))
    return any(
        abs(reading - abs(number)) < tol or numbers_equal(reading, abs(number))
        for reading, tol in readings
        for number in known | derived
    )


def _has_hallucinated_operand(question: str, steps: list[Step]) -> bool:
    known = _question_numbers(question)
    for step in steps:
        derived = _one_step_values(known)
        if not all(_is_accounted_for(operand, known, derived) for operand in step.operands):
            return True
        known |= {step.written} if step.computed is None else {step.computed, step.written}
    return False


def classify_failure(question: str, output: str, reference_answer: str, truncated: bool) -> str:
    """The most specific reason a wrong answer went wrong; see the module docstring for the order.

    `reference_answer` may be the bare answer or the full GSM8K solution.
    """
    if truncated:
        return "truncated"
    if extract_numeric(output) is None:
        return "no-final-answer"
    if numeric_match(output, reference_answer):
        return "answer-format"
    steps = written_steps(output)
    if any(step.is_wrong for step in steps):
        return "arithmetic-error"
    if _has_hallucinated_operand(question, steps):
        return "hallucinated-number"
    return "wrong-reasoning"


_ROW_KEYS = ("question", "output", "reference_answer", "truncated")


def failure_counts(rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """How many wrong rows fall in each category (every category present, zeros included).

    Each row needs ``question``, ``output``, ``reference_answer`` and ``truncated``; a row whose
    ``correct`` is true (for a predictions row: its strict-match) is skipped, so a whole predictions
    file can be passed in.
    """
    counts = dict.fromkeys(FAILURE_CATEGORIES, 0)
    for index, row in enumerate(rows):
        correct = row.get("correct")
        if isinstance(correct, Mapping):  # a predictions row: {"strict-match": .., "numeric-match": ..}
            correct = correct.get("strict-match")  # lm-eval's score: a right number in another form fails
        if correct:
            continue
        if row.get("failure") in counts:  # already classified when the prediction was scored
            counts[row["failure"]] += 1
            continue
        missing = [key for key in _ROW_KEYS if key not in row]
        if missing:
            raise MathtuneError(f"row {index} lacks {', '.join(missing)} needed for failure analysis")
        category = classify_failure(
            row["question"], row["output"], row["reference_answer"], bool(row["truncated"])
        )
        counts[category] += 1
    return counts
