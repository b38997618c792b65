"""Checkpoints for --resume: trainable weights, optimizer, scheduler and RNG state, written atomically."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from mathtune.methods.base import load_trainable_state_dict, trainable_state_dict

CHECKPOINTS_KEPT = 2


def save_checkpoint(run_dir: Path, step: int, model: Any, optimizer: Any, scheduler: Any, tokens: int) -> None:
    """Write into a temp dir and rename: a kill mid-save leaves the previous checkpoint intact."""
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
    state = {
        "step": step, "tokens": tokens, "trainable": trainable_state_dict(model),
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
    }
    torch.save(state, tmp / "state.pt")
    os.replace(tmp, root / f"step-{step:07d}")
    for old in sorted(root.glob("step-*"))[:-CHECKPOINTS_KEPT]:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = sorted((run_dir / "checkpoints").glob("step-*/state.pt"))
    return found[-1] if found else None


def restore_checkpoint(path: Path, model: Any, optimizer: Any, scheduler: Any) -> tuple[int, int]:
    state = torch.load(path, weights_only=False)  # our own file, written by save_checkpoint
    load_trainable_state_dict(model, state["trainable"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    return state["step"], state["tokens"]
