"""The GPU paths no CPU test can see, checked in one run on one CUDA GPU with no internet (< 8 minutes).

    bash scripts/gpu_check.sh            # prints one PASS/FAIL/SKIP line per check, exit 1 on any FAIL

Checks (tiny random Phi and Llama models built from config, as the tests build them, and the embedded
SmolLM2-135M-Instruct when its package is installed):
  lora-{phi,llama}-{fp16,bf16}  20 LoRA steps under accelerate's mixed precision: the loss falls, no
                                inf/NaN, fp16 runs hold a GradScaler (bf16 skipped where unsupported)
  qlora-4bit, qlora-8bit        bitsandbytes-quantized tiny Llama + LoRA, 10 steps, finite and falling
  fsdp-1gpu                     the same LoRA run under `accelerate launch --use_fsdp` (FSDP2), adapter saved
  deepspeed-zero2-1gpu          the same under `--use_deepspeed --zero_stage 2` (SKIP without deepspeed)
  grpo-tiny-2-steps             method: grpo (TRL's GRPOTrainer) 2 steps, precision auto: the adapter changes
  full-llama-{fp16,bf16}        20 full fine-tuning steps (make run's method): loss falls, no inf/NaN,
                                then the saved model evaluates on the GPU with calculator decoding
  eval-cuda-vs-cpu              greedy answers of a trained tiny model on 8 problems: CUDA fp32 == CPU fp32
  eval-full-calculator-cuda-vs-cpu  the same for the full fine-tuned model with calculator decoding on
  embedded-20-steps             SmolLM2-135M-Instruct, precision auto, 20 LoRA steps + 8-problem eval
  eval-processes                `accelerate launch -m mathtune eval` with a process per GPU (2 on one GPU):
                                the merged predictions.jsonl equals one process's byte for byte
  grpo-processes                method: grpo under `accelerate launch`, a process per GPU (SKIP with one GPU)
Record the output in docs/gpu.md. `GPU_CHECK_DEVICE=cpu` runs the same checks on the CPU (launched
engines skipped) to try the script itself on a machine without a GPU. `GPU_CHECK_ONLY=full,eval-full`
runs only the checks whose names start with one of those prefixes.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tests' tiny-model and synthetic-data builders

RESULTS: list[tuple[str, str, str]] = []
DEVICE = os.environ.get("GPU_CHECK_DEVICE", "cuda")
ONLY = [prefix for prefix in os.environ.get("GPU_CHECK_ONLY", "").split(",") if prefix]


def bf16_supported() -> bool:
    return DEVICE == "cpu" or torch.cuda.is_bf16_supported()


def check(name: str, run: Callable[[], str]) -> None:
    if ONLY and not any(name.startswith(prefix) for prefix in ONLY):
        return
    started = time.perf_counter()
    try:
        detail = run()
        status = "SKIP" if detail.startswith("skip:") else "PASS"
    except Exception as exc:  # one failed check must not stop the others
        status, detail = "FAIL", f"{type(exc).__name__}: {exc}"
        traceback.print_exc(file=sys.stderr)
    line = f"{status} {name} ({time.perf_counter() - started:.0f}s): {detail}"
    RESULTS.append((status, name, detail))
    print(line, flush=True)


def tree(model: Path, data: Path, out: Path, method: dict, precision: str, steps: int = 20) -> dict:
    return {"model": {"name": str(model), "device": DEVICE}, "data": {"data_dir": str(data), "train_size": 40},
            "method": method, "output_dir": str(out),
            "train": {"max_steps": steps, "batch_size": 4, "lr": 3e-3, "precision": precision, "log_every": 1,
                      "save_every": 10},
            "eval": {"num_problems": 8, "batch_size": 8, "max_new_tokens": 48, "perplexity": False}}


def losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "train_log.jsonl").read_text().splitlines()]


def falling_and_finite(values: list[float]) -> str:
    if not values or not all(math.isfinite(v) for v in values):
        raise AssertionError(f"non-finite loss: {values}")
    first, last = sum(values[:3]) / 3, sum(values[-3:]) / 3
    if not last < first:
        raise AssertionError(f"loss did not fall: first {first:.4f} last {last:.4f}")
    return f"loss {first:.3f} -> {last:.3f}"


def lora_run(model: Path, data: Path, work: Path, precision: str, method: dict | None = None,
             steps: int = 20) -> str:
    from mathtune.config import build_config
    from mathtune.recipes.train import train

    if precision == "bf16" and not bf16_supported():
        return "skip: this GPU has no bf16"
    out = Path(tempfile.mkdtemp(dir=work))
    card = train(build_config(tree(model, data, out, method or {"name": "lora"}, precision, steps)), out,
                 show_progress=False).card
    if precision == "fp16" and not card["loss_scaler"]:
        raise AssertionError("fp16 run without a GradScaler")
    peak = card["peak_cuda_mb"]
    return f"{falling_and_finite(losses(out))}, mixed_precision {card['mixed_precision']}, peak {peak} MB"


def launched(kind: list[str], model: Path, data: Path, work: Path) -> str:
    import yaml

    out = work / kind[0].strip("-")
    config = work / f"{out.name}.yaml"
    config.write_text(yaml.safe_dump(tree(model, data, out, {"name": "lora"}, "bf16" if bf16_supported() else "fp16")))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "accelerate.commands.launch", *kind, "--num_processes", "1",
               "--main_process_port", str(port), "-m", "mathtune", "train", "-c", str(config)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240)
    if done.returncode != 0:
        raise AssertionError(done.stderr[-1500:])
    card = json.loads((out / "train_card.json").read_text())
    if not any((out / "adapter").glob("adapter_model.*")):
        raise AssertionError("no adapter saved")
    return f"{falling_and_finite(losses(out))}, engine {card['engine']}"


def grpo_steps(model: Path, data: Path, work: Path) -> str:
    import importlib.util

    from safetensors.torch import load_file

    from mathtune.config import build_config
    from mathtune.recipes.train import train

    if importlib.util.find_spec("trl") is None:
        return "skip: trl not installed"
    import mathtune.recipes.rl as rl

    def distinct_characters(prompts: list, completions: list[str], **_: object) -> list[float]:
        # a random tiny model never answers right, so its real rewards are all 0 and so is the update
        return [len(set(text)) / 10 for text in completions]

    rl.build_rewards = lambda method, strategy: ([distinct_characters], [1.0])
    out = work / "grpo"
    tree_ = {"model": {"name": str(model), "device": DEVICE}, "data": {"data_dir": str(data), "train_size": 8},
             "method": {"name": "grpo", "num_generations": 4, "max_completion_length": 16, "temperature": 1.0},
             "train": {"max_steps": 2, "batch_size": 2, "lr": 5e-2, "log_every": 1, "save_every": 2,
                       "precision": "auto"}, "output_dir": str(out)}
    card = train(build_config(tree_), out, show_progress=False).card
    if card["steps"] != 2 or len(card["reward_curve"]) != 2:
        raise AssertionError(f"steps {card['steps']}, reward curve {card['reward_curve']}")
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    if max((t.abs().max().item() for k, t in adapter.items() if "lora_B" in k), default=0.0) == 0:
        raise AssertionError("the adapter did not change (LoRA B is still 0)")
    return (f"reward {card['reward_curve']}, {card['compute_dtype']} on {card['device']}, "
            f"generation {card['generation_seconds']:.1f}s of {card['wall_seconds']:.1f}s")


def accelerate_launch(processes: int, *argv: str) -> list[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(port), *argv]


def launch_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", **({"CUDA_VISIBLE_DEVICES": ""} if DEVICE == "cpu" else {})}


def eval_processes(model: Path, data: Path, work: Path) -> str:
    """`accelerate launch -m mathtune eval` on every GPU (2 processes on one GPU): rank 0's merged
    predictions.jsonl equals one process's byte for byte."""
    processes = max(2, torch.cuda.device_count()) if DEVICE == "cuda" else 2
    args = ["eval", "--base", "--model", str(model), "--data-dir", str(data), "--eval-size", "16",
            "-s", f"model.device={DEVICE}", "-s", "eval.dtype=fp32", "-s", "eval.batch_size=1",
            "-s", "eval.max_new_tokens=48"]
    walls = []
    for count, command in ((1, [sys.executable, "-m", "mathtune"]), (processes, accelerate_launch(processes, "-m",
                                                                                                  "mathtune"))):
        started = time.perf_counter()
        done = subprocess.run([*command, *args, "-o", str(work / f"eval-{count}p")], capture_output=True, text=True,
                              timeout=300, env=launch_env())
        walls.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise AssertionError(done.stderr[-1500:])
    single, merged = ((work / f"eval-{count}p" / "predictions.jsonl").read_bytes() for count in (1, processes))
    metrics = json.loads((work / f"eval-{processes}p" / "metrics.json").read_text())
    if merged != single or metrics["reproducibility"]["processes"] != processes:
        raise AssertionError(f"{processes} processes' predictions differ from one process's")
    return (f"{processes} processes on {torch.cuda.device_count() if DEVICE == 'cuda' else 0} GPU(s): "
            f"{single.count(bytes([10]))} predictions identical to 1 process; wall {walls[0]:.0f}s vs {walls[1]:.0f}s")


def grpo_processes(model: Path, data: Path, work: Path) -> str:
    """method: grpo under `accelerate launch` with a process per GPU (TRL's multi-process generation)."""
    processes = torch.cuda.device_count() if DEVICE == "cuda" else 2
    if processes < 2:
        return "skip: training takes a GPU per process; one GPU here"
    out = work / "grpo-processes"
    done = subprocess.run(accelerate_launch(processes, "-m", "mathtune", "train", "--method", "grpo", "--model",
                                            str(model), "--data-dir", str(data), "-o", str(out), "--train-size", "8",
                                            "--max-steps", "2", "-s", "method.num_generations=2",
                                            "-s", "method.max_completion_length=10", "-s", "train.batch_size=2",
                                            "-s", f"model.device={DEVICE}"),
                          capture_output=True, text=True, timeout=300, env=launch_env())
    if done.returncode != 0:
        raise AssertionError(done.stderr[-1500:])
    card = json.loads((out / "train_card.json").read_text())
    if card["steps"] != 2 or card["processes"] != processes:
        raise AssertionError(f"steps {card['steps']}, processes {card['processes']}")
    return f"{processes} processes, 2 steps, reward {card['reward_curve']}"


def eval_agreement(model: Path, data: Path, work: Path) -> str:
    from mathtune.config import build_config
    from mathtune.recipes.evaluate import evaluate_model
    from mathtune.recipes.train import train

    run = work / "agree"
    cfg = build_config(tree(model, data, run, {"name": "lora"}, "fp32"))
    train(cfg, run, show_progress=False)
    answers: dict[int, list[str]] = {}
    for device in ("cpu", DEVICE):
        cfg_device = build_config({**tree(model, data, run, {"name": "lora"}, "fp32"),
                                   "model": {"name": str(model), "device": device}, "eval": {
                                       "num_problems": 8, "batch_size": 8, "max_new_tokens": 48, "perplexity": False,
                                       "dtype": "fp32"}})
        out = work / f"agree-eval-{device}-{len(answers)}"
        evaluate_model(cfg_device, out, "tuned", adapter_dir=run / "adapter", show_progress=False)
        rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
        answers[len(answers)] = [row["output"] for row in rows]
    same = sum(a == b for a, b in zip(answers[0], answers[1], strict=True))
    if same < len(answers[0]):
        raise AssertionError(f"{same}/{len(answers[0])} outputs identical")
    return f"{same}/{len(answers[0])} greedy outputs identical"


FULL_RUNS: dict[str, Path] = {}


def full_run(model: Path, data: Path, work: Path, precision: str) -> str:
    """make run's method on the GPU: full fine-tuning (fp32 master weights under autocast), then the saved
    model, which is the whole model rather than an adapter, evaluated there with calculator decoding."""
    from mathtune.config import build_config
    from mathtune.recipes.evaluate import evaluate_model
    from mathtune.recipes.train import train

    if precision == "bf16" and not bf16_supported():
        return "skip: this GPU has no bf16"
    out = work / f"full-{precision}"
    settings = tree(model, data, out, {"name": "full"}, precision)
    settings["train"]["lr"] = 1e-3
    settings["eval"]["calculator"] = True
    cfg = build_config(settings)
    card = train(cfg, out, show_progress=False).card
    if precision == "fp16" and not card["loss_scaler"]:
        raise AssertionError("fp16 run without a GradScaler")
    trend = falling_and_finite(losses(out))
    metrics = evaluate_model(cfg, out / "eval" / "tuned", "tuned", adapter_dir=out / "adapter", show_progress=False)
    FULL_RUNS[precision] = out
    return (f"{trend}, mixed_precision {card['mixed_precision']}, peak {card['peak_cuda_mb']} MB, "
            f"eval n={metrics['n']} with the calculator")


def full_calculator_agreement(model: Path, data: Path, work: Path) -> str:
    """Greedy calculator decoding of the full fine-tuned model: CUDA fp32 == CPU fp32, output for output."""
    from mathtune.config import build_config
    from mathtune.recipes.evaluate import evaluate_model

    run = FULL_RUNS.get("bf16") or FULL_RUNS.get("fp16")
    if run is None:
        return "skip: no full fine-tuning run finished"
    outputs = []
    for device in ("cpu", DEVICE):
        settings = tree(model, data, run, {"name": "full"}, "fp32")
        settings["model"]["device"] = device
        settings["eval"].update(dtype="fp32", calculator=True)
        out = work / f"full-agree-{device}-{len(outputs)}"
        evaluate_model(build_config(settings), out, "tuned", adapter_dir=run / "adapter", show_progress=False)
        rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
        outputs.append([row["output"] for row in rows])
    same = sum(a == b for a, b in zip(*outputs, strict=True))
    if same < len(outputs[0]):
        raise AssertionError(f"{same}/{len(outputs[0])} outputs identical")
    # A random tiny model seldom opens a `<<` annotation, so this says how often the calculator could act.
    annotated = sum("<<" in output for output in outputs[1])
    return f"{same}/{len(outputs[0])} greedy outputs identical, {annotated} with a `<<` annotation"


def embedded(work: Path) -> str:
    from mathtune.config import build_config
    from mathtune.recipes.evaluate import evaluate_model
    from mathtune.recipes.train import train

    try:
        from mathtune.models.loading import embedded_gguf

        embedded_gguf("smollm2-135m")
    except Exception as exc:  # noqa: BLE001 - the package may be absent on a bare GPU machine
        return f"skip: embedded model not installed ({exc})"
    data_dir = os.environ.get("MATHTUNE_DATA_DIR") or str(ROOT.parent / "shared" / "datasets")
    if not (Path(data_dir) / "gsm8k").exists():
        from helpers import write_gsm8k_dir

        data_dir = str(write_gsm8k_dir(work / "embedded-data"))
    run = work / "embedded"
    tree_ = tree(Path("smollm2-135m"), Path(data_dir), run, {"name": "lora"}, "auto")
    tree_["model"]["name"] = "smollm2-135m"
    card = train(build_config(tree_), run, show_progress=False).card
    metrics = evaluate_model(build_config(tree_), run / "eval" / "tuned", "tuned", adapter_dir=run / "adapter",
                             show_progress=False)
    values = losses(run)
    if not all(math.isfinite(v) for v in values):
        raise AssertionError(f"non-finite loss {values}")
    return (f"loss {values[0]:.3f} -> {values[-1]:.3f}, {card['mixed_precision']}, "
            f"{card['tokens_per_second']} tok/s, eval n={metrics.get('n')}")


def main() -> int:
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("FAIL cuda: torch.cuda.is_available() is False")
        return 1
    name = torch.cuda.get_device_name(0) if DEVICE == "cuda" else "CPU (GPU_CHECK_DEVICE=cpu)"
    print(f"device: {name}, torch {torch.__version__}, bf16 {bf16_supported()}", flush=True)
    from helpers import make_tiny_model, write_gsm8k_dir

    work = Path(tempfile.mkdtemp(prefix="mathtune-gpu-check-"))
    data = write_gsm8k_dir(work / "data")
    texts = [line for f in sorted((data / "gsm8k").glob("*.jsonl")) for line in f.read_text().splitlines()]
    models = {arch: make_tiny_model(arch, work / arch, texts) for arch in ("phi", "llama")}
    for arch in ("phi", "llama"):
        for precision in ("fp16", "bf16"):
            check(f"lora-{arch}-{precision}", lambda a=arch, p=precision: lora_run(models[a], data, work, p))
    for bits in (4, 8):
        def qlora(b: int = bits) -> str:
            import importlib.util

            if importlib.util.find_spec("bitsandbytes") is None or DEVICE == "cpu":
                return "skip: bitsandbytes not installed, or CPU (tests/methods/test_qlora.py covers CPU)"
            return lora_run(models["llama"], data, work, "auto", {"name": "qlora", "bits": b}, steps=10)
        check(f"qlora-{bits}bit", qlora)
    def fsdp() -> str:
        if DEVICE == "cpu":
            return "skip: accelerate runs FSDP only on accelerator devices"
        return launched(["--use_fsdp", "--fsdp_version", "2"], models["llama"], data, work)
    check("fsdp-1gpu", fsdp)

    def deepspeed() -> str:
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None or DEVICE == "cpu":
            return "skip: deepspeed not installed, or no accelerator device"
        return launched(["--use_deepspeed", "--zero_stage", "2"], models["llama"], data, work)
    check("deepspeed-zero2-1gpu", deepspeed)
    check("grpo-tiny-2-steps", lambda: grpo_steps(models["llama"], data, work))
    for precision in ("fp16", "bf16"):
        check(f"full-llama-{precision}", lambda p=precision: full_run(models["llama"], data, work, p))
    check("eval-cuda-vs-cpu", lambda: eval_agreement(models["llama"], data, work))
    check("eval-full-calculator-cuda-vs-cpu", lambda: full_calculator_agreement(models["llama"], data, work))
    check("embedded-20-steps", lambda: embedded(work))
    check("eval-processes", lambda: eval_processes(models["llama"], data, work))
    check("grpo-processes", lambda: grpo_processes(models["llama"], data, work))
    failed = [name for status, name, _ in RESULTS if status == "FAIL"]
    print(f"{len(RESULTS) - len(failed)}/{len(RESULTS)} checks passed or skipped; failed: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
