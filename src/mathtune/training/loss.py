"""Batches and the training loss: logits only where labels exist, token-weighted across ranks."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from mathtune.data.batching import Example, packed_batch, padded_batch, seq2seq_batch
from mathtune.models.heads import hidden_at_labels
from mathtune.models.setup import LoadedModel
from mathtune.speedups.fused_ce import linear_cross_entropy


def make_batch(examples: list[Example], loaded: LoadedModel, packing: bool) -> dict[str, torch.Tensor | int]:
    pad_id = loaded.tokenizer.pad_token_id
    if loaded.seq2seq:
        batch = seq2seq_batch(examples, pad_id)
    elif packing:
        batch = packed_batch(examples)
    else:
        batch = padded_batch(examples, pad_id)
    device = loaded.placement.device
    return {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}


def causal_loss(model: Any, batch: dict[str, torch.Tensor], fused: bool = True) -> torch.Tensor:
    """Mean token cross-entropy over labelled positions (logits computed only there, chunk by chunk
    when the head is a plain linear layer; an adapted or quantized head takes the unfused path)."""
    hidden, labels, _, head = hidden_at_labels(model, batch)
    if fused and type(head) is torch.nn.Linear:
        return linear_cross_entropy(hidden, head, labels)
    return F.cross_entropy(head(hidden).float(), labels)


def compute_loss(model: Any, batch: dict[str, torch.Tensor], seq2seq: bool, fused: bool = True) -> torch.Tensor:
    if seq2seq:
        return model(**batch).loss
    return causal_loss(model, batch, fused)


class LossModule(torch.nn.Module):
    """The loss as a module's forward, so a DDP/FSDP wrapper sees the call that uses the weights."""

    def __init__(self, model: Any, seq2seq: bool, fused: bool = True) -> None:
        super().__init__()
        self.model, self.seq2seq, self.fused = model, seq2seq, fused

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return compute_loss(self.model, batch, self.seq2seq, self.fused)


def loss_tokens(examples: list[Example], seq2seq: bool) -> int:
    """Tokens the loss averages over (a causal model never predicts an example's first token)."""
    skip = 0 if seq2seq else 1
    return sum(sum(1 for label in ex.labels[skip:] if label != -100) for ex in examples)
