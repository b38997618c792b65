"""Device and precision chosen at run time: CUDA when present, bf16 autocast on capable CPUs."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mathtune.errors import MathtuneError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Placement:
    device: torch.device
    compute_dtype: torch.dtype  # dtype of autocast regions (float32: autocast off)

    @property
    def autocast(self) -> bool:
        return self.compute_dtype != torch.float32

    def autocast_context(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.compute_dtype, enabled=self.autocast)


def cpu_supports_bf16() -> bool:
    return bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()) or bool(
        getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    )


def choose_placement(device: str, precision: str) -> Placement:
    if device == "cuda" and not torch.cuda.is_available():
        raise MathtuneError("model.device=cuda but no CUDA device is available; use device: auto or cpu")
    resolved = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else device.replace("auto", "cpu"))
    if precision == "auto":
        if resolved.type == "cuda":  # fp16 (with loss scaling in training) only where bf16 is missing (T4, V100)
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "bf16" if cpu_supports_bf16() else "fp32"
    # fp16 on CPU is allowed when asked for (torch has CPU fp16 autocast and GradScaler) but never chosen:
    # it is slower than fp32 on CPUs without fp16 arithmetic.
    return Placement(resolved, DTYPES[precision])
