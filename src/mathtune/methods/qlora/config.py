"""QLoRA settings: every LoRA field (inherited, not copied) plus the base model's bit width."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mathtune.methods.lora.config import LoraMethodConfig


class QloraMethodConfig(LoraMethodConfig):
    name: Literal["qlora"] = "qlora"  # type: ignore[assignment]
    bits: Literal[4, 8] = Field(4, description="Base weights: 4 (NF4, double-quantized) or 8 (LLM.int8)")
