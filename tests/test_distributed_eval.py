"""eval, sample and verifier score under `accelerate launch` (2 CPU processes over gloo): each rank does
its share of the problems, rank 0 merges, and the files equal one process's byte for byte; a rank
killed mid-run is finished by a relaunch with 1 process; launches that cannot give one process's
result are refused in one line.

Every process runs one thread (OMP_NUM_THREADS=1 in the launches, torch.set_num_threads(1) in this
one) and one problem per batch, so a row's numbers cannot depend on which process or batch made it.
Launches are few and shared: process start-up costs more than the tiny model's work."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

WORKER = Path(__file__).with_name("launched_commands.py")
EVAL_SIZE = 12


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(*argv: str, processes: int = 2) -> list[str]:
    # --multi_gpu picks accelerate's torchrun launcher; without GPUs the ranks run on CPU over gloo.
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_port()), *argv]


@pytest.fixture
def launch_env(monkeypatch) -> dict[str, str]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the in-process reference runs as the launched ranks do
    monkeypatch.delenv("MATHTUNE_DATA_DIR", raising=False)
    yield {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    torch.set_num_threads(threads)


def eval_args(model: Path, data: Path, out: Path, size: int = EVAL_SIZE) -> list[str]:
    return ["eval", "--base", "--model", str(model), "--data-dir", str(data), "-o", str(out), "--eval-size", str(size),
            "-s", "eval.batch_size=1", "-s", "eval.max_new_tokens=40", "-s", "train.precision=fp32"]


# Votes over per-problem seeded samples (eval.vote): a rank's share draws what one process draws.
VOTE = ["-s", "eval.vote=majority", "-s", "eval.samples=2", "-s", "eval.temperature=1.0"]


def sample_args(model: Path, data: Path, out: Path) -> list[str]:
    return ["sample", "--base", "--model", str(model), "--data-dir", str(data), "-o", str(out), "--eval-size", "6",
            "-k", "3", "--rows", "3", "--seed", "7", "-s", "eval.max_new_tokens=16", "-s", "train.precision=fp32"]


def synthetic_samples(directory: Path, count: int) -> Path:
    """Samples with right and wrong solutions, for a verifier to train on (the tiny model gets none right)."""
    directory.mkdir(parents=True)
    rows = [{"id": f"p{i}", "prompt": f"Question: what is {i}?\nAnswer:",
             "samples": [{"output": f" {'checked' if j == 0 else 'guess'} #### {7 if j == 0 else 8 + j}",
                          "correct": {"numeric-match": j == 0}} for j in range(3)]} for i in range(count)]
    (directory / "samples.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return directory


def run(argv: list[str], env: dict[str, str], timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)


def mathtune_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "mathtune: error:" in line]


def without_timing(metrics: dict) -> dict:
    """metrics.json less what measures the run rather than the result (and the process count it records)."""
    timing = {"wall_seconds", "generated_tokens_per_second", "peak_rss_mb", "peak_cuda_mb"}
    reproducibility = {k: v for k, v in metrics["reproducibility"].items() if k != "processes"}
    return {**{k: v for k, v in metrics.items() if k not in timing}, "reproducibility": reproducibility}


def test_two_processes_write_what_one_process_writes(tiny_models, data_dir, tmp_path, run_cli, launch_env):
    model = tiny_models["llama"]
    single, multi = tmp_path / "single", tmp_path / "multi"
    verifier = tmp_path / "verifier"
    assert run_cli("verifier", "train", str(synthetic_samples(tmp_path / "train-samples", 8)), "-o", str(verifier),
                   "--model", str(model), "-s", "verifier.epochs=1", "-s", "verifier.max_length=48",
                   "-s", "train.precision=fp32").code == 0
    for args in ([*eval_args(model, data_dir, single / "eval"), *VOTE],
                 sample_args(model, data_dir, single / "samples")):
        done = run_cli(*args)
        assert done.code == 0, done.stderr
    (multi / "scored").mkdir(parents=True)  # the verifier scores a copy of the same samples
    shutil.copy(single / "samples" / "samples.jsonl", multi / "scored" / "samples.jsonl")
    done = run_cli("verifier", "score", str(verifier), str(single / "samples"))
    assert done.code == 0, done.stderr

    done = run(launch(str(WORKER), *eval_args(model, data_dir, multi / "eval"), *VOTE,
                      ":::", *sample_args(model, data_dir, multi / "samples"),
                      ":::", "verifier", "score", str(verifier), str(multi / "scored")), launch_env)
    assert done.returncode == 0, done.stderr[-3000:]

    predictions = (multi / "eval" / "predictions.jsonl").read_bytes()
    assert predictions.count(b"\n") == EVAL_SIZE
    assert predictions == (single / "eval" / "predictions.jsonl").read_bytes()
    assert (multi / "samples" / "samples.jsonl").read_bytes() == (single / "samples" / "samples.jsonl").read_bytes()
    scores = (multi / "scored" / "verifier_scores.jsonl").read_bytes()
    assert scores.count(b"\n") == 6 and scores == (single / "samples" / "verifier_scores.jsonl").read_bytes()
    merged, alone = (json.loads((d / "eval" / "metrics.json").read_text()) for d in (multi, single))
    assert merged["reproducibility"]["processes"] == 2 and alone["reproducibility"]["processes"] == 1
    assert merged["voted"]["n"] == EVAL_SIZE and b'"vote": {' in predictions
    assert without_timing(merged) == without_timing(alone)
    assert json.loads((multi / "eval" / "fingerprint.json").read_text())["processes"] == 2
    assert json.loads((multi / "samples" / "sampling.json").read_text())["processes"] == 2
    assert not any(multi.rglob("shards"))  # the parts are gone once merged
    # The two ranks did share the work: both printed nothing but rank 0's summary lines.
    assert done.stdout.count("predictions and metrics written to") == 1


def rank_process(launcher: subprocess.Popen, rank: int) -> psutil.Process | None:
    for child in psutil.Process(launcher.pid).children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank) and "mathtune" in " ".join(child.cmdline()):
                return child
        except psutil.Error:
            continue
    return None


def test_a_killed_rank_is_finished_by_one_process_and_bad_launches_are_refused(
        tiny_models, data_dir, tmp_path, run_cli, launch_env):
    model = tiny_models["llama"]
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    part = killed / "shards" / "predictions.rank1-of-2.jsonl"
    launcher = subprocess.Popen(launch("-m", "mathtune", *eval_args(model, data_dir, killed)), env=launch_env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (part.is_file() and part.read_bytes().count(b"\n") >= 4):  # rank 1's first chunk of 4
            assert launcher.poll() is None, launcher.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "rank 1 wrote no chunk within 240 s"
            time.sleep(0.01)
        rank1 = rank_process(launcher, 1)
        assert rank1 is not None
        os.kill(rank1.pid, signal.SIGKILL)
        launcher.wait(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        launcher.stderr.close()
    assert launcher.returncode != 0
    written = len(part.read_bytes().splitlines())
    assert 4 <= written < EVAL_SIZE // 2, written  # killed mid-way through its 6 problems
    assert not (killed / "metrics.json").exists()

    finished = {json.loads(line)["id"]: json.loads(line)["new_tokens"]
                for part_file in (killed / "shards").glob("*.jsonl") for line in part_file.read_text().splitlines()}
    # Another problem draw into the dir the 2 processes left: refused, nothing touched.
    before = {p: p.read_bytes() for p in killed.rglob("*") if p.is_file()}
    bad = run_cli(*eval_args(model, data_dir, killed, size=EVAL_SIZE - 2))
    assert bad.code == 2 and len(mathtune_errors(bad.stderr)) == 1, bad.stderr
    assert "written by 2 processes, this launch has 1" in bad.stderr
    assert {p: p.read_bytes() for p in killed.rglob("*") if p.is_file()} == before

    # One process finishes the work: its rows, rank 0's and rank 1's first chunk, merged.
    done = run_cli(*eval_args(model, data_dir, killed))
    assert done.code == 0, done.stderr
    done = run_cli(*eval_args(model, data_dir, reference))
    assert done.code == 0, done.stderr
    assert (killed / "predictions.jsonl").read_bytes() == (reference / "predictions.jsonl").read_bytes()
    assert not (killed / "shards").exists()
    resumed, whole = (json.loads((d / "metrics.json").read_text()) for d in (killed, reference))
    assert resumed["scores"] == whole["scores"]
    # Only the unfinished problems were generated again, not the rows the killed launch had written.
    assert len(finished) >= 4 and resumed["generated_tokens"] == whole["generated_tokens"] - sum(finished.values())

    # Ranks that would evaluate other problems (rank 1 sees another eval size): refused in one line.
    mismatched = tmp_path / "mismatched"
    done = run(launch(str(WORKER), *eval_args(model, data_dir, mismatched)),
               {**launch_env, "MATHTUNE_TEST_RANK1_ARGS": "--eval-size 6"})
    assert done.returncode != 0
    errors = mathtune_errors(done.stderr)
    assert len(errors) == 1 and errors[0].startswith("mathtune: error: rank 1 of 2 would write predictions of "
                                                     "other settings than rank 0 (data.n: 12 -> 6"), done.stderr
    assert "[rank0]: Traceback" not in done.stderr and "[rank1]: Traceback" not in done.stderr
    assert not mismatched.exists()  # rank 0 removed the dir it had made for nothing
