"""Method name -> implementation, in one place. Adding a method adds one line here (or one
`register_method` call at run time); what a recipe needs to know about it is declared by the method
itself (methods/base.py: `check`, `quantized`, `loop`, `shares_base`, `config_class`)."""

from __future__ import annotations

import sys
from typing import Any

from mathtune.methods.base import TuningMethod
from mathtune.methods.full.method import FullMethod
from mathtune.methods.grpo.method import GrpoMethod
from mathtune.methods.lora.method import LoraMethod
from mathtune.methods.qlora.method import QloraMethod
from mathtune.methods.stacked_lora.method import StackedLoraMethod

METHODS: dict[str, type[TuningMethod]] = {
    "lora": LoraMethod,
    "full": FullMethod,
    "qlora": QloraMethod,
    "stacked-lora": StackedLoraMethod,
    "grpo": GrpoMethod,  # RL with verifiable rewards on a LoRA adapter (recipes/rl.py)
}


def register_method(method: type[TuningMethod]) -> type[TuningMethod]:
    """Add (or replace) a method at run time: `method.name` in configs picks it from then on."""
    from mathtune.methods.section_table import add_method_config

    METHODS[method.name] = method
    add_method_config(method.name, method.config_class)
    return method


def method_class(name: str) -> type[TuningMethod]:
    return METHODS[name]


def build_method(cfg: Any) -> TuningMethod:
    return METHODS[cfg.name](cfg)


def methods_help() -> str:
    """'lora, full, ...': the method names, for CLI help texts."""
    return ", ".join(METHODS)


def hide_unused_bitsandbytes(method_name: str) -> bool:
    """In a process started to train one method that does not quantize, mark bitsandbytes absent.

    PEFT imports bitsandbytes whenever it is installed, and bitsandbytes imports torch._dynamo and
    torch._inductor: 37-58 MiB of a LoRA run's peak RSS (docs/performance.md). `sys.modules[name] =
    None` is Python's own way to make a module absent: `importlib.util.find_spec` returns None, so
    PEFT and transformers see it as not installed, and `import` raises ModuleNotFoundError. Nothing
    is hidden once bitsandbytes or PEFT is imported. Returns whether it was hidden."""
    method = METHODS.get(method_name)
    if (method is not None and method.quantized) or "bitsandbytes" in sys.modules or "peft" in sys.modules:
        return False
    sys.modules["bitsandbytes"] = None
    return True
