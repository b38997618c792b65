"""`mathtune eval` on 2 CPU cores two ways: 2 processes x 1 thread (`accelerate launch --num_processes 2`,
each rank its share of the problems) vs 1 process x 2 threads, on the same problems, printed side by side.

Each arm is a real command line in a fresh process, so its wall time counts what a user waits for:
start-up, model loading (once per process: twice for 2 processes) and the evaluation. The evaluation's
own loop time (metrics.json's wall_seconds, rank 0 through the merge) is printed beside it, with
tokens/s, the CPU time of the whole process tree and rank 0's peak resident memory (each process
holds its own copy of the model). Both
arms run `--repeats` times, alternating (A B A B ...), and the medians are printed; the predictions of
the two arms are compared row by row (identical unless batching moves a near-tie's last bits).

Run it on an idle machine (other load makes the arms' timings meaningless):

    OMP_NUM_THREADS= nice -n 0 python benchmarks/eval_processes.py --data-dir ../shared/datasets --problems 64

`--problems 4 --max-new-tokens 32 --repeats 1` checks the script itself in about a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def arm_command(processes: int) -> list[str]:
    if processes == 1:
        return [sys.executable, "-m", "mathtune"]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_port()), "-m", "mathtune"]


def run_arm(processes: int, threads: int, eval_args: list[str], out: Path) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "CUDA_VISIBLE_DEVICES": "", "TOKENIZERS_PARALLELISM": "false"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([*arm_command(processes), *eval_args, "-o", str(out)], env=env, capture_output=True,
                          text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"{processes} process(es) x {threads} thread(s) failed:\n{done.stderr[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    return {"wall": wall, "eval_wall": metrics["wall_seconds"],
            "tokens_per_second": metrics["generated_tokens_per_second"],
            "cpu": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "peak_rss_mb": metrics["peak_rss_mb"], "accuracy": metrics["scores"]["numeric-match"]["exact_match"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data-dir", default=os.environ.get("MATHTUNE_DATA_DIR"))
    parser.add_argument("--problems", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16, help="eval.batch_size of every process")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="eval-processes-"))
    eval_args = ["eval", "--base", "--model", args.model, "--eval-size", str(args.problems),
                 "-s", f"eval.max_new_tokens={args.max_new_tokens}", "-s", f"eval.batch_size={args.batch_size}",
                 "--overwrite", *(["--data-dir", args.data_dir] if args.data_dir else [])]
    arms = {"1 process x 2 threads": (1, 2), "2 processes x 1 thread": (2, 1)}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in arms}
    for repeat in range(args.repeats):
        for name, (processes, threads) in arms.items():
            out = work / f"{processes}p{threads}t"
            results[name].append(run_arm(processes, threads, eval_args, out))
            print(f"repeat {repeat + 1}: {name}: {results[name][-1]['wall']:.1f} s", file=sys.stderr, flush=True)
    rows = [("wall, command line (s)", "wall"), ("eval loop (s, metrics.json)", "eval_wall"),
            ("generated tokens/s", "tokens_per_second"), ("CPU time, all processes (s)", "cpu"),
            ("peak RSS of rank 0 (MB)", "peak_rss_mb"), ("numeric-match", "accuracy")]
    names = list(arms)
    print(f"mathtune eval --base --model {args.model}: {args.problems} problems, max_new_tokens "
          f"{args.max_new_tokens}, batch_size {args.batch_size}, median of {args.repeats}, {os.cpu_count()} CPUs")
    print(f"{'':32}" + "".join(f"{name:>26}" for name in names))
    for label, key in rows:
        print(f"{label:32}" + "".join(f"{statistics.median(r[key] for r in results[name]):>26.2f}" for name in names))
    one, two = ((work / f"{p}p{t}t" / "predictions.jsonl").read_text().splitlines() for p, t in arms.values())
    same = sum(json.loads(a)["output"] == json.loads(b)["output"] for a, b in zip(one, two, strict=True))
    print(f"identical outputs: {same}/{len(one)}")


if __name__ == "__main__":
    main()
