"""Prompt strategies read from prompts.yaml (the one place they are declared: config validation and
the CLI help are generated from it), plus few-shot. `register_strategy` adds one at run time."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from mathtune.data.problems import Problem
from mathtune.errors import MathtuneError

PROMPTS_FILE = Path(__file__).with_name("prompts.yaml")
CODE_BLOCK = re.compile(r"```(?:python)?\n(.*?)(?:```|$)", re.S)


@dataclass(frozen=True)
class PromptStrategy:
    name: str
    description: str
    prompt: str
    target: str
    shot_separator: str
    stop: tuple[str, ...]
    # shared: one seeded draw of train problems for all; per-problem: lm-eval's default sampler;
    # task: the lm-eval task's own fixed examples (gsm8k_cot's 8), the first `few_shot` of them
    few_shot_draw: str = "shared"
    task: str = "gsm8k"  # the lm-eval task whose filters score the answers (evaluate/extraction.py)

    @property
    def writes_programs(self) -> bool:
        """The model writes a program (a `{program}` target): trained on programs converted from the
        reference solutions, answered by what the sandbox computes from the program it writes."""
        return "{program}" in self.target

    def format_prompt(self, question: str) -> str:
        return self.prompt.format(question=question.strip())

    def format_target(self, problem: Problem, program: str | None = None) -> str:
        if self.writes_programs:
            if program is None:
                raise ValueError(f"problem {problem.id} has no program target")
            return self.target.format(program=program)
        return self.target.format(solution=problem.solution.strip())

    def answer_texts(self, outputs: list[str]) -> tuple[list[str], list[Any]]:
        """What answer extraction reads for each output, and the sandbox's results (programs only):
        the output itself, or '#### <the answer the sandbox computed>' ('' when the program failed)."""
        if not self.writes_programs:
            return list(outputs), []
        from mathtune.sandbox import run_programs  # model-written code runs only there

        results = run_programs([extract_program(output) for output in outputs])
        texts = [f"#### {r.answer}" if r.ok and r.answer is not None else "" for r in results]
        return texts, results

    def reference_program(self, problem: Problem) -> str | None:
        """The program target of a reference solution (None for strategies that write no program)."""
        if not self.writes_programs:
            return None
        from mathtune.data.programs import solution_to_program

        return solution_to_program(problem.solution) or f"answer = {problem.answer}"


@cache
def load_strategies() -> dict[str, PromptStrategy]:
    tree: dict[str, dict[str, Any]] = yaml.safe_load(PROMPTS_FILE.read_text(encoding="utf-8"))
    return {
        name: PromptStrategy(name=name, stop=tuple(entry.pop("stop")), **entry) for name, entry in tree.items()
    }


def register_strategy(strategy: PromptStrategy) -> PromptStrategy:
    """Add (or replace) a strategy beside prompts.yaml's; `prompt.strategy` accepts it from then on.
    Its `task` must be one of the lm-eval task YAMLs in evaluate/tasks/ (its answer filters)."""
    load_strategies()[strategy.name] = strategy
    return strategy


def strategies_help() -> str:
    """'qa, breakdown, ...': the strategy names, for CLI help texts."""
    return ", ".join(load_strategies())


def get_strategy(name: str) -> PromptStrategy:
    strategies = load_strategies()
    if name not in strategies:
        raise MathtuneError(f"unknown prompt strategy '{name}' (choose from {', '.join(strategies)})")
    return strategies[name]


def few_shot_prefix(
    strategy: PromptStrategy, pool: list[Problem], count: int, seed: int, programs: dict[str, str] | None = None
) -> tuple[str, list[str]]:
    """Seeded worked examples from the train split; returns the prefix and the example ids used."""
    if count == 0:
        return "", []
    usable = [p for p in pool if not strategy.writes_programs or (programs and p.id in programs)]
    shots = random.Random(seed).sample(usable, min(count, len(usable)))
    blocks = [
        strategy.format_prompt(p.question) + strategy.format_target(p, (programs or {}).get(p.id)) for p in shots
    ]
    return "".join(block + strategy.shot_separator for block in blocks), [p.id for p in shots]


def per_problem_prefixes(
    strategy: PromptStrategy, pool: list[Problem], ordered: list[Problem], count: int, seed: int
) -> dict[str, tuple[str, list[str]]]:
    """lm-eval's default few-shot sampler: one `Random(seed)` stream and a fresh `sample(pool, count)`
    for each test problem, drawn in test-file order (`ordered`). Returns problem id -> (prefix, shot ids)."""
    rnd = random.Random(seed)
    prefixes = {}
    for problem in ordered:
        shots = rnd.sample(pool, count) if count else []
        blocks = [strategy.format_prompt(p.question) + strategy.format_target(p) for p in shots]
        prefixes[problem.id] = ("".join(b + strategy.shot_separator for b in blocks), [p.id for p in shots])
    return prefixes


def render_prompts(tokenizer: Any, prompts: list[str], chat_template: bool) -> list[str]:
    """`prompt.chat_template`: each prompt as the user turn of the tokenizer's chat template, ready
    for the assistant's answer. The one place this happens, so training, evaluation, the dev-slice
    check and the app see the same text (the lm-eval bridge asks lm-eval for the same template)."""
    if not chat_template:
        return prompts
    check_chat_template(tokenizer)
    return [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                          add_generation_prompt=True) for p in prompts]


def check_chat_template(tokenizer: Any) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise MathtuneError("prompt.chat_template is on but this model's tokenizer has no chat template; "
                            "set -s prompt.chat_template=false")


def extract_program(output: str) -> str:
    """The code a model wrote: inside a ```python block if there is one, else the output up to its
    first closing fence (the `program` prompt opens the block, so the model writes only code)."""
    match = CODE_BLOCK.search(output)
    code = match.group(1) if match else output.split("```", 1)[0]
    return code.strip()
