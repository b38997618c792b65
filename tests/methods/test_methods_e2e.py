"""Every method trains 2 steps, saves, reloads through build_backend and generates, on T5 and Llama."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from mathtune.config import build_config
from mathtune.evaluate.backend import build_backend
from mathtune.evaluate.generation import GenerationRequest
from mathtune.prompts import get_strategy
from mathtune.recipes.train import train

METHODS = {
    "full": {"name": "full"},
    "lora": {"name": "lora", "r": 4, "dropout": 0.0},
    "qlora": {"name": "qlora", "r": 4, "dropout": 0.0, "bits": 8},
    "stacked-lora": {"name": "stacked-lora", "r": 4, "dropout": 0.0},
}
# Every method on both architectures; the four prompt strategies spread over them so each runs on
# a seq2seq and a causal model at least once.
CASES = [
    ("t5", "full", "program"), ("t5", "lora", "breakdown"), ("t5", "qlora", "no-breakdown"),
    ("t5", "stacked-lora", "qa"), ("llama", "full", "qa"), ("llama", "lora", "program"),
    ("llama", "qlora", "breakdown"), ("llama", "stacked-lora", "no-breakdown"),
]


def method_cfg(model_dir: Path, data_dir: Path, out: Path, method: dict, strategy: str = "qa", **extra) -> object:
    subset = "socratic" if strategy == "breakdown" else "main"
    return build_config({
        "model": {"name": str(model_dir)},
        "data": {"data_dir": str(data_dir), "train_size": 8, "subset": subset, "max_length": 96},
        "prompt": {"strategy": strategy}, "method": method,
        "train": {"max_steps": 2, "batch_size": 2, "precision": "fp32", "lr": 1e-2, "log_every": 1},
        "eval": {"batch_size": 2, "max_new_tokens": 6, "dtype": "fp32"}, "output_dir": str(out), **extra,
    })


def probe_ids(arch: str) -> dict[str, torch.Tensor]:
    ids = torch.tensor([[5, 17, 33, 2, 90, 11]])
    return {"input_ids": ids, "decoder_input_ids": ids[:, :3]} if arch == "t5" else {"input_ids": ids}


@pytest.mark.parametrize(("arch", "method", "strategy"), CASES)
def test_train_save_reload_generate(arch, method, strategy, tiny_models, data_dir, tmp_path):
    if method == "qlora":
        pytest.importorskip("bitsandbytes")
    cfg = method_cfg(tiny_models[arch], data_dir, tmp_path / "run", METHODS[method], strategy)
    result = train(cfg, tmp_path / "run", show_progress=False)
    assert result.steps == 2 and math.isfinite(result.final_loss)
    tuned, meta = build_backend(cfg, result.adapter_dir)
    base, _ = build_backend(cfg)
    with torch.no_grad():
        tuned_logits = tuned.model(**probe_ids(arch)).logits
        base_logits = base.model(**probe_ids(arch)).logits
    assert not torch.allclose(tuned_logits, base_logits, atol=1e-5), "reloaded weights equal the base"
    strategy_obj = get_strategy(strategy)
    prompt = strategy_obj.format_prompt("Tom has 3 pens and buys 4 more. How many pens?")
    longer = strategy_obj.format_prompt("Ann has 12 books, gives 5 away, then buys 9 more and reads 2. How many "
                                        "books does Ann have now?")
    requests = [GenerationRequest(prompt, strategy_obj.stop, 6), GenerationRequest(longer, strategy_obj.stop, 4)]
    out = tuned.generate(requests)
    assert len(out) == 2 and all(isinstance(g.text, str) for g in out)
    assert out[0].new_tokens <= 6 and out[1].new_tokens <= 4
    # prompts of unequal length in one batch (padding) decode as each does alone
    assert out == [tuned.generate([request])[0] for request in requests]
    assert meta["adapter"] == str(result.adapter_dir)
