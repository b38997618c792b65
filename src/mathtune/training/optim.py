"""AdamW (fused when the build has it) with linear warm-up and linear decay."""

from __future__ import annotations

from typing import Any

import torch

from mathtune.config import RunConfig
from mathtune.errors import MathtuneError


def make_optimizer(model: Any, cfg: RunConfig, total_steps: int) -> tuple[Any, Any]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise MathtuneError("the method left no trainable parameters")
    try:  # the fused kernel does one pass over all params instead of a loop of small ops
        optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, fused=True)
    except (RuntimeError, TypeError):
        optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    warmup = cfg.train.warmup_steps

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
