"""Verified number-perturbation of GSM8K problems: new problems for training, perturbed copies for testing.

A variant keeps a problem's story and its solution's steps and changes the numbers. The numbers
stated in the question that the solution's calculator annotations use get new values of the same
kind (integers stay integers of similar magnitude, round numbers stay round, decimals keep their
places, percentages stay in 1..100); every annotation ``<<expr=result>>`` is then recomputed in order,
each earlier result's new value replacing its old one wherever the old value is used. The question,
the solution text (annotations included) and the final ``#### N`` are rewritten from that one
mapping, so they agree by construction, and a variant is kept only if

- every step stays clean: finite, integer where the original was an integer, non-negative where
  the original was;
- no value plays two roles (a number both remapped and kept as a constant, such as 60 minutes);
- the rewritten solution converts to a straight-line program (data/programs.py) that computes the
  new answer, checked without ``exec``.

A variant that fails a check is dropped and counted by reason, never raised. Numbers 0, 1 and 2 and
common unit constants (7, 12, 24, 52, 60, 100, 365, 1000) are never changed: in word problems they
usually mean "twice", "a dozen", "minutes per hour", and changing them would change the problem's
meaning rather than its quantities. This is the GSM-Symbolic idea (Mirzadeh et al., 2024) without
hand-written templates; pure functions, no torch.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any

from mathtune.arithmetic import evaluate_number
from mathtune.data.problems import Problem
from mathtune.data.programs import check_program, solution_to_program

# A number as written in GSM8K text: 1,200 or 1200 or 3.5 (a sign or "$" stays outside the match).
NUMBER = re.compile(r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+|(?=\.\d))(\.\d+)?(?!\d)")  # ".5" too
ANNOTATION = re.compile(r"<<([^<>=]*)=([^<>]*)>>")
_PLAIN_EQUATION = re.compile(r"\d\s*[-+*/x×÷]\s*\$?\d[\d,.]*\s*=\s*\$?\d")
FIXED_VALUES = frozenset(Fraction(v) for v in (0, 1, 2, 7, 12, 24, 52, 60, 100, 365, 1000))
MAX_DRAWS = 8  # attempts at one variant's numbers before the variant is counted as dropped


@dataclass(frozen=True)
class Written:
    """One number token as written: its value, and the shape to write a new value in."""

    value: Fraction
    decimals: int
    commas: bool
    bare_point: bool = False  # written ".5", without the leading zero


@dataclass
class AugmentReport:
    """What happened to every variant asked for."""

    problems: int = 0
    requested: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {"problems": self.problems, "requested": self.requested, "kept": self.kept,
                "dropped": dict(sorted(self.dropped.items()))}


class Dropped(Exception):
    """A variant failed a check; the message is the reason counted in the report."""


def parse_written(match: re.Match[str]) -> Written:
    whole, fraction = match.group(1), match.group(2) or ""
    return Written(Fraction(Decimal((whole.replace(",", "") or "0") + fraction)), max(0, len(fraction) - 1),
                   "," in whole, not whole)


def format_written(value: Fraction, like: Written) -> str:
    if like.decimals == 0:
        if value.denominator != 1:
            raise Dropped("non-integer where an integer was written")
        return f"{value.numerator:,}" if like.commas else str(value.numerator)
    text = f"{float(value):.{like.decimals}f}"
    if Fraction(Decimal(text)) != value:
        raise Dropped("more decimals than written")
    if like.commas:
        whole, _, decimals = text.partition(".")
        text = f"{int(whole):,}.{decimals}"
    if like.bare_point and text.startswith("0."):
        text = text[1:]
    return text


def draw_value(rng: random.Random, old: Written, percent: bool) -> Fraction:
    """A new value of the same kind as `old`: same decimals, same roundness, within [0.5x, 1.5x]."""
    scale = 10**old.decimals
    units = int(old.value * scale)
    step = 1
    while units % (step * 10) == 0 and step * 10 < units:
        step *= 10  # 40 -> multiples of 10, 300 -> multiples of 100
    low, high = max(step, (units // 2) // step * step), (units * 3 // 2) // step * step
    if percent:
        high = min(high, 100 * scale)
    choices = [u for u in range(low, high + 1, step) if u != units and Fraction(u, scale) not in FIXED_VALUES]
    if not choices:
        raise Dropped("no other value of the same kind")
    return Fraction(rng.choice(choices), scale)


def perturb(problem: Problem, rng: random.Random) -> tuple[Problem, str]:
    """One verified variant of `problem` (new id `<id>~`) and its straight-line program, or `Dropped`."""
    steps = ANNOTATION.findall(problem.solution)
    if not steps:
        raise Dropped("no calculator annotations")
    if any(_PLAIN_EQUATION.search(line) for line in problem.solution.splitlines() if not ANNOTATION.search(line)):
        raise Dropped("a step without an annotation")
    question_numbers = {}
    for match in NUMBER.finditer(problem.question):
        written = parse_written(match)
        percent = problem.question[match.end():match.end() + 1] == "%"
        question_numbers.setdefault(written.value, (written, percent))
    used = {parse_written(m).value for expr, _ in steps for m in NUMBER.finditer(expr)}
    variable = [v for v in question_numbers if v in used and v not in FIXED_VALUES]
    if not variable:
        raise Dropped("no question number used by the solution")
    mapping = {v: draw_value(rng, question_numbers[v][0], question_numbers[v][1]) for v in variable}
    if len(set(mapping.values())) < len(mapping):
        raise Dropped("two numbers drew the same value")
    mapping = _recompute_steps(steps, mapping)
    old_answer = Fraction(Decimal(problem.answer))
    if old_answer not in mapping:
        raise Dropped("the answer is not the result of a step")
    question = _rewrite(problem.question, mapping)
    solution = _rewrite(problem.solution, mapping)
    answer = _rewrite_plain(problem.answer, mapping[old_answer])
    program = solution_to_program(solution)
    if program is None or not check_program(program, answer):
        raise Dropped("the rewritten solution's program does not compute the new answer")
    return Problem(id=f"{problem.id}~", question=question, solution=solution, answer=answer), program


def _recompute_steps(steps: Sequence[tuple[str, str]], mapping: dict[Fraction, Fraction]) -> dict[Fraction, Fraction]:
    """Each annotation in order with the new values substituted; its result joins the mapping."""
    mapping, constants = dict(mapping), set()
    for expression, result in steps:
        old_value = _exact(evaluate_number(expression))
        new_expression = _rewrite(expression, mapping)
        constants |= {parse_written(m).value for m in NUMBER.finditer(expression)} - set(mapping)
        new_value = _exact(evaluate_number(new_expression))
        if old_value is None or new_value is None:
            raise Dropped("a step does not evaluate")
        if old_value.denominator == 1 and new_value.denominator != 1:
            raise Dropped("a step is no longer an integer")
        if old_value >= 0 > new_value:
            raise Dropped("a step turned negative")
        if old_value in mapping and mapping[old_value] != new_value:
            raise Dropped("one old value would take two new values")
        mapping[old_value] = new_value
        written = _exact(evaluate_number(result))
        if written is not None and written != old_value:  # an annotation whose written result is rounded
            raise Dropped("an annotation's result does not recompute")
    if constants & set(mapping):
        raise Dropped("a value is both a remapped quantity and a constant")
    return mapping


def _exact(value: float | int | None) -> Fraction | None:
    """Calculator results as exact fractions (rounded to 9 places, as GSM8K writes 0.333333333)."""
    if value is None or not math.isfinite(value):
        return None
    try:
        return Fraction(Decimal(repr(value) if isinstance(value, float) else str(value))).limit_denominator(10**9)
    except (InvalidOperation, ValueError):
        return None


def _rewrite(text: str, mapping: dict[Fraction, Fraction]) -> str:
    """Every number token of `text` whose value is in `mapping`, written anew in the token's shape."""

    def replace(match: re.Match[str]) -> str:
        written = parse_written(match)
        return format_written(mapping[written.value], written) if written.value in mapping else match.group(0)

    return NUMBER.sub(replace, text)


def _rewrite_plain(old_answer: str, value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    decimals = len(old_answer.partition(".")[2]) or 2
    return format_written(value, Written(value, decimals, False))


def augment(problems: Sequence[Problem], variants: int, seed: int,
            exclude_questions: Sequence[str] = ()) -> tuple[list[tuple[Problem, str]], AugmentReport]:
    """Up to `variants` verified, deduplicated variants of each problem, seeded per problem (the same
    problem and seed give the same variants whatever else is in the list). Variants whose question
    equals an original or an excluded question (the test split) are dropped as duplicates.
    Ids are `<id>~<k>`."""
    report = AugmentReport(problems=len(problems), requested=len(problems) * variants)
    seen = {_key(p.question) for p in problems} | {_key(q) for q in exclude_questions}
    kept: list[tuple[Problem, str]] = []
    for problem in problems:
        rng = random.Random(f"{seed}:{problem.id}")
        for k in range(variants):
            reason = "no new variant"
            for _ in range(MAX_DRAWS):
                try:
                    variant, program = perturb(problem, rng)
                except Dropped as exc:
                    reason = str(exc)
                    continue
                if _key(variant.question) in seen:
                    reason = "duplicate question"
                    continue
                seen.add(_key(variant.question))
                kept.append((Problem(f"{problem.id}~{k}", variant.question, variant.solution, variant.answer),
                             program))
                break
            else:
                report.dropped[reason] += 1
    report.kept = len(kept)
    return kept, report


def _key(question: str) -> str:
    return " ".join(question.split()).lower()


def perturbed_copies(problems: Sequence[Problem], seed: int) -> tuple[list[Problem], AugmentReport]:
    """One verified variant of each problem, keeping its id so it pairs with the original in a
    comparison (the robustness evaluation: same problem, new numbers). Problems with no clean
    variant are left out and counted in the report."""
    variants, report = augment(problems, 1, seed)
    by_source = {variant.id.rpartition("~")[0]: variant for variant, _ in variants}
    kept = [Problem(p.id, v.question, v.solution, v.answer) for p in problems if (v := by_source.get(p.id))]
    return kept, report


def overlaps_test_split(variants: Sequence[Problem], test_problems: Sequence[Problem]) -> set[str]:
    """Ids of variants whose question shares a 13-word n-gram with a test question (the same check
    `mathtune eval` reports as contamination)."""
    from mathtune.data.contamination import contamination_report

    report = contamination_report([(p.id, p.question) for p in test_problems],
                                  [(v.id, v.question) for v in variants], max_listed=None)
    return {row["eval_id"] for row in report["examples"]}
