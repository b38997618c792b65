"""`StackedLoraLinear`: a frozen nn.Linear plus named LoRA stages, the last one through f.

Shapes: x (..., in), W0 (out, in), b (out,); stage k has A_k (r_k, in), B_k (out, r_k) and scale
s_k = alpha_k / r_k. The effective weight is

    W = W0 + s1 * B1 @ A1 + f(s2 * B2 @ A2)            # (out, in); f elementwise
    h = dropout(x) @ (W - W0).T + x @ W0.T + b          # (..., out)

With f = identity this is two ordinary LoRAs summed. For any other f the stage-2 update is a dense
(out, in) matrix that must be formed before f, so the layer always forms the summed update
(one r x in x out product per stage; small next to the activations for 100M-class models).
Stage 1 ("stage1") is frozen when a stage 2 ("stage2") trains on top of it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"identity": lambda t: t, "relu": F.relu, "gelu": F.gelu, "tanh": torch.tanh, "silu": F.silu}


class StackedLoraLinear(nn.Module):
    def __init__(self, base_layer: nn.Linear, dropout: float = 0.0) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.base_layer.requires_grad_(False)
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.scaling: dict[str, float] = {}
        self.activation: dict[str, str] = {}  # per stage; "identity" for stage 1
        self.lora_dropout = nn.Dropout(dropout) if dropout else nn.Identity()

    def add_stage(self, name: str, r: int, alpha: float, activation: str = "identity") -> None:
        """A new (A, B) pair: A Kaiming-uniform and B zero, so the update starts at f(0) = 0.
        relu'(0) = 0 in torch would leave a zero B dead forever, so under relu B starts tiny instead."""
        base = self.base_layer
        self.lora_A[name] = nn.Linear(base.in_features, r, bias=False, dtype=torch.float32)
        self.lora_B[name] = nn.Linear(r, base.out_features, bias=False, dtype=torch.float32)
        nn.init.kaiming_uniform_(self.lora_A[name].weight, a=math.sqrt(5))
        if activation == "relu":
            nn.init.normal_(self.lora_B[name].weight, std=1e-4)
        else:
            nn.init.zeros_(self.lora_B[name].weight)
        self.lora_A[name].to(base.weight.device)
        self.lora_B[name].to(base.weight.device)
        self.scaling[name] = alpha / r
        self.activation[name] = activation

    def delta_weight(self) -> torch.Tensor:
        """sum over stages of f_k(s_k * B_k @ A_k): the (out, in) update in float32."""
        delta = None
        for name in self.lora_A:
            update = self.scaling[name] * (self.lora_B[name].weight @ self.lora_A[name].weight)
            update = ACTIVATIONS[self.activation[name]](update)
            delta = update if delta is None else delta + update
        assert delta is not None, "a StackedLoraLinear always holds at least one stage"
        return delta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        # The update runs in the input's dtype (bf16 under autocast or a bf16 eval model) like PEFT.
        update = F.linear(self.lora_dropout(x), self.delta_weight().to(x.dtype))
        return result + update.to(result.dtype)

    def extra_repr(self) -> str:
        return ", ".join(f"{n}: r={self.lora_A[n].out_features} f={self.activation[n]}" for n in self.lora_A)
