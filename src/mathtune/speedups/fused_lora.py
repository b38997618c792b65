"""LoRA's dropout, A and B around the frozen base projection in three autograd nodes.

PEFT computes `base(x) + B(A(dropout(x))) * scaling`. Autograd then keeps, per adapted module, the
dropped-out input (for A's gradient) and the mask, while q, k and v all read the same x; and the
[tokens, out] adapter output is made, scaled and added in three passes. Here dropout + A is one
`autograd.Function` that keeps x itself (one tensor shared by q, k and v) and the dropout mask (1
byte or 1 bit per element, or only its seed: `mask_storage`), and rebuilds the dropped-out input in
backward. Dropout's 1 / (1 - p) multiplies A's [rank, in] weight instead of the [tokens, in] input,
and B's product, its scaling and the sum with the base output are one `addmm`. The masks are the ones
PEFT's path draws through FastDropout; outputs and gradients agree with PEFT's to rounding
(tests/training/test_fused_lora.py).
On CPU in bf16, with the C kernels built (cpu_kernels.py), forward and backward are one pass each over
x that makes the mask from its seed on the way: no mask is drawn ahead, stored or read back.
Any other case (merged or disabled adapters, several active adapters, DoRA and other variants,
adapter biases, mixed-adapter batches, a dropout this module does not know) runs PEFT's own forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mathtune.speedups.cpu_kernels import KERNELS_ATTRIBUTE, CpuKernels
from mathtune.speedups.dropout import LANES, FastDropout, draw_seed, keep_mask, masked, pack_mask, unpack_mask

MASK_STORAGE_ATTRIBUTE = "mathtune_dropout_mask_storage"


class DropoutLinearFunction(torch.autograd.Function):
    """F.linear(dropout(x), weight) in the autocast dtype (or the weight's), saving x and the mask
    as `mask_storage` says: "bytes" (1 byte per element), "bits" (1 bit) or "seed" (drawn again).
    The dropout's scale multiplies the weight, so the input is only masked (one pass, not two)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, mask: MaskSpec | None,
                mask_storage: str) -> torch.Tensor:
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
        keep = None if mask is None else keep_mask(x.shape, x.device, mask.threshold, mask.seed)
        kept = None if keep is None or mask_storage == "seed" else pack_mask(keep) if mask_storage == "bits" else keep
        ctx.save_for_backward(x, weight, kept)
        ctx.dtype, ctx.mask, ctx.mask_storage = dtype, mask, mask_storage
        with torch.autocast(device, enabled=False):
            return F.linear(masked(x.to(dtype), keep), _scaled(weight, mask).to(dtype))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        x, weight, keep = ctx.saved_tensors
        mask = ctx.mask
        if mask is not None and ctx.mask_storage == "seed":
            keep = keep_mask(x.shape, x.device, mask.threshold, mask.seed)
        elif mask is not None and ctx.mask_storage == "bits":
            keep = unpack_mask(keep, x.shape)
        grad = grad.to(ctx.dtype)
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_x = masked(grad @ _scaled(weight, mask).to(ctx.dtype), keep).to(x.dtype)
        if ctx.needs_input_grad[1]:
            dropped = masked(x.to(ctx.dtype), keep)
            grad_weight = grad.reshape(-1, grad.shape[-1]).T @ dropped.reshape(-1, dropped.shape[-1])
            grad_weight = _scaled(grad_weight.to(weight.dtype), mask)
        return grad_x, grad_weight, None, None


class KernelDropoutLinearFunction(torch.autograd.Function):
    """DropoutLinearFunction's math for bf16 x on CPU, in the C kernels: saves x and the weight only."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, mask: MaskSpec | None,
                kernels: CpuKernels) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1]).contiguous()
        low = None if mask is None else mask.threshold - LANES // 2
        out = kernels.lora_a_forward(rows, _kernel_weight(weight, mask), 0 if mask is None else mask.seed, low)
        ctx.save_for_backward(x, weight)
        ctx.mask, ctx.kernels = mask, kernels
        return out.to(torch.bfloat16).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        x, weight = ctx.saved_tensors
        mask = ctx.mask
        low = None if mask is None else mask.threshold - LANES // 2
        grad_x, grad_weight = ctx.kernels.lora_a_backward(
            x.reshape(-1, x.shape[-1]).contiguous(), _kernel_weight(weight, mask),
            grad.reshape(-1, weight.shape[0]).float().contiguous(), 0 if mask is None else mask.seed, low,
            ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        if grad_x is not None:
            grad_x = grad_x.view(x.shape)
        if grad_weight is not None:
            grad_weight = _scaled(grad_weight, mask).to(weight.dtype)
        return grad_x, grad_weight, None, None


def _kernel_weight(weight: torch.Tensor, mask: MaskSpec | None) -> torch.Tensor:
    """The scaled weight rounded to bf16, as DropoutLinearFunction multiplies by it, widened for the kernel."""
    return _scaled(weight, mask).to(torch.bfloat16).float().contiguous()


def _kernel_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    autocast_bf16 = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    return (x.device.type == "cpu" and x.dtype == torch.bfloat16 and x.shape[-1] == weight.shape[-1]
            and (autocast_bf16 or weight.dtype == torch.bfloat16))


@dataclass(frozen=True)
class MaskSpec:
    """What makes one dropout mask: FastDropout's threshold and scale, and the draw's seed."""

    threshold: int
    scale: float
    seed: int


def _scaled(weight: torch.Tensor, mask: MaskSpec | None) -> torch.Tensor:
    return weight if mask is None else weight * mask.scale


def _dropout_mask(dropout: nn.Module) -> tuple[bool, MaskSpec | None]:
    """(known, the mask to apply or None) for the adapter's dropout module in its current mode."""
    if isinstance(dropout, nn.Identity) or not dropout.training:
        return True, None
    if isinstance(dropout, FastDropout):
        return True, (None if dropout.threshold == 0 else MaskSpec(dropout.threshold, dropout.scale, draw_seed()))
    if type(dropout) is nn.Dropout and dropout.p == 0:
        return True, None
    return False, None


def fused_lora_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    active = self.active_adapters
    plain = (not args and not kwargs and not self.disable_adapters and not self.merged and len(active) == 1
             and active[0] in self.lora_A and active[0] not in self.lora_variant
             and self.lora_A[active[0]].bias is None and self.lora_B[active[0]].bias is None)
    if not plain:
        return type(self).forward(self, x, *args, **kwargs)
    name = active[0]
    known, mask = _dropout_mask(self.lora_dropout[name])  # the base layer draws no random numbers
    if not known:
        return type(self).forward(self, x)
    result = self.base_layer(x)
    weight = self.lora_A[name].weight
    kernels = getattr(self, KERNELS_ATTRIBUTE, None)
    if kernels is not None and _kernel_applies(x, weight):
        hidden = KernelDropoutLinearFunction.apply(x, weight, mask, kernels)
    else:
        hidden = DropoutLinearFunction.apply(x, weight, mask, getattr(self, MASK_STORAGE_ATTRIBUTE, "bytes"))
    # result + scaling * hidden @ B.T in one pass over the [tokens, out] output, in the adapter's
    # dtype as PEFT adds it (the same dtype under autocast; fp32 adapters on a bf16 base without it)
    flat = torch.addmm(result.reshape(-1, result.shape[-1]).to(hidden.dtype), hidden.reshape(-1, hidden.shape[-1]),
                       self.lora_B[name].weight.t(), alpha=self.scaling[name])
    return flat.view(result.shape).to(result.dtype)


def use_fused_lora(model: nn.Module, mask_storage: str = "bytes", kernels: CpuKernels | None = None) -> int:
    """Bind the fused forward to every plain PEFT LoRA Linear (not quantized ones); returns how many.
    `mask_storage`: how each dropout mask waits for backward ("bytes", "bits" or "seed") where the C
    `kernels` are not used (None, or not CPU bf16); they keep only the seed."""
    from peft.tuners.lora.layer import Linear

    swapped = 0
    for module in model.modules():
        if type(module) is Linear:
            module.forward = fused_lora_forward.__get__(module)
            setattr(module, MASK_STORAGE_ATTRIBUTE, mask_storage)
            setattr(module, KERNELS_ATTRIBUTE, kernels)
            swapped += 1
    return swapped


def unfused_lora_layers(model: nn.Module) -> int:
    """LoRA layers on a plain `nn.Linear` base that kept PEFT's forward: what `use_fused_lora` should
    have bound but did not (PEFT renamed or subclassed its Linear). Quantized bases are not counted."""
    from peft.tuners.lora.layer import LoraLayer

    return sum(1 for module in model.modules()
               if isinstance(module, LoraLayer) and type(getattr(module, "base_layer", None)) is nn.Linear
               and getattr(vars(module).get("forward"), "__func__", None) is not fused_lora_forward)
