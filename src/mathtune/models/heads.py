"""The vocabulary projection run only where a label exists (causal LMs).

Prompt tokens never need logits. On SmolLM2's 49k vocabulary a full [batch, length, vocab] float32
logits tensor is the largest allocation of a step (16 x 300 x 49,152 x 4 B = 944 MB); projecting only
the label positions saves that memory and most of the head's FLOPs, in training and in perplexity.
"""

from __future__ import annotations

from typing import Any

import torch

from mathtune.data.batching import IGNORE, VARLEN_KEYS

LabelledHidden = tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any]


def hidden_at_labels(model: Any, batch: dict[str, torch.Tensor]) -> LabelledHidden:
    """(final hidden states [n, d], their next-token labels [n], the batch row of each [n], the output
    head) for the n labelled positions. Works for plain and PEFT-wrapped causal models: adapters sit
    inside the backbone."""
    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = core.base_model(
        input_ids=batch["input_ids"],
        attention_mask=batch.get("attention_mask"),
        position_ids=batch.get("position_ids"),
        use_cache=False,  # also required for packed rows: with a cache, packed examples attend across
        **{key: batch[key] for key in VARLEN_KEYS if key in batch},
    ).last_hidden_state
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE
    return hidden[:, :-1][keep], labels[keep], keep.nonzero()[:, 0], core.get_output_embeddings()


NLL_ROWS = 256  # labelled positions projected at once: [256, 49k] float32 logits are 50 MB


def nll_at_labels(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(negative log-likelihood [n] in float32, the batch row of each [n]) at the n labelled positions.

    The head projects NLL_ROWS positions at a time: a 16-problem perplexity batch has ~2,000 labelled
    positions, whose bf16 logits, their float32 copy and the log-softmax made ~1 GB at once and set
    `mathtune eval`'s peak (2.1-2.2 GB, against ~0.8 GB while decoding; now 1.25 GB; docs/performance.md)."""
    hidden, labels, rows, head = hidden_at_labels(model, batch)
    pieces = [torch.nn.functional.cross_entropy(head(part).float(), goal, reduction="none")
              for part, goal in zip(hidden.split(NLL_ROWS), labels.split(NLL_ROWS), strict=True)]
    return (torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)), rows
