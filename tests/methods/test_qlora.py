"""QLoRA on CPU through bitsandbytes: quantized base, LoRA on top, exact reload, clear errors."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from test_methods_e2e import method_cfg

from mathtune.errors import MathtuneError
from mathtune.evaluate.backend import build_backend
from mathtune.evaluate.generation import GenerationRequest
from mathtune.methods.qlora.method import avoid_narrow_cpu_packing
from mathtune.methods.registry import build_method
from mathtune.models.device import choose_placement
from mathtune.models.loading import load_model, resolve_source
from mathtune.recipes.train import train

pytest.importorskip("bitsandbytes")
QLORA4 = {"name": "qlora", "bits": 4, "r": 4, "dropout": 0.0}


def weight_bytes(model: torch.nn.Module) -> int:
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def load_base(cfg, model_dir, quantized: bool):
    placement = choose_placement("cpu", "fp32")
    kwargs = build_method(cfg.method).base_load_kwargs(placement) if quantized else {"dtype": torch.float32}
    model = load_model(resolve_source(str(model_dir)), **kwargs)
    if quantized:
        avoid_narrow_cpu_packing(model)  # as QloraMethod.load does; the tiny layers are narrower than a block
    return model


def test_4bit_reload_is_exactly_the_trained_adapter_on_the_quantized_base(tiny_models, data_dir, tmp_path):
    from peft import PeftModel

    cfg = method_cfg(tiny_models["llama"], data_dir, tmp_path / "run", QLORA4)
    result = train(cfg, tmp_path / "run", show_progress=False)
    assert 0 < result.card["trainable_params"] < result.card["total_params"]
    backend, _ = build_backend(cfg, result.adapter_dir)
    ids = torch.tensor([[5, 17, 33, 2, 90, 11]])
    reference_model = PeftModel.from_pretrained(load_base(cfg, tiny_models["llama"], True), result.adapter_dir)
    with torch.no_grad():  # a fresh base each: a bnb 4-bit layer that has run once is not wrapped alike
        got = backend.model(ids).logits
        reference = reference_model.eval()(ids).logits
        base_logits = load_base(cfg, tiny_models["llama"], quantized=True)(ids).logits
    assert torch.equal(got, reference) and not torch.allclose(got, base_logits, atol=1e-5)
    out = backend.generate([GenerationRequest("Q: 2 + 3?\nA:", ("\nQ:",), 5)])
    assert out[0].new_tokens > 0


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_base_holds_fewer_weight_bytes_than_lora(bits, tiny_models, data_dir, tmp_path):
    cfg = method_cfg(tiny_models["t5"], data_dir, tmp_path, {**QLORA4, "bits": bits})
    quantized = load_base(cfg, tiny_models["t5"], quantized=True)
    plain = load_base(cfg, tiny_models["t5"], quantized=False)
    assert weight_bytes(quantized) < weight_bytes(plain)


def test_missing_backend_says_what_to_install(tiny_models, data_dir, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    hidden = lambda name, *a: None if name == "bitsandbytes" else real(name, *a)  # noqa: E731
    monkeypatch.setattr(importlib.util, "find_spec", hidden)
    cfg = method_cfg(tiny_models["llama"], data_dir, tmp_path / "run", QLORA4)
    with pytest.raises(MathtuneError, match="pip install 'bitsandbytes"):
        train(cfg, tmp_path / "run", show_progress=False)


def test_unquantized_base_is_refused_rather_than_trained_as_plain_lora(tiny_models, data_dir, tmp_path):
    cfg = method_cfg(tiny_models["llama"], data_dir, tmp_path, QLORA4)
    with pytest.raises(MathtuneError, match="quantized no layer of architecture 'llama'.*method.name=lora"):
        build_method(cfg.method).apply(load_base(cfg, tiny_models["llama"], quantized=False))
