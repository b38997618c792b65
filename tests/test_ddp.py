"""Data-parallel training under `accelerate launch` (2 CPU processes, gloo) learns exactly what one
process learns from the same global batch: each rank takes its shard of every global batch, the
loss is normalised by the global token count and gradients are summed across ranks."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml
from safetensors.torch import load_file

from mathtune.config import build_config
from mathtune.recipes.train import train

PER_PROCESS_BATCH, PROCESSES, STEPS = 4, 2, 3
# fp32, dropout 0: the only difference is summation order (one packed row of 8 vs two of 4), which
# moves weights by ~1e-7 after three AdamW steps; 1e-5 leaves room and still catches any real bug
# (a wrong shard, a mean instead of a sum, a missing all-reduce all show up at >= 1e-3).
ATOL = 1e-5


def tree(model_dir: Path, data_dir: Path, out: Path, batch_size: int) -> dict:
    return {
        "model": {"name": str(model_dir)}, "data": {"data_dir": str(data_dir), "train_size": 24},
        "method": {"name": "lora", "dropout": 0.0},
        "train": {"max_steps": STEPS, "batch_size": batch_size, "precision": "fp32", "lr": 2e-3, "log_every": 1},
        "output_dir": str(out),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tiny_models, data_dir, tmp_path):
    single = tmp_path / "single"
    train(build_config(tree(tiny_models["llama"], data_dir, single, PER_PROCESS_BATCH * PROCESSES)), single,
          show_progress=False)

    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(tree(tiny_models["llama"], data_dir, tmp_path / "ddp", PER_PROCESS_BATCH)))
    # --multi_gpu selects accelerate's torchrun launcher; on a machine without GPUs mathtune asks
    # accelerate for CPU processes, which then talk over gloo (configs/accelerate/ddp_cpu.yaml).
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(PROCESSES),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), "-m", "mathtune.cli", "train", "-c", str(config)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(command, capture_output=True, text=True, timeout=170, env=env)
    assert done.returncode == 0, done.stderr[-3000:]

    card = yaml.safe_load((tmp_path / "ddp" / "train_card.json").read_text())
    assert card["processes"] == PROCESSES and card["steps"] == STEPS
    ours = load_file(tmp_path / "ddp" / "adapter" / "adapter_model.safetensors")
    reference = load_file(single / "adapter" / "adapter_model.safetensors")
    assert ours.keys() == reference.keys() and ours
    worst = max((ours[k] - reference[k]).abs().max().item() for k in ours)
    moved = max(reference[k].abs().max().item() for k in reference if "lora_B" in k)
    assert moved > 1e-3  # the adapters did train, so agreement is not trivially zero == zero
    print(f"ddp vs single: max |delta weight| {worst:.2e}, max |lora_B| {moved:.2e}")
    assert worst < ATOL, worst
