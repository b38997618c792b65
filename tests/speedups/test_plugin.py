"""The speedups as one plug-in: one entry point, one master switch, a record in the train card, and a
loud failure here (not a silent slowdown) when a library release stops a speedup from binding."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from torch import nn

import mathtune.speedups as speedups
from mathtune.config import SPEEDUP_LEVERS, build_config
from mathtune.recipes.train import setup, train
from mathtune.speedups import fused_ops
from mathtune.speedups.attention import VARLEN_SDPA
from mathtune.speedups.dropout import FastDropout


def tree(model_dir: Path, data_dir: Path, out: Path, method: str = "lora", **train_fields: object) -> dict:
    return {"model": {"name": str(model_dir)}, "data": {"data_dir": str(data_dir), "train_size": 8},
            "method": {"name": method, "dropout": 0.1} if method == "lora" else {"name": method},
            "train": {"max_steps": 1, "precision": "bf16", **train_fields}, "output_dir": str(out)}


def test_every_speedup_binds_on_the_supported_library_versions(tiny_models, data_dir, tmp_path):
    """Fails when a pinned transformers/PEFT release renames what a speedup binds to (the reason this
    test exists: transformers 5.25 silently switched the RMSNorm kernels off)."""
    session = setup(build_config(tree(tiny_models["llama"], data_dir, tmp_path)))
    bound = session.speedups.bound
    # tiny Llama: 2 layers x (q, k, v, o) LoRA, 2 x 2 norms + the final one, 2 MLPs
    assert bound["varlen_attention"] is True
    assert bound["fused_lora"] == 8 and bound["fast_dropout"] == 8
    assert bound["fused_ops"] == 7
    assert bound["adapter_input_cast_skipped"] == 8
    assert session.speedups.unbound == {}
    assert session.model.config._attn_implementation == VARLEN_SDPA


def test_speedups_off_is_plain_transformers_and_peft(tiny_models, data_dir, tmp_path):
    cfg = build_config(tree(tiny_models["llama"], data_dir, tmp_path, speedups=False))
    assert not any(getattr(cfg.train, lever) for lever in SPEEDUP_LEVERS) and cfg.train.allocator == "system"
    session = setup(cfg)
    assert session.speedups.as_card() == {"enabled": False, "bound": {}, "unbound": {}}
    model = session.model
    assert not any(isinstance(m, FastDropout) for m in model.modules())
    assert not any("forward" in vars(m) for m in model.modules())  # no forward re-bound anywhere
    assert model.config._attn_implementation == "sdpa"
    assert all(m.cast_input_dtype_enabled for m in model.modules() if hasattr(m, "cast_input_dtype_enabled"))


def test_a_renamed_class_is_reported_once_and_recorded(tiny_models, data_dir, tmp_path, monkeypatch, caplog):
    """A transformers release that renames LlamaRMSNorm: the run says so (once) and the card records it."""
    monkeypatch.setattr(fused_ops, "LLAMA_STYLE_NORMS", set())
    monkeypatch.setattr(speedups, "_WARNED", set())
    with caplog.at_level(logging.WARNING, logger="mathtune"):
        first = setup(build_config(tree(tiny_models["llama"], data_dir, tmp_path / "a")))
        setup(build_config(tree(tiny_models["llama"], data_dir, tmp_path / "b")))
    assert first.speedups.unbound == {"fused_ops": 5}
    assert first.speedups.bound["fused_ops"] == 2  # the MLPs still bind
    warnings = [r for r in caplog.records if "speedup fused_ops did not bind 5" in r.getMessage()]
    assert len(warnings) == 1


def test_a_peft_linear_that_changed_is_reported(tiny_models, data_dir, tmp_path, monkeypatch):
    from mathtune.speedups import fused_lora

    monkeypatch.setattr(fused_lora, "use_fused_lora", lambda model, *args: 0)  # binds nothing, as if renamed
    monkeypatch.setattr(speedups, "_WARNED", set())
    session = setup(build_config(tree(tiny_models["llama"], data_dir, tmp_path)))
    assert session.speedups.unbound == {"fused_lora": 8}


@pytest.mark.parametrize("enabled", [True, False])
def test_the_train_card_records_what_ran(tiny_models, data_dir, tmp_path, enabled):
    out = tmp_path / "run"
    card = train(build_config(tree(tiny_models["llama"], data_dir, out, speedups=enabled)), out,
                 show_progress=False).card
    assert card["speedups"]["enabled"] is enabled
    assert (card["speedups"]["bound"].get("fused_ops") == 7) is enabled
    assert card["config"]["train"]["fused_ops"] is enabled


def test_full_fine_tuning_keeps_library_forwards_for_trained_modules(tiny_models, data_dir, tmp_path):
    """Fused ops bind only to frozen modules: under full fine-tuning none, and that is not 'unbound'."""
    session = setup(build_config(tree(tiny_models["llama"], data_dir, tmp_path, method="full")))
    assert session.speedups.bound["fused_ops"] == 0 and session.speedups.unbound == {}
    assert isinstance(session.model, nn.Module)
