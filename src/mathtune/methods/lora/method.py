"""LoRA through PEFT: h = W0 x + (alpha / r) * B A x, W0 frozen, A (r x in) and B (out x r) trained.

The frozen base may sit in the compute dtype (bf16/fp16) while A and B stay float32: PEFT upcasts
adapter weights (`autocast_adapter_dtype`), so the update is learned in full precision.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from mathtune.methods.base import TuningMethod
from mathtune.methods.lora.config import LoraMethodConfig
from mathtune.models.targets import lora_targets
from mathtune.models.vocab import embedding_weights, new_token_ids


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
        trainable_token_indices=token_indices(model),
    )


def token_indices(model: nn.Module) -> list[int] | dict[str, list[int]] | None:
    """The rows of the characters mathtune added to the vocabulary (models/vocab.py), for PEFT's
    trainable tokens: only those rows train and the adapter saves only them. A list targets the input
    embedding, and PEFT follows a tied output head; an untied head is named next to it, or the model
    could read the new characters but never learn to write them."""
    ids = new_token_ids(model)
    if not ids:
        return None
    weights = embedding_weights(model)
    if len(weights) == 1:
        return ids
    modules = {id(module): name for name, module in model.named_modules()}
    return {modules[id(model.get_input_embeddings())]: ids, modules[id(model.get_output_embeddings())]: ids}


class LoraMethod(TuningMethod):
    name = "lora"
    config_class = LoraMethodConfig
    shares_base = True

    def __init__(self, cfg: LoraMethodConfig) -> None:
        self.cfg = cfg

    def base_load_kwargs(self, placement: Any) -> dict[str, Any]:
        # Frozen weights in the compute dtype: no per-step casts and half the weight memory.
        return {"dtype": placement.compute_dtype}

    def apply(self, model: nn.Module) -> nn.Module:
        from peft import get_peft_model

        return get_peft_model(model, peft_lora_config(self.cfg, model))

    def save(self, model: nn.Module, out_dir: Path, state_dict: dict[str, Any] | None = None) -> None:
        if model.peft_config["default"].trainable_token_indices:
            # The new rows are in the adapter already; PEFT would also save the whole resized embedding
            # matrix (its vocab size differs from the base's), which loading rebuilds anyway.
            model.save_pretrained(out_dir, state_dict=state_dict, save_embedding_layers=False)
        else:
            model.save_pretrained(out_dir, state_dict=state_dict)

    def load(self, base_model: nn.Module, saved_dir: Path) -> nn.Module:
        from peft import PeftModel

        return PeftModel.from_pretrained(base_model, saved_dir)
