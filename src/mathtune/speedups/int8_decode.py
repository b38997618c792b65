"""Weight-only int8 matmuls for decoding steps of a few rows (`eval.int8_decode`, CPU).

A decoding step of one sequence multiplies one row by every weight matrix: it is bound by the bytes of
weights read, not by arithmetic (docs/performance.md, "Where a decoding step goes"). llama.cpp's Q8_0
file reads half the bytes of bf16 and is 3x faster per sequence. This lever gives each Linear an int8
copy of its weight (symmetric, one scale per output channel, as Q8_0 per block and torchao's
int8 weight-only) and multiplies rows by it with torch's own CPU kernel (`aten._weight_int8pack_mm`)
when a call has at most `MAX_ROWS` rows. Measured on SmolLM2's shapes (one thread, bf16): at 1 row the
kernel is ~3x bf16's GEMM, at 4 rows ~1.5x, at 8 rows slower; so larger calls (prefill, batched
decoding) keep the bf16 weights. benchmarks/one_sequence_decode.py measures the whole step.

What it changes: the numbers. Outputs are those of an int8-weight model wherever a step has few rows
(relative error ~1 % per matmul), so greedy texts differ from bf16's on some problems, as llama.cpp's
do, and a step's rows decide which weights it uses: a problem decoded alone and in a large batch may
differ. Off by default; meant for one-sequence use (the app, `eval.batch_size=1`), where every step
has one row and results are deterministic. Recorded in the metrics and the eval fingerprint.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

MAX_ROWS = 4  # above this the int8 kernel is slower than bf16's GEMM on the shapes measured


class Int8DecodeLinear(nn.Module):
    """A Linear whose calls of at most MAX_ROWS rows use an int8 copy of its weight."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear = linear
        weight = linear.weight.detach().float()
        scales = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        self.register_buffer("qweight", torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8),
                             persistent=False)
        self.register_buffer("scales", scales, persistent=False)

    @property
    def weight(self) -> torch.Tensor:  # callers that read a Linear's weight (tied heads, `.dtype` checks)
        return self.linear.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if rows > MAX_ROWS or x.device.type != "cpu":
            return self.linear(x)
        flat = x.reshape(rows, x.shape[-1]).contiguous()
        out = torch.ops.aten._weight_int8pack_mm(flat, self.qweight, self.scales.to(x.dtype))
        if self.linear.bias is not None:
            out = out + self.linear.bias.to(out.dtype)
        return out.reshape(*x.shape[:-1], out.shape[-1])


def apply_int8_decode(model: nn.Module) -> int:
    """Wrap every plain `nn.Linear` of `model` (the output head included; PEFT's LoRA layers keep their
    adapters and get their base layer wrapped); returns how many were wrapped."""
    targets: list[tuple[Any, str, nn.Linear]] = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) is nn.Linear:
                targets.append((parent, name, child))
    for parent, name, child in targets:
        setattr(parent, name, Int8DecodeLinear(child))
    return len(targets)
