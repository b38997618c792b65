"""One sequence at a time (the app, every batch's tail): which lever makes a decoding step cheaper on
CPU? Greedy decoding of the embedded model, side by side in one run, on the same prompt and count:

- `generate`, eager, dynamic KV cache (transformers' default);
- `generate` with a static KV cache and the forward compiled by torch.compile (inductor's CPU
  codegen; transformers' own compile path, which it enables only on CUDA/XPU unless told);
- mathtune's decoding loop at batch 1 (evaluate/decoding.py; what `eval.batch_size=1` runs);
- the same with `eval.int8_decode` (speedups/int8_decode.py: weight-only int8 matmuls for calls of
  at most 4 rows), and whether its text is bf16's.

Prints the compile time, tokens/s of each arm (best of `--repeats`), their ratio to eager, and
whether the compiled and int8 arms wrote the same tokens as their references. A static cache has
one shape per (rows, cache length): each new shape compiles again, which is why the
continuous-batching loop (rows and lengths change every few steps) cannot use it as is.

    python benchmarks/one_sequence_decode.py --tokens 64
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from mathtune.config import build_config
from mathtune.evaluate.backend import build_backend
from mathtune.evaluate.generation import GenerationRequest
from mathtune.speedups.int8_decode import apply_int8_decode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per sequence (forced: min_new_tokens)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--data-dir", default=os.environ.get("MATHTUNE_DATA_DIR", "../shared/datasets"))
    args = parser.parse_args()
    from transformers import CompileConfig

    backend, _ = build_backend(build_config({"model": {"name": "smollm2-135m"}, "eval": {"dtype": "bf16"}}))
    model, tokenizer = backend.model, backend.tokenizer
    with open(f"{args.data_dir}/gsm8k/test.jsonl", encoding="utf-8") as f:
        question = json.loads(f.readline())["question"]
    prompt = f"Q: {question}\nA:"
    encoded = tokenizer(prompt, return_tensors="pt")
    compiled = CompileConfig(dynamic=False)
    compiled._compile_all_devices = True  # transformers compiles the static-cache forward on CUDA/XPU only

    def generate(**kwargs: object) -> tuple[torch.Tensor, float]:
        started = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**encoded, do_sample=False, max_new_tokens=args.tokens,
                                 min_new_tokens=args.tokens, **kwargs)
        return out, time.perf_counter() - started

    def best(**kwargs: object) -> tuple[torch.Tensor, float]:
        runs = [generate(**kwargs) for _ in range(args.repeats)]
        return runs[0][0], min(seconds for _, seconds in runs)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {model.dtype}, "
          f"prompt {encoded['input_ids'].shape[1]} tokens, {args.tokens} new tokens")
    generate()  # warm-up
    eager, eager_s = best()
    _, compile_s = generate(cache_implementation="static", compile_config=compiled)
    static, static_s = best(cache_implementation="static", compile_config=compiled)
    backend.batch_size = 1
    request = GenerationRequest(prompt, (), args.tokens)  # our loop stops at EOS: tokens/s counts what it wrote

    def ours() -> tuple[object, float]:
        runs = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            runs.append((backend.generate([request])[0], time.perf_counter() - started))
        return runs[0][0], min(seconds for _, seconds in runs)

    bf16, bf16_s = ours()
    apply_int8_decode(model)
    int8, int8_s = ours()
    rows = [("generate, eager, dynamic cache", eager_s, args.tokens),
            ("generate, static cache + torch.compile", static_s, args.tokens),
            ("mathtune loop, batch 1", bf16_s, bf16.new_tokens),
            ("mathtune loop, batch 1, eval.int8_decode", int8_s, int8.new_tokens)]
    print(f"first call of the compiled arm (compiles): {compile_s:.1f} s")
    for name, seconds, tokens in rows:
        print(f"{name:42s} {tokens / seconds:7.1f} tokens/s  {eager_s / args.tokens * tokens / seconds:5.2f}x eager")
    print("compiled arm writes the eager arm's tokens:", bool(torch.equal(eager, static)))
    same = next((i for i, (a, b) in enumerate(zip(bf16.text, int8.text, strict=False)) if a != b),
                min(len(bf16.text), len(int8.text)))
    print(f"int8 arm writes the bf16 loop's text: {bf16.text == int8.text} (first {same} characters equal)")


if __name__ == "__main__":
    main()
