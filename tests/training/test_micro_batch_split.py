"""A micro-batch run in token-bounded pieces learns what the whole micro-batch learns."""

from pathlib import Path

from safetensors.torch import load_file

from mathtune.config import build_config
from mathtune.data.batching import Example, split_by_tokens
from mathtune.recipes.train import setup, train


def example(tokens: int) -> Example:
    return Example(input_ids=list(range(tokens)), labels=[-100] + list(range(1, tokens)))


def test_split_by_tokens_keeps_order_and_the_budget():
    examples = [example(n) for n in (5, 4, 7, 2, 9)]
    pieces = split_by_tokens(examples, 10)
    assert [[e.num_tokens for e in piece] for piece in pieces] == [[5, 4], [7, 2], [9]]
    assert [e for piece in pieces for e in piece] == examples
    assert split_by_tokens(examples, 0) == [examples]  # 0: never split
    assert split_by_tokens(examples, 1000) == [examples]
    assert [[e.num_tokens for e in p] for p in split_by_tokens([example(30), example(3)], 10)] == [[30], [3]]
    assert split_by_tokens([], 10) == []


def tree(model_dir: Path, data_dir: Path, out: Path, budget: int) -> dict:
    return {
        "model": {"name": str(model_dir)}, "data": {"data_dir": str(data_dir), "train_size": 16},
        "method": {"name": "lora", "dropout": 0.0},
        "train": {"max_steps": 2, "batch_size": 8, "precision": "fp32", "lr": 2e-3, "log_every": 1,
                  "max_micro_batch_tokens": budget},
        "output_dir": str(out),
    }


def test_pieces_give_the_gradient_of_the_whole_micro_batch(tiny_models, data_dir, tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    cfg = build_config(tree(tiny_models["llama"], data_dir, split, 0))
    session = setup(cfg)
    batch = [session.examples[i] for i in session.plan[0]]
    budget = sum(e.num_tokens for e in batch) // 3
    assert len(split_by_tokens(batch, budget)) >= 3  # the run below really does split
    train(build_config(tree(tiny_models["llama"], data_dir, whole, 0)), whole, show_progress=False)
    train(build_config(tree(tiny_models["llama"], data_dir, split, budget)), split, show_progress=False)
    ours = load_file(split / "adapter" / "adapter_model.safetensors")
    reference = load_file(whole / "adapter" / "adapter_model.safetensors")
    assert ours.keys() == reference.keys() and ours
    assert max(reference[k].abs().max().item() for k in reference if "lora_B" in k) > 1e-3  # it trained
    assert max((ours[k] - reference[k]).abs().max().item() for k in ours) < 1e-5
