"""Stacked LoRA as a TuningMethod: inject `StackedLoraLinear`, freeze stage 1, save/load one unit.

A run with `stage1_adapter: null` trains stage 1 (plain W0 + s1*B1A1). A run that names a stage-1
adapter (an ordinary PEFT `lora` adapter or a single-stage stacked one) loads it frozen and trains
stage 2 on top. The saved unit holds every stage: `stacked_lora.safetensors` + `stacked_lora_config.json`.

When mathtune added characters to the vocabulary (models/vocab.py: T5 has no newline or braces), their
embedding rows train too and are saved with the stages. They are not a stage: stage 2 starts from
stage 1's rows and keeps training them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mathtune.errors import MathtuneError
from mathtune.methods.base import TuningMethod
from mathtune.methods.stacked_lora.config import StackedLoraMethodConfig
from mathtune.methods.stacked_lora.layer import StackedLoraLinear
from mathtune.models.targets import lora_targets
from mathtune.models.vocab import new_token_ids

CONFIG_FILE = "stacked_lora_config.json"
WEIGHTS_FILE = "stacked_lora.safetensors"
PEFT_PREFIX = "base_model.model."
TOKEN_ROWS = "token_rows"  # weights-file key suffix of an embedding's added-token rows
PEFT_TOKEN_ROWS = ".token_adapter.trainable_tokens_delta"  # the same rows in a PEFT lora adapter


@dataclass
class Stage:
    """One saved (A, B) pair per module path, with the stage's rank and alpha."""

    r: int
    alpha: float
    tensors: dict[str, tuple[torch.Tensor, torch.Tensor]]  # module path -> (A (r, in), B (out, r))
    token_rows: dict[str, torch.Tensor] | None = None  # embedding module path -> added-token rows


class TokenRows(nn.Module):
    """An embedding, or an output head, whose rows at `ids` are `rows`, a float32 parameter of their own:
    only the added characters' rows train, and the frozen matrix is not copied into the optimizer."""

    def __init__(self, base: nn.Embedding | nn.Linear, ids: list[int], rows: nn.Parameter) -> None:
        super().__init__()
        self.base, self.rows = base, rows
        self.register_buffer("ids", torch.tensor(ids, device=base.weight.device), persistent=False)

    @property
    def weight(self) -> torch.Tensor:  # code that reads `get_input_embeddings().weight` sees the base's
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.base.weight.index_copy(0, self.ids, self.rows.to(self.base.weight.dtype))
        if isinstance(self.base, nn.Embedding):
            return F.embedding(x, weight, self.base.padding_idx)
        return F.linear(x, weight, self.base.bias)


class StackedLoraMethod(TuningMethod):
    name = "stacked-lora"
    config_class = StackedLoraMethodConfig

    def __init__(self, cfg: StackedLoraMethodConfig) -> None:
        self.cfg = cfg

    def base_load_kwargs(self, placement: Any) -> dict[str, Any]:
        return {"dtype": placement.compute_dtype}  # frozen base in the compute dtype, as lora

    def check(self, model_name: str | None = None) -> None:
        """Before training touches any output: the stage-1 adapter must be there."""
        if self.cfg.stage1_adapter is not None:
            resolve_adapter_dir(Path(self.cfg.stage1_adapter))

    def starts_from(self) -> Path | None:
        return None if self.cfg.stage1_adapter is None else resolve_adapter_dir(Path(self.cfg.stage1_adapter))

    def apply(self, model: nn.Module) -> nn.Module:
        cfg = self.cfg
        model.requires_grad_(False)
        if cfg.stage1_adapter is None:
            paths = matching_linears(model, lora_targets(model.config.model_type, cfg.target_modules))
            add_stage(model, paths, "stage1", cfg.r, cfg.alpha, "identity", cfg.dropout)
            add_token_rows(model, new_token_ids(model))
            return model
        stage1 = read_stage1(resolve_adapter_dir(Path(cfg.stage1_adapter)))
        add_token_rows(model, new_token_ids(model), stage1.token_rows or {})
        add_stage(model, list(stage1.tensors), "stage1", stage1.r, stage1.alpha, "identity", cfg.dropout)
        load_stage_tensors(model, "stage1", stage1.tensors)
        targets = cfg.target_modules or sorted({path.rsplit(".", 1)[-1] for path in stage1.tensors})
        paths = matching_linears(model, lora_targets(model.config.model_type, targets))
        add_stage(model, paths, "stage2", cfg.r, cfg.alpha, cfg.activation, cfg.dropout)
        return model  # only stage-2 tensors were created trainable: stage 1 stays frozen

    def save(self, model: nn.Module, out_dir: Path, state_dict: dict[str, Any] | None = None) -> None:
        from safetensors.torch import save_file

        layers = stacked_layers(model)
        gathered = state_dict or {}  # from a sharded engine: the same names, whole tensors
        tensors = {}
        for path, layer in layers.items():
            for stage in layer.lora_A:
                for kind, weights in (("lora_A", layer.lora_A), ("lora_B", layer.lora_B)):
                    name = f"{path}.{kind}.{stage}.weight"
                    tensors[name] = gathered.get(name, weights[stage].weight).detach().contiguous()
        rows = token_rows(model)
        tensors.update({f"{path}.{TOKEN_ROWS}": row.rows.detach().contiguous() for path, row in rows.items()})
        meta = describe(model, layers)
        if rows:
            meta[TOKEN_ROWS] = {"ids": next(iter(rows.values())).ids.tolist(), "modules": list(rows)}
        save_file(tensors, str(out_dir / WEIGHTS_FILE))
        (out_dir / CONFIG_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")

    def load(self, base_model: nn.Module, saved_dir: Path) -> nn.Module:
        from safetensors.torch import load_file

        meta = json.loads((saved_dir / CONFIG_FILE).read_text(encoding="utf-8"))
        base_model.requires_grad_(False)
        for stage in meta["stages"]:
            add_stage(base_model, stage["modules"], stage["name"], stage["r"], stage["alpha"],
                      stage["activation"], meta["dropout"])
        layers = stacked_layers(base_model)
        state = load_file(str(saved_dir / WEIGHTS_FILE))
        rows = meta.get(TOKEN_ROWS, {"ids": [], "modules": []})
        expected = 2 * sum(len(stage["modules"]) for stage in meta["stages"]) + len(rows["modules"])
        if len(state) != expected:  # a missing tensor would otherwise keep its random init silently
            raise MathtuneError(f"stacked-lora: {saved_dir} holds {len(state)} tensors, its config names {expected}")
        with torch.no_grad():
            for path in rows["modules"]:  # frozen for evaluation: written into the matrix, no wrapper
                base_model.get_submodule(path).weight[rows["ids"]] = state.pop(f"{path}.{TOKEN_ROWS}").to(
                    base_model.get_submodule(path).weight.dtype)
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


def token_rows(model: nn.Module) -> dict[str, TokenRows]:
    """One TokenRows per trained matrix (tied modules share one), keyed by its first module path."""
    rows: dict[str, TokenRows] = {}
    for name, module in model.named_modules():
        if isinstance(module, TokenRows) and all(module.rows is not seen.rows for seen in rows.values()):
            rows[name] = module
    return rows


def add_token_rows(model: nn.Module, ids: list[int], start: dict[str, torch.Tensor] | None = None) -> None:
    """Wrap every module that uses the input embedding matrix (T5: `shared`, both stacks' `embed_tokens`,
    a tied `lm_head`), and an untied output head apart, so the rows at `ids` train. `start`: rows to
    begin from (stage 1's), by module path; otherwise the matrix's own rows."""
    if not ids:
        return
    start = start or {}
    heads = [model.get_input_embeddings(), model.get_output_embeddings()]
    paths = {id(module): name for name, module in model.named_modules()}
    done: list[torch.Tensor] = []
    for head in heads:
        if head is None or any(head.weight is weight for weight in done):  # tied: wrapped with the embedding
            continue
        weight, path = head.weight, paths[id(head)]
        done.append(weight)
        initial = start.get(path, weight[ids])
        if initial.shape[0] != len(ids):
            raise MathtuneError(f"stacked-lora: stage 1 trained {initial.shape[0]} added-token rows for {path}, "
                                f"this tokenizer adds {len(ids)}")
        rows = nn.Parameter(initial.detach().to(weight.device, torch.float32).clone())
        for name, module in list(model.named_modules(remove_duplicate=False)):  # every path to a shared module
            if isinstance(module, nn.Embedding | nn.Linear) and module.weight is weight:
                parent, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent), child, TokenRows(module, ids, rows))


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
        rows = {key.removesuffix(f".{TOKEN_ROWS}"): value for key, value in state.items() if key.endswith(TOKEN_ROWS)}
        return Stage(stage["r"], stage["alpha"], tensors, rows)
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
    rows = {key[len(PEFT_PREFIX):].removesuffix(PEFT_TOKEN_ROWS): value for key, value in state.items()
            if key.endswith(PEFT_TOKEN_ROWS)}
    return Stage(r, alpha, tensors, rows)
