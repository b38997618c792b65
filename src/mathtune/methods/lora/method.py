"""LoRA through PEFT: h = W0 x + (alpha / r) * B A x, W0 frozen, A (r x in) and B (out x r) trained.

The frozen base may sit in the compute dtype (bf16/fp16) while A and B stay float32: PEFT upcasts
adapter weights (`autocast_adapter_dtype`), so the update is learned in full precision.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from mathtune.methods.lora.config import LoraMethodConfig
from mathtune.models.targets import lora_targets


def peft_lora_config(cfg: LoraMethodConfig, model: nn.Module) -> Any:
    from peft import LoraConfig, TaskType

    config = model.config
    task = TaskType.SEQ_2_SEQ_LM if getattr(config, "is_encoder_decoder", False) else TaskType.CAUSAL_LM
    return LoraConfig(
        task_type=task,
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        bias=cfg.bias,
        target_modules=lora_targets(config.model_type, cfg.target_modules),
    )


class LoraMethod:
    name = "lora"

    def __init__(self, cfg: LoraMethodConfig) -> None:
        self.cfg = cfg

    def base_load_kwargs(self, placement: Any) -> dict[str, Any]:
        # Frozen weights in the compute dtype: no per-step casts and half the weight memory.
        return {"dtype": placement.compute_dtype}

    def apply(self, model: nn.Module) -> nn.Module:
        from peft import get_peft_model

        return get_peft_model(model, peft_lora_config(self.cfg, model))

    def save(self, model: nn.Module, out_dir: Path) -> None:
        model.save_pretrained(out_dir)

    def load(self, base_model: nn.Module, saved_dir: Path) -> nn.Module:
        from peft import PeftModel

        return PeftModel.from_pretrained(base_model, saved_dir)
