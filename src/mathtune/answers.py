"""Answers and numbers, in one place: the `#### N` marker, reading a reference answer, numbers as
people write them (`$1,000.50`, `1/2`), comparing and formatting them. Pure functions, used by data
loading, answer checking, the failure analysis and the calculator alike."""

from __future__ import annotations

import math
import re

from mathtune.errors import MathtuneError

ANSWER_MARK = "####"
# A number as people write it: optional sign and $, thousands groups or plain digits, decimals,
# an optional "/denominator". The sign must not follow a digit, or "5-3" would read as 5 and -3.
_NUMBER = re.compile(
    r"(?:(?<![\w)])(?P<sign>-))?(?:\$\s?)?(?P<int>\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?P<frac>\.\d+)?"
    r"(?:\s?/\s?(?P<den>\d+)(?![\d.]))?"
)


def parse_reference_answer(solution: str) -> str | None:
    """The number after the last '####': '#### 1,000' -> '1000', '#### -3.5' -> '-3.5'."""
    if ANSWER_MARK not in solution:
        return None
    tail = solution.rsplit(ANSWER_MARK, 1)[1].strip()
    match = re.match(r"^\$?\s*(-?[\d,]*\.?\d+)", tail)
    return match.group(1).replace(",", "") if match else None


def parse_number_text(text: str) -> str | None:
    match = re.fullmatch(r"\s*\$?(-?[\d,]*\.?\d+)\s*", text)
    return match.group(1).replace(",", "") if match else None


class MissingAnswerError(MathtuneError, ValueError):
    """A GSM8K solution without its ``#### answer`` line: bad data the user has to fix."""


def _to_float(match: re.Match[str]) -> float | None:
    value = float(match["int"].replace(",", "") + (match["frac"] or ""))
    if match["den"] is not None:
        denominator = int(match["den"])
        if denominator == 0:
            return None
        value /= denominator
    return -value if match["sign"] else value


def find_numbers(text: str) -> list[float]:
    """Every number written in `text`, in order, by the same reading as `parse_number`."""
    values = (_to_float(match) for match in _NUMBER.finditer(text))
    return [value for value in values if value is not None]


def parse_number(text: str) -> float | None:
    """The first number written in `text` ("$1,000.50 each" -> 1000.5, "1/2" -> 0.5), else None."""
    numbers = find_numbers(text)
    return numbers[0] if numbers else None


def numbers_equal(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6)


def reference_answer(solution: str) -> str:
    """The answer of a GSM8K solution: the text after ``#### ``, commas removed, stripped."""
    _, mark, answer = solution.rpartition("#### ")
    answer = answer.replace(",", "").strip()
    if not mark or not answer:
        raise MissingAnswerError(f"GSM8K solution has no '#### <answer>' line: {solution[-80:]!r}")
    return answer


def format_number(value: float) -> str:
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
