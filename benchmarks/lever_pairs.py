"""Paired A/B of two training set-ups in one process: is a lever faster, past this machine's noise?

    python benchmarks/lever_pairs.py -a train.dropout_mask_storage=bits -b train.dropout_mask_storage=bytes

Builds two training sessions (`mathtune.recipes.train.setup`) in one process, from train_throughput.py's
config plus each side's overrides, and runs the same micro-batches through both: step k under A and
under B back to back, the pairs alternating A B and B A. It prints the median of the per-pair time
ratios (A's time / B's time, so > 1 means B is faster) with its interquartile range, and each side's
tokens/s. A slow or fast spell of the machine lasts longer than a pair, so it falls on both sides.

Both sessions share the process: its heap allocator (mimalloc, as `mathtune train` has it), its
imports and module-level settings. So this compares switches that act per model (train.fused_lora,
train.fused_ops, train.dropout_mask_storage, train.varlen_attention, ...), not the allocator. Memory
is not per side here; `train_throughput.py --arms mathtune -s ...` gives each set-up's peak RSS.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from train_throughput import add_run_arguments, bench_config  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser)
    parser.add_argument("--set", "-s", action="append", help="Override for both sides")
    parser.add_argument("-a", action="append", default=[], help="Override for side A: train.fused_lora=false")
    parser.add_argument("-b", action="append", default=[], help="Override for side B")
    parser.add_argument("--pairs", type=int, default=24, help="Timed pairs (after one warm-up pair)")
    return parser.parse_args(argv)


def side_config(args: argparse.Namespace, overrides: list[str]) -> Any:
    from mathtune.config import parse_override

    return bench_config(args, dict(parse_override(item) for item in overrides))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from mathtune.cli import become_training_process

    become_training_process(side_config(args, args.a), (__file__,))  # allocator and imports as `mathtune train`
    from mathtune.recipes.train import setup, train_step
    from mathtune.speedups.allocator import active_allocator

    sides = {"A": setup(side_config(args, args.a)), "B": setup(side_config(args, args.b))}
    steps = min(s.total_steps for s in sides.values())
    seconds: dict[str, list[float]] = {"A": [], "B": []}
    tokens = 0
    for pair in range(args.pairs + 1):
        step = pair % steps
        for side in ("A", "B") if pair % 2 == 0 else ("B", "A"):
            started = time.perf_counter()
            _, step_tokens = train_step(sides[side], step)
            seconds[side].append(time.perf_counter() - started)
        tokens += step_tokens if pair else 0
    ratios = sorted(a / b for a, b in zip(seconds["A"][1:], seconds["B"][1:], strict=True))
    quartile = len(ratios) // 4
    print(f"A: {args.a or 'defaults'}  {tokens / sum(seconds['A'][1:]):.1f} tokens/s")
    print(f"B: {args.b or 'defaults'}  {tokens / sum(seconds['B'][1:]):.1f} tokens/s")
    print(f"time A / time B over {len(ratios)} pairs: median {statistics.median(ratios):.3f}, "
          f"IQR {ratios[quartile]:.3f}-{ratios[-1 - quartile]:.3f} (> 1: B is faster); allocator {active_allocator()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
