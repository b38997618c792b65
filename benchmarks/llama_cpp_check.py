"""llama.cpp check: a run's exported GGUF, decoded greedily by llama.cpp, against mathtune's own evaluation.

    make run && python benchmarks/llama_cpp_check.py runs/quickstart_full          # the README's 200 problems
    OMP_NUM_THREADS=1 python benchmarks/llama_cpp_check.py RUN_DIR --limit 10 --threads 1   # a quick look

1. Installs llama-cpp-python (LLAMA_CPP_PIN) when it is missing; pip builds it from source (llama.cpp's C++),
   which took 34 minutes on 2 shared cores (docs/export.md): the build time is recorded.
2. Exports RUN_DIR's tuned model with `mathtune export RUN_DIR --format gguf --quant f16` (kept; reused).
3. Reads RUN_DIR/eval/tuned/predictions.jsonl: mathtune's evaluation of the run (prompts, outputs, scores).
4. Decodes each prompt greedily with llama.cpp (batch 1), with the run's stop strings, token cap and, when the
   run used it, the calculator (after `<<48/2=` the tokens of `24>>` are fed, as evaluate/decoding.py does).
5. Decodes the same prompts with mathtune's backend at the run's batch size, timed on the same threads.
6. Prints and writes (EXPORT/llama_cpp_check.{json,md}): prompt tokenization agreement, identical outputs,
   same extracted answer, each one's accuracy, and both tokens/s.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

LLAMA_CPP_PIN = "llama-cpp-python==0.3.36"


def ensure_llama_cpp() -> float | None:
    """Install llama-cpp-python when missing; the seconds the build took, or None when it was there."""
    if importlib.util.find_spec("llama_cpp") is not None:
        return None
    print(f"installing {LLAMA_CPP_PIN} (builds llama.cpp from source: 34 minutes on 2 shared cores)...", flush=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pip", "install", LLAMA_CPP_PIN], check=True)
    return time.perf_counter() - started


def export_gguf(run_dir: Path, quant: str) -> Path:
    out = run_dir / "export" / f"gguf-{quant}"
    if not (out / "run_card.json").is_file():
        subprocess.run([sys.executable, "-m", "mathtune.cli", "export", str(run_dir), "--format", "gguf",
                        "--quant", quant, "-o", str(out)], check=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, nargs="?", default=Path("runs/quickstart_full"))
    parser.add_argument("--limit", type=int, default=None, help="first N problems of the run's evaluation")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for both (default: torch's)")
    parser.add_argument("--quant", default="f16", choices=["f16", "q8_0"])
    parser.add_argument("--mathtune-batch-size", type=int, default=None,
                        help="rows mathtune decodes at once (default: the run's eval.batch_size; 1: as llama.cpp here)")
    args = parser.parse_args()
    build_seconds = ensure_llama_cpp()

    import torch

    from mathtune.config import load_config
    from mathtune.evaluate.backend import build_backend
    from mathtune.evaluate.extraction import score_answer
    from mathtune.evaluate.generation import GenerationRequest
    from mathtune.evaluate.llama_cpp_backend import LlamaCppBackend
    from mathtune.evaluate.scoring import stop_strings
    from mathtune.io import read_jsonl_tolerant
    from mathtune.prompts import get_strategy

    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    run_dir = args.run_dir
    rows = read_jsonl_tolerant(run_dir / "eval" / "tuned" / "predictions.jsonl")
    if not rows:
        sys.exit(f"llama_cpp_check: no {run_dir}/eval/tuned/predictions.jsonl; run `mathtune eval {run_dir}` first")
    rows = rows[: args.limit] if args.limit else rows
    cfg = load_config(run_dir / "config.yaml", None)
    strategy = get_strategy(cfg.prompt.strategy)
    stop, max_new, calculator = stop_strings(cfg, strategy), cfg.eval.max_new_tokens, cfg.eval.calculator
    export_dir = export_gguf(run_dir, args.quant)
    gguf_file = json.loads((export_dir / "run_card.json").read_text())["files"][0]

    # mathtune's own decoding of the same prompts, on the same threads (its batch size: the run's).
    backend, _ = build_backend(cfg, run_dir / "adapter")
    batch_size = args.mathtune_batch_size or cfg.eval.batch_size
    backend.batch_size = batch_size
    requests = [GenerationRequest(row["prompt"], stop, max_new, calculator) for row in rows]
    started = time.perf_counter()
    ours = [g for start in range(0, len(requests), batch_size)
            for g in backend.generate(requests[start : start + batch_size])]
    ours_seconds = time.perf_counter() - started
    # llama.cpp with mathtune's decoding rules (evaluate/llama_cpp_backend.py: the same stop strings, EOS,
    # cap and calculator as the PyTorch loop), one sequence at a time
    llama = LlamaCppBackend(export_dir / gguf_file, threads=threads, context=2048)
    results, llama_tokens, same_prompt_ids = [], 0, 0
    started = time.perf_counter()
    for row, request in zip(rows, requests, strict=True):
        [generation] = llama.generate([request])
        text, count = generation.text, generation.new_tokens
        llama_tokens += count
        same_prompt_ids += llama.tokenizer.prompt_ids(row["prompt"]) == backend.tokenizer(row["prompt"])["input_ids"]
        extracted, correct = score_answer(strategy.answer_texts([text])[0][0], row["reference"],
                                          row["reference_answer"])
        results.append({"id": row["id"], "llama_cpp_output": text, "llama_cpp_extracted": extracted,
                        "llama_cpp_correct": correct, "mathtune_output": row["output"],
                        "mathtune_extracted": row["extracted"], "mathtune_correct": row["correct"]})
    llama_seconds = time.perf_counter() - started

    n = len(rows)
    score = "flexible-extract"
    summary = {
        "run_dir": str(run_dir), "gguf": str(export_dir / gguf_file), "problems": n, "threads": threads,
        "calculator": calculator, "llama_cpp_build_seconds": build_seconds,
        "prompt_tokenization_same": same_prompt_ids,
        "identical_outputs": sum(r["llama_cpp_output"] == r["mathtune_output"] for r in results),
        "same_extracted_answer": sum(r["llama_cpp_extracted"][score] == r["mathtune_extracted"][score]
                                     for r in results),
        "same_correctness": sum(r["llama_cpp_correct"][score] == r["mathtune_correct"][score] for r in results),
        "accuracy": {name: {"mathtune": sum(r["mathtune_correct"][name] for r in results) / n,
                            "llama_cpp": sum(r["llama_cpp_correct"][name] for r in results) / n}
                     for name in ("strict-match", score)},
        "mathtune_rerun_identical_to_stored": sum(g.text == r["output"] for g, r in zip(ours, rows, strict=True)),
        "tokens_per_second": {
            "mathtune": round(sum(g.new_tokens for g in ours) / ours_seconds, 1),
            "mathtune_batch_size": batch_size,
            "llama_cpp": round(llama_tokens / llama_seconds, 1), "llama_cpp_batch_size": 1},
    }
    table = "\n".join([
        f"| llama.cpp check: {run_dir}, {n} problems, {threads} thread(s), GGUF {args.quant} | |", "| --- | --- |",
        f"| prompt token ids identical | {same_prompt_ids}/{n} |",
        f"| greedy outputs identical to mathtune's evaluation | {summary['identical_outputs']}/{n} |",
        f"| same extracted answer ({score}) | {summary['same_extracted_answer']}/{n} |",
        f"| same right/wrong ({score}) | {summary['same_correctness']}/{n} |",
        *(f"| {name}: mathtune / llama.cpp | {100 * a['mathtune']:.1f} % / {100 * a['llama_cpp']:.1f} % |"
          for name, a in summary["accuracy"].items()),
        f"| tokens/s: mathtune (batch {batch_size}) / llama.cpp (batch 1) | "
        f"{summary['tokens_per_second']['mathtune']} / {summary['tokens_per_second']['llama_cpp']} |",
        f"| mathtune's rerun identical to its stored predictions | "
        f"{summary['mathtune_rerun_identical_to_stored']}/{n} |",
    ])
    (export_dir / "llama_cpp_check.json").write_text(json.dumps({"summary": summary, "rows": results}, indent=1))
    (export_dir / "llama_cpp_check.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
