"""Peak RSS after imports and after loading the embedded model, no training: where a LoRA run's
memory starts.   python benchmarks/load_rss_probe.py [model]"""

from __future__ import annotations

import importlib
import resource
import sys


def peak_mb() -> int:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main(model: str = "smollm2-135m") -> None:
    importlib.import_module("torch")
    print("import torch", peak_mb())
    importlib.import_module("mathtune.recipes.train")
    importlib.import_module("peft")
    print("import mathtune.recipes.train, peft", peak_mb())
    from mathtune.config import build_config
    from mathtune.methods.registry import build_method
    from mathtune.models.device import choose_placement
    from mathtune.models.setup import load_for_run

    cfg = build_config({"model": {"name": model}})
    method = build_method(cfg.method)
    placement = choose_placement(cfg.model.device, cfg.train.precision)
    loaded = load_for_run(cfg.model, placement, method.base_load_kwargs(placement))
    dtype = next(loaded.model.parameters()).dtype
    print(f"after load_for_run ({dtype} base)", peak_mb())


if __name__ == "__main__":
    main(*sys.argv[1:])
