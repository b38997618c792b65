"""No result lost, none mislabeled: evaluations and trainings continue only their own work, and
Ctrl-C / SIGTERM end with 130 / 143 and one line saying what was kept and how to continue."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import console_script

from mathtune import interrupts


def _base_eval(model: Path, data: Path, out: Path, *extra: str) -> tuple[str, ...]:
    return ("eval", "--base", "--model", str(model), "--data-dir", str(data), "-o", str(out), "--eval-size", "4",
            "-s", "eval.max_new_tokens=4", "-s", "eval.perplexity=false", *extra)


def _train(model: Path, data: Path, out: Path, *extra: str) -> tuple[str, ...]:
    return ("train", "--model", str(model), "--data-dir", str(data), "-o", str(out), "--train-size", "8",
            "--max-steps", "4", "-s", "train.save_every=2", "-s", "train.precision=fp32", *extra)


def test_an_eval_dir_never_takes_another_models_predictions(run_cli, tiny_llama, data_dir, finished_run, tmp_path):
    """It used to finish in 0 s with the base model's predictions relabelled as the tuned model's."""
    out = tmp_path / "eval"
    assert run_cli(*_base_eval(tiny_llama, data_dir, out)).code == 0
    before = (out / "predictions.jsonl").read_bytes(), (out / "metrics.json").read_bytes()
    tuned = run_cli("eval", str(finished_run), "--data-dir", str(data_dir), "-o", str(out), "--eval-size", "4",
                    "-s", "eval.max_new_tokens=4", "-s", "eval.perplexity=false")
    assert tuned.code == 2 and tuned.stderr.count("\n") == 1
    assert "different settings" in tuned.stderr and "--overwrite" in tuned.stderr
    other_prompt = run_cli(*_base_eval(tiny_llama, data_dir, out, "--prompt", "no-breakdown"))
    assert other_prompt.code == 2 and "prompt.strategy: 'qa' -> 'no-breakdown'" in other_prompt.stderr
    assert ((out / "predictions.jsonl").read_bytes(), (out / "metrics.json").read_bytes()) == before
    again = run_cli(*_base_eval(tiny_llama, data_dir, out))  # the same evaluation: finished, left as it was
    assert again.code == 0 and (out / "metrics.json").read_bytes() == before[1]


def test_a_finished_evaluation_is_not_replaced_by_another_sample_size(run_cli, finished_run, data_dir):
    common = ("--data-dir", str(data_dir), "-s", "eval.max_new_tokens=4", "-s", "eval.perplexity=false")
    assert run_cli("eval", str(finished_run), "--eval-size", "4", *common).code == 0
    metrics = finished_run / "eval" / "tuned" / "metrics.json"
    before = metrics.read_bytes()
    smaller = run_cli("eval", str(finished_run), "--eval-size", "2", *common)
    assert smaller.code == 2 and "data.n: 4 -> 2" in smaller.stderr
    assert metrics.read_bytes() == before
    replaced = run_cli("eval", str(finished_run), "--eval-size", "2", "--overwrite", *common)
    assert replaced.code == 0 and json.loads(metrics.read_text())["n"] == 2


def test_a_half_written_evaluation_resumes_only_with_the_settings_that_wrote_it(run_cli, finished_run, data_dir):
    """Killed after two of four problems (no metrics.json yet): another max_new_tokens, the calculator
    or a retrained adapter is refused, naming what changed, and the two predictions stay; the same
    settings finish it, the two kept as they were."""
    common = ("--data-dir", str(data_dir), "--eval-size", "4", "-s", "eval.perplexity=false")
    tuned = ("eval", str(finished_run), *common)
    assert run_cli(*tuned, "-s", "eval.max_new_tokens=4").code == 0
    out = finished_run / "eval" / "tuned"
    predictions = out / "predictions.jsonl"
    kept = "".join(predictions.read_text().splitlines(keepends=True)[:2])
    predictions.write_text(kept)
    (out / "metrics.json").unlink()
    longer = run_cli(*tuned, "-s", "eval.max_new_tokens=5")
    assert longer.code == 2 and "generation.max_new_tokens: 4 -> 5" in longer.stderr, longer.stderr
    calculator = run_cli(*tuned, "-s", "eval.max_new_tokens=4", "-s", "eval.calculator=true")
    assert calculator.code == 2 and "generation.calculator: False -> True" in calculator.stderr, calculator.stderr
    assert predictions.read_text() == kept and not (out / "metrics.json").exists()
    # the adapter trained again (other weights, same files): not the model these predictions came from
    from safetensors.torch import load_file, save_file

    weights_file = finished_run / "adapter" / "adapter_model.safetensors"
    original = weights_file.read_bytes()
    save_file({name: tensor + 0.01 for name, tensor in load_file(weights_file).items()}, weights_file)
    retrained = run_cli(*tuned, "-s", "eval.max_new_tokens=4")
    assert retrained.code == 2 and "adapter" in retrained.stderr and "different settings" in retrained.stderr
    assert predictions.read_text() == kept
    weights_file.write_bytes(original)
    resumed = run_cli(*tuned, "-s", "eval.max_new_tokens=4")
    assert resumed.code == 0, resumed.stderr
    assert predictions.read_text().startswith(kept) and len(predictions.read_text().splitlines()) == 4
    assert json.loads((out / "metrics.json").read_text())["n"] == 4


def test_resume_of_a_finished_training_says_it_is_finished(run_cli, finished_run, tiny_llama, data_dir):
    card = (finished_run / "train_card.json").read_bytes()
    result = run_cli("train", "--model", str(tiny_llama), "--data-dir", str(data_dir), "-o", str(finished_run),
                     "--train-size", "8", "--max-steps", "2", "-s", "train.precision=fp32", "--resume")
    assert result.code == 2 and "is a finished run (2 steps" in result.stderr
    assert (finished_run / "train_card.json").read_bytes() == card


def test_an_interrupted_training_resumes_only_with_its_own_settings(run_cli, tiny_llama, data_dir, tmp_path,
                                                                     monkeypatch):
    """Interrupted after its first checkpoint: exit 143, one line naming the checkpoint and the exact
    command that continues; that command with another learning rate is refused, naming the key."""
    import mathtune.recipes.train as train_module

    step = train_module.train_step

    def interrupted_at_step_3(session, index):
        if index == 2:
            raise interrupts.Interrupted(signal.SIGTERM)
        return step(session, index)

    monkeypatch.setattr(train_module, "train_step", interrupted_at_step_3)
    out = tmp_path / "run"
    result = run_cli(*_train(tiny_llama, data_dir, out))
    # (in-process, transformers' progress bar shares stderr; the process test below counts lines)
    last = result.stderr.strip().splitlines()[-1]
    assert result.code == 143 and last.startswith("mathtune: interrupted by SIGTERM; kept checkpoint at step 2")
    command = last.split("continue with: ", 1)[1].strip()
    assert command.endswith("--resume") and "--overwrite" not in command
    monkeypatch.setattr(train_module, "train_step", step)
    changed = run_cli(*_train(tiny_llama, data_dir, out, "-s", "train.lr=1e-3"), "--resume")
    assert changed.code == 2 and "train.lr: 0.0002 -> 0.001" in changed.stderr
    assert run_cli(*shlex.split(command)[1:]).code == 0
    assert json.loads((out / "train_card.json").read_text())["resumed_from_step"] == 2


def test_interrupted_before_anything_worth_keeping_leaves_no_directory(run_cli, tiny_llama, data_dir, tmp_path,
                                                                      monkeypatch):
    """It used to leave config.yaml and tensorboard/ behind, and a plain rerun was refused as 'not empty'."""
    import mathtune.recipes.train as train_module

    def interrupted(session, index):
        raise interrupts.Interrupted(signal.SIGINT)

    monkeypatch.setattr(train_module, "train_step", interrupted)
    out = tmp_path / "run"
    result = run_cli(*_train(tiny_llama, data_dir, out))
    assert result.code == 130 and "nothing was kept" in result.stderr and not out.exists()


def test_resume_command_drops_overwrite_and_adds_resume():
    assert interrupts.resume_command(["train", "-o", "my run", "--overwrite"], True) == \
        "mathtune train -o 'my run' --resume"
    assert interrupts.resume_command(["eval", "R", "--overwrite"], False) == "mathtune eval R"


def test_run_errors_are_one_line(run_cli, tiny_llama, tmp_path):
    """`run` printed its banner on stderr first, so every error was two lines."""
    result = run_cli("run", "--model", str(tiny_llama), "--data-dir", str(tmp_path / "nowhere"),
                     "-o", str(tmp_path / "out"))
    assert result.code == 2 and result.stderr.count("\n") == 1 and result.stderr.startswith("mathtune: error:")


def test_sigterm_to_a_real_training_process(tiny_llama, data_dir, tmp_path):
    """The signal itself, to a `mathtune train` process: 143 and the line, then its command resumes."""
    env = {k: v for k, v in os.environ.items() if k != "MATHTUNE_DATA_DIR"}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", MATHTUNE_CACHE_DIR=str(tmp_path / "cache"))
    out = tmp_path / "run"
    argv = [console_script(), *_train(tiny_llama, data_dir, out, "-s", "train.batch_size=1")]
    argv[argv.index("4")] = "400"  # --max-steps: long enough to be interrupted
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not any(out.glob("checkpoints/step-*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-2000:]
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("train:")]  # tqdm
    assert len(lines) == 1 and "kept checkpoint at step" in lines[0] and lines[0].endswith("--resume")
    assert not (out / "adapter").exists() and not list(out.rglob("*.tmp"))


def test_a_signal_python_would_drop_is_still_reported(tmp_path):
    """A signal landing in a weakref callback (matplotlib's teardown) raises where Python only prints
    "Exception ignored" and goes on: the report command then exited 0. Now the handler records it,
    stays quiet there, and `mathtune` exits as interrupted once the command returns."""
    script = (
        "import os, signal, weakref\n"
        "from mathtune import interrupts\n"
        "interrupts.install()\n"
        "class Thing: pass\n"
        "thing = Thing()\n"
        "ref = weakref.ref(thing, lambda _: os.kill(os.getpid(), signal.SIGTERM))\n"
        "del thing\n"
        "print('received', interrupts.received().exit_code)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "received 143" and done.stderr == ""


def _wait_for_sigterm_handler(pid: int, timeout: float = 60.0) -> None:
    """Until the process catches SIGTERM (Linux: bit 15 of SigCgt in /proc/PID/status). Before the
    interpreter has run mathtune's first lines no program can catch a signal, and on a loaded machine
    that moment comes later than any fixed delay; elsewhere, a fixed 0.2 s."""
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        time.sleep(0.2)
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            caught = next(line for line in status.read_text().splitlines() if line.startswith("SigCgt:"))
        except (OSError, StopIteration):
            return  # the process is gone: the assertions below say why
        if int(caught.split()[1], 16) & (1 << (signal.SIGTERM - 1)):
            return
        time.sleep(0.005)


@pytest.mark.parametrize("delay", [0.0, 1.0])
def test_a_signal_during_start_up_is_one_line(delay, tiny_llama, data_dir, tmp_path):
    """The handlers go in before torch is imported (mathtune/__main__.py): a SIGTERM seconds into the
    start used to kill silently or print a traceback with exit 1. The signal comes `delay` seconds
    after the handler is in: at once (torch not yet imported) and a second later."""
    env = {k: v for k, v in os.environ.items() if k != "MATHTUNE_DATA_DIR"}
    env.update(HF_HUB_OFFLINE="1", MATHTUNE_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.Popen([console_script(), *_base_eval(tiny_llama, data_dir, tmp_path / "out")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for_sigterm_handler(proc.pid)
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("eval ")]
    assert proc.returncode == 143 and len(lines) == 1 and lines[0].startswith("mathtune: interrupted by SIGTERM")
