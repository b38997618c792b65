"""The `program` strategy end to end: what a model learns to write is cut, executed and scored."""

from __future__ import annotations

import json
import random

import pytest
from helpers import synthetic_problem

from mathtune.config import build_config
from mathtune.data.problems import Problem
from mathtune.data.programs import solution_to_program
from mathtune.evaluate.generation import Generation, cut_at_stop
from mathtune.evaluate.scoring import score_rows
from mathtune.prompts import extract_program, get_strategy


def problem_and_program(seed: int = 3) -> tuple[Problem, str]:
    row = synthetic_problem(random.Random(seed))
    answer = row["answer"].rpartition("####")[2].strip()
    problem = Problem(id=f"p{seed}", question=row["question"], solution=row["answer"], answer=answer)
    program = solution_to_program(problem.solution)
    assert program is not None
    return problem, program


@pytest.mark.parametrize("after", ["", "\n\nQ: another question\nA:", "\n```\n\nmore text"])
def test_a_model_that_writes_its_training_target_is_scored_right(after):
    """Generation is cut at the strategy's stop strings exactly as decoding cuts it; a model that writes
    the target it was trained on must get its program run and its answer scored correct. (With the fence
    in the target, the stop string matched the opening fence and the output was empty.)"""
    strategy = get_strategy("program")
    problem, program = problem_and_program()
    written = strategy.format_target(problem, program) + after
    text, stopped = cut_at_stop(written, strategy.stop)
    assert stopped and extract_program(text) == program.strip()
    prompt = strategy.format_prompt(problem.question)
    [row] = score_rows([problem], [Generation(text, False, 40)], strategy, [prompt])
    assert row["sandbox"]["ok"] and row["correct"]["numeric-match"] and row["correct"]["strict-match"]
    assert row["extracted"]["strict-match"] == problem.answer


def test_a_wrong_or_broken_program_is_scored_wrong():
    strategy = get_strategy("program")
    problem, _ = problem_and_program()
    texts = ["answer = -1\n", "answer = 1 / 0\n", "while True:\n    pass\n", ""]
    rows = score_rows([problem] * len(texts), [Generation(t, False, 5) for t in texts], strategy, ["p"] * len(texts))
    assert [row["correct"]["numeric-match"] for row in rows] == [False] * len(texts)
    assert [row["sandbox"]["ok"] for row in rows][:3] == [True, False, False]


@pytest.mark.parametrize("arch", ["llama", "t5"])
def test_program_strategy_trains_and_evaluates_on_causal_and_seq2seq(arch, tiny_models, data_dir, tmp_path):
    """Train a tiny model with `program`, evaluate it: every problem's program goes through the sandbox,
    the prompt opens the code block, and the row is scored from the sandbox's answer."""
    from mathtune.recipes.evaluate import evaluate_model
    from mathtune.recipes.train import train_workflow

    cfg = build_config({
        "model": {"name": str(tiny_models[arch])},
        "data": {"data_dir": str(data_dir), "train_size": 8, "max_length": 160},
        "prompt": {"strategy": "program"}, "method": {"name": "lora"},
        "train": {"max_steps": 2, "batch_size": 2, "precision": "fp32", "lr": 1e-2},
        "eval": {"num_problems": 3, "batch_size": 3, "max_new_tokens": 12, "dtype": "fp32", "perplexity": False},
        "output_dir": str(tmp_path / "run"),
    })
    run_dir = train_workflow(cfg)
    card = json.loads((run_dir / "train_card.json").read_text())
    assert card["data"]["program_conversion"]["converted"] > 0
    metrics = evaluate_model(cfg, run_dir / "eval" / "tuned", "tuned", run_dir / "adapter")
    rows = [json.loads(line) for line in (run_dir / "eval" / "tuned" / "predictions.jsonl").read_text().splitlines()]
    assert metrics["n"] == len(rows) == 3
    for row in rows:
        assert row["prompt"].endswith("```python\n")
        assert "sandbox" in row  # every output went through the sandbox, empty or not
        if not (row["sandbox"]["ok"] and row["sandbox"]["answer"] is not None):  # nothing to score
            assert not any(row["correct"].values()) and row["extracted"]["strict-match"] == "[invalid]"
