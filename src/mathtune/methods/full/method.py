"""Full fine-tuning: every weight trains in float32 (autocast does the low-precision math)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from mathtune.methods.base import TuningMethod
from mathtune.methods.full.config import FullMethodConfig


class FullMethod(TuningMethod):
    name = "full"
    config_class = FullMethodConfig

    def __init__(self, cfg: FullMethodConfig) -> None:
        self.cfg = cfg

    def base_load_kwargs(self, placement: Any) -> dict[str, Any]:
        return {"dtype": torch.float32}  # master weights must be fp32 for AdamW updates to land

    def apply(self, model: nn.Module) -> nn.Module:
        for param in model.parameters():
            param.requires_grad_(True)
        return model

    def save(self, model: nn.Module, out_dir: Path, state_dict: dict[str, Any] | None = None) -> None:
        model.save_pretrained(out_dir, state_dict=state_dict)

    def load(self, base_model: nn.Module, saved_dir: Path) -> nn.Module:
        return type(base_model).from_pretrained(saved_dir, dtype=base_model.dtype, use_kernels=False)
