"""Checkpoints for --resume, written atomically, for every engine the loop runs under.

One process and DDP: rank 0 writes the trainable weights, optimizer, scheduler, fp16 loss scaler and
RNG state to one file (small: a LoRA run does not copy its frozen base). FSDP and DeepSpeed split
weights and optimizer state over the processes, so there every rank writes its part through
accelerate's `save_state`/`load_state`, and rank 0 adds the step, token count and RNG state.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from mathtune.methods.base import load_trainable_state_dict, trainable_state_dict
from mathtune.training.distributed import shards_state

CHECKPOINTS_KEPT = 2
STATE_FILE = "state.pt"


def save_checkpoint(run_dir: Path, step: int, accelerator: Any, model: Any, optimizer: Any, scheduler: Any,
                    tokens: int) -> None:
    """Every rank calls this. Write into a temp dir and rename: a kill mid-save leaves the previous
    checkpoint intact."""
    root = run_dir / "checkpoints"
    main = accelerator.is_main_process
    state: dict[str, Any] = {"step": step, "tokens": tokens,
                             "rng": {"torch": torch.get_rng_state(), "python": random.getstate()}}
    if shards_state(accelerator):
        tmp = root / f".tmp-step-{step:07d}"  # one name for all ranks (mkdtemp would give each its own)
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp / "engine"))
        accelerator.wait_for_everyone()
    elif main:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
        state.update(trainable=trainable_state_dict(model), optimizer=optimizer.state_dict(),
                     scheduler=scheduler.state_dict())
        if accelerator.scaler is not None:
            state["scaler"] = accelerator.scaler.state_dict()
    if main:
        try:
            torch.save(state, tmp / STATE_FILE)
            os.replace(tmp, root / f"step-{step:07d}")
        except BaseException:  # a full disk (or a kill) mid-save: no half checkpoint left on the disk
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        for old in sorted(root.glob("step-*"))[:-CHECKPOINTS_KEPT]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = sorted((run_dir / "checkpoints").glob(f"step-*/{STATE_FILE}"))
    return found[-1] if found else None


def restore_checkpoint(path: Path, accelerator: Any, model: Any, optimizer: Any, scheduler: Any) -> tuple[int, int]:
    state = torch.load(path, weights_only=False)  # our own file, written by save_checkpoint
    if shards_state(accelerator):
        accelerator.load_state(str(path.parent / "engine"))
    else:
        load_trainable_state_dict(model, state["trainable"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if accelerator.scaler is not None and "scaler" in state:
            accelerator.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    return state["step"], state["tokens"]
