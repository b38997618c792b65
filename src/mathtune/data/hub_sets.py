"""MATH and ARC-Challenge as `Problem` rows, from a local JSONL/JSON file or the hub.

- MATH (`hendrycks/competition_math` layout: problem, solution, level, type): the answer is the
  last ``\\boxed{...}`` of the solution; the solution gets a ``#### answer`` line appended so the
  rest of mathtune reads it like GSM8K. Non-numeric answers (``\\frac{1}{2}``, ``x^2``) are kept as
  text; `numeric_only=True` keeps just the problems whose answer is a plain number.
- ARC-Challenge (`allenai/ai2_arc`, config ARC-Challenge: id, question, choices{text,label},
  answerKey): the question lists the lettered choices; the answer is the letter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mathtune.answers import ANSWER_MARK, parse_number_text
from mathtune.data.records import read_records, row_locator
from mathtune.data.row import Problem, hub_rows
from mathtune.errors import MathtuneError


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced, else None."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth, begin = 1, i
    while i < len(text):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[begin:i].strip()
        i += 1
    return None


def math_problems(rows: list[dict[str, Any]], source: str, numeric_only: bool = False) -> list[Problem]:
    where, problems = row_locator(rows, source), []  # `path:line` for a file's rows, `source row N` for the hub's
    for index, row in enumerate(rows):
        try:
            question, solution = row["problem"], row["solution"]
        except KeyError as exc:
            raise MathtuneError(f"{where(index)}: missing MATH field {exc}") from None
        if not isinstance(question, str) or not isinstance(solution, str):
            raise MathtuneError(f"{where(index)}: MATH fields 'problem' and 'solution' must be text")
        answer = last_boxed(solution)
        if answer is None:
            raise MathtuneError(f"{where(index)}: solution has no \\boxed{{...}} answer")
        number = parse_number_text(answer.replace("\\$", "").replace("\\!", ""))
        if numeric_only and number is None:
            continue
        answer = number if number is not None else answer
        problems.append(Problem(id=str(row.get("id", index)), question=question.strip(),
                                solution=f"{solution.strip()}\n{ANSWER_MARK} {answer}", answer=answer, kind="latex"))
    return problems


def arc_problems(rows: list[dict[str, Any]], source: str) -> list[Problem]:
    where, problems = row_locator(rows, source), []
    for index, row in enumerate(rows):
        try:
            choices = row["choices"]
            options = "\n".join(f"{label}. {text}" for label, text in zip(choices["label"], choices["text"],
                                                                          strict=True))
            question, key = f"{row['question'].strip()}\n{options}", str(row["answerKey"]).strip()
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # AttributeError: a non-text question
            raise MathtuneError(f"{where(index)}: bad or missing ARC field ({exc})") from None
        if key not in choices["label"]:
            raise MathtuneError(f"{where(index)}: answerKey {key!r} is not one of {choices['label']}")
        problems.append(Problem(id=str(row.get("id", index)), question=question, solution=f"{ANSWER_MARK} {key}",
                                answer=key, kind="choice"))
    return problems


def load_hub_set(name: str, split: str, local_file: str | Path | None = None,
                 numeric_only: bool = False) -> list[Problem]:
    """`name`: math or arc-challenge; rows from `local_file` (.jsonl/.json/.csv) when given, else the hub."""
    if name not in HUB_PARSERS:
        raise MathtuneError(f"unknown data set '{name}' (choose from {', '.join(HUB_PARSERS)})")
    if local_file is not None:
        rows, source = read_records(local_file), str(local_file)
    else:
        hub_id, hub_config = hub_location(name)
        rows, source = hub_rows(hub_id, hub_config, split), f"{hub_id} {split}"
    return math_problems(rows, source, numeric_only) if name == "math" else arc_problems(rows, source)


def load_math(data_cfg: Any, data_dir: Path | None, split: str) -> list[Problem]:
    return load_hub_set("math", split, data_cfg.train_file if split == "train" else data_cfg.test_file)


def load_arc_challenge(data_cfg: Any, data_dir: Path | None, split: str) -> list[Problem]:
    return load_hub_set("arc-challenge", split, data_cfg.train_file if split == "train" else data_cfg.test_file)


HUB_PARSERS = ("math", "arc-challenge")  # the sets this module parses; their hub ids: data/benchmarks.py


def hub_location(name: str) -> tuple[str, str | None]:
    """(hub id, config) of a benchmark, from the table in `data/benchmarks.py`."""
    from mathtune.data.benchmarks import get_benchmark

    benchmark = get_benchmark(name)
    if benchmark.hub_id is None:
        raise MathtuneError(f"benchmark {name} has no hub id")
    return benchmark.hub_id, benchmark.hub_config
