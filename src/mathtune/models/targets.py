"""Default LoRA target modules per architecture (config.model_type); overridable in the config."""

from __future__ import annotations

from mathtune.errors import MathtuneError

# Attention projections, as the Phi-2 and T5 studies adapted.
LORA_TARGETS: dict[str, list[str]] = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "phi": ["q_proj", "k_proj", "v_proj", "dense"],
    "phi3": ["qkv_proj", "o_proj"],
    "gpt2": ["c_attn", "c_proj"],
    "gpt_neox": ["query_key_value", "dense"],
    "t5": ["q", "v"],
    "mt5": ["q", "v"],
}


def lora_targets(model_type: str, override: list[str] | None = None) -> list[str]:
    if override:
        return list(override)
    if model_type not in LORA_TARGETS:
        raise MathtuneError(
            f"no default LoRA targets for architecture '{model_type}'; set method.target_modules "
            f"(known: {', '.join(sorted(LORA_TARGETS))})"
        )
    return LORA_TARGETS[model_type]
