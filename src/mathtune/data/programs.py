"""Turn GSM8K chain-of-thought solutions into straight-line Python programs (program-of-thought data).

Every calculator annotation ``<<48/2=24>>`` becomes one assignment, and the sentence it came from
becomes a comment above it::

    # Natalia sold 48/2 = 24 clips in May.
    v1 = 48 / 2
    # Natalia sold 48+24 = 72 clips altogether in April and May.
    v2 = 48 + 24
    answer = v2

Literals are kept as written rather than rewritten into references to earlier variables: matching a
literal to "the" earlier result it came from is guesswork, and a wrong guess would corrupt the data.
Programs are verified without ``exec``: each right-hand side goes through the safe calculator.
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass

from mathtune.arithmetic import Number, evaluate_number, normalize_expression

_ANNOTATION = re.compile(r"<<([^<>]*)>>")
_NUMBER = r"\$?\d[\d,]*(?:\.\d+)?"
_OPERAND = rf"\(*\s*{_NUMBER}\s*\)*"
# An equation the annotator forgot to mark, e.g. "20/4 = $5": at least one operator, then "= number".
_PLAIN_EQUATION = re.compile(rf"({_OPERAND}(?:\s*[-+*/x×÷−]\s*{_OPERAND})+)\s*=\s*\$?-?\d")
_ASSIGNMENT = re.compile(r"^([A-Za-z_]\w*)\s*=\s*(.+)$")
ANSWER_VARIABLE = "answer"


@dataclass
class ConversionReport:
    """How many solutions became verified programs, and why the others were dropped."""

    total: int = 0
    converted: int = 0
    dropped_no_annotation: int = 0
    dropped_mismatch: int = 0  # the program's result differs from the reference answer

    @property
    def rate(self) -> float:
        return self.converted / self.total if self.total else 0.0


def reference_answer(solution: str) -> str | None:
    """The text after ``#### `` in a GSM8K solution (commas kept), or None if there is none."""
    _, marker, answer = solution.rpartition("####")
    return (answer.strip() or None) if marker else None


def solution_to_program(solution: str) -> str | None:
    """A straight-line program for ``solution``, or None when it has no calculator annotations."""
    lines: list[str] = []
    count = 0
    for sentence in solution.splitlines():
        if sentence.lstrip().startswith("####") or not sentence.strip():
            continue
        # Without the annotation the comment reads naturally: "48/2 = <<48/2=24>>24" -> "48/2 = 24".
        lines.append("# " + _ANNOTATION.sub("", sentence).strip())
        for expression in _sentence_expressions(sentence):
            count += 1
            lines.append(f"v{count} = {expression}")
    if count == 0:
        return None
    lines.append(f"{ANSWER_VARIABLE} = v{count}")
    return "\n".join(lines) + "\n"


def check_program(program: str, gold_answer: str) -> bool:
    """Whether the straight-line ``program`` computes ``gold_answer``, evaluated without ``exec``.

    Only comments and ``name = arithmetic`` lines are accepted; names must be assigned before use.
    """
    gold = _parse_number(gold_answer)
    values = _run_straight_line(program)
    if gold is None or values is None or ANSWER_VARIABLE not in values:
        return False
    return math.isclose(values[ANSWER_VARIABLE], gold, rel_tol=1e-6, abs_tol=1e-6)


def convert_solutions(rows: list[tuple[str, str]]) -> tuple[list[str | None], ConversionReport]:
    """Programs for ``(solution, gold answer)`` rows, in order; None marks a dropped row."""
    report = ConversionReport(total=len(rows))
    programs: list[str | None] = []
    for solution, gold in rows:
        program = solution_to_program(solution)
        if program is None:
            report.dropped_no_annotation += 1
        elif not check_program(program, gold):
            report.dropped_mismatch += 1
            program = None
        else:
            report.converted += 1
        programs.append(program)
    return programs, report


def _sentence_expressions(sentence: str) -> list[str]:
    annotations = [m.group(1) for m in _ANNOTATION.finditer(sentence)]
    if annotations:
        return [_python_expression(a.rpartition("=")[0] or a) for a in annotations]
    # About 3% of GSM8K solutions do their last step without an annotation; only equations that
    # evaluate are kept, so prose like "2 + 2 = 4 friends" costs nothing when it is wrong.
    plain = [m.group(1) for m in _PLAIN_EQUATION.finditer(sentence)]
    return [_python_expression(e) for e in plain if evaluate_number(e) is not None]


def _python_expression(text: str) -> str:
    expression = normalize_expression(text)
    try:
        return ast.unparse(ast.parse(expression, mode="eval"))
    except (SyntaxError, ValueError, RecursionError):
        # Keep the text; check_program will reject it and the row is dropped as a mismatch.
        return expression


def _run_straight_line(program: str) -> dict[str, Number] | None:
    values: dict[str, Number] = {}
    for raw in program.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _ASSIGNMENT.match(line)
        value = None if match is None else evaluate_number(match.group(2), values)
        if match is None or value is None:
            return None
        values[match.group(1)] = value
    return values


def _parse_number(text: str) -> float | None:
    try:
        value = float(text.replace(",", "").replace("$", "").strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None
