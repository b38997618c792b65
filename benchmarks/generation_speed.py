"""Greedy generation speed of mathtune's decoding loop beside transformers' `generate` and llama.cpp,
on the same model, prompts and token cap, in one run; with each arm's MFU and the agreement of its
answers with mathtune's.

Arms (each a row of the printed table):
- `mathtune` at batch 1, 16, 64 on the first `--small` problems, and on the evaluation's real mix
  (`make run`'s 200 seeded GSM8K problems, Q/A prompt, 256-token cap, calculator decoding) at batch
  64 with continuous batching (this commit) and with the chunked batches of the previous loop
  (`--arms chunked`: each chunk of 64 decoded until its last row finished), the "before" row.
- `generate`: transformers' `model.generate` (its own KV cache and stopping criteria, no calculator)
  at its fastest of `--generate-batches`, with the calculator off in mathtune's matching row.
- `llama.cpp`: llama-cpp-python on the embedded model's GGUF re-quantized with llama.cpp's own
  quantizer to Q8_0 and F16 (and the original Q4_1), one sequence at a time, and its multi-sequence
  batch (`--llama-parallel` sequences per `llama_decode`, refilled as they finish). mathtune's own
  decoding rules (stop strings, calculator) drive it (evaluate/llama_cpp_backend.py).
- `int8` (last, as it changes the loaded model): mathtune at batch 1 with `eval.int8_decode`
  (speedups/int8_decode.py: weight-only int8 matmuls for calls of at most 4 rows).

MFU: tokens/s x 2 x the model's matmul weights (every Linear, the vocabulary projection included)
over the matmul peak measured here first (a large bf16 GEMM, `--dtype`'s, on all threads).

    python benchmarks/generation_speed.py --data-dir ../shared/datasets              # ~30 min on 2 cores
    python benchmarks/generation_speed.py --data-dir ../shared/datasets --problems 40 --small 8 --arms mathtune

llama-cpp-python is found or installed (`pip install llama-cpp-python`, built from source: the
build's time is printed; `--no-install` skips the llama.cpp arms instead).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from mathtune.config import build_config, load_config
from mathtune.evaluate.backend import build_backend
from mathtune.evaluate.decoding import decode_batch
from mathtune.evaluate.extraction import extract_numeric
from mathtune.evaluate.generation import Generation, GenerationRequest, HFBackend, cut_at_stop
from mathtune.evaluate.scoring import build_prompts, eval_problems, stop_strings
from mathtune.prompts import get_strategy, render_prompts

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "quickstart_full.yaml"


@dataclass
class Result:
    arm: str
    problems: int
    batch: str
    tokens: int
    seconds: float
    answers: list[float | None]
    texts: list[str]

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)


def matmul_peak_gflops(dtype: torch.dtype, seconds: float = 3.0) -> float:
    """The machine's dense matmul rate (GFLOP/s) at this dtype on all torch threads: the MFU's peak."""
    a, b = torch.randn(1024, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    for _ in range(3):
        a @ b
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        count += 1
    return 2 * 1024 * 2048 * 2048 * count / (time.perf_counter() - started) / 1e9


def matmul_params(model: torch.nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def timed(arm: str, batch: str, requests: list[GenerationRequest], run: Callable[[], list[Generation]]) -> Result:
    started = time.perf_counter()
    generations = run()
    seconds = time.perf_counter() - started
    return Result(arm, len(requests), batch, sum(g.new_tokens for g in generations), seconds,
                  [extract_numeric(g.text) for g in generations], [g.text for g in generations])


def mathtune_arm(backend: HFBackend, requests: list[GenerationRequest], batch: int, chunked: bool = False
                 ) -> list[Generation]:
    """The decoding loop at `batch` rows: one continuous batch, or (chunked) the previous loop's
    fixed chunks of `batch` prompts, longest first, each decoded until its last row finished."""
    backend.batch_size = batch
    if not chunked:
        return backend.generate(requests)
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i].prompt))
    results: dict[int, Generation] = {}
    for start in range(0, len(order), batch):
        chunk = order[start : start + batch]
        rows = [requests[i] for i in chunk]
        decoded = decode_batch(backend.model, backend.tokenizer, [r.prompt for r in rows], [r.stop for r in rows],
                               [r.max_new_tokens for r in rows], calculator=[r.calculator for r in rows])
        for index, result, request in zip(chunk, decoded, rows, strict=True):
            results[index] = backend._causal_generation(result, request)
    return [results[i] for i in range(len(requests))]


def generate_arm(backend: HFBackend, requests: list[GenerationRequest], batch: int) -> list[Generation]:
    """transformers' `generate`: left padding, its own stopping on the stop strings, greedy."""
    tokenizer, model = backend.tokenizer, backend.model
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i].prompt))
    results: dict[int, Generation] = {}
    for start in range(0, len(order), batch):
        chunk = order[start : start + batch]
        encoded = tokenizer([requests[i].prompt for i in chunk], return_tensors="pt", padding=True,
                            padding_side="left")
        with torch.inference_mode():
            output = model.generate(**encoded, do_sample=False, max_new_tokens=requests[0].max_new_tokens,
                                    stop_strings=list(requests[0].stop), tokenizer=tokenizer,
                                    pad_token_id=tokenizer.pad_token_id, temperature=None, top_p=None, top_k=None)
        for row, index in zip(output[:, encoded["input_ids"].shape[1]:], chunk, strict=True):
            ids = [t for t in row.tolist() if t != tokenizer.pad_token_id]
            text, stopped = cut_at_stop(tokenizer.decode(ids, skip_special_tokens=True), requests[index].stop)
            results[index] = Generation(text, not stopped, len(ids))
    return [results[i] for i in range(len(requests))]


def find_llama_cpp(install: bool) -> str:
    """'found', 'built in N s', or why the llama.cpp arms are skipped."""
    try:
        import llama_cpp  # noqa: F401

        return "found"
    except ImportError:
        if not install:
            return "skipped (not installed; --no-install)"
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pip", "install", "llama-cpp-python"], capture_output=True)
    if done.returncode:
        return f"skipped (pip install failed: {done.stderr.decode()[-300:]})"
    return f"built in {time.perf_counter() - started:.0f} s"


def agreement(result: Result, reference: Result) -> str:
    n = min(len(result.answers), len(reference.answers))
    same = sum(a == b for a, b in zip(result.answers[:n], reference.answers[:n], strict=True))
    text = sum(a == b for a, b in zip(result.texts[:n], reference.texts[:n], strict=True))
    return f"{same}/{n} answers, {text}/{n} texts"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("MATHTUNE_DATA_DIR"))
    parser.add_argument("--config", type=Path, default=CONFIG, help="the evaluation whose mix is measured")
    parser.add_argument("--problems", type=int, default=200, help="the mix: the config's seeded test problems")
    parser.add_argument("--small", type=int, default=20, help="problems for the fixed-batch rows")
    parser.add_argument("--dtype", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--arms", default="mathtune,chunked,generate,llama,int8",
                        help="comma-separated: mathtune, chunked, generate, llama, int8")
    parser.add_argument("--generate-batches", default="16,64")
    parser.add_argument("--llama-quants", default="q8_0,f16,q4_1")
    parser.add_argument("--llama-parallel", type=int, default=16, help="0: no multi-sequence llama.cpp row")
    parser.add_argument("--batches", default="1,16,64", help="mathtune's fixed batches on the --small problems")
    parser.add_argument("--no-mix", action="store_true", help="only the --small rows (no 200-problem mix rows)")
    parser.add_argument("--no-install", action="store_true")
    parser.add_argument("--output", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    arms = set(args.arms.split(","))
    threads = torch.get_num_threads()
    cfg = load_config(args.config)
    cfg = build_config({**cfg.model_dump(mode="json"), "eval": {**cfg.eval.model_dump(mode="json"), "dtype": args.dtype,
                        "num_problems": args.problems}, "data": {**cfg.data.model_dump(mode="json"),
                        "data_dir": args.data_dir}})
    backend, meta = build_backend(cfg)
    strategy = get_strategy(cfg.prompt.strategy)
    problems = eval_problems(cfg)
    prompts = render_prompts(backend.tokenizer, build_prompts(cfg, problems)[0], cfg.prompt.chat_template)
    stop = stop_strings(cfg, strategy)
    mix = [GenerationRequest(p, stop, cfg.eval.max_new_tokens, cfg.eval.calculator) for p in prompts]
    plain = [GenerationRequest(p, stop, cfg.eval.max_new_tokens, False) for p in prompts]
    small = mix[: args.small]
    peak = matmul_peak_gflops(getattr(torch, {"bf16": "bfloat16", "fp32": "float32"}[args.dtype]))
    flops_per_token = 2 * matmul_params(backend.model)
    print(f"# {meta['model']} {meta['compute_dtype']}, {threads} threads, matmul peak {peak:.0f} GFLOP/s, "
          f"{len(mix)} problems (cap {cfg.eval.max_new_tokens}, calculator {cfg.eval.calculator})", flush=True)
    mathtune_arm(backend, small[:2], 2)  # warm-up: first-call costs out of the timed rows
    results: list[Result] = []

    def record(result: Result) -> Result:
        results.append(result)
        print(f"  {result.arm} [{result.batch}] {result.problems} problems: {result.tokens} tokens in "
              f"{result.seconds:.1f} s = {result.tokens_per_second:.1f} tokens/s", flush=True)
        return result

    reference_small = reference_mix = None
    if "mathtune" in arms:
        for batch in (int(b) for b in args.batches.split(",")):
            row = record(timed("mathtune", f"batch {batch}", small, lambda b=batch: mathtune_arm(backend, small, b)))
            reference_small = reference_small or row
        if not args.no_mix:
            reference_mix = record(timed("mathtune continuous", "64 rows", mix, lambda: mathtune_arm(backend, mix, 64)))
    if "chunked" in arms:
        record(timed("mathtune chunked (before)", "chunks of 64", mix, lambda: mathtune_arm(backend, mix, 64, True)))
    reference_plain = None
    if "generate" in arms:
        reference_plain = record(timed("mathtune continuous, no calculator", "64 rows", plain,
                                       lambda: mathtune_arm(backend, plain, 64)))
        for batch in (int(b) for b in args.generate_batches.split(",")):
            record(timed("transformers generate, no calculator", f"batch {batch}", plain,
                         lambda b=batch: generate_arm(backend, plain, b)))
    llama_status = "not asked"
    if "llama" in arms:
        llama_status = find_llama_cpp(not args.no_install)
        print(f"# llama-cpp-python: {llama_status}", flush=True)
        if not llama_status.startswith("skipped"):
            from mathtune.evaluate.llama_cpp_backend import LlamaCppBackend, quantize_gguf
            from mathtune.models.loading import embedded_gguf

            source = embedded_gguf(cfg.model.name)
            folder = Path(tempfile.mkdtemp(prefix="mathtune-gguf-"))
            for quant in args.llama_quants.split(","):
                path = source if quant == source.stem.split(".")[-1].lower() else quantize_gguf(
                    source, folder / f"{source.stem}.{quant}.gguf", quant)
                one = LlamaCppBackend(path, threads=threads, context=512)
                record(timed(f"llama.cpp {quant.upper()}", "1 sequence", small, lambda o=one: o.generate(small)))
                one.close()
                if quant == args.llama_quants.split(",")[0] and args.llama_parallel and not args.no_mix:
                    many = LlamaCppBackend(path, threads=threads, context=512, parallel=args.llama_parallel)
                    record(timed(f"llama.cpp {quant.upper()}", f"{args.llama_parallel} sequences", mix,
                                 lambda m=many: m.generate(mix)))
                    many.close()
    if "int8" in arms:  # last: it wraps the loaded model's Linears
        from mathtune.speedups.int8_decode import apply_int8_decode

        apply_int8_decode(backend.model)
        record(timed("mathtune, eval.int8_decode", "batch 1", small, lambda: mathtune_arm(backend, small, 1)))
    print()
    print("| arm | rows | problems | tokens | s | tokens/s | MFU | agreement with mathtune |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for r in results:
        ref = reference_plain if "no calculator" in r.arm else reference_small if r.problems == len(small) \
            else reference_mix
        agree = agreement(r, ref) if ref is not None and ref is not r else "-"
        mfu = r.tokens_per_second * flops_per_token / (peak * 1e9)
        print(f"| {r.arm} | {r.batch} | {r.problems} | {r.tokens} | {r.seconds:.1f} | {r.tokens_per_second:.1f} | "
              f"{mfu:.1%} | {agree} |")
    if args.output:
        args.output.write_text(json.dumps({
            "model": meta["model"], "dtype": meta["compute_dtype"], "threads": threads, "peak_gflops": peak,
            "matmul_flops_per_token": flops_per_token, "llama_cpp": llama_status,
            "results": [{**r.__dict__, "tokens_per_second": r.tokens_per_second} for r in results]}, indent=1))


if __name__ == "__main__":
    main()
