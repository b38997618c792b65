"""Data-parallel training under `accelerate launch` (DDP; FSDP/DeepSpeed configs for GPUs)."""

from __future__ import annotations

import os
from contextlib import nullcontext
from typing import Any


def rank_shard(micro: list[int], rank: int, world: int) -> list[int]:
    return micro[rank::world]


def launched_distributed() -> bool:
    """True under `accelerate launch` / torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def process_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def make_accelerator(on_cpu: bool) -> Any:
    from accelerate import Accelerator

    return Accelerator(cpu=on_cpu)


def maybe_no_sync(accelerator: Any, module: Any, last: bool) -> Any:
    """Skip the gradient all-reduce on all but the last micro-batch of an accumulated step."""
    return nullcontext() if accelerator is None or last else accelerator.no_sync(module)
