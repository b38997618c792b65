"""The fused RMSNorm and SwiGLU give the module's output bit for bit and its gradients to rounding,
inside a whole Llama model (fp32, and bf16 weights under autocast like training), and keep less
for backward."""

import copy

import pytest
import torch
from helpers import CountingKernels, built_cpu_kernels, saved_bytes
from transformers import LlamaConfig, LlamaForCausalLM

from mathtune.speedups.fused_ops import RMSNormFunction, SiluMulFunction, use_fused_ops


def tiny_llama(dtype: torch.dtype) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(config).to(dtype)
    for module in model.modules():  # norms start at weight 1; random weights exercise their gradient
        if hasattr(module, "variance_epsilon"):
            module.weight.data.uniform_(0.5, 1.5)
    return model


def loss_and_grads(model: LlamaForCausalLM, embeds: torch.Tensor, autocast: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and the gradient reaching the input embeddings (weights frozen, as under LoRA)."""
    embeds = embeds.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = model(inputs_embeds=embeds).logits
    logits.float().square().mean().backward()
    return logits.detach(), embeds.grad.float()


@pytest.mark.parametrize(("dtype", "autocast", "rtol"), [(torch.float32, False, 1e-5), (torch.bfloat16, True, 3e-2)])
def test_model_with_fused_ops_matches_the_original(dtype, autocast, rtol):
    original = tiny_llama(dtype).requires_grad_(False)
    fused = copy.deepcopy(original)
    assert use_fused_ops(fused) == 2 * 2 + 1 + 2  # two norms and an MLP per layer, the final norm
    embeds = torch.randn(2, 17, 32).to(dtype)
    want_logits, want = loss_and_grads(original, embeds, autocast)
    got_logits, got = loss_and_grads(fused, embeds, autocast)
    assert torch.equal(got_logits, want_logits)  # forward: the same ops in the same order
    assert (got - want).abs().max().item() <= rtol * want.abs().max().item()


def test_trainable_modules_keep_their_forward():
    """Full fine-tuning: norms and MLPs whose weights train are not fused (slower there)."""
    model = tiny_llama(torch.float32)
    assert use_fused_ops(model) == 0
    model.model.layers[0].mlp.requires_grad_(False)
    assert use_fused_ops(model) == 1


def test_gradients_against_finite_differences():
    torch.manual_seed(1)
    x = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, w: RMSNormFunction.apply(a, w, 1e-6), (x, weight))
    gate, up = torch.randn(4, 6, dtype=torch.float64, requires_grad=True), torch.randn(4, 6, dtype=torch.float64,
                                                                                          requires_grad=True)
    assert torch.autograd.gradcheck(SiluMulFunction.apply, (gate, up))


def test_fused_ops_save_less_for_backward():
    model = tiny_llama(torch.bfloat16).requires_grad_(False)  # a frozen base, as under LoRA
    norm, mlp = model.model.layers[0].input_layernorm, model.model.layers[0].mlp
    x = torch.randn(1, 100, 32, dtype=torch.bfloat16, requires_grad=True)
    before = saved_bytes(lambda: norm(x), model.parameters()), saved_bytes(lambda: mlp(x), model.parameters())
    use_fused_ops(model)
    after = saved_bytes(lambda: norm(x), model.parameters()), saved_bytes(lambda: mlp(x), model.parameters())
    assert after[0] <= before[0] / 1.8  # bf16 input + 1/rms instead of a float32 copy of the input
    assert after[1] <= before[1] * 0.7  # gate and up, not silu(gate) too


def test_swiglu_gradients_are_bit_identical_in_bf16():
    torch.manual_seed(2)
    gate, up = (torch.randn(64, 48, dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    grad = torch.randn(64, 48, dtype=torch.bfloat16)
    want = torch.autograd.grad(torch.nn.functional.silu(gate) * up, (gate, up), grad)
    got = torch.autograd.grad(SiluMulFunction.apply(gate, up), (gate, up), grad)
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))


def test_swiglu_kernels_round_where_torch_rounds():
    """The C kernels compute exp their own way, so a value may land one bf16 step from torch's (when the
    float result sits on a rounding boundary); they must agree everywhere else, on a wide range of inputs."""
    kernels = CountingKernels(built_cpu_kernels())
    torch.manual_seed(3)
    gate = (torch.randn(300, 1536) * 4).bfloat16().requires_grad_()  # silu's whole range, both tails
    gate.data[0, :6] = torch.tensor([-100.0, -88.0, 0.0, 88.0, 100.0, 1e-30])
    up = torch.randn(300, 1536, dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn(300, 1536, dtype=torch.bfloat16)
    want_out = torch.nn.functional.silu(gate) * up
    want = torch.autograd.grad(want_out, (gate, up), grad)
    got_out = SiluMulFunction.apply(gate, up, kernels)
    got = torch.autograd.grad(got_out, (gate, up), grad)
    for g, w in ((got_out, want_out), *zip(got, want, strict=True)):
        one_step = (w.float().abs() * 2**-7).clamp_min(1e-30)  # a bf16 step at w's magnitude
        assert ((g.float() - w.float()).abs() <= one_step).all()
        assert (g != w).float().mean().item() < 0.01
    assert kernels.calls == {"silu_mul_forward": 1, "silu_mul_backward": 1}


@pytest.mark.parametrize("shape", [(3, 57, 576), (1, 40)])
def test_rms_norm_kernels_round_where_torch_rounds(shape):
    kernels = CountingKernels(built_cpu_kernels())
    torch.manual_seed(4)
    x = (torch.randn(shape) * 3).bfloat16().requires_grad_()
    weight = (1 + 0.1 * torch.randn(shape[-1])).bfloat16()
    grad = torch.randn(shape, dtype=torch.bfloat16)
    want_out = RMSNormFunction.apply(x, weight, 1e-5)
    (want,) = torch.autograd.grad(want_out, x, grad)
    got_out = RMSNormFunction.apply(x, weight, 1e-5, kernels)
    (got,) = torch.autograd.grad(got_out, x, grad)
    for g, w in ((got_out, want_out), (got, want)):
        assert g.dtype == w.dtype == torch.bfloat16 and g.shape == w.shape
        torch.testing.assert_close(g, w, rtol=2**-7, atol=1e-3 * w.abs().max().item())
        assert (g != w).float().mean().item() < 0.05
    assert kernels.calls == {"rms_norm_forward": 1, "rms_norm_backward": 1}
