"""The extension points, used as a newcomer would: a toy benchmark, method and prompt strategy are
registered from inside the test (no edit of mathtune's source) and run end to end through `mathtune
train` and `mathtune eval RUN` on the tiny Llama; and one command reads each data split once."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Literal

import pytest
import torch

from mathtune.data.benchmarks import BENCHMARKS, Benchmark, register_benchmark
from mathtune.data.row import Problem
from mathtune.methods.base import load_trainable_state_dict, trainable_state_dict
from mathtune.methods.lora.config import LoraMethodConfig
from mathtune.methods.lora.method import LoraMethod
from mathtune.prompts import PromptStrategy, load_strategies, register_strategy


def _train_and_eval(run_cli, model: Path, run: Path, *extra: str) -> dict:
    trained = run_cli("train", "--model", str(model), "-o", str(run), "--train-size", "6", "--max-steps", "1",
                      "-s", "train.precision=fp32", "-s", "train.batch_size=2", *extra)
    assert trained.code == 0, trained.stderr
    evaluated = run_cli("eval", str(run), "--eval-size", "3", "-s", "eval.max_new_tokens=4",
                        "-s", "eval.batch_size=3", "-s", "eval.dtype=fp32")
    assert evaluated.code == 0, evaluated.stderr
    return json.loads((run / "eval" / "tuned" / "metrics.json").read_text())


def test_train_eval_sample_and_run_read_each_split_once(run_cli, tiny_models, data_dir, tmp_path, monkeypatch):
    reads: Counter[str] = Counter()
    gsm8k = BENCHMARKS["gsm8k"]

    def counting(data_cfg, directory, split):
        reads[split] += 1
        return gsm8k.load(data_cfg, directory, split)

    monkeypatch.setitem(BENCHMARKS, "gsm8k", replace(gsm8k, loader=counting))
    run = tmp_path / "run"
    trained = run_cli("train", "--model", str(tiny_models["llama"]), "--data-dir", str(data_dir), "-o", str(run),
                      "--train-size", "6", "--max-steps", "1", "-s", "train.precision=fp32")
    assert trained.code == 0, trained.stderr
    assert reads == {"train": 1, "test": 1}  # the overlap check and the train card's contamination: test
    reads.clear()
    evaluated = run_cli("eval", str(run), "--data-dir", str(data_dir), "--eval-size", "3",
                        "-s", "eval.max_new_tokens=4", "-s", "eval.dtype=fp32")
    assert evaluated.code == 0, evaluated.stderr
    assert reads == {"test": 1, "train": 1}  # the drawn problems; the contamination report's train split
    reads.clear()
    sampled = run_cli("sample", str(run), "--data-dir", str(data_dir), "-s", "eval.num_problems=2",
                      "-s", "eval.samples=2", "-s", "eval.max_new_tokens=4", "-s", "eval.dtype=fp32",
                      "-s", "eval.split=train", "-o", str(tmp_path / "samples"))
    assert sampled.code == 0, sampled.stderr
    assert reads == {"train": 1}
    reads.clear()
    ran = run_cli("run", "--model", str(tiny_models["llama"]), "--data-dir", str(data_dir), "-o", str(tmp_path / "r2"),
                  "--train-size", "6", "--max-steps", "1", "--eval-size", "2", "-s", "train.precision=fp32",
                  "-s", "eval.max_new_tokens=4", "-s", "eval.dtype=fp32")
    assert ran.code == 0, ran.stderr
    assert reads == {"train": 1, "test": 1}  # one `mathtune run`: train, then base and tuned evaluations


def _toy_rows(data_cfg, data_dir, split) -> list[Problem]:
    """A benchmark of sums, ten per split: 'What is a plus b?' with the answer a + b."""
    offset = 0 if split == "train" else 100
    return [Problem(id=f"{split}-{i}", question=f"What is {offset + i} plus {i + 2}?",
                    solution=f"{offset + i} + {i + 2} = {offset + 2 * i + 2}\n#### {offset + 2 * i + 2}",
                    answer=str(offset + 2 * i + 2)) for i in range(10)]


@pytest.fixture
def toy_benchmark():
    register_benchmark(Benchmark("toy-sums", "sums of two numbers", loader=_toy_rows,
                                 split_sizes={"train": 10, "test": 10}))
    yield "toy-sums"
    del BENCHMARKS["toy-sums"]


def test_a_benchmark_registered_at_run_time_trains_and_evaluates(run_cli, tiny_models, tmp_path, toy_benchmark):
    metrics = _train_and_eval(run_cli, tiny_models["llama"], tmp_path / "run", "-s", f"data.dataset={toy_benchmark}")
    assert metrics["benchmark"] == "toy-sums" and metrics["n"] == 3
    asked = {row["id"] for row in map(json.loads, (tmp_path / "run" / "eval" / "tuned" / "predictions.jsonl")
                                      .read_text().splitlines())}
    assert asked <= {f"test-{i}" for i in range(10)}


class NormsOnlyConfig(LoraMethodConfig):
    """A toy method's section; LoRA's fields come along only to reuse a ready pydantic model."""

    name: Literal["norms-only"] = "norms-only"  # type: ignore[assignment]


class NormsOnlyMethod(LoraMethod):
    """Trains the RMSNorm weights only and saves them as one tensor file."""

    name = "norms-only"
    config_class = NormsOnlyConfig
    shares_base = False

    def base_load_kwargs(self, placement):
        return {"dtype": torch.float32}

    def apply(self, model):
        for name, param in model.named_parameters():
            param.requires_grad_("norm" in name)
        return model

    def save(self, model, out_dir, state_dict=None):
        out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(trainable_state_dict(model), out_dir / "norms.pt")

    def load(self, base_model, saved_dir):
        load_trainable_state_dict(base_model, torch.load(saved_dir / "norms.pt"))
        return base_model


@pytest.fixture
def toy_method():
    from mathtune.config import rebuild_method_union
    from mathtune.methods.registry import METHODS, register_method
    from mathtune.methods.section_table import METHOD_CONFIGS

    register_method(NormsOnlyMethod)
    yield "norms-only"
    del METHODS["norms-only"], METHOD_CONFIGS["norms-only"]
    rebuild_method_union()


def test_a_method_registered_at_run_time_trains_and_evaluates(run_cli, tiny_models, data_dir, tmp_path, toy_method):
    run = tmp_path / "run"
    metrics = _train_and_eval(run_cli, tiny_models["llama"], run, "--data-dir", str(data_dir), "--method", toy_method)
    saved = torch.load(run / "adapter" / "norms.pt")
    assert saved and all("norm" in name for name in saved)
    assert json.loads((run / "train_card.json").read_text())["method"] == "norms-only"
    assert metrics["n"] == 3 and metrics["reproducibility"]["adapter"] == str(run / "adapter")


@pytest.fixture
def toy_strategy():
    register_strategy(PromptStrategy(name="toy-question", description="'Question: ..\\nAnswer:'",
                                     prompt="Question: {question}\nAnswer:", target=" {solution}",
                                     shot_separator="\n\n", stop=("\nQuestion:",)))
    yield "toy-question"
    del load_strategies()["toy-question"]


def test_a_strategy_registered_at_run_time_trains_and_evaluates(run_cli, tiny_models, data_dir, tmp_path,
                                                                toy_strategy):
    run = tmp_path / "run"
    metrics = _train_and_eval(run_cli, tiny_models["llama"], run, "--data-dir", str(data_dir),
                              "--prompt", toy_strategy)
    prompt = metrics["reproducibility"]["prompt"]
    assert prompt["strategy"] == "toy-question" and prompt["template"].startswith("Question: ")
    assert metrics["n"] == 3


def test_an_unregistered_name_is_refused_naming_the_choices(run_cli):
    refused = run_cli("train", "-s", "data.dataset=toy-sums", "--max-steps", "1")
    assert refused.code == 2 and "'gsm8k'" in refused.stderr and "data.dataset" in refused.stderr
