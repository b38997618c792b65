"""Attention for packed rows at per-example cost: SDPA run example by example, causal in each.

A packed row holds several examples back to back. Given only position ids, transformers builds a
block-diagonal boolean mask over the whole row and SDPA attends over all of it: on a row of four
220-token examples that is (4 x 220)^2 scores where 4 x 220^2 / 2 are needed, and the CPU flash
kernel takes no shortcut for masked blocks (measured: a third of a LoRA step on SmolLM2-135M).

This backend reads the boundaries the batch carries, in flash-attn's varlen convention
(`cu_seq_lens_q`, also what `flash_attention_2` consumes on CUDA), and calls SDPA once per example
with `is_causal=True` and no mask, so the flash kernel skips the upper triangle. Without those
keys it is transformers' own SDPA path, so generation and padded batches are unchanged.

In training on CPU the per-example calls run in float32 even under bf16 autocast: the CPU flash
kernel's bf16 backward is the slower one here (3.4 vs 2.0 ms per call on a 220-token example, 9
heads). They run inside one autograd node (`PackedCausalAttention`) that keeps q, k, v and the
output in the model's dtype for backward, not float32 copies (half the bytes; the output is the
tensor o_proj reads anyway), and calls the flash kernel's own backward per example. Without
gradients (evaluation's packed prefill) the model's own dtype is kept, so a packed prefill computes
what a batch-1 prefill computes.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

VARLEN_SDPA = "mathtune_varlen_sdpa"


def varlen_sdpa_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    boundaries = kwargs.pop("cu_seq_lens_q", None)
    if boundaries is None or query.shape[0] != 1 or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    for name in ("cu_seq_lens_k", "max_length_q", "max_length_k", "is_causal"):
        kwargs.pop(name, None)
    edges = boundaries.tolist()
    if edges[0] != 0 or edges[-1] != query.shape[2] or any(a > b for a, b in zip(edges, edges[1:], strict=False)):
        # every position must belong to one example: the outputs are written example by example
        raise ValueError(f"packed row boundaries {edges} do not cover its {query.shape[2]} positions")
    dtype = query.dtype
    if query.device.type == "cpu" and torch.is_grad_enabled():  # training: float32 is faster (module docstring)
        if not kwargs.get("dropout") and not kwargs.get("softcap") and hasattr(torch.ops.aten, FLASH_CPU):
            spans = tuple(zip(edges[:-1], edges[1:], strict=False))
            return PackedCausalAttention.apply(query, key, value, spans, kwargs.get("scaling")), None
        query, key, value = query.float(), key.float(), value.float()
    with torch.autocast(query.device.type, enabled=False):
        pieces = [
            sdpa_attention_forward(
                module, query[:, :, start:end], key[:, :, start:end], value[:, :, start:end], None, is_causal=True,
                **kwargs,
            )[0]
            for start, end in zip(edges[:-1], edges[1:], strict=False)
        ]
    return torch.cat(pieces, dim=1).to(dtype), None  # outputs are [batch, length, heads, head_dim]


FLASH_CPU = "_scaled_dot_product_flash_attention_for_cpu"


class PackedCausalAttention(torch.autograd.Function):
    """Causal attention example by example over a packed row, in float32, saving low-precision inputs.

    q [1, heads, length, dim], k and v [1, kv heads, length, dim] (the CPU flash kernel handles
    grouped-query heads itself); returns [1, length, heads, dim] in q's dtype.
    """

    @staticmethod
    def forward(ctx: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                spans: tuple[tuple[int, int], ...], scale: float | None) -> torch.Tensor:
        flash = getattr(torch.ops.aten, FLASH_CPU)
        # one float32 copy of each input for the row, read by the kernel through per-example views,
        # and each example's output cast into its slice of the row's output: no per-piece casts, no cat
        query32, key32, value32 = query.float(), key.float(), value.float()
        output = query.new_empty(query.shape[0], query.shape[2], query.shape[1], value.shape[3])
        logsumexps = []
        for start, end in spans:
            out, logsumexp = flash(query32[:, :, start:end], key32[:, :, start:end], value32[:, :, start:end],
                                   0.0, True, scale=scale)
            output[:, start:end].copy_(out.transpose(1, 2))
            logsumexps.append(logsumexp)
        ctx.save_for_backward(query, key, value, output, *logsumexps)
        ctx.spans, ctx.scale = spans, scale
        return output

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None, None]:
        query, key, value, output, *logsumexps = ctx.saved_tensors
        flash_backward = getattr(torch.ops.aten, FLASH_CPU + "_backward")
        inputs32 = [t.float() for t in (query, key, value)]
        grad32, output32 = grad.float().transpose(1, 2), output.float().transpose(1, 2)
        grads = [torch.empty_like(t) for t in (query, key, value)]
        for (start, end), logsumexp in zip(ctx.spans, logsumexps, strict=True):
            pieces = flash_backward(
                grad32[:, :, start:end], *(t[:, :, start:end] for t in inputs32), output32[:, :, start:end],
                logsumexp, 0.0, True, scale=ctx.scale)
            for collected, piece in zip(grads, pieces, strict=True):
                collected[:, :, start:end].copy_(piece)
        return (*grads, None, None)


def register_varlen_sdpa() -> str:
    """Make the backend selectable by name (idempotent); its masks are SDPA's."""
    AttentionInterface.register(VARLEN_SDPA, varlen_sdpa_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(VARLEN_SDPA, sdpa_mask)
    return VARLEN_SDPA


def use_varlen_sdpa(model: Any) -> None:
    """Switch a decoder-only model that runs SDPA to the varlen backend (others are left alone)."""
    if getattr(model.config, "_attn_implementation", None) == "sdpa" and not model.config.is_encoder_decoder:
        model.set_attn_implementation(register_varlen_sdpa())



def uses_varlen_sdpa(model: Any) -> bool:
    return getattr(model.config, "_attn_implementation", None) == VARLEN_SDPA
