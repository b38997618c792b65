"""Inverted dropout whose mask costs a quarter of a random draw per element.

`nn.Dropout` on CPU draws one Bernoulli sample per element through mt19937 (measured 3.1 ms forward
for a 870 x 576 bf16 activation; a LoRA step on SmolLM2-135M makes 120 of them, ~10 % of the step). Here
one 64-bit draw is split into four 16-bit lanes, and an element is kept when its lane is at or
above a threshold. The drop probability is thus p rounded to a multiple of 1/65,536 (0.1 becomes
0.100006) and kept values are scaled by 1 / (1 - that p), so the expected output is exactly the
input, as with `nn.Dropout`.

The draws are the splitmix64 stream of the mask's seed, word w being its (w + 1)-th output: a
counter-based generator, so any part of a mask can be made again from the seed alone, in any order.
`cpu_kernels.c` makes the same masks (on CPU, when it is built); here they are made with int64 torch
ops, on any device. The fused LoRA node (fused_lora.py) keeps a mask as bits, or only its seed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from mathtune.speedups.cpu_kernels import CpuKernels

LANES = 1 << 16


class FastDropout(nn.Module):
    def __init__(self, p: float, kernels: CpuKernels | None = None) -> None:
        super().__init__()
        self.threshold = round(p * LANES)  # lanes below it are dropped
        self.p = self.threshold / LANES
        self.scale = 1.0 / (1.0 - self.p)
        self.kernels = kernels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.threshold == 0:
            return x
        keep = keep_mask(x.shape, x.device, self.threshold, draw_seed(), self.kernels)
        return masked_scale(x, keep, self.scale)

    def extra_repr(self) -> str:
        return f"p={self.p:.6f}"


def draw_seed() -> int:
    """One mask's seed, from torch's default generator, so `torch.manual_seed` fixes every mask."""
    return int(torch.randint(0, 2**62, ()))


def keep_mask(shape: torch.Size, device: torch.device, threshold: int, seed: int,
              kernels: CpuKernels | None = None) -> torch.Tensor:
    """Lanes at or above `threshold` (of 65,536) are kept. The draws come from `seed` alone, so a backward
    pass can make the same mask again instead of keeping it. `kernels` (CPU only) make it in one pass."""
    count = shape.numel()
    if kernels is not None and torch.device(device).type == "cpu":
        return kernels.keep_mask(count, seed, threshold - LANES // 2).view(shape)
    if count == 0:
        return torch.zeros(shape, dtype=torch.bool, device=device)
    draws = splitmix64_words((count + 3) // 4, seed, device)
    return draws.view(torch.int16)[:count].view(shape) >= threshold - LANES // 2


def _signed(constant: int) -> int:
    return constant - (1 << 64) if constant >= 1 << 63 else constant


_GAMMA, _MIX1, _MIX2 = (_signed(c) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))


def splitmix64_words(count: int, seed: int, device: torch.device) -> torch.Tensor:
    """Outputs 1..count of splitmix64 seeded with `seed`, as int64 (torch's int64 arithmetic wraps)."""
    z = torch.arange(1, count + 1, dtype=torch.int64, device=device).mul_(_GAMMA).add_(_signed(seed % (1 << 64)))
    for shift, multiplier in ((30, _MIX1), (27, _MIX2)):
        z = z.bitwise_xor_(_shift_right(z, shift)).mul_(multiplier)
    return z.bitwise_xor_(_shift_right(z, 31))


def _shift_right(z: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical (unsigned) shift: torch shifts int64 arithmetically, so the sign's copies are masked off."""
    return (z >> bits).bitwise_and_((1 << (64 - bits)) - 1)


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


def use_fast_dropout(model: nn.Module, kernels: CpuKernels | None = None) -> int:
    """Replace every `nn.Dropout` with p > 0 by a `FastDropout` of the same p; returns how many."""
    swaps = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if type(child) is nn.Dropout and child.p > 0]
    for parent, name, child in swaps:
        replacement = FastDropout(child.p, kernels)
        replacement.train(child.training)
        setattr(parent, name, replacement)
    return len(swaps)
