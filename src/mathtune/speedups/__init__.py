"""mathtune's CPU speedups as one plug-in: `apply_speedups` binds them to a model and returns what it bound.

Each speedup replaces a library forward (transformers' attention, RMSNorm and SwiGLU MLP, PEFT's LoRA
Linear, `nn.Dropout`) with one that computes the same math with less memory traffic, so each binds
itself to library internals: class names, PEFT's `Linear`, attention registries. A library release can
rename a class and a speedup would silently stop binding. So `apply_speedups`:
- counts, per speedup, the modules it bound (this goes into the train card, `speedups.bound`);
- counts the modules that look like its target but were left unbound (a renamed class, a new forward)
  and warns once per process per speedup (`speedups.unbound` in the card);
- does nothing at all when `train.speedups` is false: plain transformers + PEFT (config.py turns every
  lever off, the heap allocator included).

tests/speedups/test_plugin.py binds each speedup on tiny Llama/Phi/T5 models and fails when any of them
binds nothing on the pinned library versions (constraints.txt), instead of passing by accident.
The levers themselves live in this package: attention.py (varlen SDPA for packed rows), fused_ce.py
(the fused loss), fused_ops.py, fused_lora.py, dropout.py, cpu_kernels.py (+ .c), allocator.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # `mathtune train` imports allocator.py before torch, to re-execute itself quickly
    from torch import nn

LOG = logging.getLogger("mathtune")
_WARNED: set[str] = set()


@dataclass
class SpeedupReport:
    """What `apply_speedups` bound, and what it saw but could not bind."""

    enabled: bool
    bound: dict[str, int | bool] = field(default_factory=dict)
    unbound: dict[str, int] = field(default_factory=dict)

    def as_card(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "bound": dict(self.bound), "unbound": dict(self.unbound)}


def apply_speedups(model: nn.Module, train: Any, on_cpu: bool, autocast: bool) -> SpeedupReport:
    """Bind every enabled speedup to `model` (after the method wrapped it: only frozen modules get
    fused ops), put the model in train mode and check the bindings survived; returns the report.
    `train`: the run's TrainConfig (its lever fields; not imported here, so speedups/ sits below config)."""
    report = SpeedupReport(enabled=train.speedups)
    if not train.speedups:
        model.train()
        return report
    from mathtune.speedups.attention import use_varlen_sdpa, uses_varlen_sdpa
    from mathtune.speedups.cpu_kernels import load_cpu_kernels
    from mathtune.speedups.dropout import use_fast_dropout
    from mathtune.speedups.fused_lora import unfused_lora_layers, use_fused_lora
    from mathtune.speedups.fused_ops import check_fused_ops_kept, unfused_norms, use_fused_ops

    kernels = load_cpu_kernels() if train.cpu_kernels and on_cpu else None
    report.bound["cpu_kernels"] = kernels is not None
    if train.packing and train.varlen_attention:
        use_varlen_sdpa(model)
        report.bound["varlen_attention"] = uses_varlen_sdpa(model)
    report.bound["fused_loss"] = train.fused_loss  # chosen per batch in training/loss.py (plain nn.Linear heads)
    if train.fast_dropout:
        report.bound["fast_dropout"] = use_fast_dropout(model, kernels)
    if train.fused_lora:
        report.bound["fused_lora"] = use_fused_lora(model, train.dropout_mask_storage, kernels)
        _note_unbound(report, "fused_lora", unfused_lora_layers(model),
                      "LoRA layers on a plain nn.Linear kept PEFT's forward (did PEFT's Linear change?)")
    if train.fused_ops:
        report.bound["fused_ops"] = use_fused_ops(model, kernels)
    if autocast:
        report.bound["adapter_input_cast_skipped"] = keep_adapter_inputs_in_compute_dtype(model)
    model.train()
    if train.fused_ops:  # after train(): a library may re-bind its own forwards there
        report.bound["fused_ops"] = check_fused_ops_kept(model, int(report.bound["fused_ops"]))
        _note_unbound(report, "fused_ops", unfused_norms(model),
                      "frozen RMSNorm layers kept transformers' forward (a renamed class?)")
    return report


def _note_unbound(report: SpeedupReport, name: str, count: int, why: str) -> None:
    if not count:
        return
    report.unbound[name] = count
    if name not in _WARNED:  # once per process: a run of many steps or evals says it one time
        _WARNED.add(name)
        LOG.warning("mathtune: speedup %s did not bind %d module(s): %s; training runs without it (same math, "
                    "slower)", name, count, why)


def keep_adapter_inputs_in_compute_dtype(model: nn.Module) -> int:
    """PEFT casts each adapter's input to the adapter weights' float32 before dropout and the A
    matmul. Under autocast that matmul runs in bf16 anyway, so the cast only adds a float32 copy
    per adapted module, kept for backward (~0.2 GB of peak RSS on SmolLM2-135M, measured in
    docs/performance.md). Without it dropout runs in the compute dtype; A and B stay float32.
    Returns how many adapted modules were switched."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    switched = 0
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.cast_input_dtype_enabled = False
            switched += 1
    return switched
