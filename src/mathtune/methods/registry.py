"""Method name -> implementation, in one place. Adding a method adds one line here."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from mathtune.methods.base import TuningMethod
from mathtune.methods.full.method import FullMethod
from mathtune.methods.grpo.method import GrpoMethod
from mathtune.methods.lora.method import LoraMethod
from mathtune.methods.qlora.method import QloraMethod
from mathtune.methods.stacked_lora.method import StackedLoraMethod

METHODS: dict[str, Callable[[Any], TuningMethod]] = {
    "lora": LoraMethod,
    "full": FullMethod,
    "qlora": QloraMethod,
    "stacked-lora": StackedLoraMethod,
    "grpo": GrpoMethod,  # RL with verifiable rewards on a LoRA adapter (recipes/rl.py)
}


def build_method(cfg: Any) -> TuningMethod:
    return METHODS[cfg.name](cfg)


QUANTIZED_METHODS = {"qlora"}  # the methods whose frozen base layers come from bitsandbytes


def hide_unused_bitsandbytes(method_name: str) -> bool:
    """In a process started to train one method that does not quantize, mark bitsandbytes absent.

    PEFT imports bitsandbytes whenever it is installed, and bitsandbytes imports torch._dynamo and
    torch._inductor: 37-58 MiB of a LoRA run's peak RSS (docs/performance.md). `sys.modules[name] =
    None` is Python's own way to make a module absent: `importlib.util.find_spec` returns None, so
    PEFT and transformers see it as not installed, and `import` raises ModuleNotFoundError. Nothing
    is hidden once bitsandbytes or PEFT is imported. Returns whether it was hidden."""
    if method_name in QUANTIZED_METHODS or "bitsandbytes" in sys.modules or "peft" in sys.modules:
        return False
    sys.modules["bitsandbytes"] = None
    return True
