"""QLoRA through bitsandbytes + PEFT: W0 stored in 4-bit NF4 (or int8), A and B trained in fp32.

bitsandbytes >= 0.50 runs its 4-bit and 8-bit Linear layers on CPU as well as CUDA (forward and
backward), so one backend serves both; optimum-quanto and torchao were the alternatives considered.
It is imported lazily: users of the other methods never need it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from torch import nn

from mathtune.errors import MathtuneError
from mathtune.methods.lora.method import LoraMethod
from mathtune.methods.qlora.config import QloraMethodConfig

INSTALL_HINT = "pip install 'bitsandbytes>=0.50,<0.52'"
CPU_PACK_BLOCK = (32, 64)  # (out, in) multiples bitsandbytes' packed CPU inference kernel needs


def require_bitsandbytes() -> None:
    if importlib.util.find_spec("bitsandbytes") is None:
        raise MathtuneError(f"method qlora needs the bitsandbytes quantization backend: {INSTALL_HINT}")


class QloraMethod(LoraMethod):
    name = "qlora"
    config_class = QloraMethodConfig
    quantized = True

    def __init__(self, cfg: QloraMethodConfig) -> None:
        super().__init__(cfg)
        self.cfg: QloraMethodConfig = cfg

    def base_load_kwargs(self, placement: Any) -> dict[str, Any]:
        require_bitsandbytes()
        from transformers import BitsAndBytesConfig

        if self.cfg.bits == 4:
            quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                       bnb_4bit_use_double_quant=True,
                                       bnb_4bit_compute_dtype=placement.compute_dtype)
        else:
            quant = BitsAndBytesConfig(load_in_8bit=True)
        return {"dtype": placement.compute_dtype, "quantization_config": quant}

    def apply(self, model: nn.Module) -> nn.Module:
        check_quantized(model, self.cfg.bits)
        if model.device.type == "cuda":
            model = prepare_for_kbit_training(model)
        # On CPU the unquantized weights are bf16/fp32 (never fp16) and stay as lora keeps them:
        # PEFT's fp32 upcast would add 4 bytes per embedding weight, +58 MiB on SmolLM2-135M.
        return super().apply(model)

    def load(self, base_model: nn.Module, saved_dir: Path) -> nn.Module:
        check_quantized(base_model, self.cfg.bits)
        avoid_narrow_cpu_packing(base_model)
        return super().load(base_model, saved_dir)


def prepare_for_kbit_training(model: nn.Module) -> nn.Module:
    """PEFT's QLoRA preparation: fp16 norms and embeddings go to fp32 for stable training;
    checkpointing stays whatever train.gradient_checkpointing already set."""
    from peft import prepare_model_for_kbit_training

    checkpointing = getattr(model, "is_activation_checkpointing", None)  # transformers >= 5.x name
    if checkpointing is None:
        checkpointing = getattr(model, "is_gradient_checkpointing", False)
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=bool(checkpointing))


def quantized_linears(model: nn.Module, bits: int) -> list[nn.Module]:
    import bitsandbytes as bnb

    kind = bnb.nn.Linear4bit if bits == 4 else bnb.nn.Linear8bitLt
    return [m for m in model.modules() if isinstance(m, kind)]


def check_quantized(model: nn.Module, bits: int) -> None:
    """A base that loaded without quantized layers would silently train as plain LoRA."""
    if not quantized_linears(model, bits):
        model_type = getattr(getattr(model, "config", None), "model_type", "?")
        raise MathtuneError(
            f"qlora: bitsandbytes quantized no layer of architecture '{model_type}' to {bits}-bit; "
            "use method.name=lora for this model")


def avoid_narrow_cpu_packing(model: nn.Module) -> None:
    """bitsandbytes 0.50 repacks 4-bit weights for a faster CPU kernel at inference, and crashes on
    layers whose shape is not a multiple of its block (tiny test models); those keep the plain path."""
    out_block, in_block = CPU_PACK_BLOCK
    for module in quantized_linears(model, 4):
        if module.out_features % out_block or module.in_features % in_block:
            module.support_avx512bf16_for_cpu = False
