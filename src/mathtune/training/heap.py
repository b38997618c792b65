"""Give freed host memory back to the OS during the forward pass (glibc only).

On CPU, activations come from glibc's heap. A training forward interleaves tensors kept for
backward with short-lived ones; the holes the short-lived ones leave stay resident, and on
SmolLM2-135M a forward grew RSS by ~740 MB while keeping 478 MB for backward
(benchmarks/activation_memory.py). `malloc_trim(0)` after every few decoder layers returns those
holes to the OS, at the cost of faulting pages in again when they are reused (the speed and peak
RSS trade-off is measured in docs/performance.md). Every 3 layers by default (`train.heap_trim_every`, 0: off); a no-op
where glibc is absent, on accelerators, and outside training (no gradients or eval mode).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

import torch
from torch import nn


def _glibc_trim() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


def decoder_layers(model: nn.Module) -> nn.ModuleList | None:
    """The ModuleList holding the decoder blocks (as many as config.num_hidden_layers)."""
    count = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module
    return None


def trim_heap_between_layers(model: nn.Module, every: int) -> int:
    """Call malloc_trim after every `every`-th decoder layer in training forwards; returns how many hooks."""
    trim, layers = _glibc_trim(), decoder_layers(model)
    if trim is None or layers is None or every <= 0:
        return 0

    def after_layer(module: nn.Module, _args: Any, _output: Any) -> None:
        if module.training and torch.is_grad_enabled():
            trim(0)

    hooks = 0
    for index, layer in enumerate(layers):
        if index % every == every - 1:
            layer.register_forward_hook(after_layer)
            hooks += 1
    return hooks
