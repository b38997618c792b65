"""What a training step keeps for backward, by module type: where a LoRA run's peak RSS goes.

    python benchmarks/activation_memory.py                      # default config, the longest micro-batch
    python benchmarks/activation_memory.py -s train.gradient_checkpointing=true

Builds the session exactly as `mathtune.recipes.train.setup` does (same config as train_throughput.py), runs
the forward of the micro-batch with the most tokens under `saved_tensors_hooks`, and attributes
every tensor autograd saves to the innermost module running when it was saved. Storages are
counted once (a view of a saved tensor costs nothing extra). Prints MB per module type and in total,
and the process's peak RSS before and after one full step.
"""

from __future__ import annotations

import argparse
import resource
import sys
from collections import defaultdict
from typing import Any

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from train_throughput import add_run_arguments, bench_config  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def saved_bytes_by_module(model: Any, run_forward: Any) -> tuple[dict[str, int], Any]:
    """Run `run_forward()`; bytes of distinct saved storages per innermost module class."""
    import torch

    stack: list[str] = ["(outside modules)"]
    seen = {p.untyped_storage().data_ptr() for p in model.parameters()}  # weights (saved as views) are not activations
    totals: dict[str, int] = defaultdict(int)
    handles = []

    def enter(module: Any, _args: Any) -> None:
        stack.append(type(module).__name__)

    def leave(*_: Any) -> None:  # returns None: a forward hook's return value would replace the output
        stack.pop()

    for module in model.modules():
        handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            totals[f"{stack[-1]} [{tensor.dtype}]".replace("torch.", "")] += storage.nbytes()
        return tensor

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            result = run_forward()
    finally:
        for handle in handles:
            handle.remove()
    return dict(totals), result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser, steps=50)  # steps: how much of the batch plan to search for the longest micro-batch
    parser.add_argument("--set", "-s", action="append", help="RunConfig override: train.fused_loss=false")
    args = parser.parse_args(argv)

    from mathtune.recipes.train import setup
    from mathtune.training.loss import make_batch

    cfg = bench_config(args, {})
    print(f"peak RSS before setup: {peak_rss_mb():.0f} MB")
    s = setup(cfg)
    print(f"peak RSS after setup: {peak_rss_mb():.0f} MB")
    micro = max(s.plan, key=lambda m: sum(s.examples[i].num_tokens for i in m))
    batch = make_batch([s.examples[i] for i in micro], s.loaded, cfg.train.packing)
    tokens = sum(s.examples[i].num_tokens for i in micro)

    def forward() -> Any:
        with s.loaded.placement.autocast_context():
            return s.loss_fn(batch)

    totals, loss = saved_bytes_by_module(s.model, forward)
    loss.backward()
    print(f"peak RSS after one step on the longest micro-batch ({tokens} tokens): {peak_rss_mb():.0f} MB")
    total = sum(totals.values())
    print(f"\nsaved for backward: {total / 2**20:.1f} MiB ({total / tokens / 1024:.1f} KiB per token)")
    for name, size in sorted(totals.items(), key=lambda item: -item[1]):
        print(f"  {name:<55} {size / 2**20:8.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
