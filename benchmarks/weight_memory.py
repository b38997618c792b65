"""Weight memory of the frozen base per method (parameter + buffer bytes after loading and `apply`).

    python benchmarks/weight_memory.py [--model smollm2-135m]
"""

from __future__ import annotations

import argparse

from mathtune.config import build_config
from mathtune.methods.registry import build_method
from mathtune.models.device import choose_placement
from mathtune.models.setup import load_for_run

METHODS = {"lora": {"name": "lora"}, "qlora-4bit": {"name": "qlora", "bits": 4},
           "qlora-8bit": {"name": "qlora", "bits": 8}, "full": {"name": "full"}}


def weight_mib(model) -> float:
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args()
    print("| method | compute dtype | weights after load MiB | after apply MiB |\n|---|---|---|---|")
    for label, method_cfg in METHODS.items():
        cfg = build_config({"model": {"name": args.model}, "method": method_cfg})
        method = build_method(cfg.method)
        placement = choose_placement(cfg.model.device, cfg.train.precision)
        loaded = load_for_run(cfg.model, placement, method.base_load_kwargs(placement))
        before = weight_mib(loaded.model)
        after = weight_mib(method.apply(loaded.model))
        dtype = str(placement.compute_dtype).replace("torch.", "")
        print(f"| {label} | {dtype} | {before:.1f} | {after:.1f} |")


if __name__ == "__main__":
    main()
