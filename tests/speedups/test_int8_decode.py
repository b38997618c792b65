"""eval.int8_decode: calls of at most MAX_ROWS rows use the int8 copy of each weight (per-channel
scales), larger calls the original weights bit for bit; the evaluation records that it ran."""

from __future__ import annotations

import pytest
import torch

from mathtune.config import build_config
from mathtune.speedups.int8_decode import MAX_ROWS, Int8DecodeLinear, apply_int8_decode


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
def test_few_rows_use_the_quantized_weight_and_more_rows_the_original(dtype, bias):
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48, bias=bias).to(dtype)
    wrapped = torch.nn.Sequential(torch.nn.Linear(64, 48, bias=bias).to(dtype))
    wrapped[0].load_state_dict(linear.state_dict())
    assert apply_int8_decode(wrapped) == 1 and isinstance(wrapped[0], Int8DecodeLinear)
    weight = linear.weight.double()
    scales = weight.abs().amax(1) / 127
    dequantized = torch.round(weight / scales[:, None]).clamp(-127, 127) * scales[:, None]
    for rows in (1, MAX_ROWS):
        x = torch.randn(1, rows, 64).to(dtype)
        expected = x.double() @ dequantized.T + (linear.bias.double() if bias else 0)
        got = wrapped(x)
        assert got.shape == (1, rows, 48) and got.dtype == dtype
        tolerance = 1e-4 if dtype == torch.float32 else 3e-2
        assert torch.allclose(got.double(), expected, rtol=tolerance, atol=tolerance * expected.abs().max().item())
        # the int8 weight is not the original one: the output differs from the unquantized product
        assert not torch.equal(got, linear(x))
    x = torch.randn(2, MAX_ROWS, 64).to(dtype)  # 8 rows: the original weights, bit for bit
    assert torch.equal(wrapped(x), linear(x))


def test_a_model_decodes_close_to_its_bf16_self_and_batches_stay_exact(tiny_models):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"], dtype=torch.float32).eval()
    ids = torch.randint(5, 200, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        prefill = model(input_ids=ids).logits  # 12 rows: above MAX_ROWS
        one_row = model(input_ids=ids[:, :1]).logits
    linears = sum(type(m) is torch.nn.Linear for m in model.modules())
    assert apply_int8_decode(model) == linears > 0
    assert sum(type(m) is Int8DecodeLinear for m in model.modules()) == linears
    with torch.inference_mode():
        assert torch.equal(model(input_ids=ids).logits, prefill)
        quantized = model(input_ids=ids[:, :1]).logits
    assert not torch.equal(quantized, one_row)
    assert torch.allclose(quantized, one_row, rtol=0.05, atol=0.05 * one_row.abs().max().item())


def test_the_evaluation_records_int8_decode_and_refuses_it_off_cpu(tiny_models, data_dir, tmp_path, monkeypatch):
    from mathtune.errors import MathtuneError
    from mathtune.evaluate.backend import build_backend
    from mathtune.fingerprint import eval_fingerprint
    from mathtune.recipes.evaluate import evaluate

    settings = {"model": {"name": str(tiny_models["llama"])}, "data": {"data_dir": str(data_dir)},
                "eval": {"num_problems": 2, "batch_size": 1, "max_new_tokens": 6, "dtype": "fp32",
                         "perplexity": False, "int8_decode": True}}
    cfg = build_config(settings)
    backend, meta = build_backend(cfg)
    assert meta["int8_decode_linears"] > 0
    metrics = evaluate(cfg, backend, tmp_path, "base", backend.tokenizer, meta, show_progress=False)
    assert metrics["reproducibility"]["generation"]["int8_decode"] is True
    plain = build_config({**settings, "eval": {**settings["eval"], "int8_decode": False}})
    assert eval_fingerprint(cfg, [], None) != eval_fingerprint(plain, [], None)

    import mathtune.evaluate.backend as backend_module
    from mathtune.models.device import choose_placement

    def on_cuda(device, precision):
        placement = choose_placement("cpu", precision)
        return type(placement)(**{**placement.__dict__, "device": torch.device("cuda")})

    monkeypatch.setattr(backend_module, "choose_placement", on_cuda)
    with pytest.raises(MathtuneError, match="eval.int8_decode is a CPU lever"):
        build_backend(cfg)


def test_the_model_keeps_its_parameters_names_and_ties(tiny_models):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"], dtype=torch.float32).eval()
    keys = list(model.state_dict())
    apply_int8_decode(model)
    assert list(model.state_dict()) == keys  # save_pretrained and export write the same checkpoint
    assert all(isinstance(m, torch.nn.Linear) for m in model.modules() if isinstance(m, Int8DecodeLinear))
    model.tie_weights()  # transformers and PEFT re-tie or replace weights on wrapped Linears


def test_a_merged_lora_is_what_the_int8_copies_hold(tiny_models):
    """`mathtune sample --merge` and `improve` merge the LoRA after the backend is built: the int8
    copies must follow the merged weights, and a LoRA's own matrices are never quantized."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from mathtune.evaluate.generation import HFBackend
    from mathtune.recipes.sample import merge_lora

    base = AutoModelForCausalLM.from_pretrained(tiny_models["llama"], dtype=torch.float32).eval()
    ids = torch.randint(5, 200, (1, 1), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        base_logits = base(input_ids=ids).logits
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"]))
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.5, generator=torch.Generator().manual_seed(2))
    model.eval()
    with torch.inference_mode():
        tuned_logits = model(input_ids=ids).logits
    apply_int8_decode(model)
    assert not any(isinstance(m, Int8DecodeLinear) for n, m in model.named_modules() if "lora_" in n)
    with torch.inference_mode():
        model(input_ids=ids)  # int8 copies made before the merge
    from transformers import AutoTokenizer

    backend = HFBackend(model, AutoTokenizer.from_pretrained(tiny_models["llama"]), torch.device("cpu"), False, 1)
    assert merge_lora(backend)
    with torch.inference_mode():
        merged = backend.model(input_ids=ids).logits
    scale = tuned_logits.abs().max().item()
    assert (merged - tuned_logits).abs().max().item() < 0.05 * scale
    assert (merged - base_logits).abs().max().item() > 0.1 * scale  # the LoRA is in, not the base weights


def test_repetition_stop_of_one_copy_is_refused():
    from mathtune.errors import MathtuneError

    with pytest.raises(MathtuneError, match="0 \\(off\\) or 2"):
        build_config({"eval": {"repetition_stop": 1}})
    assert build_config({"eval": {"repetition_stop": 2}}).eval.loop_stop == (2, 32)
