"""End to end on tiny random Phi and Llama models: train, save, reload, evaluate, compare."""

import json
from pathlib import Path

import pytest
import torch

from mathtune.config import build_config
from mathtune.data.batching import causal_example, packed_batch
from mathtune.evaluate.backend import build_backend
from mathtune.methods.registry import build_method
from mathtune.models.loading import load_model, load_tokenizer, resolve_source
from mathtune.recipes.run import run_workflow
from mathtune.recipes.train import train
from mathtune.training.loss import causal_loss


def tiny_cfg(model_dir: Path, data_dir: Path, out: Path, **train) -> object:
    return build_config({
        "model": {"name": str(model_dir)}, "data": {"data_dir": str(data_dir), "train_size": 16},
        "train": {"max_steps": 4, "precision": "fp32", "lr": 5e-3, "log_every": 1, **train},
        "method": {"dropout": 0.0}, "eval": {"num_problems": 6, "max_new_tokens": 12, "batch_size": 4},
        "output_dir": str(out),
    })


@pytest.mark.parametrize("arch", ["llama", "phi"])
def test_loss_goes_down_on_a_repeated_batch(arch, tiny_models):
    source = resolve_source(str(tiny_models[arch]))
    tokenizer = load_tokenizer(source)
    model = build_method(build_config({"method": {"dropout": 0.0}}).method).apply(
        load_model(source, dtype=torch.float32))
    batch = packed_batch([causal_example(tokenizer, "Q: 2 + 3?\nA:", " 2 + 3 = 5\n#### 5", 64, "completion")])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    losses = []
    for _ in range(20):
        loss = causal_loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.parametrize("arch", ["llama", "phi"])
def test_reloaded_adapter_gives_identical_logits(arch, tiny_models, data_dir, tmp_path):
    cfg = tiny_cfg(tiny_models[arch], data_dir, tmp_path / "run")
    result = train(cfg, tmp_path / "run", show_progress=False)
    adapter = result.adapter_dir
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    from peft import PeftModel

    base = load_model(resolve_source(str(tiny_models[arch])), dtype=torch.float32)
    reference = PeftModel.from_pretrained(base, adapter).eval()  # the standard PEFT way
    backend, _ = build_backend(cfg, adapter)
    ids = torch.tensor([[5, 17, 33, 2, 90, 11]])
    assert torch.equal(backend.model(ids).logits, reference(ids).logits)
    card = json.loads((tmp_path / "run" / "train_card.json").read_text())
    assert 0 < card["trainable_params"] < card["total_params"] and card["steps"] == 4
    assert card["versions"]["torch"] and "tokens_per_second" in card


def test_trained_adapter_differs_from_base(tiny_models, data_dir, tmp_path):
    cfg = tiny_cfg(tiny_models["llama"], data_dir, tmp_path / "run")
    train(cfg, tmp_path / "run", show_progress=False)
    tuned, _ = build_backend(cfg, tmp_path / "run" / "adapter")
    base, _ = build_backend(cfg)
    ids = torch.tensor([[5, 17, 33, 2, 90, 11]])
    assert not torch.allclose(tuned.model(ids).logits, base.model(ids).logits)


def test_run_workflow_writes_everything(tiny_models, data_dir, tmp_path):
    cfg = tiny_cfg(tiny_models["llama"], data_dir, tmp_path / "run")
    card = run_workflow(cfg)
    run = tmp_path / "run"
    for name in ("config.yaml", "train_card.json", "run_card.json", "comparison.md", "adapter"):
        assert (run / name).exists(), name
    rows = [json.loads(line) for line in (run / "eval" / "tuned" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and {"output", "extracted", "correct", "reference_answer"} <= set(rows[0])
    base_ids = [json.loads(x)["id"] for x in (run / "eval" / "base" / "predictions.jsonl").read_text().splitlines()]
    assert sorted(base_ids) == sorted(r["id"] for r in rows)  # same problems for both models
    assert card["mcnemar"]["n"] == 6
    assert "| base |" in (run / "comparison.md").read_text()
    assert list(run.glob("**/*.tmp")) == []


def test_run_also_tests_another_benchmark_with_the_models_loaded_once(tiny_models, data_dir, tmp_path, monkeypatch):
    """`eval.also`: base and tuned are evaluated on a second benchmark (here a jsonl file of other
    problems) by the same loaded model, into eval/<benchmark>/, with a comparison and McNemar of its own."""
    import mathtune.recipes.evaluate as evaluate_recipe

    other = tmp_path / "other.jsonl"
    train_rows = (data_dir / "gsm8k" / "train.jsonl").read_text().splitlines()
    other.write_text("\n".join(train_rows[-5:]) + "\n")  # problems the run's own test split does not hold
    cfg = tiny_cfg(tiny_models["llama"], data_dir, tmp_path / "run")
    cfg.eval.also = [{"data": {"dataset": "jsonl", "test_file": str(other)}, "num_problems": 4}]
    loads = []
    build = evaluate_recipe.build_backend
    monkeypatch.setattr(evaluate_recipe, "build_backend", lambda *a, **k: loads.append(a[1:]) or build(*a, **k))
    card = run_workflow(build_config(cfg.model_dump(mode="json")))
    run = tmp_path / "run"
    assert len(loads) == 2  # the base model once, the tuned model once, each for both benchmarks
    questions = {json.loads(row)["question"] for row in train_rows[-5:]}
    for label in ("base", "tuned"):
        predictions = run / "eval" / "jsonl-other" / label / "predictions.jsonl"
        rows = [json.loads(line) for line in predictions.read_text().splitlines()]
        assert len(rows) == 4 and {row["question"] for row in rows} <= questions
        own = (run / "eval" / label / "predictions.jsonl").read_text().splitlines()
        assert len(own) == 6 and not {json.loads(x)["question"] for x in own} & questions
    def fingerprint(path):
        return json.loads((path / "fingerprint.json").read_text())

    own, other_tuned = fingerprint(run / "eval" / "tuned"), fingerprint(run / "eval" / "jsonl-other" / "tuned")
    assert other_tuned["adapter"] == own["adapter"] is not None  # the tuned model, not the base, on both
    assert other_tuned["generation"] == own["generation"]  # the run's decoding settings
    assert fingerprint(run / "eval" / "jsonl-other" / "base")["adapter"] is None
    assert card["mcnemar"]["n"] == 6 and card["also"]["jsonl-other"]["mcnemar"]["n"] == 4
    assert set(card["also"]["jsonl-other"]) >= {"base", "tuned", "mcnemar_by_score"}
    assert "| base |" in (run / "comparison_jsonl-other.md").read_text()


def test_run_also_refuses_a_bad_benchmark_before_training(tiny_models, data_dir, tmp_path):
    from mathtune.errors import MathtuneError

    with pytest.raises((ValueError, MathtuneError), match=r"eval\.also\[0\]\.data\.dataset"):
        build_config({"eval": {"also": [{"data": {"dataset": "gsm9k"}}]}})
    cfg = tiny_cfg(tiny_models["llama"], data_dir, tmp_path / "run")
    cfg.eval.also = [{"data": {"dataset": "jsonl", "test_file": str(tmp_path / "missing.jsonl")}}]
    with pytest.raises(MathtuneError, match="missing.jsonl"):
        run_workflow(build_config(cfg.model_dump(mode="json")))
    assert not (tmp_path / "run").exists()  # refused before any output
