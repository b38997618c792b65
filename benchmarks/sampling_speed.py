"""k sampled solutions per problem: transformers' `generate(num_return_sequences=k, do_sample=True)`
vs mathtune's sampler (one shared prefill per problem, finished rows leave the batch), in one run on
one loaded model, the same problems, prompts, stop strings, temperature and token cap.

The peer runs at each batch size asked for (problems per `generate` call; rows = problems x k) and
its fastest is the one compared; mathtune's sampler runs at the same row budget. Prints wall time,
generated tokens/s, peak RSS after each arm, the ratio, and each arm's accuracy (maj@k and mean
sample accuracy, numeric-match: both arms sample the same distribution, so they agree up to noise).

    python benchmarks/sampling_speed.py --data-dir ../shared/datasets --problems 16 --k 16 --peer-batch 1,2,4
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from mathtune.config import build_config
from mathtune.evaluate.backend import build_backend
from mathtune.evaluate.curves import majority_correct
from mathtune.evaluate.generation import Generation, GenerationRequest, cut_at_stop
from mathtune.evaluate.scoring import build_prompts, eval_problems, score_rows, stop_strings
from mathtune.prompts import get_strategy, render_prompts
from mathtune.recipes.sample import merge_lora
from mathtune.runcard import peak_rss_mb


def peer_sample(backend, requests: list[GenerationRequest], k: int, temperature: float, top_p: float,
                batch: int, seed: int) -> list[list[Generation]]:
    """transformers' own sampling: left-padded batches of prompts, each expanded to k rows by
    `num_return_sequences`, stop strings through `stop_strings`."""
    tokenizer, model = backend.tokenizer, backend.model
    tokenizer.padding_side = "left"
    torch.manual_seed(seed)
    out: list[list[Generation]] = []
    for start in range(0, len(requests), batch):
        chunk = requests[start : start + batch]
        encoded = tokenizer([r.prompt for r in chunk], return_tensors="pt", padding=True).to(backend.device)
        with torch.inference_mode():
            generated = model.generate(**encoded, do_sample=True, temperature=temperature, top_p=top_p, top_k=0,
                                       num_return_sequences=k, max_new_tokens=chunk[0].max_new_tokens,
                                       stop_strings=list(chunk[0].stop), tokenizer=tokenizer,
                                       pad_token_id=tokenizer.pad_token_id)
        width = encoded["input_ids"].shape[1]
        for index, request in enumerate(chunk):
            group = []
            for row in generated[index * k : (index + 1) * k, width:]:
                tokens = [t for t in row.tolist() if t not in (tokenizer.pad_token_id, tokenizer.eos_token_id)]
                text, stopped = cut_at_stop(tokenizer.decode(tokens, skip_special_tokens=True), request.stop)
                group.append(Generation(text, not stopped and len(tokens) >= request.max_new_tokens, len(tokens)))
            out.append(group)
    return out


def accuracy(problems, samples, prompts, strategy) -> dict[str, float]:
    scored = [score_rows([p] * len(g), g, strategy, [q] * len(g))
              for p, g, q in zip(problems, samples, prompts, strict=True)]
    maj = sum(majority_correct(rows, None, "numeric-match") for rows in scored) / len(scored)
    mean = sum(bool(r["correct"]["numeric-match"]) for rows in scored for r in rows) / sum(map(len, scored))
    return {"maj@k": round(maj, 4), "mean_sample_accuracy": round(mean, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--adapter", help="a run's adapter dir (default: the base model)")
    parser.add_argument("--data-dir", default=os.environ.get("MATHTUNE_DATA_DIR"))
    parser.add_argument("--problems", type=int, default=16)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--peer-batch", default="1,2,4", help="problems per generate() call to try")
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-merge", action="store_true",
                        help="keep a LoRA adapter unmerged (default: merged for every arm, as `mathtune sample` does)")
    args = parser.parse_args()
    if not args.data_dir:
        parser.error("pass --data-dir or set MATHTUNE_DATA_DIR (the folder holding gsm8k/)")
    from pathlib import Path

    peer_batches = [int(b) for b in args.peer_batch.split(",")]
    cfg = build_config({"model": {"name": args.model}, "data": {"data_dir": args.data_dir},
                        "eval": {"num_problems": args.problems, "max_new_tokens": args.max_new_tokens,
                                 "dtype": args.dtype, "batch_size": max(peer_batches) * args.k}})
    backend, meta = build_backend(cfg, Path(args.adapter) if args.adapter else None)
    # one model for every arm: merged (peft's merge_and_unload, open to any peft user) unless --no-merge
    merged = not args.no_merge and merge_lora(backend)
    strategy = get_strategy(cfg.prompt.strategy)
    problems = eval_problems(cfg)
    prompts = render_prompts(backend.tokenizer, build_prompts(cfg, problems)[0], cfg.prompt.chat_template)
    requests = [GenerationRequest(p, stop_strings(cfg, strategy), args.max_new_tokens) for p in prompts]
    arms = []
    for batch in peer_batches:
        started = time.perf_counter()
        samples = peer_sample(backend, requests, args.k, args.temperature, args.top_p, batch, args.seed)
        wall = time.perf_counter() - started
        tokens = sum(g.new_tokens for group in samples for g in group)
        arms.append({"arm": f"transformers generate, {batch} problem(s) per call", "batch_problems": batch,
                     "wall_seconds": round(wall, 1), "tokens": tokens, "tokens_per_second": round(tokens / wall, 1),
                     "peak_rss_mb": round(peak_rss_mb(), 1), **accuracy(problems, samples, prompts, strategy)})
        print(json.dumps(arms[-1]), flush=True)
    for share in (True, False):
        started = time.perf_counter()
        samples = backend.sample(requests, [p.id for p in problems], args.k, temperature=args.temperature,
                                 top_p=args.top_p, seed=args.seed, share_prefix=share)
        wall = time.perf_counter() - started
        tokens = sum(g.new_tokens for group in samples for g in group)
        name = "mathtune sampler" if share else "mathtune sampler, prefix not shared"
        arms.append({"arm": name, "batch_rows": backend.batch_size,
                     "wall_seconds": round(wall, 1), "tokens": tokens, "tokens_per_second": round(tokens / wall, 1),
                     "peak_rss_mb": round(peak_rss_mb(), 1), **accuracy(problems, samples, prompts, strategy)})
        print(json.dumps(arms[-1]), flush=True)
    fastest_peer = min(arms[: len(peer_batches)], key=lambda a: a["wall_seconds"])
    ours = arms[len(peer_batches)]
    print(json.dumps({"model": args.model, "adapter": args.adapter, "merged_lora": merged,
                      "problems": len(problems), "k": args.k,
                      "dtype": meta["compute_dtype"], "threads": torch.get_num_threads(),
                      "fastest_peer": fastest_peer["arm"],
                      "speedup_wall_vs_fastest_peer": round(fastest_peer["wall_seconds"] / ours["wall_seconds"], 2),
                      "speedup_tokens_per_second": round(
                          ours["tokens_per_second"] / fastest_peer["tokens_per_second"], 2),
                      "shared_prefix_gain": round(arms[-1]["wall_seconds"] / ours["wall_seconds"], 2)}, indent=2))


if __name__ == "__main__":
    main()
