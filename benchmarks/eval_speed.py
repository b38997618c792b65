"""Wall time and scores of lm-eval-harness's HF backend vs our evaluator on the same GSM8K problems.

Both see one model object loaded once (same weights, same dtype), the same problems (lm-eval's
`samples=` takes the ids our evaluator draws), lm-eval's gsm8k prompt with its per-problem 5-shot
draw, greedy decoding and the same token cap. Prints both wall times, their ratio, both scores
and how many problems got identical extracted answers. On a shared machine the process CPU times
(also printed) are the steadier comparison: wall time depends on what else is running.

Both evaluators first run untimed on `--warmup` problems (default 4): the first calls in a process pay
one-off costs (kernel set-up for each new shape, lazy imports of the scorers), and without it the
arm that runs first (ours) pays them alone. `--warmup 0` measures cold.

The peer is measured at its best setting, not only its default: `--lm-eval-batch-size 1,8,16,32,64`
runs lm-eval once per batch size and reports the ratio against the fastest beside the one against
its default (1).

    nice -n 15 python benchmarks/eval_speed.py --data-dir ../shared/datasets --limit 40 --lm-eval-batch-size 1,16,64
    python benchmarks/eval_speed.py --data-dir ../shared/datasets --task gsm8k_cot --few-shot 8 --limit 48
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from mathtune.config import build_config
from mathtune.evaluate.backend import build_backend
from mathtune.evaluate.lm_eval_bridge import lm_eval_record, run_lm_eval
from mathtune.recipes.evaluate import evaluate

STRATEGIES = {"gsm8k": "lm-eval-gsm8k", "gsm8k_cot": "lm-eval-gsm8k-cot"}  # our prompt of each lm-eval task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data-dir", default=os.environ.get("MATHTUNE_DATA_DIR"))
    parser.add_argument("--limit", type=int, default=200, help="GSM8K test problems (seeded draw)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--task", default="gsm8k", choices=sorted(STRATEGIES),
                        help="gsm8k (shots drawn per problem) or gsm8k_cot (8 fixed shots: a shared prefix)")
    parser.add_argument("--few-shot", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--batch-size", type=int, default=32, help="our evaluator's batch size")
    parser.add_argument("--lm-eval-batch-size", default="1,8,16,32,64",
                        help="lm-eval's batch sizes to try, comma-separated (its default: 1)")
    parser.add_argument("--warmup", type=int, default=4, help="problems each evaluator runs untimed first")
    parser.add_argument("--threads", type=int, help="torch threads for both (default: torch's choice)")
    parser.add_argument("--output", type=Path, help="write the measurement as JSON here")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if not args.data_dir:
        parser.error("pass --data-dir or set MATHTUNE_DATA_DIR (the folder holding gsm8k/)")

    cfg = build_config({
        "model": {"name": args.model}, "data": {"data_dir": args.data_dir},
        "prompt": {"strategy": STRATEGIES[args.task], "few_shot": args.few_shot},
        "eval": {"num_problems": args.limit, "seed": args.seed, "batch_size": args.batch_size,
                 "max_new_tokens": args.max_new_tokens, "dtype": args.dtype, "perplexity": False},
    })
    backend, meta = build_backend(cfg)
    if args.warmup:
        with tempfile.TemporaryDirectory() as tmp:
            evaluate(cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"num_problems": args.warmup})}),
                     backend, Path(tmp), "warmup", backend.tokenizer, meta, show_progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        started, cpu = time.perf_counter(), time.process_time()
        ours = evaluate(cfg, backend, Path(tmp), "ours", backend.tokenizer, meta, show_progress=False)
        ours_wall, ours_cpu = time.perf_counter() - started, time.process_time() - cpu
        rows = {r["id"]: r for r in map(json.loads, (Path(tmp) / "predictions.jsonl").read_text().splitlines())}
    ids = ours["reproducibility"]["problems"]["ids"]

    from lm_eval.models.huggingface import HFLM

    def lm_eval_run(lm: HFLM, problems: list[str]) -> dict:
        return lm_eval_record(run_lm_eval([args.task], lm, data_dir=Path(args.data_dir),
                                          samples=sorted(map(int, problems)), num_fewshot=args.few_shot,
                                          max_gen_toks=args.max_new_tokens))

    batch_sizes = [int(b) for b in args.lm_eval_batch_size.split(",")]
    if args.warmup:
        lm_eval_run(HFLM(pretrained=backend.model, tokenizer=backend.tokenizer, batch_size=batch_sizes[0],
                         device=str(backend.device)), ids[: args.warmup])
    peers = {}
    for batch_size in batch_sizes:
        lm = HFLM(pretrained=backend.model, tokenizer=backend.tokenizer, batch_size=batch_size,
                  device=str(backend.device))
        started, cpu = time.perf_counter(), time.process_time()
        record = lm_eval_run(lm, ids)
        wall, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
        theirs = {str(s["doc_id"]): s for s in record["summary"][args.task]["samples"]}
        peers[batch_size] = {
            "batch_size": batch_size, "wall_seconds": round(wall, 1), "cpu_seconds": round(cpu_seconds, 1),
            "scores": {k: v["exact_match"] for k, v in record["summary"][args.task]["scores"].items()},
            "speedup_wall": round(wall / ours_wall, 2),
            "identical_outputs": sum(rows[i]["output"] == theirs[i]["output"] for i in ids),
            "identical_extracted_answers": sum(all(rows[i]["extracted"][f] == theirs[i]["extracted"][f]
                                                   for f in ("strict-match", "flexible-extract")) for i in ids)}
        print(f"lm-eval batch {batch_size}: {wall:.1f} s ({wall / ours_wall:.2f}x ours)", flush=True)
    fastest = min(peers.values(), key=lambda p: p["wall_seconds"])
    result = {
        "model": args.model, "n": len(ids), "dtype": meta["compute_dtype"], "max_new_tokens": args.max_new_tokens,
        "task": args.task, "few_shot": args.few_shot, "warmup_problems": args.warmup,
        "threads": __import__("torch").get_num_threads(),
        "ours": {"wall_seconds": round(ours_wall, 1), "cpu_seconds": round(ours_cpu, 1), "batch_size": args.batch_size,
                 "scores": {k: v["exact_match"] for k, v in ours["scores"].items()}},
        "lm_eval": list(peers.values()),
        "speedup_vs_fastest_peer": fastest["speedup_wall"], "fastest_peer_batch_size": fastest["batch_size"],
        "speedup_vs_default_peer": peers[1]["speedup_wall"] if 1 in peers else None,
    }
    print(json.dumps(result, indent=2))
    if args.output:
        args.output.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
