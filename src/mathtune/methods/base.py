"""The protocol every tuning method implements (one folder per method, PEFT-style)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn


class TuningMethod(Protocol):
    """apply -> train -> save; load rebuilds the tuned model for evaluation.

    What recipes need to know about a method is declared here, by the method, never named in a recipe.
    Methods subclass this protocol so they inherit the defaults below."""

    name: str
    config_class: type  # its `method:` section (a methods.section.MethodSection, `name` a Literal of `name`)
    # Its frozen base layers come from bitsandbytes: the base is loaded quantized for evaluation too
    # (fingerprint), and a process training it keeps bitsandbytes importable (registry).
    quantized: bool = False
    # "module:function" of its own training loop, run by `mathtune train` instead of recipes/train.py's
    # (GRPO: TRL's, recipes/rl.py); None: the shared loop. A string, so no component imports a recipe.
    loop: str | None = None
    # Its saved adapters are PEFT adapters that several runs can add to one loaded base
    # (`mathtune eval RUN1 RUN2`: `load_adapter` + `set_adapter`).
    shares_base: bool = False

    def check(self, model_name: str | None = None) -> None:
        """Before any output is touched (training only): e.g. the adapter a method starts from exists
        and belongs to `model_name`. Nothing to check by default."""
        return None

    def starts_from(self) -> Path | None:
        """The saved weights training continues from (stacked-lora's stage 1, GRPO's SFT adapter): the
        base tokenizer gets the characters their run added, with the same ids (models/vocab.py).
        None by default: training starts from the base alone."""
        return None

    def base_load_kwargs(self, placement: Any) -> dict[str, Any]:
        """Extra `from_pretrained` kwargs for the base (dtype, quantization_config)."""
        ...

    def apply(self, model: nn.Module) -> nn.Module:
        """Return the model ready to train: adapters injected, the right parameters trainable."""
        ...

    def save(self, model: nn.Module, out_dir: Path, state_dict: dict[str, Any] | None = None) -> None:
        """Write the trained weights; `state_dict`: the whole weights already gathered from a sharded
        engine (FSDP, DeepSpeed), None: read them from `model`."""
        ...

    def load(self, base_model: nn.Module, saved_dir: Path) -> nn.Module: ...


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [name for name in state if name not in params]
    if missing:
        raise ValueError(f"checkpoint holds parameters the model lacks: {missing[:3]}")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)
