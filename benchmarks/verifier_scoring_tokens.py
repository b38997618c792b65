"""Token positions the verifier runs to score a samples dir: each text whole (batches of 8, right-padded,
as `verifier score` did before), vs the prompt read once per group of 4 solutions of similar length
(`models/verifier.score_solutions`). A count, not a timing: the forward pass's cost is close to
proportional to it on a CPU.

    python benchmarks/verifier_scoring_tokens.py runs/quickstart/samples/tuned-test-k16 runs/verifier/adapter
"""

from __future__ import annotations

import argparse
from pathlib import Path

from transformers import AutoTokenizer

from mathtune.data.batching import common_prefix_length
from mathtune.recipes.sample import read_samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("samples", type=Path, help="samples dir (`mathtune sample`)")
    parser.add_argument("tokenizer", help="tokenizer dir or hub id (a verifier's adapter/ holds one)")
    parser.add_argument("--batch", type=int, default=8, help="texts per batch when scored whole")
    parser.add_argument("--group", type=int, default=4, help="solutions per shared-prompt group")
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    whole = shared = 0
    for row in read_samples(args.samples):
        ids = [tokenizer(row["prompt"] + sample["output"])["input_ids"] for sample in row["samples"]]
        for start in range(0, len(ids), args.batch):
            batch = ids[start : start + args.batch]
            whole += len(batch) * max(map(len, batch))
        by_length = sorted(ids, key=len)
        for start in range(0, len(by_length), args.group):
            group = by_length[start : start + args.group]
            common = common_prefix_length(group)
            shared += common + len(group) * (max(map(len, group)) - common)
    print(f"whole texts: {whole:,} token positions; shared prompt: {shared:,}; ratio {whole / shared:.2f}x")


if __name__ == "__main__":
    main()
