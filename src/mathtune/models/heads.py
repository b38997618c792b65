"""The vocabulary projection run only where a label exists (causal LMs).

Prompt tokens never need logits. On SmolLM2's 49k vocabulary a full [batch, length, vocab] float32
logits tensor is the largest allocation of a step (16 x 300 x 49,152 x 4 B = 944 MB); projecting only
the label positions saves that memory and most of the head's FLOPs, in training and in perplexity.
"""

from __future__ import annotations

from typing import Any

import torch

from mathtune.data.batching import IGNORE


def logits_at_labels(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits [n, vocab], their next-token labels [n], the batch row of each [n]) for the n labelled
    positions. Works for plain and PEFT-wrapped causal models: adapters sit inside the backbone."""
    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = core.base_model(
        input_ids=batch["input_ids"],
        attention_mask=batch.get("attention_mask"),
        position_ids=batch.get("position_ids"),
        use_cache=False,  # also required for packed rows: with a cache, packed examples attend across
    ).last_hidden_state
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE
    logits = core.get_output_embeddings()(hidden[:, :-1][keep])
    return logits, labels[keep], keep.nonzero()[:, 0]
