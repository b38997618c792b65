"""Load test of the rating app: many raters at once through `gradio_client`, against the real app.

Starts `mathtune app` as its own process on 127.0.0.1 only, behind `--auth` (one user per rater),
on a tiny random Llama built from config (tests/helpers.py) and a run dir whose evaluation outputs
are synthetic (so the pool to rate is as large as asked and generation does not dominate). Each
rater is one `gradio_client.Client` logged in as its user, in its own thread: it draws a blind
comparison (/next_blind), submits random scores (/submit), every --double-every-th submission twice
(a double click: the second must answer "Already saved"), and every --solve-every-th step asks the
model to solve a problem (/solve, 16 new tokens). Every call has a time limit and the whole run a
deadline, so the loops end.

Checked from the database afterwards: every acknowledged submission ("Saved ...") is stored exactly
once, under the logged-in user, with the scores sent; no row is duplicated; no row exists that was
not sent. Printed: calls, errors and latency (p50, p95, max) per endpoint.

Then, with --kill: a fresh database, the same raters, and a SIGKILL of the app's process group once
--kill-after submissions were acknowledged; the app is restarted on the same file and every
submission the raters saw acknowledged must be in it (at most the ones in flight may be there
unacknowledged); the restarted app must take a new rating.

    python benchmarks/app_load.py --raters 20 --ratings 50 --kill --workdir /tmp/app_load
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
NO_RUN = "(none: base model only)"  # mathtune.app.handlers.NO_RUN
CALL_TIMEOUT_S = 60.0
START_TIMEOUT_S = 180.0
SOLVE_QUESTION = "Tom has 3 pens and buys 4 more. Then Tom gets 2 times as many. How many pens?"


def password_of(user: str) -> str:
    return f"pw-{user}-load"


def prepare(workdir: Path, raters: int, problems: int) -> dict[str, Path]:
    """A tiny model, synthetic GSM8K data, a run dir with `problems` x 2 outputs to rate, a users file."""
    sys.path.insert(0, str(REPO / "tests"))
    from helpers import make_tiny_model, write_gsm8k_dir

    workdir.mkdir(parents=True, exist_ok=True)
    data, model, run = workdir / "data", workdir / "model", workdir / "rating-run"
    if not (model / "config.json").is_file():
        write_gsm8k_dir(data)
        corpus = [line for f in sorted((data / "gsm8k").glob("*.jsonl")) for line in f.read_text().splitlines()]
        make_tiny_model("llama", model, corpus)
    write_rating_run(run, model, data, problems)
    users = workdir / "users.txt"
    users.write_text("".join(f"{user}:{password_of(user)}\n" for user in rater_names(raters)))
    return {"data": data, "model": model, "run": run, "users": users}


def rater_names(count: int) -> list[str]:
    return [f"rater{index:02d}" for index in range(count)]


def write_rating_run(run: Path, model: Path, data: Path, problems: int) -> Path:
    """A run dir as the app reads it: config.yaml and two evaluations' predictions (no adapter: only the
    base model is ever loaded, by /solve)."""
    from mathtune.config import build_config, config_to_yaml

    cfg = build_config({"model": {"name": str(model)}, "data": {"data_dir": str(data)}, "output_dir": str(run)})
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(config_to_yaml(cfg))
    for name in ("a", "b"):
        folder = run / "eval" / name
        folder.mkdir(parents=True, exist_ok=True)
        rows = [{"id": f"p{i}", "question": f"Problem {i}: what is {i} + {i}?", "reference_answer": str(2 * i),
                 "output": f"[{name}] {i} + {i} = {2 * i}. #### {2 * i if name == 'a' else i}"}
                for i in range(problems)]
        (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(paths: dict[str, Path], db: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = os.environ | {"GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1",
                        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    argv = [sys.executable, "-m", "mathtune", "app", str(paths["run"]), "--db", str(db), "--host", "127.0.0.1",
            "--port", str(port), "--auth", str(paths["users"]), "--data-dir", str(paths["data"])]
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the app exited with {proc.returncode}; see {log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, url
        except OSError:
            time.sleep(0.2)
    stop_app(proc, signal.SIGKILL)
    raise SystemExit(f"the app did not listen within {START_TIMEOUT_S:.0f} s; see {log}")


def stop_app(proc: subprocess.Popen, sig: signal.Signals = signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@dataclass
class Ack:
    """A submission the app acknowledged: what the rater was shown and sent."""

    rater: str
    question: str
    outputs: list[str]
    scores: list[int]


@dataclass
class Tally:
    acks: list[Ack] = field(default_factory=list)
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: Counter = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)
    doubles: int = 0  # second submissions of the same comparison
    doubles_refused: int = 0  # ... answered "Already saved"
    in_flight: int = 0  # submissions sent but never answered (the app was killed)
    lock: threading.Lock = field(default_factory=threading.Lock)


def call(client: Any, tally: Tally, api_name: str, *args: Any) -> Any:
    started = time.monotonic()
    try:
        result = client.submit(*args, api_name=api_name).result(timeout=CALL_TIMEOUT_S)
    except Exception as exc:
        with tally.lock:
            tally.errors[api_name] += 1
            if len(tally.error_samples) < 5:
                tally.error_samples.append(f"{api_name}: {type(exc).__name__}: {str(exc)[:200]}")
        raise
    with tally.lock:
        tally.latencies[api_name].append(time.monotonic() - started)
    return result


def rate(url: str, user: str, count: int, tally: Tally, deadline: float, seed: int, model: str,
         solve_every: int = 0, double_every: int = 0, stop: threading.Event | None = None) -> None:
    """One rater: `count` submissions (fewer if the deadline passes, the app dies or `stop` is set)."""
    from gradio_client import Client

    rng = random.Random(seed)
    try:
        client = Client(url, auth=(user, password_of(user)), verbose=False, download_files=False,
                        analytics_enabled=False)
    except Exception as exc:
        with tally.lock:
            tally.errors["login"] += 1
            tally.error_samples.append(f"login {user}: {type(exc).__name__}: {str(exc)[:200]}")
        return
    for step in range(count):
        if time.monotonic() > deadline or (stop is not None and stop.is_set()):
            return
        try:
            if solve_every and step % solve_every == solve_every - 1:
                call(client, tally, "/solve", model, NO_RUN, "qa", 16, SOLVE_QUESTION)
            question, out_a, out_b, status, *_ = call(client, tally, "/next_blind", "someone-else")
            if "No unrated outputs" in status:
                return
            scores = [rng.randint(1, 5) for _ in range(8)]
            with tally.lock:
                tally.in_flight += 1
            reply = call(client, tally, "/submit", "someone-else", *scores)
            with tally.lock:
                tally.in_flight -= 1
                if reply.startswith("Saved"):
                    tally.acks.append(Ack(user, question, [o for o in (out_a, out_b) if o], scores))
            if double_every and step % double_every == 0:
                again = call(client, tally, "/submit", "someone-else", *scores)
                with tally.lock:
                    tally.doubles += 1
                    tally.doubles_refused += again.startswith("Already saved")
        except Exception:
            if stop is not None and stop.is_set():
                return
            continue


def run_raters(url: str, users: list[str], count: int, tally: Tally, max_seconds: float, model: str,
               solve_every: int, double_every: int, stop: threading.Event | None = None) -> float:
    deadline = time.monotonic() + max_seconds
    started = time.monotonic()
    threads = [threading.Thread(target=rate, args=(url, user, count, tally, deadline, index, model),
                                kwargs={"solve_every": solve_every, "double_every": double_every, "stop": stop},
                                daemon=True)
               for index, user in enumerate(users)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max(deadline - time.monotonic(), 0) + CALL_TIMEOUT_S)
    return time.monotonic() - started


def check_store(db: Path, acks: list[Ack], in_flight: int = 0) -> list[str]:
    """Every acknowledged submission stored exactly once with its scores; nothing else but in-flight ones."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT rater, question, output, correctness, coherence, readability, pedagogy "
                            "FROM ratings").fetchall()
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    conn.close()
    problems = [] if integrity == "ok" else [f"integrity_check: {integrity}"]
    from mathtune.app.handlers import printable

    stored: dict[tuple[str, str, str], list[tuple[int, ...]]] = defaultdict(list)
    for rater, question, output, *scores in rows:  # keyed by the output as the rater saw it
        stored[(rater, question, printable(output))].append(tuple(scores))
    duplicated = sum(1 for values in stored.values() if len(values) > 1)
    if duplicated:
        problems.append(f"{duplicated} outputs stored more than once by the same rater")
    lost = wrong = 0
    expected = 0
    for ack in acks:
        for slot, output in enumerate(ack.outputs):
            expected += 1
            found = stored.get((ack.rater, ack.question, output), [])
            if not found:
                lost += 1
            elif found[0] != tuple(ack.scores[slot * 4:slot * 4 + 4]):
                wrong += 1
    if lost:
        problems.append(f"{lost} acknowledged ratings lost")
    if wrong:
        problems.append(f"{wrong} ratings stored with other scores than sent")
    extra = len(rows) - expected
    if extra < 0 or extra > 2 * in_flight:
        problems.append(f"{len(rows)} rows for {expected} acknowledged ratings ({in_flight} submissions in flight)")
    return problems


def percentile_ms(ordered: list[float], q: float) -> str:
    """Nearest-rank percentile of sorted seconds, in whole milliseconds ('–' without values)."""
    if not ordered:
        return "–"
    return f"{ordered[max(math.ceil(q * len(ordered)) - 1, 0)] * 1000:.0f}"


def latency_table(tally: Tally, wall: float) -> str:
    lines = ["| endpoint | calls | errors | p50 ms | p95 ms | max ms |", "|---|---|---|---|---|---|"]
    for name in sorted(set(tally.latencies) | set(tally.errors)):
        values = sorted(tally.latencies.get(name, []))
        lines.append(f"| {name} | {len(values)} | {tally.errors.get(name, 0)} | {percentile_ms(values, 0.50)} "
                     f"| {percentile_ms(values, 0.95)} | {percentile_ms(values, 1.0)} |")
    calls = sum(len(v) for v in tally.latencies.values())
    lines.append(f"\n{calls} calls answered in {wall:.1f} s ({calls / wall:.1f}/s)")
    return "\n".join(lines)


def load_phase(args: argparse.Namespace, paths: dict[str, Path], users: list[str]) -> list[str]:
    db = args.workdir / "load.sqlite"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    proc, url = start_app(paths, db, args.workdir / "app.log")
    tally = Tally()
    try:
        wall = run_raters(url, users, args.ratings, tally, args.max_minutes * 60, str(paths["model"]),
                          args.solve_every, args.double_every)
    finally:
        stop_app(proc)
    problems = check_store(db, tally.acks)
    wanted = len(users) * args.ratings
    if len(tally.acks) != wanted:
        problems.append(f"{len(tally.acks)} of {wanted} submissions acknowledged")
    if tally.doubles_refused != tally.doubles:
        problems.append(f"{tally.doubles - tally.doubles_refused} of {tally.doubles} double submissions not refused")
    if sum(tally.errors.values()):
        problems.append(f"{sum(tally.errors.values())} calls failed: {tally.error_samples}")
    print(f"load: {len(users)} raters x {args.ratings} submissions (1-2 ratings each), a solve every "
          f"{args.solve_every} steps, a double submit every {args.double_every}")
    print(latency_table(tally, wall))
    print(f"acknowledged {len(tally.acks)} submissions = {sum(len(a.outputs) for a in tally.acks)} ratings "
          f"(a solved problem has one output to rate); double submits "
          f"{tally.doubles}, answered 'Already saved' {tally.doubles_refused}; "
          f"problems: {problems or 'none'}", flush=True)
    return problems


def kill_phase(args: argparse.Namespace, paths: dict[str, Path], users: list[str]) -> list[str]:
    db = args.workdir / "kill.sqlite"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    proc, url = start_app(paths, db, args.workdir / "app.log")
    tally, stop = Tally(), threading.Event()
    raters = threading.Thread(target=run_raters, args=(url, users, args.ratings, tally, args.max_minutes * 60,
                                                       str(paths["model"]), args.solve_every, args.double_every),
                              kwargs={"stop": stop}, daemon=True)
    raters.start()
    deadline = time.monotonic() + args.max_minutes * 60
    while len(tally.acks) < args.kill_after and raters.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    # gradio_client prints a traceback per stream the kill breaks (its own thread): to a log, not here
    with open(args.workdir / "client-errors.log", "w") as client_log, contextlib.redirect_stderr(client_log):
        os.killpg(proc.pid, signal.SIGKILL)  # mid-load: submissions are in flight
        proc.wait()
        with tally.lock:
            acked_at_kill = len(tally.acks)
        stop.set()
        raters.join(timeout=CALL_TIMEOUT_S + 30)
    in_flight = tally.in_flight
    proc, url = start_app(paths, db, args.workdir / "app.log")  # reopens the file: WAL recovery
    try:
        problems = check_store(db, tally.acks, in_flight)
        after = Tally()
        rate(url, users[0], 1, after, time.monotonic() + 60, 999, str(paths["model"]))
        if len(after.acks) != 1:
            problems.append(f"the restarted app did not take a new rating: {after.error_samples}")
        else:
            problems += check_store(db, tally.acks + after.acks, in_flight)
    finally:
        stop_app(proc)
    print(f"kill -9 after {acked_at_kill} acknowledged submissions ({len(tally.acks)} acknowledged in all, "
          f"{in_flight} in flight); after restart: problems: {problems or 'none'}", flush=True)
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--raters", type=int, default=20)
    parser.add_argument("--ratings", type=int, default=50, help="submissions per rater")
    parser.add_argument("--solve-every", type=int, default=10)
    parser.add_argument("--double-every", type=int, default=10)
    parser.add_argument("--kill", action="store_true", help="also kill -9 the app mid-load and check after restart")
    parser.add_argument("--kill-after", type=int, default=150, help="acknowledged submissions before the kill")
    parser.add_argument("--max-minutes", type=float, default=8.0, help="deadline of each phase's rating loops")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mathtune-app-load"))
    args = parser.parse_args()
    users = rater_names(args.raters)
    paths = prepare(args.workdir, args.raters, problems=args.ratings + 10)
    problems = load_phase(args, paths, users)
    if args.kill:
        problems += kill_phase(args, paths, users)
    print("PASS" if not problems else f"FAIL: {problems}")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
