"""A tuned model as one plain transformers model: the adapter folded into the base weights.

- lora, grpo (a LoRA adapter): PEFT's `merge_and_unload`, W = W0 + (alpha / r) B A.
- qlora: the 4-bit (or int8) base is dequantized first (transformers' `dequantize`), then the adapter
  is merged into those float weights: W = dequant(W0_q) + (alpha / r) B A, the very function the
  tuned model computed, not the original unquantized W0 it never saw.
- stacked-lora: each layer's update f(s2 B2 A2) is elementwise on the (out, in) update matrix, never on
  activations, so W0 + s1 B1 A1 + f(s2 B2 A2) is one dense matrix: folded, then checked layer by
  layer against the unfolded forward; a layer that does not agree is refused.
- full: the saved model is the tuned model; nothing to merge.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mathtune.errors import MathtuneError

FOLD_TOLERANCE = 1e-5  # max |folded - unfolded| output of a stacked-lora layer on a random probe, fp32


def merge_lora(model: Any) -> Any:
    """A PeftModel's LoRA folded into its base: a plain transformers model without peft layers."""
    merged = model.merge_and_unload()
    for module in merged.modules():
        if type(module).__module__.startswith("peft."):
            raise MathtuneError(f"merge left a PEFT module ({type(module).__name__}) in the model; "
                                "this adapter cannot be exported as plain weights")
    return merged


def dequantize(model: Any) -> Any:
    """A bitsandbytes-quantized transformers model with float weights (their dequantized values)."""
    model = model.dequantize()
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model.to(torch.float32)


def fold_stacked_lora(model: nn.Module) -> nn.Module:
    """Replace every StackedLoraLinear by an nn.Linear holding W0 + its summed stage updates."""
    from mathtune.methods.stacked_lora.layer import StackedLoraLinear

    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, StackedLoraLinear)]
    generator = torch.Generator().manual_seed(0)
    for name, layer in layers:
        base = layer.base_layer
        folded = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None, dtype=torch.float32)
        with torch.no_grad():
            folded.weight.copy_(base.weight.float() + layer.delta_weight().float())
            if base.bias is not None:
                folded.bias.copy_(base.bias.float())
            probe = torch.randn(4, base.in_features, generator=generator).to(folded.weight.device)
            layer.eval()
            gap = (folded(probe) - layer.float()(probe)).abs().max().item()
        if not gap <= FOLD_TOLERANCE * max(1.0, folded.weight.abs().max().item()):
            raise MathtuneError(f"stacked-lora layer {name} does not fold into one weight exactly "
                                f"(gap {gap:.2e}); export refused")
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, folded)
    return model
