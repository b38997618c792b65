"""AdamW (fused when the build has it) with linear warm-up and linear decay."""

from __future__ import annotations

from typing import Any

import torch
from transformers import get_linear_schedule_with_warmup

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
    # Our schedule is (step + 1) / (warmup + 1) during warm-up, so the very first step already learns,
    # then (total - step) / (total - warmup). transformers' schedule starts at lr 0 (a wasted step);
    # with warmup + 1 and total + 1, read one step ahead, it gives exactly our numbers. last_epoch=0
    # starts it one step ahead: LambdaLR then needs 'initial_lr', which it sets itself only for -1.
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup + 1, total_steps + 1, last_epoch=0)
    return optimizer, scheduler
