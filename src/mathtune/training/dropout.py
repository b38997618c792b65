"""Inverted dropout whose mask costs a quarter of a random draw per element.

`nn.Dropout` on CPU draws one Bernoulli sample per element through mt19937 (measured 3.1 ms forward
for a 870 x 576 bf16 activation; a LoRA step on SmolLM2-135M makes 120 of them, ~10 % of the step). Here
one 64-bit draw is split into four 16-bit lanes, and an element is kept when its lane is at or
above a threshold. The drop probability is thus p rounded to a multiple of 1/65,536 (0.1 becomes
0.100006) and kept values are scaled by 1 / (1 - that p), so the expected output is exactly the
input, as with `nn.Dropout` (measured 1.4 ms forward for the same tensor). Backward keeps only the
boolean mask; the fused LoRA node (fused_lora.py) keeps it as bits, or only its seed and draws it again.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

LANES = 1 << 16


class FastDropout(nn.Module):
    def __init__(self, p: float) -> None:
        super().__init__()
        self.threshold = round(p * LANES)  # lanes below it are dropped
        self.p = self.threshold / LANES
        self.scale = 1.0 / (1.0 - self.p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.threshold == 0:
            return x
        return masked_scale(x, keep_mask(x.shape, x.device, self.threshold, draw_seed()), self.scale)

    def extra_repr(self) -> str:
        return f"p={self.p:.6f}"


def draw_seed() -> int:
    """One mask's seed, from torch's default generator, so `torch.manual_seed` fixes every mask."""
    return int(torch.randint(0, 2**62, ()))


def keep_mask(shape: torch.Size, device: torch.device, threshold: int, seed: int) -> torch.Tensor:
    """Lanes at or above `threshold` (of 65,536) are kept. A private generator seeded with `seed` makes
    the draws, so a backward pass can make the same mask again instead of keeping it."""
    count = shape.numel()
    words = (count + 3) // 4
    if count == 0:
        return torch.zeros(shape, dtype=torch.bool, device=device)
    if torch.device(device).type == "cpu":
        # numpy's SFC64 makes 64-bit words about twice as fast as torch's CPU generator, mt19937
        # (214 vs 426 us for 125k words; docs/performance.md)
        draws = torch.from_numpy(np.random.SFC64(seed).random_raw(words).view(np.int64))
    else:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
        # from=-2^63, to=None is the full 64-bit range: no modulo per draw
        draws = torch.empty(words, dtype=torch.int64, device=device).random_(-(2**63), None, generator=generator)
    return draws.view(torch.int16)[:count].view(shape) >= threshold - LANES // 2


# Eight 0/1 bytes read as one little-endian int64 become one byte of bits with a multiply and a shift
# (byte i lands on bit 56 + i, no carries), and back with a spread, a select and a per-byte test.
_GATHER = 0x0102040810204080
_SPREAD, _SELECT = 0x0101010101010101, -0x7FBFDFEFF7FBFDFF  # 0x8040201008040201 as an int64
_FILL, _HIGH_BITS, _LOW_BITS = 0x7F7F7F7F7F7F7F7F, -0x7F7F7F7F7F7F7F80, 0x0101010101010101


def pack_mask(keep: torch.Tensor) -> torch.Tensor:
    """A boolean mask as one bit per element (uint8, padded to whole bytes): 58 us for 636k elements."""
    flat = keep.reshape(-1).view(torch.uint8)
    if flat.numel() % 8:
        flat = torch.nn.functional.pad(flat, (0, -flat.numel() % 8))
    return ((flat.view(torch.int64) * _GATHER) >> 56).to(torch.uint8)


def unpack_mask(packed: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The boolean mask `pack_mask` was given, of this shape (118 us for 636k elements)."""
    words = (packed.to(torch.int64) * _SPREAD) & _SELECT  # byte i keeps bit i of its packed byte
    words = (((words + _FILL) & _HIGH_BITS) >> 7) & _LOW_BITS  # any set bit in a byte -> that byte is 1
    return words.view(torch.bool)[: shape.numel()].view(shape)


def masked(x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """x where `keep` is True, 0 elsewhere (x itself without a mask); the mask is read as uint8."""
    return x if keep is None else x * keep.view(torch.uint8)


def masked_scale(x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
    # The scale multiplies in float32 (a Python scalar) before rounding, so bf16 outputs are unbiased
    # too; autograd keeps only the 1-byte mask. It is read as uint8: on CPU, bool operands take a
    # slow path (x * bool mask 383 us, torch.where 514 us, x * uint8 mask 104 us on 1104 x 576 bf16).
    return masked(x, keep).mul_(scale)


def use_fast_dropout(model: nn.Module) -> int:
    """Replace every `nn.Dropout` with p > 0 by a `FastDropout` of the same p; returns how many."""
    swaps = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if type(child) is nn.Dropout and child.p > 0]
    for parent, name, child in swaps:
        replacement = FastDropout(child.p)
        replacement.train(child.training)
        setattr(parent, name, replacement)
    return len(swaps)
