"""Method name -> implementation, in one place. Adding a method adds one line here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mathtune.methods.base import TuningMethod
from mathtune.methods.full.method import FullMethod
from mathtune.methods.lora.method import LoraMethod
from mathtune.methods.qlora.method import QloraMethod
from mathtune.methods.stacked_lora.method import StackedLoraMethod

METHODS: dict[str, Callable[[Any], TuningMethod]] = {
    "lora": LoraMethod,
    "full": FullMethod,
    "qlora": QloraMethod,
    "stacked-lora": StackedLoraMethod,
}


def build_method(cfg: Any) -> TuningMethod:
    return METHODS[cfg.name](cfg)
