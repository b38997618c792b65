"""method: grpo (recipes/rl.py): TRL's GRPOTrainer on a LoRA adapter with mathtune's verifiable rewards."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

import mathtune.recipes.rl as rl
from mathtune.config import build_config
from mathtune.evaluate.rewards import build_rewards, correct_reward, format_reward, program_reward
from mathtune.methods.grpo.config import GrpoMethodConfig
from mathtune.prompts import get_strategy
from mathtune.recipes.train import train

COLUMNS = {"solution": ["3 + 4 = <<3+4=7>>7\n#### 7"], "answer": ["7"], "kind": ["number"]}


def rewarded(func: Any, completion: str, **columns: list[str]) -> float:
    return func(prompts=["Q"], completions=[completion], **{**COLUMNS, **columns})[0]


@pytest.mark.parametrize(("completion", "strict", "numeric"), [
    ("3 + 4 = 7\n#### 7", 1.0, 1.0),          # right, in lm-eval's form
    ("3 + 4 = 7. The answer is 7.", 0.0, 1.0),  # right number, no #### line: numeric-match only
    ("3 + 4 = 8\n#### 8", 0.0, 0.0),          # wrong
    ("I do not know.", 0.0, 0.0),             # no answer at all
])
def test_correctness_reward_is_the_evaluations_score(completion, strict, numeric):
    assert rewarded(correct_reward("strict-match"), completion) == strict
    assert rewarded(correct_reward("numeric-match"), completion) == numeric


def test_program_reward_runs_the_program_in_the_sandbox_and_survives_hostile_code(caplog):
    reward = program_reward(get_strategy("program"))
    assert rewarded(reward, "a = 3\nb = 4\nresult = a + b\n```") == 1.0
    assert rewarded(reward, "result = 3 * 4\n```") == 0.0  # runs, wrong answer
    assert rewarded(reward, "result = 1 / 0\n```") == 0.0  # crashes
    hostile = ["import os\nos.system('touch /tmp/mathtune-pwned')\nresult = 7\n```",
               "while True:\n    pass\n```",
               "open('/etc/passwd').read()\nresult = 7\n```"]
    with caplog.at_level("INFO", logger="mathtune"):
        scores = reward(prompts=["Q"] * 3, completions=hostile, **{k: v * 3 for k, v in COLUMNS.items()})
    assert scores == [0.0, 0.0, 0.0]
    assert not Path("/tmp/mathtune-pwned").exists()
    assert any("program reward 0 for 3 of 3" in record.getMessage() for record in caplog.records)


def test_format_reward_follows_the_strategy():
    assert rewarded(format_reward(get_strategy("qa")), "so 7\n#### 7") == 1.0
    assert rewarded(format_reward(get_strategy("qa")), "so 7") == 0.0
    assert rewarded(format_reward(get_strategy("program")), "result = 3 + 4\n```") == 1.0
    assert rewarded(format_reward(get_strategy("program")), "result = (3 +\n```") == 0.0


def test_only_weighted_rewards_are_used():
    funcs, weights = build_rewards(GrpoMethodConfig(reward_correct=1.0, reward_format=0.25), get_strategy("qa"))
    assert [f.__name__ for f in funcs] == ["correct_numeric_match", "answer_format"] and weights == [1.0, 0.25]


def test_max_solution_steps_keeps_the_problems_with_few_calculations():
    from types import SimpleNamespace

    from mathtune.data.row import Problem

    def problem(solution: str) -> Problem:
        return Problem(id=solution[:8], question="q?", solution=solution, answer=solution.split("#### ")[-1])

    one = problem("He has 2+3=<<2+3=5>>5 apples.\n#### 5")
    three = problem("a <<1+1=2>>2 b <<2*3=6>>6 c <<6-1=5>>5\n#### 5")
    lines = problem("No annotations.\nTwo lines.\n#### 4")
    assert [rl.solution_steps(p.solution) for p in (one, three, lines)] == [1, 3, 2]
    cfg = build_config({"method": {"name": "grpo", "max_solution_steps": 2}})
    rows = rl._prompt_dataset(cfg, [one, three, lines], SimpleNamespace(tokenizer=None))
    assert [row["solution"] for row in rows] == [one.solution, lines.solution]
    with pytest.raises(rl.MathtuneError, match="at most 1 solution steps"):
        rl._prompt_dataset(build_config({"method": {"name": "grpo", "max_solution_steps": 1}}), [three],
                           SimpleNamespace(tokenizer=None))


def length_reward(prompts: list[Any], completions: list[str], **_: Any) -> list[float]:
    """A reward a random tiny model's completions differ on, so GRPO's advantages are not all zero
    (its real rewards would all be 0 on a random model, and the update with them)."""
    return [len(set(text)) / 10 for text in completions]


def grpo_tree(model: Path, data: Path, out: Path, **method: Any) -> dict:
    return {"model": {"name": str(model)}, "data": {"data_dir": str(data), "train_size": 8},
            "method": {"name": "grpo", "num_generations": 2, "max_completion_length": 10, **method},
            "train": {"max_steps": 2, "batch_size": 2, "lr": 5e-2, "log_every": 1, "save_every": 1,
                      "precision": "fp32"},
            "output_dir": str(out)}


@pytest.fixture
def varied_reward(monkeypatch):
    monkeypatch.setattr(rl, "build_rewards", lambda method, strategy: ([length_reward], [1.0]))


def test_two_grpo_steps_change_the_adapter_and_write_a_run_dir(tiny_models, data_dir, tmp_path, varied_reward):
    out = tmp_path / "grpo"
    card = train(build_config(grpo_tree(tiny_models["llama"], data_dir, out)), out, show_progress=False).card
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    assert max(t.abs().max().item() for k, t in adapter.items() if "lora_B" in k) > 0  # B starts at 0
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["peft_type"] == "LORA"
    assert card["method"] == "grpo" and card["steps"] == 2 and len(card["reward_curve"]) == 2
    assert card["generation_seconds"] > 0 and card["optimisation_seconds"] > 0
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2] and all("reward" in row and "kl" in row for row in rows)
    assert any((out / "tensorboard").rglob("events.out.tfevents.*"))
    assert not (out / "checkpoints").exists()


def test_grpo_continues_an_sft_adapter_and_evaluates_like_any_run(tiny_models, data_dir, tmp_path, varied_reward):
    from mathtune.recipes.evaluate import eval_workflow

    sft = tmp_path / "sft"
    train(build_config({"model": {"name": str(tiny_models["llama"])}, "data": {"data_dir": str(data_dir),
                        "train_size": 8}, "train": {"max_steps": 1, "precision": "fp32"}, "output_dir": str(sft)}),
          sft, show_progress=False)
    start = load_file(sft / "adapter" / "adapter_model.safetensors")
    out = tmp_path / "rl"
    cfg = build_config(grpo_tree(tiny_models["llama"], data_dir, out, init_adapter=str(sft)))
    card = train(cfg, out, show_progress=False).card
    assert card["init_adapter"] == str(sft)
    after = load_file(out / "adapter" / "adapter_model.safetensors")
    assert after.keys() == start.keys()
    assert max((after[k] - start[k]).abs().max().item() for k in after) > 0
    metrics = eval_workflow(build_config({**grpo_tree(tiny_models["llama"], data_dir, out, init_adapter=str(sft)),
                                          "eval": {"num_problems": 4, "max_new_tokens": 8, "perplexity": False}}),
                            out, False, out / "eval" / "tuned")
    assert metrics["n"] == 4 and (out / "eval" / "tuned" / "predictions.jsonl").is_file()


def test_resume_after_a_kill_continues_from_the_checkpoint(tiny_models, data_dir, tmp_path, varied_reward,
                                                          monkeypatch):
    import trl

    real_generate, calls = trl.GRPOTrainer._generate, []

    def killed_at_third_generation(self: Any, prompts: list) -> Any:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as SIGINT would, after step 2's checkpoint was written
        return real_generate(self, prompts)

    out = tmp_path / "grpo"
    tree = grpo_tree(tiny_models["llama"], data_dir, out)
    tree["train"]["max_steps"] = 3
    monkeypatch.setattr(trl.GRPOTrainer, "_generate", killed_at_third_generation)
    with pytest.raises(KeyboardInterrupt):
        train(build_config(tree), out, show_progress=False)
    assert (out / "checkpoints" / "checkpoint-2").is_dir() and not (out / "adapter").exists()
    checkpoint = out / "checkpoints" / "checkpoint-2"
    saved = load_file(checkpoint / "adapter_model.safetensors")
    before = {entry["step"]: entry["reward"] for entry in
              json.loads((checkpoint / "trainer_state.json").read_text())["log_history"] if "reward" in entry}
    assert sorted(before) == [1, 2]
    monkeypatch.setattr(trl.GRPOTrainer, "_generate", real_generate)
    card = train(build_config(tree), out, resume=True, show_progress=False).card
    assert card["resumed_from"] == "checkpoint-2" and card["steps"] == 3
    # one more step, not three: steps 1-2 logged as they were before the kill, step 3 added
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3]
    assert {row["step"]: row["reward"] for row in rows[:2]} == before
    final = load_file(out / "adapter" / "adapter_model.safetensors")
    assert final.keys() == saved.keys()
    assert max((final[k] - saved[k]).abs().max().item() for k in final) > 0  # step 3 trained on top


@pytest.mark.parametrize(("overrides", "says"), [
    (["-s", "method.reward_correct=-1"], "method.reward_correct"),
    (["-s", "method.reward_correct=0"], "every GRPO reward weight is 0"),
    (["-s", "method.reward_program=1"], "needs prompt.strategy=program"),
    (["--prompt", "program"], "program strategy writes code"),
])
def test_bad_grpo_settings_are_one_line(tiny_models, data_dir, tmp_path, run_cli, overrides, says):
    out = tmp_path / "out"
    result = run_cli("train", "--model", str(tiny_models["llama"]), "--data-dir", str(data_dir),
                     "-o", str(out), "--method", "grpo", "--max-steps", "1", *overrides)
    code, err = result.code, result.stderr
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("mathtune: error: ") and says in lines[0], err
    assert not out.exists()


def test_an_sft_adapter_of_another_base_model_is_refused(tiny_models, data_dir, tmp_path, run_cli):
    phi_run = tmp_path / "phi"
    train(build_config({"model": {"name": str(tiny_models["phi"])}, "data": {"data_dir": str(data_dir),
                        "train_size": 8}, "train": {"max_steps": 1, "precision": "fp32"},
                        "output_dir": str(phi_run)}), phi_run, show_progress=False)
    out = tmp_path / "out"
    result = run_cli("train", "--model", str(tiny_models["llama"]), "--data-dir", str(data_dir),
                     "-o", str(out), "--method", "grpo", "--max-steps", "1", "-s", f"method.init_adapter={phi_run}")
    code, err = result.code, result.stderr
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "was trained on model" in lines[0], err
