"""Stacked-LoRA settings: where the frozen stage-1 adapter lives, and the stage-2 adapter's shape."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mathtune.methods.section import MethodSection

Activation = Literal["identity", "relu", "gelu", "tanh", "silu"]


class StackedLoraMethodConfig(MethodSection):
    name: Literal["stacked-lora"] = "stacked-lora"
    stage1_adapter: str | None = Field(
        None, description="Stage-1 adapter dir (a lora or stacked-lora run dir, or its adapter/); "
        "null: this run trains stage 1 itself")
    r: int = Field(8, ge=1, le=1024, description="Rank of the adapter this run trains")
    alpha: float = Field(16.0, gt=0, description="Its scale s = alpha / r")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout on the adapter input")
    activation: Activation = Field(
        "identity", description="f in W0 + s1*B1A1 + f(s2*B2A2), applied elementwise to the stage-2 update")
    target_modules: list[str] | None = Field(
        None, description="Modules to adapt; null: the stage-1 adapter's, else per architecture")
