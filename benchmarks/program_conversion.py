"""How many GSM8K solutions become verified straight-line Python programs (the `program` strategy).

    python benchmarks/program_conversion.py [--data-dir ../shared/datasets] [--split train]
"""

from __future__ import annotations

import argparse
import time

from mathtune.config import build_config
from mathtune.data.problems import load_split
from mathtune.data.programs import convert_solutions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/datasets")
    parser.add_argument("--split", default="train", choices=["train", "test"])
    args = parser.parse_args()
    cfg = build_config({"data": {"data_dir": args.data_dir}})
    problems = load_split(cfg.data, cfg.resolved_data_dir(), args.split)
    started = time.perf_counter()
    _, report = convert_solutions([(p.solution, p.answer) for p in problems])
    print(f"GSM8K {args.split}: {report.converted}/{report.total} converted ({100 * report.rate:.1f}%), "
          f"dropped: {report.dropped_no_annotation} without annotations, {report.dropped_mismatch} not "
          f"reproducing the gold answer; {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
