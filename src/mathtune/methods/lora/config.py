"""LoRA settings; defaults are the Phi-2 study's (r=8, alpha=16, dropout 0.1, bias none)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mathtune.methods.section import MethodSection


class LoraMethodConfig(MethodSection):
    name: Literal["lora"] = "lora"
    r: int = Field(8, ge=1, le=1024, description="Rank of the update B @ A")
    alpha: float = Field(16.0, gt=0, description="Scale: the update is multiplied by alpha / r")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout on the adapter input")
    bias: Literal["none", "all", "lora_only"] = Field("none", description="Which biases train")
    target_modules: list[str] | None = Field(None, description="Module names to adapt; null: per architecture")
