"""RMSNorm and SwiGLU as single autograd nodes that keep only their inputs for backward.

Written op by op (as transformers' Llama-family modules are), autograd keeps every intermediate a
backward formula needs: RMSNorm keeps a float32 copy of its input (twice the bytes of the bf16
residual stream), SwiGLU keeps gate, silu(gate) and up. Here each is one `autograd.Function`
that saves its inputs (and RMSNorm's per-token 1/rms) and recomputes the rest in backward, which
is a few elementwise ops on tensors already in cache. The forward is the same sequence of ops as
the module's, so outputs are bit-identical; gradients agree to rounding (SwiGLU's are bit-identical;
tests/training/test_fused_ops.py).

On CPU in bf16 with the C kernels (cpu_kernels.c), each forward and backward is one pass over its
rows that rounds to bf16 where these ops round; sums run in another order and exp is the kernels'
own, so a value can differ by one bf16 step.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mathtune.speedups.cpu_kernels import KERNELS_ATTRIBUTE, CpuKernels


class RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float,
                kernels: CpuKernels | None = None) -> torch.Tensor:
        if kernels is not None and _norm_kernels_apply(x, weight):
            out, rstd = kernels.rms_norm_forward(x.contiguous(), weight.contiguous(), eps)
            ctx.save_for_backward(x, weight, rstd)
            ctx.kernels = kernels
            return out
        x32 = x.to(torch.promote_types(x.dtype, torch.float32))  # float32, as the module (float64 stays)
        rstd = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, rstd)
        ctx.kernels = None
        return weight * (x32 * rstd).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        x, weight, rstd = ctx.saved_tensors
        if ctx.kernels is not None and grad.dtype == torch.bfloat16:  # the weight is frozen here
            if not ctx.needs_input_grad[0]:  # the first layer's norm, over the frozen embeddings
                return None, None, None, None
            return ctx.kernels.rms_norm_backward(grad.contiguous(), x.contiguous(), weight.contiguous(), rstd), \
                None, None, None
        normed = x.to(rstd.dtype) * rstd
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = (grad * normed.to(x.dtype)).reshape(-1, weight.shape[-1]).sum(0).to(weight.dtype)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_normed = (grad * weight).to(rstd.dtype)
            # d/dx of x * rsqrt(mean(x^2) + eps): rstd * (g - normed * mean(g * normed))
            grad_x = (rstd * (grad_normed - normed * (grad_normed * normed).mean(-1, keepdim=True))).to(x.dtype)
        return grad_x, grad_weight, None, None


def _norm_kernels_apply(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype == weight.dtype == torch.bfloat16 and not weight.requires_grad
            and weight.dim() == 1 and x.shape[-1] == weight.shape[0])


class SiluMulFunction(torch.autograd.Function):
    """silu(gate) * up, saving gate and up only. With `kernels` (CPU, bf16) forward and backward are one
    pass each in C, rounding where torch's ops round (to rounding of exp: tests/training/test_fused_ops.py)."""

    @staticmethod
    def forward(ctx: Any, gate: torch.Tensor, up: torch.Tensor, kernels: CpuKernels | None = None) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        ctx.kernels = kernels if _swiglu_kernels_apply(gate, up) else None
        if ctx.kernels is not None:
            return ctx.kernels.silu_mul_forward(gate.contiguous(), up.contiguous())
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        gate, up = ctx.saved_tensors
        if ctx.kernels is not None and grad.dtype == torch.bfloat16:
            return (*ctx.kernels.silu_mul_backward(grad.contiguous(), gate.contiguous(), up.contiguous()), None)
        # The ops autograd would run for F.silu(gate) * up, in the same dtype, plus one silu to
        # recompute: gradients bit-identical to the unfused module's.
        grad_gate = torch.ops.aten.silu_backward(grad * up, gate) if ctx.needs_input_grad[0] else None
        grad_up = grad * F.silu(gate) if ctx.needs_input_grad[1] else None
        return grad_gate, grad_up, None


def _swiglu_kernels_apply(gate: torch.Tensor, up: torch.Tensor) -> bool:
    return gate.device.type == "cpu" and gate.dtype == up.dtype == torch.bfloat16 and gate.shape == up.shape


def fused_rms_norm_forward(self: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    kernels = getattr(self, KERNELS_ATTRIBUTE, None)
    return RMSNormFunction.apply(hidden_states, self.weight, self.variance_epsilon, kernels)


def fused_swiglu_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    kernels = getattr(self, KERNELS_ATTRIBUTE, None)
    return self.down_proj(SiluMulFunction.apply(self.gate_proj(x), self.up_proj(x), kernels))


# Classes whose forward is, line for line, transformers' LlamaRMSNorm / LlamaMLP (Gemma's (1 + weight)
# norm and gelu MLPs are not, and are left alone).
LLAMA_STYLE_NORMS = {"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm"}
LLAMA_STYLE_MLPS = {"LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP"}


def use_fused_ops(model: nn.Module, kernels: CpuKernels | None = None) -> int:
    """Bind the fused forwards to every frozen Llama-style RMSNorm and SwiGLU MLP; returns how many.
    `kernels`: the C kernels, used by both on CPU in bf16.

    Modules whose own weights train (full fine-tuning) keep transformers' forward: there the fused
    nodes saved ~0.25 GB but ran ~10 % slower (docs/performance.md)."""
    swapped = 0
    for module in model.modules():
        kind = type(module).__name__
        if _trains_own_weights(module):
            continue
        if kind in LLAMA_STYLE_NORMS:
            module.forward = fused_rms_norm_forward.__get__(module)
            setattr(module, KERNELS_ATTRIBUTE, kernels)
            swapped += 1
        elif kind in LLAMA_STYLE_MLPS and type(module.act_fn).__name__ == "SiLUActivation":
            module.forward = fused_swiglu_forward.__get__(module)
            setattr(module, KERNELS_ATTRIBUTE, kernels)
            swapped += 1
    return swapped


def _trains_own_weights(module: nn.Module) -> bool:
    if type(module).__name__ in LLAMA_STYLE_MLPS:  # its projections (or, under PEFT, their base layers)
        return any(getattr(module, name).weight.requires_grad for name in ("gate_proj", "up_proj", "down_proj"))
    return any(p.requires_grad for p in module.parameters(recurse=False))


def check_fused_ops_kept(model: nn.Module, bound: int) -> int:
    """How many of the `bound` fused forwards are still in place after `model.train()`; warns once when
    a library removed some (transformers 5.25 re-kernelizes hub-kernel layers on every train()/eval()
    unless models load with `use_kernels=False`, which models/loading.py does)."""
    fused = (fused_rms_norm_forward, fused_swiglu_forward)
    kept = sum(1 for module in model.modules() if getattr(vars(module).get("forward"), "__func__", None) in fused)
    if kept < bound:
        import logging

        logging.getLogger("mathtune").warning(
            "fused RMSNorm/SwiGLU forwards: %d of %d were replaced by the model library; training runs "
            "without them (slower, same math)", bound - kept, bound)
    return kept



def unfused_norms(model: nn.Module) -> int:
    """Frozen modules shaped like a Llama RMSNorm (a `weight` and a `variance_epsilon`) that kept their
    library forward: a class transformers renamed, or one `LLAMA_STYLE_NORMS` does not list yet."""
    return sum(1 for module in model.modules()
               if type(module).__name__.endswith("RMSNorm") and hasattr(module, "variance_epsilon")
               and not _trains_own_weights(module)
               and getattr(vars(module).get("forward"), "__func__", None) is not fused_rms_norm_forward)
