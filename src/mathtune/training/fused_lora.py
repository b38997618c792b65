"""LoRA's dropout and A projection as one autograd node that keeps the adapter's input, not a copy.

PEFT computes `B(A(dropout(x))) * scaling`. Autograd then keeps, per adapted module, the dropped-out
input (for A's gradient) and the mask, while q, k and v all read the same x. Here dropout + A is
one `autograd.Function` that keeps x itself (one tensor shared by q, k and v) and a boolean mask,
and rebuilds the dropped-out input in backward with the same ops. Outputs equal PEFT's bit for
bit (same random draws, same ops); gradients agree to rounding (tests/training/test_fused_lora.py).
Any other case (merged or disabled adapters, several active adapters, DoRA and other variants,
mixed-adapter batches, a dropout this module does not know) runs PEFT's own forward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mathtune.training.dropout import FastDropout, masked_scale


class DropoutLinearFunction(torch.autograd.Function):
    """F.linear(dropout(x), weight) in the autocast dtype (or the weight's), saving x and the mask."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, keep: torch.Tensor | None,
                scale: float) -> torch.Tensor:
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
        ctx.save_for_backward(x, weight, keep)
        ctx.dtype, ctx.scale = dtype, scale
        with torch.autocast(device, enabled=False):
            return F.linear(_dropped(x.to(dtype), keep, scale), weight.to(dtype))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        x, weight, keep = ctx.saved_tensors
        grad = grad.to(ctx.dtype)
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_x = grad @ weight.to(ctx.dtype)
            grad_x = (grad_x if keep is None else masked_scale(grad_x, keep, ctx.scale)).to(x.dtype)
        if ctx.needs_input_grad[1]:
            dropped = _dropped(x.to(ctx.dtype), keep, ctx.scale)
            grad_weight = (grad.reshape(-1, grad.shape[-1]).T @ dropped.reshape(-1, dropped.shape[-1])).to(weight.dtype)
        return grad_x, grad_weight, None, None


def _dropped(x: torch.Tensor, keep: torch.Tensor | None, scale: float) -> torch.Tensor:
    return x if keep is None else masked_scale(x, keep, scale)


def _dropout_mask(dropout: nn.Module, x: torch.Tensor) -> tuple[bool, torch.Tensor | None, float]:
    """(known, keep mask or None, scale) for the adapter's dropout module in its current mode."""
    if isinstance(dropout, nn.Identity) or not dropout.training:
        return True, None, 1.0
    if isinstance(dropout, FastDropout):
        return (True, None, 1.0) if dropout.threshold == 0 else (True, dropout.keep_mask(x), dropout.scale)
    if type(dropout) is nn.Dropout and dropout.p == 0:
        return True, None, 1.0
    return False, None, 1.0


def fused_lora_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    active = self.active_adapters
    plain = (not args and not kwargs and not self.disable_adapters and not self.merged and len(active) == 1
             and active[0] in self.lora_A and active[0] not in self.lora_variant
             and self.lora_A[active[0]].bias is None)
    if not plain:
        return type(self).forward(self, x, *args, **kwargs)
    name = active[0]
    known, keep, scale = _dropout_mask(self.lora_dropout[name], x)  # the base layer draws no random numbers
    if not known:
        return type(self).forward(self, x)
    result = self.base_layer(x)
    hidden = DropoutLinearFunction.apply(x, self.lora_A[name].weight, keep, scale)
    return (result + self.lora_B[name](hidden) * self.scaling[name]).to(result.dtype)


def use_fused_lora(model: nn.Module) -> int:
    """Bind the fused forward to every plain PEFT LoRA Linear (not quantized ones); returns how many."""
    from peft.tuners.lora.layer import Linear

    swapped = 0
    for module in model.modules():
        if type(module) is Linear:
            module.forward = fused_lora_forward.__get__(module)
            swapped += 1
    return swapped
