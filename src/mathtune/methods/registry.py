"""Method name -> implementation, in one place. Adding a method adds one line here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mathtune.methods.base import TuningMethod
from mathtune.methods.full.method import FullMethod
from mathtune.methods.lora.method import LoraMethod

METHODS: dict[str, Callable[[Any], TuningMethod]] = {
    "lora": LoraMethod,
    "full": FullMethod,
}


def build_method(cfg: Any) -> TuningMethod:
    return METHODS[cfg.name](cfg)
