"""The fused LoRA forward gives PEFT's outputs and gradients to rounding (same random draws), falls
back to PEFT where it does not apply, and keeps less for backward."""

import copy

import pytest
import torch
from helpers import CountingKernels, built_cpu_kernels, saved_bytes
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from mathtune.speedups.dropout import use_fast_dropout
from mathtune.speedups.fused_lora import use_fused_lora


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))


def tiny_lora_model(dtype: torch.dtype, dropout: float) -> torch.nn.Module:
    model = get_peft_model(tiny_llama().to(dtype), LoraConfig(
        r=4, lora_alpha=8, lora_dropout=dropout, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    for name, param in model.named_parameters():
        if "lora_B" in name:  # PEFT starts B at zero, which would hide errors in A's gradient
            param.data.normal_(0, 0.5)
    use_fast_dropout(model)
    for module in model.modules():  # as train.setup does under autocast
        if hasattr(module, "cast_input_dtype_enabled"):
            module.cast_input_dtype_enabled = dtype == torch.float32
    return model.train()


def run(model: torch.nn.Module, ids: torch.Tensor, autocast: bool) -> tuple[torch.Tensor, dict]:
    model.zero_grad()
    torch.manual_seed(123)  # the same dropout masks for both models
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = model(input_ids=ids).logits
    torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), ids.flatten()).backward()
    return logits.detach(), {n: p.grad.float() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("mask_storage", ["bytes", "bits", "seed"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_fused_lora_matches_peft_in_fp32(dropout, mask_storage):
    peft_model = tiny_lora_model(torch.float32, dropout)
    fused = copy.deepcopy(peft_model)
    assert use_fused_lora(fused, mask_storage) == 2 * 4
    ids = torch.randint(0, 64, (2, 19))
    want_logits, want = run(peft_model, ids, False)
    got_logits, got = run(fused, ids, False)
    torch.testing.assert_close(got_logits, want_logits, rtol=1e-5, atol=1e-6)
    assert len(got) == len(want) == 2 * 4 * 2
    for name, grad in want.items():
        assert (got[name] - grad).abs().max().item() <= 1e-5 * grad.abs().max().item(), name


@pytest.mark.parametrize("mask_storage", ["bytes", "bits", "kernels"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_fused_lora_in_bf16_is_as_close_to_fp32_as_peft(dropout, mask_storage):
    """PEFT and the fused path round at different ops under autocast, so neither equals the other;
    both are held against the same model run in float32 (same weights, same dropout masks).
    "kernels": the C kernels' forward and backward (cpu_kernels.c), which keep no mask."""
    peft_model = tiny_lora_model(torch.bfloat16, dropout)
    fused = copy.deepcopy(peft_model)
    kernels = CountingKernels(built_cpu_kernels()) if mask_storage == "kernels" else None
    if kernels is not None:
        use_fused_lora(fused, "bits", kernels)
    else:
        use_fused_lora(fused, mask_storage)
    exact = tiny_lora_model(torch.float32, dropout)
    exact.load_state_dict({k: v.float() for k, v in peft_model.state_dict().items()})
    ids = torch.randint(0, 64, (2, 19))
    truth = run(exact, ids, False)
    errors = [relative_error(run(model, ids, True), truth) for model in (peft_model, fused)]
    assert errors[1][0] <= 1.5 * errors[0][0] + 1e-3, errors  # logits
    assert errors[1][1] <= 1.5 * errors[0][1] + 1e-3, errors  # gradients
    if kernels is not None:  # every adapted projection ran in the kernels, both ways
        assert kernels.calls == {"lora_a_forward": 2 * 4, "lora_a_backward": 2 * 4}


def relative_error(got: tuple[torch.Tensor, dict], want: tuple[torch.Tensor, dict]) -> tuple[float, float]:
    logits = ((got[0].float() - want[0]).norm() / want[0].norm()).item()
    grads = torch.cat([(got[1][n] - g).flatten() for n, g in want[1].items()]).norm()
    return logits, (grads / torch.cat([g.flatten() for g in want[1].values()]).norm()).item()


def test_fused_lora_uses_dropout_and_falls_back_to_peft():
    model = tiny_lora_model(torch.float32, 0.3)
    use_fused_lora(model)
    ids = torch.randint(0, 64, (1, 11))
    torch.manual_seed(1)
    first = model(input_ids=ids).logits
    assert not torch.equal(first, model(input_ids=ids).logits)  # new masks each call: dropout is live
    model.eval()
    assert torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)
    with model.disable_adapter():  # PEFT's own path: the base model alone
        base = model(input_ids=ids).logits
    assert torch.equal(base, tiny_llama()(input_ids=ids).logits)
    assert not torch.equal(base, model(input_ids=ids).logits)


def test_fused_lora_saves_less_for_backward():
    def saved(model: torch.nn.Module) -> int:
        hidden = torch.randn(1, 200, 32, dtype=torch.bfloat16, requires_grad=True)
        attention = model.get_base_model().model.layers[0].self_attn

        def project() -> list[torch.Tensor]:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return [getattr(attention, name)(hidden) for name in ("q_proj", "k_proj", "v_proj")]

        return saved_bytes(project, model.parameters())

    model = tiny_lora_model(torch.bfloat16, 0.1)
    before = saved(model)
    use_fused_lora(model)
    fused = saved(model)
    assert fused <= before * 0.65  # x once for q, k and v, not three dropped copies
    use_fused_lora(model, mask_storage="bits")
    assert fused - saved(model) == 3 * 200 * 32 * 7 // 8  # the three masks at 1 bit per element
    use_fused_lora(model, mask_storage="seed")
    assert fused - saved(model) == 3 * 200 * 32  # the three masks are gone


def test_fused_lora_on_a_bf16_base_with_fp32_adapters_without_autocast():
    """PEFT's default upcasts adapters to fp32; without autocast its forward casts the input to them
    and adds in fp32. The fused path must do the same, not fail on mixed dtypes."""
    peft_model = tiny_lora_model(torch.bfloat16, 0.0)
    for module in peft_model.modules():
        if hasattr(module, "cast_input_dtype_enabled"):
            module.cast_input_dtype_enabled = True
    assert next(p for n, p in peft_model.named_parameters() if "lora_A" in n).dtype == torch.float32
    fused = copy.deepcopy(peft_model)
    use_fused_lora(fused, "bits")
    ids = torch.randint(0, 64, (2, 19))
    want_logits, want = run(peft_model, ids, False)
    got_logits, got = run(fused, ids, False)
    torch.testing.assert_close(got_logits, want_logits, rtol=2e-2, atol=2e-2 * want_logits.abs().max().item())
    assert relative_error((got_logits, got), (want_logits.float(), want))[1] < 0.05
