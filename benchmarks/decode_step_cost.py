"""What one decoding step costs as a function of the rows left and the tokens fed per row, on the
embedded model with a KV cache of `--context` tokens (the decoding loop's own cache, evaluate/decoding.py).

Why it exists: it shows where greedy evaluation's time can still go. A step that feeds 1 token to
1 row costs a fixed part (reading the weights, per-layer overhead); every further token fed costs
its matmuls. Ways to decode faster by feeding more tokens per step (prompt-lookup or speculative
decoding: guess several tokens, check them in one pass) only pay where that fixed part dominates.
Prints the median ms per step of each (rows, tokens per row) shape and its ratio to 1 row x 1 token.

    python benchmarks/decode_step_cost.py --shapes 1x1,1x10,7x1,7x9,48x1,64x1
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from mathtune.config import build_config
from mathtune.evaluate.backend import build_backend
from mathtune.evaluate.decoding import _new_cache


def step_ms(model: torch.nn.Module, rows: int, width: int, context: int, repeats: int) -> float:
    """Median ms of a forward pass feeding `width` tokens to each of `rows` rows after `context` cached ones."""
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 1000, (rows, context), generator=generator)
    step = torch.randint(0, 1000, (rows, width), generator=generator)
    mask = torch.ones(rows, context + width, dtype=torch.long)
    mask[0, 0] = 0  # a padded row, as in a batch of prompts of different lengths: the masked path
    positions = torch.arange(context, context + width).expand(rows, width)
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 1):  # the first pass is a warm-up
            cache = _new_cache(model)
            model(input_ids=prompt, attention_mask=mask[:, :context], past_key_values=cache, use_cache=True,
                  logits_to_keep=1)
            started = time.perf_counter()
            model(input_ids=step, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True)
            times.append(time.perf_counter() - started)
    return sorted(times[1:])[len(times[1:]) // 2] * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="bf16", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--shapes", default="1x1,1x10,7x1,7x9,48x1,64x1", help="ROWSxTOKENS, comma-separated")
    parser.add_argument("--context", type=int, default=150, help="tokens already in the KV cache")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    backend, meta = build_backend(build_config({"model": {"name": args.model}, "eval": {"dtype": args.dtype}}))
    results = []
    for shape in args.shapes.split(","):
        rows, width = (int(x) for x in shape.split("x"))
        results.append({"rows": rows, "tokens_per_row": width,
                        "ms": round(step_ms(backend.model, rows, width, args.context, args.repeats), 1)})
    base, first = results[0]["ms"], f"{results[0]['rows']} x {results[0]['tokens_per_row']}"
    print(f"| rows x tokens per row | tokens fed | ms per step | vs {first} |")
    print("|---|---:|---:|---:|")
    for r in results:
        print(f"| {r['rows']} x {r['tokens_per_row']} | {r['rows'] * r['tokens_per_row']} | {r['ms']} | "
              f"{r['ms'] / base:.2f}x |")
    print(json.dumps({"model": args.model, "dtype": meta["compute_dtype"], "context": args.context,
                      "threads": torch.get_num_threads(), "steps": results}))


if __name__ == "__main__":
    main()
