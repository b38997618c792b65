"""Token-level training examples and the three batch layouts: packed, padded, seq2seq; and rows of
token ids padded into a batch for inference (decoding pads left, the verifier right).

Packing is padding-free: a micro-batch becomes one row whose position ids restart at every
example, so transformers builds a block-diagonal causal mask and no token sees another example.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE = -100  # cross_entropy's ignore_index
# Example boundaries of a packed row in flash-attn's varlen convention: the attention backends that
# read them (flash_attention_2, mathtune's varlen SDPA) attend within each example at its own cost.
VARLEN_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]  # IGNORE where no loss is taken (prompt tokens when loss_on=completion)

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)


def causal_example(tokenizer, prompt: str, target: str, max_length: int, loss_on: str) -> Example:
    """Prompt and target tokenized apart, so the boundary is exact and matches evaluation."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    input_ids = (prompt_ids + target_ids)[:max_length]
    prompt_labels = list(prompt_ids) if loss_on == "all" else [IGNORE] * len(prompt_ids)
    labels = (prompt_labels + target_ids)[:max_length]
    return Example(input_ids, labels)


def seq2seq_example(tokenizer, prompt: str, target: str, max_length: int) -> Example:
    input_ids = tokenizer(prompt, truncation=True, max_length=max_length)["input_ids"]
    labels = tokenizer(text_target=target.strip(), truncation=True, max_length=max_length)["input_ids"]
    return Example(input_ids, labels)


def packed_batch(examples: list[Example]) -> dict[str, torch.Tensor | int]:
    """One row, positions restarting per example; each example's first label is dropped so the
    last token of one example is never trained to predict the first token of the next."""
    input_ids, labels, positions = [], [], []
    for ex in examples:
        input_ids += ex.input_ids
        labels += [IGNORE] + ex.labels[1:]
        positions += list(range(ex.num_tokens))
    return {
        "input_ids": torch.tensor([input_ids]),
        "labels": torch.tensor([labels]),
        "position_ids": torch.tensor([positions]),
        **varlen_boundaries([ex.num_tokens for ex in examples]),
    }


def varlen_boundaries(lengths: list[int], device: torch.device | None = None) -> dict[str, torch.Tensor | int]:
    """The VARLEN_KEYS of a packed row of sequences of these lengths."""
    edges = torch.tensor([0, *lengths], device=device).cumsum(0).to(torch.int32)
    return dict(zip(VARLEN_KEYS, (edges, edges, max(lengths), max(lengths)), strict=True))


def padded_batch(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(ex.num_tokens for ex in examples)
    ids = [ex.input_ids + [pad_id] * (width - ex.num_tokens) for ex in examples]
    labels = [ex.labels + [IGNORE] * (width - ex.num_tokens) for ex in examples]
    mask = [[1] * ex.num_tokens + [0] * (width - ex.num_tokens) for ex in examples]
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "attention_mask": torch.tensor(mask)}


def seq2seq_batch(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(ex.num_tokens for ex in examples)
    label_width = max(len(ex.labels) for ex in examples)
    ids = [ex.input_ids + [pad_id] * (width - ex.num_tokens) for ex in examples]
    mask = [[1] * ex.num_tokens + [0] * (width - ex.num_tokens) for ex in examples]
    labels = [ex.labels + [IGNORE] * (label_width - len(ex.labels)) for ex in examples]
    return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask), "labels": torch.tensor(labels)}


def count_loss_tokens(examples: list[Example]) -> int:
    return sum(sum(1 for label in ex.labels if label != IGNORE) for ex in examples)


def split_by_tokens(examples: list[Example], budget: int) -> list[list[Example]]:
    """Consecutive pieces of at most `budget` tokens (an example longer than that is a piece of its
    own); budget 0: one piece. Run one after another with loss weights by loss tokens, the pieces
    give the gradient of the whole micro-batch, while autograd holds one piece's activations."""
    if budget <= 0 or sum(e.num_tokens for e in examples) <= budget:
        return [examples] if examples else []
    pieces: list[list[Example]] = [[]]
    filled = 0
    for example in examples:
        if pieces[-1] and filled + example.num_tokens > budget:
            pieces.append([])
            filled = 0
        pieces[-1].append(example)
        filled += example.num_tokens
    return pieces

def common_prefix_length(ids: list[list[int]]) -> int:
    """How many leading tokens every row shares, leaving each row at least one token of its own."""
    shortest = min(len(x) for x in ids)
    common = 0
    while common < shortest - 1 and all(x[common] == ids[0][common] for x in ids):
        common += 1
    return common


def pad_rows(rows: list[list[int]], pad_id: int | None, device: torch.device, left: bool
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention mask) of `rows` padded to the longest, on the left or on the right."""
    width = max(len(x) for x in rows)
    input_ids = torch.full((len(rows), width), pad_id if pad_id is not None else 0, dtype=torch.long, device=device)
    mask = torch.zeros(len(rows), width, dtype=torch.long, device=device)
    for index, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        input_ids[index, span] = torch.tensor(row, device=device)
        mask[index, span] = 1
    return input_ids, mask
