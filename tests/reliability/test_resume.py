"""Crash and resume: `kill -9` a real `mathtune` process mid-way, rerun, and get what an
uninterrupted run gives.

Training: checkpoints hold the trainable weights, optimizer, scheduler and both RNG states, and the
data order is fixed by the seed, so a resumed run replays the same steps; dropout stays on (0.1)
to show the RNG state really is restored. Evaluation: predictions are appended per chunk and a
rerun skips finished problems; a row torn by the kill is cut, never glued to the next one.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import console_script
from safetensors.torch import load_file

# Measured on 2 CPU cores with OMP_NUM_THREADS=1 in every run: the resumed adapter equals the
# uninterrupted one bit for bit (max |diff| 0.0). The bound leaves room for other BLAS builds.
ADAPTER_TOLERANCE = 1e-6
TRAIN_STEPS = 40


def mathtune(*argv: str) -> list[str]:
    return [console_script(), *argv]


@pytest.fixture
def child_env(tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MATHTUNE_DATA_DIR"}
    # One thread everywhere: identical reduction order in every run, and no spinning on shared cores.
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               MATHTUNE_CACHE_DIR=str(tmp_path / "cache"), TOKENIZERS_PARALLELISM="false")
    return env


def run_to_end(argv: list[str], env: dict[str, str]) -> None:
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]


def kill_when(argv: list[str], env: dict[str, str], ready, what: str) -> None:
    """Start `argv`, wait until `ready()` is true, then SIGKILL it after a few milliseconds (seeded)."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + 600
    try:
        while not ready():
            if proc.poll() is not None:
                pytest.fail(f"finished (code {proc.returncode}) before {what}: {proc.stderr.read()[-2000:]!r}")
            assert time.monotonic() < deadline, f"no {what} within 600 s"
            time.sleep(0.01)
        time.sleep(random.Random(what).uniform(0, 0.2))  # seeded per call: a failure reruns the same kill
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, f"process ended by itself (code {proc.returncode}) before the kill"


def train_args(model: Path, data: Path, out: Path) -> list[str]:
    return ["train", "--model", str(model), "--data-dir", str(data), "-o", str(out),
            "--max-steps", str(TRAIN_STEPS), "--train-size", "48",
            "-s", "train.save_every=2", "-s", "train.batch_size=2", "-s", "train.log_every=1",
            "-s", "train.lr=5e-3", "-s", "train.precision=fp32", "-s", "method.dropout=0.1"]


def test_training_killed_mid_run_resumes_to_the_same_adapter(tiny_llama, data_dir, tmp_path, child_env):
    killed, reference = tmp_path / "killed", tmp_path / "reference"

    def checkpointed() -> bool:
        return any((killed / "checkpoints").glob("step-*/state.pt"))

    kill_when(mathtune(*train_args(tiny_llama, data_dir, killed)), child_env, checkpointed, "a checkpoint")
    assert not (killed / "adapter").exists() and not (killed / "train_card.json").exists()
    logged_before = [json.loads(line)["step"] for line in (killed / "train_log.jsonl").read_text().splitlines()
                     if line.endswith("}")]

    run_to_end(mathtune(*train_args(tiny_llama, data_dir, killed), "--resume"), child_env)
    run_to_end(mathtune(*train_args(tiny_llama, data_dir, reference)), child_env)

    card = json.loads((killed / "train_card.json").read_text())
    assert 2 <= card["resumed_from_step"] < TRAIN_STEPS and card["steps"] == TRAIN_STEPS
    resumed = load_file(killed / "adapter" / "adapter_model.safetensors")
    uninterrupted = load_file(reference / "adapter" / "adapter_model.safetensors")
    assert resumed.keys() == uninterrupted.keys()
    worst = max((resumed[k] - uninterrupted[k]).abs().max().item() for k in resumed)
    print(f"killed after step {max(logged_before, default=0)}, resumed from step {card['resumed_from_step']}, "
          f"max |adapter diff| vs uninterrupted = {worst:.3g}")
    assert worst <= ADAPTER_TOLERANCE
    # The same training happened: identical loss at every step, each step logged exactly once.
    log = [json.loads(line) for line in (killed / "train_log.jsonl").read_text().splitlines()]
    ref_log = [json.loads(line) for line in (reference / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == list(range(1, TRAIN_STEPS + 1))
    assert [row["loss"] for row in log] == pytest.approx([row["loss"] for row in ref_log], abs=1e-5)
    assert not (killed / "checkpoints").exists() and not list(killed.rglob("*.tmp"))
    # and the resumed adapter is not trivially equal: training moved it away from its start
    assert any(v.abs().max().item() > 0 for k, v in resumed.items() if "lora_B" in k)


def eval_args(model: Path, data: Path, out: Path) -> list[str]:
    # 40 train-split problems, one per batch: a chunk (4 problems) is written every few seconds.
    return ["eval", "--base", "--model", str(model), "--data-dir", str(data), "-o", str(out),
            "--eval-size", "40", "-s", "eval.split=train", "-s", "eval.batch_size=1",
            "-s", "eval.max_new_tokens=24", "-s", "train.precision=fp32"]


def test_evaluation_killed_mid_run_loses_and_duplicates_nothing(tiny_llama, data_dir, tmp_path, child_env):
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    predictions = killed / "predictions.jsonl"

    def some_written() -> bool:
        return predictions.exists() and predictions.read_bytes().count(b"\n") >= 4

    kill_when(mathtune(*eval_args(tiny_llama, data_dir, killed)), child_env, some_written, "a written chunk")
    assert not (killed / "metrics.json").exists()
    partial = [json.loads(line) for line in predictions.read_text().splitlines() if line.endswith("}")]
    assert 4 <= len(partial) < 40

    run_to_end(mathtune(*eval_args(tiny_llama, data_dir, reference)), child_env)
    expected = [json.loads(line) for line in (reference / "predictions.jsonl").read_text().splitlines()]
    # A kill can also land inside a write: leave the next row torn in half, as it would be.
    next_row = json.dumps(expected[len(partial)])
    with open(predictions, "a", encoding="utf-8") as handle:
        handle.write(next_row[: len(next_row) // 2])

    run_to_end(mathtune(*eval_args(tiny_llama, data_dir, killed)), child_env)  # no flag: resumes
    lines = predictions.read_text().splitlines()
    rows = [json.loads(line) for line in lines]  # every line whole: the torn half was cut
    print(f"killed after {len(partial)} of 40 predictions; rerun wrote {len(rows) - len(partial)} more")
    assert [r["id"] for r in rows] == [r["id"] for r in expected]  # none lost, none twice, same order
    assert rows[: len(partial)] == partial  # finished work was kept, not redone
    assert rows == expected  # and equals an uninterrupted run, field for field
    metrics = json.loads((killed / "metrics.json").read_text())
    ref_metrics = json.loads((reference / "metrics.json").read_text())
    assert metrics["n"] == 40 and metrics["scores"] == ref_metrics["scores"]
    assert metrics["perplexity"] == pytest.approx(ref_metrics["perplexity"], rel=1e-9)

