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

import torch
from torch import nn

MAX_ROWS = 4  # above this the int8 kernel is slower than bf16's GEMM on the shapes measured


class Int8DecodeLinear(nn.Linear):
    """An `nn.Linear` whose calls of at most MAX_ROWS rows use an int8 copy of its weight.

    `apply_int8_decode` turns existing Linears into this class in place (same module, same `weight`
    and `bias` parameters, same state-dict keys), so PEFT, tied embeddings, `save_pretrained` and
    isinstance checks see the Linear they had. The int8 copy is made at the first small call, again
    when the weight is replaced by another tensor, and after `drop_int8_copies` (in-place changes)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if rows > MAX_ROWS or x.device.type != "cpu":
            return super().forward(x)
        qweight, scales = self._int8_weight()
        flat = x.reshape(rows, x.shape[-1]).contiguous()
        out = torch.ops.aten._weight_int8pack_mm(flat, qweight, scales.to(x.dtype))
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.reshape(*x.shape[:-1], out.shape[-1])

    def _int8_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        cached = self.__dict__.get("_int8_cache")
        if cached is None or cached[0] != self.weight.data_ptr():
            values = self.weight.detach().float()
            scales = values.abs().amax(dim=1).clamp(min=1e-12) / 127.0
            qweight = torch.round(values / scales[:, None]).clamp(-127, 127).to(torch.int8)
            cached = (self.weight.data_ptr(), qweight, scales)
            self.__dict__["_int8_cache"] = cached  # not a buffer: never saved, never moved
        return cached[1], cached[2]


def drop_int8_copies(model: nn.Module) -> None:
    """Forget the int8 copies, so the next small call copies the weights as they are now: call it after
    changing weights in place (PEFT's merge adds the LoRA product into the base weight's storage)."""
    for module in model.modules():
        if isinstance(module, Int8DecodeLinear):
            module.__dict__.pop("_int8_cache", None)


def apply_int8_decode(model: nn.Module) -> int:
    """Turn every plain `nn.Linear` of `model` (the output head included) into an Int8DecodeLinear, in
    place; returns how many. A PEFT adapter's own small matrices (`lora_A`, `lora_B`, ...) are left
    as they are: only the weights they adapt are copied to int8 (their base layers)."""
    targets = [module for name, module in model.named_modules()
               if type(module) is nn.Linear and not any(part.startswith("lora_") for part in name.split("."))]
    for module in targets:
        module.__class__ = Int8DecodeLinear
    return len(targets)
