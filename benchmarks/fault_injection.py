"""Fault injection: SIGINT, SIGTERM and SIGKILL at random moments of real `mathtune` processes.

Not a CI test: a battery to run many times and count the kills survived. It builds a tiny random
Llama and synthetic GSM8K data once (tests/helpers.py), computes the outputs of uninterrupted
`train`, `eval`, `run` and `report` commands once, then per trial starts one command as its own
process group, kills the group at a random moment, checks the interrupt contract, continues the
work as the user is told to (the `continue with:` command of the interrupt line; after SIGKILL the
same command, with `--resume` for train/run) and compares the final outputs with the
uninterrupted ones. The fifth target is the app's rating store (mathtune.app.ratings): a child
process adds ratings in a loop and prints each id once `add` has returned (committed); after the
kill every printed id must be in the database, the database must pass `PRAGMA integrity_check`,
hold only the rows the child meant to write, and still accept a new rating.

A kill lands at a moment drawn two ways, half the trials each: uniformly over the uninterrupted
command's measured wall time (so mostly in start-up and model loading, as it would in real use), or
a random few hundred milliseconds after a file appears (the run dir's fingerprint, a checkpoint,
the predictions file, a report PNG, the first acknowledged rating), so kills land mid-training and
mid-write too. With probability --again the continuing command is killed once more.

Verdicts per kill of SIGINT/SIGTERM: exit 130/143 and exactly one stderr line besides tqdm's
progress lines, `mathtune: interrupted by SIG...`, whose claims (checkpoint step, prediction
counts, removed dir) are true on disk and whose `continue with:` command is this command with
`--resume` (train, run) or unchanged (eval). SIGKILL: no message is possible; only the results
count. Per trial: the continued command exits 0 and its outputs equal the uninterrupted ones
(adapter max |diff| <= 1e-6, predictions field for field, metric scores equal, report files equal),
or it refuses with exit 2 and one `mathtune: error:` line ("refused cleanly"). A process that
finished before the signal reached it counts as "not interrupted" and its outputs are checked too;
one that exits 0 although the signal reached it has swallowed it, and one still running 120 s
after the signal hangs: both break the contract.

Every process imports a copy of src/mathtune taken when the work dir is made (others edit the tree
while the battery runs). Failed trials' dirs stay in --workdir; --json gets every trial's record
(rewritten after each trial); Ctrl-C stops the battery with a summary of the trials done.

    python benchmarks/fault_injection.py --trials 30 --seed 1 --json fi.json

`--faults N` adds faults other than signals, each N times: a full disk (RLIMIT_FSIZE) during train
and eval, processes racing to build one model-cache entry, a torn cache entry, and a hub id with no
network (docs/reliability.md, "Faults other than signals"); `--trials 0 --faults 3` runs only them.

Set MATHTUNE_ALLOCATOR=system to skip train/run's re-execution under mimalloc (faster, but that
re-exec is one of the moments a real kill can land in, so it is left on by default).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TRAIN_STEPS = 40
TRAIN_SIZE = 48
EVAL_SIZE = 20  # standalone eval, on the train split (the synthetic test split has only 16 problems)
RUN_EVAL_SIZE = 12
ADAPTER_TOLERANCE = 1e-6  # tests/reliability/test_resume.py measures 0.0; the bound allows other BLAS builds
LOSS_TOLERANCE = 1e-5
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)
EXPECTED_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}
COMMANDS = ("train", "eval", "run", "report", "ratings")
PROCESS_TIMEOUT = 900
# A signalled process must be gone within this; one still running is a hang (and is then SIGKILLed).
STOP_TIMEOUT = 120
# tqdm lines ("train:  47%|####  | 14/30 [...]", "eval base: 100%|..."): progress, not messages.
PROGRESS = re.compile(r"^[\w .()/-]{0,60}:\s+\d+%\|")
# Fields of a prediction row that measure time rather than the result (none today; kept for safety).
TIMING_FIELDS = frozenset({"seconds", "wall_seconds", "latency", "elapsed"})
# Names of half-written files or dirs that a SIGKILL can leave behind (atomic writes' temp names).
LITTER = re.compile(r"(\.tmp$|^\.tmp-|^\.adapter-)")


# --------------------------------------------------------------------------------------------------
# The commands under test
# --------------------------------------------------------------------------------------------------


def console_script() -> str:
    """The `mathtune` script beside this interpreter: the venv need not be on PATH."""
    beside = Path(sys.executable).parent / "mathtune"
    return str(beside) if beside.is_file() else shutil.which("mathtune") or "mathtune"


@dataclass(frozen=True)
class Setup:
    model: Path
    data: Path
    ref: Path  # reference outputs, one folder per command
    env: dict[str, str]


def train_args(s: Setup, out: Path) -> list[str]:
    # save_every=2: a checkpoint every few hundred ms, so kills land before, between and inside saves.
    # dropout 0.1 on: a resume that does not restore the RNG state shows as an adapter difference.
    return ["train", "--model", str(s.model), "--data-dir", str(s.data), "-o", str(out),
            "--max-steps", str(TRAIN_STEPS), "--train-size", str(TRAIN_SIZE),
            "-s", "train.save_every=2", "-s", "train.batch_size=2", "-s", "train.log_every=1",
            "-s", "train.lr=5e-3", "-s", "train.precision=fp32", "-s", "method.dropout=0.1"]


def eval_args(s: Setup, out: Path) -> list[str]:
    # batch 1: a chunk (4 problems) is appended every few hundred ms; the only batch size whose
    # resumed predictions are promised equal (docs/reliability.md).
    return ["eval", "--base", "--model", str(s.model), "--data-dir", str(s.data), "-o", str(out),
            "--eval-size", str(EVAL_SIZE), "-s", "eval.split=train", "-s", "eval.batch_size=1",
            "-s", "eval.max_new_tokens=24", "-s", "train.precision=fp32"]


def run_args(s: Setup, out: Path) -> list[str]:
    return ["run", "--model", str(s.model), "--data-dir", str(s.data), "-o", str(out),
            "--max-steps", str(TRAIN_STEPS), "--train-size", str(TRAIN_SIZE), "--eval-size", str(RUN_EVAL_SIZE),
            "-s", "train.save_every=2", "-s", "train.batch_size=2", "-s", "train.log_every=1",
            "-s", "train.lr=5e-3", "-s", "train.precision=fp32", "-s", "method.dropout=0.1",
            "-s", "eval.batch_size=1", "-s", "eval.max_new_tokens=24"]


def report_args(s: Setup, out: Path) -> list[str]:
    # The report reads the reference run (never written to) and writes only into `out`.
    return ["report", str(s.ref / "run"), "-o", str(out)]


@dataclass(frozen=True)
class Spec:
    name: str
    args: Callable[[Setup, Path], list[str]]
    resume_flag: bool  # continued with --resume (train, run) or by the same command (eval, report)
    watched: bool  # whether the interrupt line names a continue command (report writes no run dir)
    triggers: tuple[tuple[str, float], ...]  # (glob under the output dir, max delay after it appears)


SPECS = {
    "train": Spec("train", train_args, True, True,
                  (("fingerprint.json", 1.5), ("checkpoints/step-*", 1.2))),
    "eval": Spec("eval", eval_args, False, True,
                 (("fingerprint.json", 1.5), ("predictions.jsonl", 1.5))),
    "run": Spec("run", run_args, True, True,
                (("eval/base/predictions.jsonl", 1.5), ("checkpoints/step-*", 1.2),
                 ("eval/tuned/fingerprint.json", 1.0), ("eval/tuned/predictions.jsonl", 1.5))),
    "report": Spec("report", report_args, False, False, (("*.png", 1.0),)),
}


def freeze_source(workdir: Path) -> Path:
    """A copy of src/mathtune that every process of the battery imports (PYTHONPATH comes before
    the editable install's path). Others edit the tree while the battery runs; a reference computed
    by one version and a resume run by another would differ for reasons no kill caused."""
    frozen = workdir / "src"
    if not (frozen / "mathtune").is_dir():
        shutil.copytree(REPO / "src" / "mathtune", frozen / "mathtune", ignore=shutil.ignore_patterns("__pycache__"))
    return frozen


def child_env(workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MATHTUNE_DATA_DIR"}  # --data-dir is explicit
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(workdir / "src"), env.get("PYTHONPATH")]))
    # One thread everywhere: the same reduction order in every run (bit-equal adapters), and no
    # spinning on shared cores.
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               MATHTUNE_CACHE_DIR=str(workdir / "cache"))
    return env


# --------------------------------------------------------------------------------------------------
# Comparing outputs with the uninterrupted run's
# --------------------------------------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every line must be whole JSON: a torn line left in a finished file is itself a defect."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def diff_adapter(out: Path, ref: Path) -> list[str]:
    from safetensors.numpy import load_file  # numpy, not torch: the driver stays light

    path = out / "adapter" / "adapter_model.safetensors"
    if not path.is_file():
        return [f"no adapter weights at {path}"]
    got, want = load_file(path), load_file(ref / "adapter" / "adapter_model.safetensors")
    if got.keys() != want.keys():
        return [f"adapter tensors differ in names: {sorted(got.keys() ^ want.keys())[:4]}"]
    worst = max(float(abs(got[k].astype("float64") - want[k].astype("float64")).max()) for k in got)
    return [] if worst <= ADAPTER_TOLERANCE else [f"adapter max |diff| {worst:.3g} > {ADAPTER_TOLERANCE}"]


def diff_training(out: Path, ref: Path) -> list[str]:
    problems = diff_adapter(out, ref)
    try:
        card = json.loads((out / "train_card.json").read_text())
        log, ref_log = read_jsonl(out / "train_log.jsonl"), read_jsonl(ref / "train_log.jsonl")
    except (OSError, ValueError) as exc:
        return [*problems, f"train card/log unreadable: {exc}"]
    if card.get("steps") != TRAIN_STEPS:
        problems.append(f"train_card steps {card.get('steps')} != {TRAIN_STEPS}")
    steps = [row.get("step") for row in log]
    if steps != list(range(1, TRAIN_STEPS + 1)):
        problems.append(f"train_log steps are not 1..{TRAIN_STEPS} once each: {steps}")
    elif any(abs(a["loss"] - b["loss"]) > LOSS_TOLERANCE for a, b in zip(log, ref_log, strict=True)):
        problems.append("train_log losses differ from the uninterrupted run's")
    if (out / "checkpoints").exists():
        problems.append("checkpoints/ left after a finished training")
    return problems


def diff_evaluation(out: Path, ref: Path) -> list[str]:
    try:
        rows, ref_rows = read_jsonl(out / "predictions.jsonl"), read_jsonl(ref / "predictions.jsonl")
        metrics = json.loads((out / "metrics.json").read_text())
        ref_metrics = json.loads((ref / "metrics.json").read_text())
    except (OSError, ValueError) as exc:
        return [f"{out.name}: predictions/metrics missing or unreadable: {exc}"]
    problems = []
    ids, ref_ids = [r.get("id") for r in rows], [r.get("id") for r in ref_rows]
    if ids != ref_ids:
        problems.append(f"{out.name}: prediction ids differ (lost/duplicated/reordered): {len(ids)} rows vs "
                        f"{len(ref_ids)}")
    else:
        for row, want in zip(rows, ref_rows, strict=True):
            strip = {k: v for k, v in row.items() if k not in TIMING_FIELDS}
            if strip != {k: v for k, v in want.items() if k not in TIMING_FIELDS}:
                keys = sorted(k for k in strip.keys() | want.keys() if strip.get(k) != want.get(k))
                problems.append(f"{out.name}: prediction {row.get('id')} differs in {keys}")
                break
    if metrics.get("n") != ref_metrics.get("n") or metrics.get("scores") != ref_metrics.get("scores"):
        problems.append(f"{out.name}: metrics n/scores differ: {metrics.get('n')} vs {ref_metrics.get('n')}")
    ppl, ref_ppl = metrics.get("perplexity"), ref_metrics.get("perplexity")
    if (ppl is None) != (ref_ppl is None) or (ppl is not None and abs(ppl - ref_ppl) > 1e-9 * abs(ref_ppl)):
        problems.append(f"{out.name}: perplexity {ppl} != {ref_ppl}")
    return problems


def diff_run(out: Path, ref: Path) -> list[str]:
    problems = diff_training(out, ref) + diff_evaluation(out / "eval" / "base", ref / "eval" / "base")
    problems += diff_evaluation(out / "eval" / "tuned", ref / "eval" / "tuned")
    try:
        card = json.loads((out / "run_card.json").read_text())
        ref_card = json.loads((ref / "run_card.json").read_text())
        comparison = json.loads((out / "comparison.json").read_text())
        ref_comparison = json.loads((ref / "comparison.json").read_text())
    except (OSError, ValueError) as exc:
        return [*problems, f"run card/comparison missing or unreadable: {exc}"]
    for key in ("base", "tuned"):
        if card[key]["scores"] != ref_card[key]["scores"] or card[key]["n"] != ref_card[key]["n"]:
            problems.append(f"run_card {key} scores differ")
    if card.get("mcnemar") != ref_card.get("mcnemar") or comparison.get("pairs") != ref_comparison.get("pairs"):
        problems.append("comparison (McNemar pairs) differs")
    return problems


def _report_text(path: Path) -> str:
    # The git commit is stamped into the report; another engineer's commit mid-battery must not count.
    return "\n".join(line for line in path.read_text(encoding="utf-8").splitlines() if "commit" not in line)


def diff_report(out: Path, ref: Path) -> list[str]:
    files = sorted(p.name for p in out.iterdir() if not LITTER.search(p.name)) if out.is_dir() else []
    ref_files = sorted(p.name for p in ref.iterdir())
    if files != ref_files:
        return [f"report files {files} != {ref_files}"]
    problems = []
    got, want = json.loads((out / "report.json").read_text()), json.loads((ref / "report.json").read_text())
    got.pop("generated_by", None)
    want.pop("generated_by", None)
    if got != want:
        problems.append("report.json differs")
    for name in ("report.md", "report.html"):
        if _report_text(out / name) != _report_text(ref / name):
            problems.append(f"{name} differs")
    for png in out.glob("*.png"):
        if png.read_bytes() != (ref / png.name).read_bytes():
            problems.append(f"{png.name} differs")
    return problems


DIFFS: dict[str, Callable[[Path, Path], list[str]]] = {
    "train": diff_training, "eval": diff_evaluation, "run": diff_run, "report": diff_report}


def litter(out: Path) -> list[str]:
    """Temp files a SIGKILL left mid-write: harmless to results, but worth counting."""
    if not out.exists():
        return []
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if LITTER.search(p.name))


# --------------------------------------------------------------------------------------------------
# Killing a process
# --------------------------------------------------------------------------------------------------


def term_handler_installed(pid: int) -> bool | None:
    """Whether the process catches SIGTERM now (bit 15 of SigCgt): mathtune's handler is installed.
    Python itself catches SIGINT from start-up, so SIGTERM tells whether mathtune's is in place."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    return None


def snapshot(out: Path) -> str:
    """What the output dir held at the moment of the kill, for the failure report."""
    if not out.exists():
        return "no output dir"
    parts = []
    steps = sorted(out.glob("checkpoints/step-*"))
    if steps:
        parts.append(f"checkpoint {steps[-1].name}")
    if (out / "adapter").is_dir():
        parts.append("adapter")
    for predictions in sorted(out.rglob("predictions.jsonl")):
        lines = predictions.read_bytes().count(b"\n")
        parts.append(f"{predictions.parent.relative_to(out) if predictions.parent != out else '.'}: {lines} rows")
    parts += [p.name for p in sorted(out.rglob("*")) if p.name in
              ("train_card.json", "metrics.json", "run_card.json", "report.json")]
    pngs = len(list(out.glob("*.png")))
    if pngs:
        parts.append(f"{pngs} png")
    return ", ".join(parts) or "nothing written yet"


@dataclass
class Moment:
    mode: str  # "uniform" or "after <glob>"
    delay: float  # seconds after start (uniform) or after the trigger appeared


def choose_moment(spec_triggers: tuple[tuple[str, float], ...], wall: float, rng: random.Random) -> Moment:
    if rng.random() < 0.5:
        # 1.1 x the uninterrupted wall time: some kills come too late, as real ones can.
        return Moment("uniform", rng.uniform(0, 1.1 * wall))
    trigger, window = rng.choice(spec_triggers)
    return Moment(f"after {trigger}", rng.uniform(0, window))


def wait_and_kill(proc: subprocess.Popen[bytes], sig: signal.Signals, moment: Moment,
                  armed: Callable[[], bool], describe: Callable[[], str]) -> dict[str, Any]:
    """Wait for the moment, then signal the whole process group. Returns what happened at the kill."""
    started = time.monotonic()
    fire_at: float | None = started + moment.delay if moment.mode == "uniform" else None
    while True:
        if proc.poll() is not None:
            return {"sent": False, "at_s": round(time.monotonic() - started, 3)}
        now = time.monotonic()
        if fire_at is None and armed():
            fire_at = now + moment.delay
        if fire_at is not None and now >= fire_at:
            break
        if now - started > PROCESS_TIMEOUT:
            break
        time.sleep(0.003)
    handler = term_handler_installed(proc.pid)
    state = describe()
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return {"sent": False, "at_s": round(time.monotonic() - started, 3)}
    return {"sent": True, "at_s": round(time.monotonic() - started, 3), "handler": handler, "state": state}


def wait_stopped(proc: subprocess.Popen[bytes], kill: dict[str, Any]) -> tuple[bytes, bytes, str | None]:
    """Collect the process's output once it has ended; if it outlives a delivered signal by
    STOP_TIMEOUT, SIGKILL it and say so (a command that ignores SIGINT/SIGTERM is a finding)."""
    try:
        out, err = proc.communicate(timeout=STOP_TIMEOUT if kill["sent"] else PROCESS_TIMEOUT)
        return out or b"", err or b"", None
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return out or b"", err or b"", f"still running {STOP_TIMEOUT} s after the signal: SIGKILLed"


def message_lines(stderr: str) -> list[str]:
    # splitlines() also splits at tqdm's carriage returns, so each progress redraw is its own line.
    return [line for line in stderr.splitlines() if line.strip() and not PROGRESS.match(line.strip())]


def interrupt_messages(stderr: str) -> tuple[list[str], list[str]]:
    """The non-progress lines of an interrupted command's stderr, and how they break the layout
    promised (the message on a line of its own, the last one). A message printed while a tqdm bar
    is still open lands on the bar's line; the bar's final redraw can then follow it."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    messages, problems, last = [], [], -1
    for index, line in enumerate(lines):
        if PROGRESS.match(line):
            if "mathtune: " not in line:
                continue
            line = line[line.index("mathtune: "):]
            problems.append("the interrupt line is glued to a progress bar (no newline before it)")
        messages.append(line)
        last = index
    if messages and last != len(lines) - 1:
        problems.append(f"a progress bar is redrawn after the interrupt line, which is then not stderr's last "
                        f"line: {lines[-1][:60]!r}")
    return messages, problems


def listing(out: Path) -> dict[str, tuple[int, int]]:
    """Every file under `out` with its size and mtime: what a command changed there."""
    if not out.exists():
        return {}
    return {str(p.relative_to(out)): (p.stat().st_size, p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()}


def check_claims(line: str, out: Path, before: dict[str, tuple[int, int]]) -> list[str]:
    """The interrupt line's claims must be true on disk: none mislabeled."""
    problems = []
    if line.endswith("nothing was written"):
        after = listing(out)
        changed = sorted(name for name in after if before.get(name) != after[name])
        if changed:
            problems.append(f"claims nothing was written, yet {len(changed)} file(s) were written into {out}: "
                            f"{changed[:4]}")
    if (m := re.search(r"checkpoint at step (\d+)", line)) and not (
            out / "checkpoints" / f"step-{int(m.group(1)):07d}" / "state.pt").is_file():
        problems.append(f"claims checkpoint at step {m.group(1)}, which is not on disk")
    for count, folder in re.findall(r"(\d+) predictions in (\S+?)(?:,|;|$)", line):
        path = Path(folder) / "predictions.jsonl"
        whole = path.read_bytes().count(b"\n") if path.is_file() else -1
        if whole != int(count):
            problems.append(f"claims {count} predictions in {folder}, the file holds {whole}")
    if (m := re.search(r"nothing was kept \((\S+) was removed\)", line)) and Path(m.group(1)).exists():
        problems.append(f"claims {m.group(1)} was removed, it exists")
    if "the trained adapter" in line and not (out / "adapter").is_dir():
        problems.append("claims the trained adapter, there is none")
    return problems


def kill_cli(spec: Spec, argv: list[str], out: Path, sig: signal.Signals, moment: Moment,
             env: dict[str, str]) -> dict[str, Any]:
    """Start `argv`, kill it at `moment`, check the interrupt contract. `next` is the command that
    continues the work."""
    before = listing(out)
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    # stderr is read only after the process ends: its few KB of progress lines fit the pipe buffer.
    trigger = moment.mode.removeprefix("after ")
    kill: dict[str, Any] = {"sent": False}
    try:
        kill = wait_and_kill(proc, sig, moment, lambda: any(out.glob(trigger)), lambda: snapshot(out))
    finally:  # never leave a process behind, even when this script itself is interrupted
        if proc.poll() is None and not kill["sent"]:
            os.killpg(proc.pid, signal.SIGKILL)
    _, err, hang = wait_stopped(proc, kill)
    stderr = err.decode("utf-8", "replace")
    record = {"signal": sig.name, "mode": moment.mode, "delay_s": round(moment.delay, 3), **kill,
              "exit": proc.returncode, "stderr_tail": stderr[-600:], "contract": [hang] if hang else []}
    # Exit 0: it finished before the signal reached it (or the signal came during its last instants),
    # unless the handler's exception was raised where Python can only print and drop it (a weakref
    # callback, a __del__): then the signal was delivered and swallowed, and the command carried on.
    swallowed = proc.returncode == 0 and kill["sent"] and "mathtune.interrupts.Interrupted" in stderr
    record["interrupted"] = proc.returncode != 0 or swallowed
    if swallowed:
        record["contract"].append(f"{sig.name} swallowed: the command carried on and exited 0, with a traceback "
                                  f"('Exception ignored in ...' Interrupted) on stderr")
    if proc.returncode == 0:
        return record | {"next": None}
    default_next = argv + ["--resume"] if spec.resume_flag and "--resume" not in argv else argv
    record["next"] = default_next
    if sig == signal.SIGKILL:
        if proc.returncode != -signal.SIGKILL:
            record["contract"].append(f"exit {proc.returncode}, expected -9")
        return record
    lines, layout = interrupt_messages(stderr)
    expected = EXPECTED_EXIT[sig]
    if proc.returncode != expected:
        record["contract"].append(f"exit {proc.returncode}, expected {expected}")
    record["contract"] += layout
    if len(lines) != 1 or not lines[0].startswith(f"mathtune: interrupted by {sig.name}"):
        record["contract"].append(f"stderr is not one 'mathtune: interrupted by {sig.name}' line: {lines[-3:]}")
        return record
    line = lines[0]
    record["line"] = line
    record["contract"] += check_claims(line, out, before)
    if spec.watched and line.endswith("nothing was written"):
        record["next"] = argv  # stopped before the run dir was chosen: the same command starts afresh
    elif spec.watched:
        if "continue with: " not in line:
            record["contract"].append("no 'continue with:' command")
            return record
        told = shlex.split(line.split("continue with: ", 1)[1])
        if told[0] != "mathtune" or told[1:] != default_next[1:]:
            record["contract"].append(f"continue command {shlex.join(told)} != {shlex.join(default_next[1:])}")
        record["next"] = [argv[0], *told[1:]]  # exactly what the user is told to run
    return record


def finish_cli(argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run the continuing command to its end: 0, or a clean refusal (2 and one error line)."""
    started = time.monotonic()
    # Its own session, like the killed ones: a Ctrl-C meant for this script must not reach it.
    proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=PROCESS_TIMEOUT,
                          start_new_session=True)
    stderr = proc.stderr.decode("utf-8", "replace")
    lines = message_lines(stderr)
    result = {"argv": argv[1:], "exit": proc.returncode, "seconds": round(time.monotonic() - started, 2)}
    if proc.returncode == 0:
        return result | {"outcome": "ok"}
    if proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("mathtune: error:"):
        return result | {"outcome": "refused", "line": lines[0]}
    return result | {"outcome": "failed", "stderr_tail": stderr[-1500:]}


# --------------------------------------------------------------------------------------------------
# The rating store
# --------------------------------------------------------------------------------------------------


def planned_rating(index: int) -> Any:
    """The index-th rating the child adds: the row with id index+1 must hold exactly this."""
    from mathtune.app.ratings import Rating

    return Rating(rater=f"rater{index % 3}", problem_id=str(index), model="base" if index % 2 else "tuned",
                  question=f"question {index}?", output=f"output {index} " + "x" * (index % 97),
                  correctness=1 + index % 5, coherence=1 + index // 5 % 5, readability=1 + index // 25 % 5,
                  pedagogy=1 + index * 7 % 5)


def ratings_child(db: Path) -> None:
    """Add ratings forever; print each id only after `add` returned (the commit is done)."""
    from mathtune.app.ratings import RatingStore

    store = RatingStore(db)
    index = len(store.rows())  # a restarted child continues the plan where the database ends
    print("ready", flush=True)
    while True:
        print(store.add(planned_rating(index)), flush=True)
        index += 1


def kill_ratings(db: Path, sig: signal.Signals, moment: Moment, env: dict[str, str], acked: list[int]
                 ) -> dict[str, Any]:
    proc = subprocess.Popen([sys.executable, __file__, "--ratings-child", str(db)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    # A reader thread collects the acknowledged ids as they come, so the pipe never fills and the
    # trigger ("first ack") can be polled.
    out_lines: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            out_lines.append(raw.decode())

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    kill: dict[str, Any] = {"sent": False}
    try:
        kill = wait_and_kill(proc, sig, moment, lambda: len(out_lines) > 1,
                             lambda: f"{max(len(out_lines) - 1, 0)} ratings acknowledged")
    finally:
        if proc.poll() is None and not kill["sent"]:
            os.killpg(proc.pid, signal.SIGKILL)
    try:
        proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:  # the child must die of SIGINT/SIGTERM; see reset_inherited_signals
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    reader.join(timeout=10)
    stderr = proc.stderr.read().decode("utf-8", "replace") if proc.stderr else ""
    # Only whole lines are acknowledgements: a line cut by the kill was never fully printed.
    new = [int(line) for line in out_lines if line.endswith("\n") and line.strip().isdigit()]
    acked.extend(new)
    return {"signal": sig.name, "mode": moment.mode, "delay_s": round(moment.delay, 3), **kill,
            "exit": proc.returncode, "acked": len(new), "stderr_tail": stderr[-400:], "contract": [],
            "interrupted": proc.returncode != 0}


def check_ratings(db: Path, acked: list[int]) -> list[str]:
    from dataclasses import asdict

    from mathtune.app.ratings import RatingStore

    if not db.exists():
        return [f"database missing, {len(acked)} ratings were acknowledged"] if acked else []
    with sqlite3.connect(db) as conn:  # opening rolls back a hot journal, as the app's next open would
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        has_table = conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'ratings'").fetchone()[0]
        rows = conn.execute("SELECT * FROM ratings ORDER BY id").fetchall() if has_table else []
        names = [d[0] for d in conn.execute("SELECT * FROM ratings").description] if has_table else []
    conn.close()
    problems = [] if integrity == "ok" else [f"integrity_check: {integrity}"]
    ids = [row[0] for row in rows]
    lost = sorted(set(acked) - set(ids))
    if lost:
        problems.append(f"{len(lost)} acknowledged ratings lost: ids {lost[:10]}")
    if ids != list(range(1, len(ids) + 1)):
        problems.append(f"ids are not 1..{len(ids)}: {ids[:5]}...")
    # At most one row may be committed but unacknowledged per kill (killed between commit and print).
    for row in rows:
        got = dict(zip(names, row, strict=True))
        want = asdict(planned_rating(got["id"] - 1))
        if any(got[key] != value for key, value in want.items()):
            problems.append(f"row {got['id']} does not hold the rating written as it")
            break
    try:
        new_id = RatingStore(db).add(planned_rating(len(ids)))
        if new_id != len(ids) + 1:
            problems.append(f"a new rating got id {new_id}, expected {len(ids) + 1}")
    except Exception as exc:  # any failure to write after the kill is the finding itself
        problems.append(f"the store refuses a new rating: {type(exc).__name__}: {exc}")
    return problems


# --------------------------------------------------------------------------------------------------
# Set-up, references, trials
# --------------------------------------------------------------------------------------------------


def run_reference(argv: list[str], env: dict[str, str]) -> float:
    started = time.monotonic()
    proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=PROCESS_TIMEOUT)
    if proc.returncode != 0:
        raise SystemExit(f"reference {argv[1]} failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
    return time.monotonic() - started


def prepare(workdir: Path) -> tuple[Setup, dict[str, float]]:
    """The tiny model, the data and the uninterrupted outputs, built once (reused from a --workdir
    that already has them: the references do not depend on the seed)."""
    sys.path.insert(0, str(REPO / "tests"))
    from helpers import make_tiny_model, write_gsm8k_dir

    sys.path.insert(0, str(freeze_source(workdir)))  # this process's own imports of mathtune too
    env = child_env(workdir)
    setup = Setup(workdir / "model" / "llama", workdir / "data", workdir / "ref", env)
    done = workdir / "ref" / "walls.json"
    if done.is_file():
        return setup, json.loads(done.read_text())
    shutil.rmtree(workdir / "ref", ignore_errors=True)
    if not (setup.model / "config.json").is_file():
        write_gsm8k_dir(setup.data)
        corpus = [line for f in sorted((setup.data / "gsm8k").glob("*.jsonl")) for line in f.read_text().splitlines()]
        make_tiny_model("llama", setup.model, corpus)
    script, walls = console_script(), {}
    for name in ("train", "eval", "run", "report"):  # report reads ref/run: after it
        walls[name] = run_reference([script, *SPECS[name].args(setup, setup.ref / name)], env)
        print(f"reference {name}: {walls[name]:.1f} s", flush=True)
    # The rating store: time to the child's first acknowledgement, plus a second of adding.
    db = workdir / "ref-ratings.sqlite"
    db.unlink(missing_ok=True)
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, __file__, "--ratings-child", str(db)], env=env,
                            stdout=subprocess.PIPE, start_new_session=True)
    assert proc.stdout is not None
    proc.stdout.readline()
    walls["ratings"] = time.monotonic() - started + 1.0
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done.write_text(json.dumps(walls))
    return setup, walls


def cli_trial(spec: Spec, setup: Setup, wall: float, trial_dir: Path, sig: signal.Signals, rng: random.Random,
              again: float, max_kills: int) -> dict[str, Any]:
    out = trial_dir / "out"
    argv = [console_script(), *spec.args(setup, out)]
    kills: list[dict[str, Any]] = []
    record: dict[str, Any] = {"command": spec.name, "kills": kills}
    while True:
        kill = kill_cli(spec, argv, out, sig, choose_moment(spec.triggers, wall, rng), setup.env)
        kills.append(kill)
        if not kill["interrupted"] or kill["exit"] == 0:
            break
        argv = kill["next"]
        if len(kills) >= max_kills or rng.random() >= again:
            break
        sig = rng.choice(SIGNALS)  # the continuing command, killed once more
    if kills[-1]["interrupted"] and kills[-1]["exit"] != 0:
        record["final"] = finish_cli(argv, setup.env)
        outcome = record["final"]["outcome"]
    else:
        outcome = "ok"
    record["diff"] = DIFFS[spec.name](out, setup.ref / spec.name) if outcome != "failed" else []
    if outcome == "refused":
        record["intact"] = not record["diff"]  # refused, and is what is there still right?
        record["diff"] = []
    record["litter"] = litter(out)
    record["outcome"] = outcome
    return record


def ratings_trial(setup: Setup, wall: float, trial_dir: Path, sig: signal.Signals, rng: random.Random,
                  again: float, max_kills: int) -> dict[str, Any]:
    db = trial_dir / "ratings.sqlite"
    trial_dir.mkdir(parents=True, exist_ok=True)
    acked: list[int] = []
    kills: list[dict[str, Any]] = []
    while True:
        kills.append(kill_ratings(db, sig, choose_moment((("ack", 1.0),), wall, rng), setup.env, acked))
        if len(kills) >= max_kills or rng.random() >= again:
            break
        sig = rng.choice(SIGNALS)
    diff = check_ratings(db, acked)
    return {"command": "ratings", "kills": kills, "acked": len(acked), "diff": diff, "litter": [],
            "outcome": "ok"}


def schedule(trials: int, rng: random.Random) -> list[tuple[str, signal.Signals]]:
    """Every (command, signal) pair equally often: blocks of all 15, each block shuffled."""
    pairs = [(command, sig) for command in COMMANDS for sig in SIGNALS]
    order: list[tuple[str, signal.Signals]] = []
    while len(order) < trials:
        block = pairs[:]
        rng.shuffle(block)
        order += block
    return order[:trials]


def kill_phase(kill: dict[str, Any]) -> str:
    """Where a contract-breaking signal landed: before mathtune's handler existed (start-up, or the
    re-executed process's start-up), after it was gone (interpreter shutdown), or with it in place."""
    if kill.get("handler") is False:
        finished = any(name in kill.get("state", "") for name in ("train_card", "metrics", "run_card", "report"))
        return "shutdown (handler already gone)" if finished else "start-up (no handler yet)"
    return "handler installed"


def verdict(record: dict[str, Any]) -> tuple[bool, list[str]]:
    """A trial survives when every kill kept the contract and the results are right (or refused)."""
    problems = [f"kill {i + 1} ({k['signal']}, {kill_phase(k)}): {c}"
                for i, k in enumerate(record["kills"]) for c in k["contract"]]
    if record["outcome"] == "failed":
        problems.append(f"continuing command failed: exit {record['final']['exit']}: "
                        f"{record['final']['stderr_tail'][-400:]!r}")
    problems += [f"result: {d}" for d in record["diff"]]
    if record.get("intact") is False:  # refused, yet what the dir holds is not the uninterrupted result
        problems.append(f"refused ({record['final'].get('line')}) and the outputs differ from the uninterrupted run")
    return not problems, problems


def results_right(record: dict[str, Any]) -> bool:
    """Nothing lost or mislabeled: outputs equal the uninterrupted run's, or a clean refusal left
    them intact."""
    return not record["diff"] and record["outcome"] != "failed" and record.get("intact") is not False


def summarize(records: list[dict[str, Any]], seconds: float) -> list[str]:
    kills = [k for r in records for k in r["kills"]]
    interrupted = [(r, k) for r in records for k in r["kills"] if k["interrupted"]]
    by_signal = Counter(k["signal"] for _, k in interrupted)
    # A kill is survived when the process kept the interrupt contract and the trial's results are right.
    survived = sum(1 for r, k in interrupted if not k["contract"] and results_right(r))
    kept = sum(1 for r, _ in interrupted if results_right(r))
    broke = sum(1 for _, k in interrupted if k["contract"])
    hit_trials = [r for r in records if any(k["interrupted"] for k in r["kills"])]
    equal = sum(1 for r in hit_trials if r["outcome"] == "ok" and results_right(r))
    refused = sum(1 for r in records if r["outcome"] == "refused")
    lost = sum(1 for r in records if not results_right(r))
    failures = sum(1 for r in records if not r["survived"])
    lines = [
        f"fault injection: {len(records)} trials, {len(kills)} kills tried; interrupted {len(interrupted)} "
        f"(SIGINT {by_signal['SIGINT']}, SIGTERM {by_signal['SIGTERM']}, SIGKILL {by_signal['SIGKILL']}), "
        f"not interrupted {len(kills) - len(interrupted)}; survived {survived}/{len(interrupted)} "
        f"(results right after {kept}/{len(interrupted)}, interrupt contract broken by {broke}); "
        f"interrupted trials equal to uninterrupted {equal}, refused cleanly {refused}; results lost: {lost}; "
        f"failures: {failures} trials; {seconds / 60:.1f} min",
    ]
    for command in COMMANDS:
        mine = [r for r in records if r["command"] == command]
        if not mine:
            continue
        ks = [k for r in mine for k in r["kills"]]
        hit = [k for k in ks if k["interrupted"]]
        ok = sum(1 for r in mine for k in r["kills"] if k["interrupted"] and not k["contract"] and results_right(r))
        lines.append(f"  {command:8} trials {len(mine):3}  kills {len(ks):3}  interrupted {len(hit):3}  "
                     f"survived {ok:3}/{len(hit):<3}  refused {sum(r['outcome'] == 'refused' for r in mine)}  "
                     f"lost {sum(1 for r in mine if not results_right(r))}  "
                     f"litter {sum(1 for r in mine if r['litter'])}")
    kinds = Counter(kind for r in records for k in r["kills"] for kind in {problem_kind(k, c) for c in k["contract"]})
    if kinds:
        lines.append("  kills that broke the interrupt contract, by kind: "
                     + "; ".join(f"{kind}: {n}" for kind, n in kinds.most_common()))
    return lines


def problem_kind(kill: dict[str, Any], text: str) -> str:
    """A short name for one contract problem, for the summary's tally."""
    if "swallowed" in text:
        return "signal swallowed, exit 0"
    if "glued" in text:
        return "line glued to a progress bar"
    if "redrawn after" in text:
        return "progress bar redrawn after the line"
    if text.startswith("claims"):
        return "false claim in the line"
    if "internal error" in kill["stderr_tail"]:
        return f"reported as an internal error (exit {kill['exit']}), {kill_phase(kill)}"
    if kill_phase(kill) != "handler installed":
        return f"no line, exit {kill['exit']}: {kill_phase(kill)}"
    return "other"


def describe(index: int, total: int, record: dict[str, Any]) -> str:
    parts = []
    for k in record["kills"]:
        where = "handler" if k.get("handler") else "no handler" if k.get("handler") is False else ""
        if not k.get("sent"):
            parts.append(f"{k['signal']} never sent (finished at {k['at_s']}s) -> {k['exit']}")
        else:
            parts.append(f"{k['signal']} {k['mode']} +{k['delay_s']}s at {k['at_s']}s [{k.get('state')}; {where}] "
                         f"-> {k['exit']}")
    final = record.get("final")
    tail = f" | continue -> {final['exit']}" if final else ""
    status = "ok" if record["survived"] else "FAIL"
    return (f"[{index:3}/{total}] {record['command']:7} {'; '.join(parts)}{tail} | {record['outcome']} "
            f"{status} ({record['seconds']:.0f} s)")


# --------------------------------------------------------------------------------------------------
# Faults other than signals (--faults): refused writes, cache races, a torn cache, an offline hub
# --------------------------------------------------------------------------------------------------

FAULTS = ("disk-full-train", "disk-full-eval", "cache-race", "torn-cache", "offline-hub")
CACHE_RACERS = 4
OFFLINE_BUDGET_S = 3.0  # after the imports: the hub's part of the command


def limited_file_size(limit: int) -> Callable[[], None]:
    """RLIMIT_FSIZE in the child: a write past `limit` bytes fails with EFBIG (Python ignores SIGXFSZ),
    as a write to a full disk fails with ENOSPC, without root or a small filesystem."""
    import resource

    def apply() -> None:
        os.setsid()
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    return apply


def write_fault(spec: Spec, setup: Setup, trial_dir: Path, rng: random.Random) -> dict[str, Any]:
    """Run a command with a file-size limit drawn between 1 KB and its largest output file; it must
    finish (limit above every write) or stop with exit 2 and one line naming the path and the command
    that continues, leaving no temp file. The continuing command, without the limit, must end with the
    uninterrupted run's outputs."""
    out = trial_dir / "out"
    largest = max(f.stat().st_size for f in (setup.ref / spec.name).rglob("*") if f.is_file())
    limit = rng.randint(1024, max(1025, largest))
    argv = [console_script(), *spec.args(setup, out)]
    proc = subprocess.run(argv, env=setup.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          timeout=PROCESS_TIMEOUT, preexec_fn=limited_file_size(limit))
    lines = message_lines(proc.stderr.decode("utf-8", "replace"))
    record: dict[str, Any] = {"fault": f"disk-full-{spec.name}", "limit_bytes": limit, "exit": proc.returncode,
                              "line": lines[-1] if lines else None, "contract": [], "diff": []}
    record["faulted"] = proc.returncode != 0
    if record["faulted"]:
        if proc.returncode != 2 or len(lines) != 1 or not lines[0].startswith("mathtune: error: cannot write"):
            record["contract"].append(f"exit {proc.returncode}, stderr {lines[-3:]}")
        elif "continue with: " not in lines[0]:
            record["contract"].append("no 'continue with:' command")
        record["litter"] = litter(out)
        if record["litter"]:
            record["contract"].append(f"temp files left: {record['litter']}")
        told = lines[-1].split("continue with: ", 1)[1].split(" (after freeing", 1)[0] \
            if lines and "continue with: " in lines[-1] else shlex.join(["mathtune", *argv[1:]])
        argv = [argv[0], *shlex.split(told)[1:]]
        final = finish_cli(argv, setup.env)
        record["final"] = final
        if final["outcome"] != "ok":
            record["diff"].append(f"continuing command: {final['outcome']} {final.get('line') or ''}")
            return record
    record["diff"] += DIFFS[spec.name](out, setup.ref / spec.name)
    return record


CACHE_RACER = """
import sys, time
from pathlib import Path
from mathtune.models.loading import publish_cache_entry
target, model, start = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
def write(out):
    for item in model.iterdir():
        (out / item.name).write_bytes(item.read_bytes())
time.sleep(max(0.0, start - time.time()))  # every racer leaves here at the same instant
publish_cache_entry(target, write)
"""


def cache_race(setup: Setup, trial_dir: Path) -> dict[str, Any]:
    """Processes started together build the same cache entry: all must succeed, one whole entry stays."""
    from mathtune.models.loading import cache_entry_complete

    target = trial_dir / "cache" / "gguf" / "entry"
    start = time.time() + 8.0  # after every racer's imports
    procs = [subprocess.Popen([sys.executable, "-c", CACHE_RACER, str(target), str(setup.model), str(start)],
                              env=setup.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for _ in range(CACHE_RACERS)]
    results = [(proc.wait(PROCESS_TIMEOUT), proc.stderr.read().decode()[-300:] if proc.stderr else "")
               for proc in procs]
    contract = [f"racer exit {code}: {err.strip().splitlines()[-1:]}" for code, err in results if code != 0]
    others = [p.name for p in target.parent.iterdir() if p.name != target.name and not p.name.endswith(".lock")]
    diff = [] if cache_entry_complete(target) else ["the entry is not complete"]
    if others:
        diff.append(f"left beside the entry: {others}")
    return {"fault": "cache-race", "faulted": True, "contract": contract, "diff": diff, "litter": others}


def torn_cache(setup: Setup, trial_dir: Path, rng: random.Random) -> dict[str, Any]:
    """An entry whose weights are cut at a random byte must be found incomplete and rebuilt whole."""
    from mathtune.models.loading import cache_entry_complete, publish_cache_entry

    target = trial_dir / "cache" / "entry"

    def write(out: Path) -> None:
        for item in setup.model.iterdir():
            (out / item.name).write_bytes(item.read_bytes())

    publish_cache_entry(target, write)
    weights = next(target.glob("*.safetensors"))
    whole = weights.read_bytes()
    cut = rng.randrange(len(whole))
    weights.write_bytes(whole[:cut])
    contract = [] if not cache_entry_complete(target) else [f"weights cut at byte {cut} not detected"]
    publish_cache_entry(target, write)
    diff = [] if cache_entry_complete(target) and weights.read_bytes() == whole else ["not rebuilt whole"]
    return {"fault": "torn-cache", "faulted": True, "cut_at": cut, "contract": contract, "diff": diff, "litter": []}


def offline_hub(setup: Setup, trial_dir: Path) -> dict[str, Any]:
    """A hub id with no network (the endpoint a closed local port): one line, no retry chatter, and
    the command's time after its imports under OFFLINE_BUDGET_S (measured against `--help`'s start-up)."""
    env = {**setup.env, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"}
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(name, None)
    argv = [console_script(), "eval", "--base", "--model", "someone/somemodel", "--data-dir", str(setup.data),
            "-o", str(trial_dir / "out"), "-s", "eval.split=train"]
    started = time.monotonic()
    proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=PROCESS_TIMEOUT)
    seconds = time.monotonic() - started
    lines = message_lines(proc.stderr.decode("utf-8", "replace"))
    contract = []
    if proc.returncode != 2 or len(lines) != 1 or "cannot be reached" not in lines[0]:
        contract.append(f"exit {proc.returncode}, {len(lines)} stderr lines: {lines[:3]}")
    imports = time.monotonic()
    subprocess.run([console_script(), "eval", "--help"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=PROCESS_TIMEOUT)
    baseline = time.monotonic() - imports
    # `eval --help` imports less than an eval does; the margin is the difference, an upper bound
    if seconds - baseline > OFFLINE_BUDGET_S + 10:
        contract.append(f"took {seconds:.1f} s against {baseline:.1f} s of start-up")
    return {"fault": "offline-hub", "faulted": True, "seconds": round(seconds, 1), "startup_s": round(baseline, 1),
            "contract": contract, "diff": [], "litter": []}


def run_faults(setup: Setup, workdir: Path, repeats: int, rng: random.Random) -> list[dict[str, Any]]:
    records = []
    for repeat in range(repeats):
        for fault in FAULTS:
            trial_dir = workdir / "faults" / f"{repeat:02d}-{fault}"
            shutil.rmtree(trial_dir, ignore_errors=True)
            trial_dir.mkdir(parents=True)
            t0 = time.monotonic()
            if fault.startswith("disk-full-"):
                record = write_fault(SPECS[fault.removeprefix("disk-full-")], setup, trial_dir, rng)
            elif fault == "cache-race":
                record = cache_race(setup, trial_dir)
            elif fault == "torn-cache":
                record = torn_cache(setup, trial_dir, rng)
            else:
                record = offline_hub(setup, trial_dir)
            record["seconds"] = round(time.monotonic() - t0, 1)
            record["survived"] = not record["contract"] and not record["diff"]
            records.append(record)
            detail = f"limit {record['limit_bytes']} B, exit {record['exit']}" if "limit_bytes" in record else ""
            print(f"[fault] {fault:16} {'ok' if record['survived'] else 'FAIL'} {detail} ({record['seconds']} s) "
                  f"{record['contract'] + record['diff']}", flush=True)
            if record["survived"]:
                shutil.rmtree(trial_dir, ignore_errors=True)
    return records


def summarize_faults(records: list[dict[str, Any]]) -> list[str]:
    faulted = [r for r in records if r["faulted"]]
    lines = [f"faults: {len(records)} tried, {len(faulted)} hit the command (the others' limit was above every "
             f"write), survived {sum(r['survived'] for r in faulted)}/{len(faulted)}; results lost: "
             f"{sum(1 for r in records if r['diff'])}"]
    for fault in FAULTS:
        mine = [r for r in records if r["fault"] == fault]
        if mine:
            hit = [r for r in mine if r["faulted"]]
            survived = sum(r["survived"] for r in hit)
            lines.append(f"  {fault:16} tried {len(mine):3}  hit {len(hit):3}  survived {survived:3}"
                         f"/{len(hit):<3}  lost {sum(1 for r in mine if r['diff'])}  "
                         f"litter {sum(1 for r in mine if r.get('litter'))}")
    return lines


def reset_inherited_signals() -> None:
    """An ignored signal stays ignored across fork and exec: started with `nohup` or `&` from a
    script, this process and every child would ignore SIGINT (and SIGHUP/SIGQUIT), and Python
    installs no KeyboardInterrupt handler then. The children must meet the signals as a terminal's
    user's commands do, so give them back their default dispositions."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also: Ctrl-C stops this battery cleanly
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        if signal.getsignal(sig) == signal.SIG_IGN:
            signal.signal(sig, signal.SIG_DFL)


def write_json(path: Path | None, lines: list[str], args: argparse.Namespace, walls: dict[str, float],
               records: list[dict[str, Any]]) -> None:
    if path:
        path.write_text(json.dumps({"summary": lines, "seed": args.seed, "walls": walls, "trials": records},
                                   indent=1, default=str))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="keep the model, references and failed trials here")
    parser.add_argument("--json", type=Path, help="write every trial's record here")
    parser.add_argument("--again", type=float, default=0.25,
                        help="probability that the continuing command is killed once more")
    parser.add_argument("--max-kills", type=int, default=2, help="kills per trial at most")
    parser.add_argument("--max-minutes", type=float, help="start no trial after this many minutes")
    parser.add_argument("--commands", default=",".join(COMMANDS),
                        help="comma-separated subset of " + ",".join(COMMANDS))
    parser.add_argument("--faults", type=int, default=0, metavar="N",
                        help="also run each non-signal fault N times (" + ", ".join(FAULTS) + ")")
    parser.add_argument("--ratings-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ratings_child:
        ratings_child(args.ratings_child)
        return
    reset_inherited_signals()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mathtune-fi-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    setup, walls = prepare(workdir)
    rng = random.Random(args.seed)
    commands = [c for c in COMMANDS if c in args.commands.split(",")]
    plan = [(c, s) for c, s in schedule(args.trials * len(COMMANDS), rng) if c in commands][: args.trials]
    records: list[dict[str, Any]] = []
    trials_started = time.monotonic()
    for index, (command, sig) in enumerate(plan, 1):
        if args.max_minutes and time.monotonic() - trials_started > 60 * args.max_minutes:
            print(f"stopping after {index - 1} trials: --max-minutes {args.max_minutes} reached", flush=True)
            break
        trial_dir = workdir / "trials" / f"{index:03d}-{command}-{sig.name}"
        shutil.rmtree(trial_dir, ignore_errors=True)
        trial_dir.mkdir(parents=True)
        t0 = time.monotonic()
        try:
            if command == "ratings":
                record = ratings_trial(setup, walls[command], trial_dir, sig, rng, args.again, args.max_kills)
            else:
                record = cli_trial(SPECS[command], setup, walls[command], trial_dir, sig, rng, args.again,
                                   args.max_kills)
        except KeyboardInterrupt:  # Ctrl-C: the trials done so far still get their summary
            print(f"stopped by Ctrl-C during trial {index}; summarizing the {index - 1} finished", flush=True)
            break
        record["seconds"] = round(time.monotonic() - t0, 1)
        record["trial"] = index
        record["survived"], record["problems"] = verdict(record)
        records.append(record)
        print(describe(index, len(plan), record), flush=True)
        for problem in record["problems"]:
            print(f"      {problem}", flush=True)
        if record["litter"]:
            print(f"      litter left by a kill: {record['litter']}", flush=True)
        if record["survived"]:
            shutil.rmtree(trial_dir, ignore_errors=True)  # failed trials stay for inspection
        # after every trial: a battery stopped from outside still leaves its records
        write_json(args.json, summarize(records, time.monotonic() - started), args, walls, records)
    lines = summarize(records, time.monotonic() - started) if records else []
    faults = run_faults(setup, workdir, args.faults, rng) if args.faults else []
    if faults:
        lines += summarize_faults(faults)
    print("\n".join(lines), flush=True)
    write_json(args.json, lines, args, walls, records + faults)
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(1 if any(not r["survived"] for r in records + faults) else 0)

if __name__ == "__main__":
    main()
