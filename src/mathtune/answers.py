"""Answers as GSM8K writes them: the `#### N` marker, the reference answer after it, and a number
written as text. Pure functions, imported by data loading and answer checking alike."""

from __future__ import annotations

import re

ANSWER_MARK = "####"


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
