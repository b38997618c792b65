"""Stacked LoRA as a TuningMethod: inject `StackedLoraLinear`, freeze stage 1, save/load one unit.

A run with `stage1_adapter: null` trains stage 1 (plain W0 + s1*B1A1). A run that names a stage-1
adapter (an ordinary PEFT `lora` adapter or a single-stage stacked one) loads it frozen and trains
stage 2 on top. The saved unit holds every stage: `stacked_lora.safetensors` + `stacked_lora_config.json`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mathtune.errors import MathtuneError
from mathtune.methods.stacked_lora.config import StackedLoraMethodConfig
from mathtune.methods.stacked_lora.layer import StackedLoraLinear
from mathtune.models.targets import lora_targets

CONFIG_FILE = "stacked_lora_config.json"
WEIGHTS_FILE = "stacked_lora.safetensors"
PEFT_PREFIX = "base_model.model."


@dataclass
class Stage:
    """One saved (A, B) pair per module path, with the stage's rank and alpha."""

    r: int
    alpha: float
    tensors: dict[str, tuple[torch.Tensor, torch.Tensor]]  # module path -> (A (r, in), B (out, r))


class StackedLoraMethod:
    name = "stacked-lora"

    def __init__(self, cfg: StackedLoraMethodConfig) -> None:
        self.cfg = cfg

    def base_load_kwargs(self, placement: Any) -> dict[str, Any]:
        return {"dtype": placement.compute_dtype}  # frozen base in the compute dtype, as lora

    def check(self) -> None:
        """Before training touches any output: the stage-1 adapter must be there."""
        if self.cfg.stage1_adapter is not None:
            resolve_adapter_dir(Path(self.cfg.stage1_adapter))

    def apply(self, model: nn.Module) -> nn.Module:
        cfg = self.cfg
        model.requires_grad_(False)
        if cfg.stage1_adapter is None:
            paths = matching_linears(model, lora_targets(model.config.model_type, cfg.target_modules))
            add_stage(model, paths, "stage1", cfg.r, cfg.alpha, "identity", cfg.dropout)
            return model
        stage1 = read_stage1(resolve_adapter_dir(Path(cfg.stage1_adapter)))
        add_stage(model, list(stage1.tensors), "stage1", stage1.r, stage1.alpha, "identity", cfg.dropout)
        load_stage_tensors(model, "stage1", stage1.tensors)
        targets = cfg.target_modules or sorted({path.rsplit(".", 1)[-1] for path in stage1.tensors})
        paths = matching_linears(model, lora_targets(model.config.model_type, targets))
        add_stage(model, paths, "stage2", cfg.r, cfg.alpha, cfg.activation, cfg.dropout)
        return model  # only stage-2 tensors were created trainable: stage 1 stays frozen

    def save(self, model: nn.Module, out_dir: Path) -> None:
        from safetensors.torch import save_file

        layers = stacked_layers(model)
        tensors = {}
        for path, layer in layers.items():
            for stage in layer.lora_A:
                tensors[f"{path}.lora_A.{stage}.weight"] = layer.lora_A[stage].weight.detach().contiguous()
                tensors[f"{path}.lora_B.{stage}.weight"] = layer.lora_B[stage].weight.detach().contiguous()
        save_file(tensors, str(out_dir / WEIGHTS_FILE))
        (out_dir / CONFIG_FILE).write_text(json.dumps(describe(model, layers), indent=2), encoding="utf-8")

    def load(self, base_model: nn.Module, saved_dir: Path) -> nn.Module:
        from safetensors.torch import load_file

        meta = json.loads((saved_dir / CONFIG_FILE).read_text(encoding="utf-8"))
        base_model.requires_grad_(False)
        for stage in meta["stages"]:
            add_stage(base_model, stage["modules"], stage["name"], stage["r"], stage["alpha"],
                      stage["activation"], meta["dropout"])
        layers = stacked_layers(base_model)
        state = load_file(str(saved_dir / WEIGHTS_FILE))
        expected = 2 * sum(len(stage["modules"]) for stage in meta["stages"])
        if len(state) != expected:  # a missing tensor would otherwise keep its random init silently
            raise MathtuneError(f"stacked-lora: {saved_dir} holds {len(state)} tensors, its config names {expected}")
        with torch.no_grad():
            for key, value in state.items():
                path, kind, stage, _ = key.rsplit(".", 3)
                getattr(layers[path], kind)[stage].weight.copy_(value)
        base_model.requires_grad_(False)
        return base_model


def matching_linears(model: nn.Module, targets: list[str]) -> list[str]:
    """Module paths of nn.Linear layers (wrapped or not) named like a target (PEFT's suffix rule)."""
    paths = [name for name, module in model.named_modules()
             if isinstance(module, nn.Linear | StackedLoraLinear)
             and any(name == t or name.endswith(f".{t}") for t in targets)]
    if not paths:
        raise MathtuneError(f"stacked-lora: no linear layer matches target_modules {targets}")
    return paths


def stacked_layers(model: nn.Module) -> dict[str, StackedLoraLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, StackedLoraLinear)}


def add_stage(model: nn.Module, paths: list[str], stage: str, r: int, alpha: float, activation: str,
              dropout: float) -> None:
    """Wrap each nn.Linear at `paths` (once) and give it a new stage."""
    layers = stacked_layers(model)
    for path in paths:
        if path not in layers:
            try:
                base = model.get_submodule(path)
            except AttributeError:
                raise MathtuneError(f"stacked-lora: the model has no module '{path}' "
                                    "(stage-1 adapter made for another architecture?)") from None
            parent_path, _, child = path.rpartition(".")
            layers[path] = StackedLoraLinear(base, dropout)
            setattr(model.get_submodule(parent_path), child, layers[path])
        layers[path].add_stage(stage, r, alpha, activation)


def load_stage_tensors(model: nn.Module, stage: str, tensors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    layers = stacked_layers(model)
    with torch.no_grad():
        for path, (a, b) in tensors.items():
            layers[path].lora_A[stage].weight.copy_(a)
            layers[path].lora_B[stage].weight.copy_(b)
    for path in tensors:
        layers[path].lora_A[stage].requires_grad_(False)
        layers[path].lora_B[stage].requires_grad_(False)


def describe(model: nn.Module, layers: dict[str, StackedLoraLinear]) -> dict[str, Any]:
    first = next(iter(layers.values()))
    stages = []
    for stage in first.lora_A:
        modules = [path for path, layer in layers.items() if stage in layer.lora_A]
        r = layers[modules[0]].lora_A[stage].out_features
        stages.append({"name": stage, "r": r, "alpha": layers[modules[0]].scaling[stage] * r,
                       "activation": layers[modules[0]].activation[stage],
                       "target_modules": sorted({p.rsplit(".", 1)[-1] for p in modules}), "modules": modules})
    dropout = first.lora_dropout.p if isinstance(first.lora_dropout, nn.Dropout) else 0.0
    return {"format": "mathtune-stacked-lora", "version": 1, "base_model": model.config.name_or_path,
            "model_type": model.config.model_type, "dropout": dropout,
            "effective_weight": "W0 + s1*B1A1 + f(s2*B2A2)", "stages": stages}


def resolve_adapter_dir(path: Path) -> Path:
    """Accept a run dir (holding adapter/) or the adapter dir itself."""
    path = path.expanduser()
    if not path.exists():
        raise MathtuneError(f"stacked-lora: stage1_adapter {path} does not exist; train stage 1 first")
    for candidate in (path / "adapter", path):
        if (candidate / CONFIG_FILE).is_file() or (candidate / "adapter_config.json").is_file():
            return candidate
    raise MathtuneError(f"stacked-lora: {path} holds no lora or stacked-lora adapter")


def read_stage1(adapter_dir: Path) -> Stage:
    from safetensors.torch import load_file

    if (adapter_dir / CONFIG_FILE).is_file():
        meta = json.loads((adapter_dir / CONFIG_FILE).read_text(encoding="utf-8"))
        if len(meta["stages"]) != 1:
            raise MathtuneError(f"stacked-lora: {adapter_dir} already stacks {len(meta['stages'])} stages; "
                                "stage 1 must be a single adapter")
        state = load_file(str(adapter_dir / WEIGHTS_FILE))
        stage = meta["stages"][0]
        tensors = {p: (state[f"{p}.lora_A.{stage['name']}.weight"], state[f"{p}.lora_B.{stage['name']}.weight"])
                   for p in stage["modules"]}
        return Stage(stage["r"], stage["alpha"], tensors)
    return read_peft_lora(adapter_dir)


def read_peft_lora(adapter_dir: Path) -> Stage:
    """An ordinary PEFT LoRA adapter (what the `lora` method saves) as stage 1."""
    from safetensors.torch import load_file

    meta = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    if meta.get("peft_type") != "LORA" or meta.get("rank_pattern") or meta.get("alpha_pattern"):
        raise MathtuneError(f"stacked-lora: {adapter_dir} is not a plain uniform-rank LoRA adapter")
    state = load_file(str(adapter_dir / "adapter_model.safetensors"))
    paths = sorted({key[len(PEFT_PREFIX):].rsplit(".lora_A.", 1)[0] for key in state if ".lora_A." in key})
    tensors = {p: (state[f"{PEFT_PREFIX}{p}.lora_A.weight"], state[f"{PEFT_PREFIX}{p}.lora_B.weight"])
               for p in paths}
    r = int(meta["r"])
    # rsLoRA scales by alpha / sqrt(r); express it as the alpha that gives that scale under alpha / r.
    alpha = float(meta["lora_alpha"]) * (math.sqrt(r) if meta.get("use_rslora") else 1.0)
    return Stage(r, alpha, tensors)
