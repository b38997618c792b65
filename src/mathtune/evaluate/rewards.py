"""GRPO's verifiable rewards, from mathtune's own answer checks: the evaluation's extractor, the
sandbox that runs model-written programs, and the strategy's answer form.

Each reward function has TRL's signature: `(prompts, completions, **dataset_columns) -> list[float]`,
with the columns `solution`, `answer` and `kind` of every row. A program that hangs, crashes or
attacks the host gets 0 and its reason is logged; it never fails the run (the sandbox never raises).
"""

from __future__ import annotations

import ast
import logging
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

from mathtune.evaluate.extraction import score_answer
from mathtune.prompts import PromptStrategy, extract_program

LOG = logging.getLogger("mathtune")
RewardFunc = Callable[..., list[float]]
FINAL_ANSWER = re.compile(r"####\s*-?[\d,]*\.?\d+")


def _texts(completions: list[Any]) -> list[str]:
    """TRL passes strings for plain-text prompts and message lists for conversational ones."""
    return [c if isinstance(c, str) else c[-1]["content"] for c in completions]


def correct_reward(score: str) -> RewardFunc:
    """1.0 when the evaluation's `score` (strict-match or numeric-match) reads the right answer."""

    def correct(prompts: list[Any], completions: list[Any], solution: list[str], answer: list[str],
                kind: list[str], **_: Any) -> list[float]:
        return [float(score_answer(text, sol, ans, k)[1][score])
                for text, sol, ans, k in zip(_texts(completions), solution, answer, kind, strict=True)]

    correct.__name__ = f"correct_{score.replace('-', '_')}"
    return correct


def program_reward(strategy: PromptStrategy) -> RewardFunc:
    """1.0 when the completion's program, run in the sandbox, computes the reference answer."""

    def program(prompts: list[Any], completions: list[Any], solution: list[str], answer: list[str],
                kind: list[str], **_: Any) -> list[float]:
        texts, results = strategy.answer_texts(_texts(completions))  # the sandbox: model code runs only there
        failures = Counter(r.reason.split(":")[0] for r in results if not r.ok)
        if failures:
            LOG.info("mathtune: program reward 0 for %d of %d completions: %s", sum(failures.values()),
                     len(results), dict(failures))
        return [float(score_answer(text, sol, ans, k)[1]["numeric-match"]) if text else 0.0
                for text, sol, ans, k in zip(texts, solution, answer, kind, strict=True)]

    return program


def format_reward(strategy: PromptStrategy) -> RewardFunc:
    """1.0 for the strategy's answer form: a `#### N` line, or (program strategy) code that parses."""

    def has_form(text: str) -> bool:
        if not strategy.writes_programs:
            return FINAL_ANSWER.search(text) is not None
        code = extract_program(text)
        try:
            ast.parse(code)
        except (SyntaxError, ValueError):
            return False
        return bool(code)

    def answer_format(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
        return [float(has_form(text)) for text in _texts(completions)]

    return answer_format


def build_rewards(method: Any, strategy: PromptStrategy) -> tuple[list[RewardFunc], list[float]]:
    """The reward functions with a weight above 0, and their weights (TRL sums them weighted)."""
    chosen = [(correct_reward(method.correct_score), method.reward_correct),
              (program_reward(strategy), method.reward_program),
              (format_reward(strategy), method.reward_format)]
    kept = [(func, weight) for func, weight in chosen if weight > 0]
    return [func for func, _ in kept], [weight for _, weight in kept]
