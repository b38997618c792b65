"""Stacked LoRA: the layer's math by hand, a frozen stage 1, one-unit save/reload, clear errors."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from torch import nn

from mathtune.config import build_config
from mathtune.errors import MathtuneError
from mathtune.methods.registry import build_method
from mathtune.methods.stacked_lora.layer import ACTIVATIONS, StackedLoraLinear
from mathtune.methods.stacked_lora.method import CONFIG_FILE, WEIGHTS_FILE, stacked_layers
from mathtune.models.loading import load_model, resolve_source
from mathtune.recipes.train import train

STACKED = {"name": "stacked-lora", "r": 4, "alpha": 8.0, "dropout": 0.0}


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_layer_output_is_x_times_effective_weight(activation):
    torch.manual_seed(0)
    base = nn.Linear(12, 10)
    layer = StackedLoraLinear(base)
    layer.add_stage("stage1", r=3, alpha=6.0)
    layer.add_stage("stage2", r=2, alpha=8.0, activation=activation)
    for module in (*layer.lora_A.values(), *layer.lora_B.values()):
        nn.init.normal_(module.weight)  # B starts at zero; random makes every term count
    a1, b1 = layer.lora_A["stage1"].weight, layer.lora_B["stage1"].weight
    a2, b2 = layer.lora_A["stage2"].weight, layer.lora_B["stage2"].weight
    f = {"identity": lambda t: t, "relu": torch.relu, "gelu": torch.nn.functional.gelu,
         "tanh": torch.tanh, "silu": torch.nn.functional.silu}[activation]
    weight = base.weight + (6.0 / 3) * b1 @ a1 + f((8.0 / 2) * b2 @ a2)
    x = torch.randn(2, 5, 12)
    assert torch.allclose(layer(x), x @ weight.T + base.bias, atol=1e-5)


def test_new_stage_starts_as_a_no_op_and_relu_still_gets_gradients():
    torch.manual_seed(0)
    base = nn.Linear(8, 8)
    x = torch.randn(4, 8)
    for activation in ACTIVATIONS:
        layer = StackedLoraLinear(base)
        layer.add_stage("stage2", r=2, alpha=2.0, activation=activation)
        assert torch.allclose(layer(x), base(x), atol=1e-3)
        layer(x).sum().backward()
        assert layer.lora_B["stage2"].weight.grad.abs().sum() > 0, activation


def stacked_cfg(tiny_models, data_dir, out, arch="llama", **method):
    return build_config({
        "model": {"name": str(tiny_models[arch])},
        "data": {"data_dir": str(data_dir), "train_size": 8, "max_length": 96},
        "method": {**STACKED, **method},
        "train": {"max_steps": 2, "batch_size": 2, "precision": "fp32", "lr": 1e-2},
        "eval": {"dtype": "fp32"}, "output_dir": str(out),
    })


def fresh_base(tiny_models, arch="llama"):
    return load_model(resolve_source(str(tiny_models[arch])), dtype=torch.float32)


def test_stage2_freezes_stage1_and_reloads_as_one_unit(tiny_models, data_dir, tmp_path):
    stage1 = train(stacked_cfg(tiny_models, data_dir, tmp_path / "s1"), tmp_path / "s1", show_progress=False)
    saved1 = json.loads((stage1.adapter_dir / CONFIG_FILE).read_text())
    assert [s["name"] for s in saved1["stages"]] == ["stage1"]
    cfg2 = stacked_cfg(tiny_models, data_dir, tmp_path / "s2", stage1_adapter=str(tmp_path / "s1"),
                       activation="tanh")
    method = build_method(cfg2.method)
    model = method.apply(fresh_base(tiny_models))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".stage2." in n for n in trainable)
    assert any(".stage1." in n for n, _ in model.named_parameters())

    stage2 = train(cfg2, tmp_path / "s2", show_progress=False)
    meta = json.loads((stage2.adapter_dir / CONFIG_FILE).read_text())
    assert [(s["name"], s["activation"]) for s in meta["stages"]] == [("stage1", "identity"), ("stage2", "tanh")]
    assert meta["base_model"] == str(tiny_models["llama"]) and (stage2.adapter_dir / WEIGHTS_FILE).is_file()
    # stage 1 came through stage-2 training unchanged
    from safetensors.torch import load_file

    before, after = load_file(str(stage1.adapter_dir / WEIGHTS_FILE)), load_file(str(stage2.adapter_dir / WEIGHTS_FILE))
    assert before and all(torch.equal(before[k], after[k]) for k in before)
    assert any(".stage2." in k and after[k].abs().sum() > 0 for k in after if ".lora_B." in k)


@pytest.mark.parametrize("arch", ["llama", "t5"])
def test_save_then_load_gives_identical_logits(arch, tiny_models, data_dir, tmp_path):
    cfg = stacked_cfg(tiny_models, data_dir, tmp_path / "s1", arch=arch, activation="gelu")
    method = build_method(cfg.method)
    model = method.apply(fresh_base(tiny_models, arch)).eval()
    torch.manual_seed(1)
    for layer in stacked_layers(model).values():
        nn.init.normal_(layer.lora_B["stage1"].weight, std=0.05)
    method.save(model, tmp_path)
    reloaded = build_method(cfg.method).load(fresh_base(tiny_models, arch), tmp_path).eval()
    ids = torch.tensor([[5, 17, 33, 2, 90, 11]])
    kwargs = {"decoder_input_ids": ids[:, :3]} if arch == "t5" else {}
    with torch.no_grad():
        expected, got = model(ids, **kwargs).logits, reloaded(ids, **kwargs).logits
        base = fresh_base(tiny_models, arch)(ids, **kwargs).logits
    assert torch.equal(expected, got) and not torch.allclose(expected, base, atol=1e-4)


def test_ordinary_lora_run_is_a_valid_stage1(tiny_models, data_dir, tmp_path):
    from peft import PeftModel

    lora_cfg = stacked_cfg(tiny_models, data_dir, tmp_path / "lora")
    lora_cfg = lora_cfg.model_copy(update={"method": build_config({"method": {"r": 4, "dropout": 0.0}}).method})
    lora = train(lora_cfg, tmp_path / "lora", show_progress=False)
    cfg = stacked_cfg(tiny_models, data_dir, tmp_path / "s2", stage1_adapter=str(lora.adapter_dir))
    stacked = build_method(cfg.method).apply(fresh_base(tiny_models)).eval()  # stage 2 starts at B2 = 0
    peft_model = PeftModel.from_pretrained(fresh_base(tiny_models), lora.adapter_dir).eval()
    ids = torch.tensor([[5, 17, 33, 2, 90, 11]])
    with torch.no_grad():
        assert torch.allclose(stacked(ids).logits, peft_model(ids).logits, atol=1e-5)


def test_missing_stage1_adapter_is_a_one_line_error(tiny_models, data_dir, tmp_path, monkeypatch, capsys):
    cfg = stacked_cfg(tiny_models, data_dir, tmp_path / "s2", stage1_adapter=str(tmp_path / "nope"))
    with pytest.raises(MathtuneError, match="stage1_adapter .*nope does not exist"):
        build_method(cfg.method).apply(fresh_base(tiny_models))
    from mathtune import cli

    config = tmp_path / "stage2.yaml"
    config.write_text(f"method:\n  name: stacked-lora\n  stage1_adapter: {tmp_path / 'nope'}\n")
    monkeypatch.setattr(sys, "argv", [
        "mathtune", "train", "-c", str(config), "--model", str(tiny_models["llama"]), "--data-dir", str(data_dir),
        "-o", str(tmp_path / "cli"), "--max-steps", "1", "--train-size", "4",
    ])
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        cli.main()
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert info.value.code == 2 and len(errors) == 1 and "does not exist" in errors[0], errors
