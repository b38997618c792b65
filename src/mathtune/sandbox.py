"""Run model-generated Python (treat it as hostile) and return its answer.

Each program runs in a fresh ``python -I -S -B sandbox_child.py`` process (a standalone,
stdlib-only script whose docstring describes how limits, program and result travel) with layered
containment; any one layer failing should not be enough to escape:

* **OS layer** (the real boundary): a new session (the whole process group is SIGKILLed
  afterwards), a wall-clock timeout, ``RLIMIT_CPU``/``AS``/``FSIZE``/``NOFILE``/``NPROC``/``CORE``,
  an empty environment, a fresh temporary working directory deleted afterwards. When the caller is
  root the child also enters a private network namespace (no interfaces but a down loopback),
  sets ``no_new_privs`` and drops to uid/gid 65534 ("nobody") before running anything untrusted,
  so ``RLIMIT_NPROC=0`` is enforced (it is ignored for root) and file permissions apply.
* **Python layer** (clear error messages, defence in depth): an audit hook that denies every
  event outside a small allow-list (process creation, ``os.*`` file and signal operations,
  sockets, ctypes, ``gc`` and frame introspection, ...) and permits ``open`` only inside the
  working directory (at most ``_MAX_WRITES`` files opened for writing) or read-only in the
  standard library; and an import allow-list of math modules (``ALLOWED_MODULES``).

The answer is taken, in this order, from: a global ``answer``; a global ``result``; the return
value of ``solution()``; the last non-empty line the program printed. ``None`` values and other
callables are skipped. Numeric answers are normalised like GSM8K (``72.0`` -> ``"72"``).

The child reports back on stdout as one line ``<marker> <hex fields>`` after a random per-run
marker sent over stdin, so printing cannot forge a result. Everything in one interpreter is
reachable by a determined program, though: e.g. a signal handler obtained through
``_frozen_importlib.BuiltinImporter`` receives frames and can read the marker. Such a program can
only misreport its *own* result, which it controls anyway; host safety rests on the OS layer.

Costs of the Python layer: ``collections.namedtuple`` and anything else that calls
``sys._getframe`` is refused. Linux only (``RLIMIT_AS``, network namespaces).
"""

from __future__ import annotations

import math
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from mathtune.arithmetic import format_number
from mathtune.errors import MathtuneError

# What program-of-thought solutions need; everything else ("os", "time", "sys", ...) is refused.
ALLOWED_MODULES = (
    "math cmath fractions decimal statistics itertools functools datetime collections "
    "operator random re string numbers heapq bisect"
).split()
SANDBOX_TAG = "mathtune-sandbox"  # in the child's argv, so leftover children are easy to find
_NOBODY = 65534
_MAX_WRITES = 16  # files a program may open for writing; bounds disk use to 16 x RLIMIT_FSIZE
_MAX_OPEN_FILES = 16
_MAX_PROGRAM_BYTES = 1 << 20
_INT_RE = re.compile(r"-?\d+")
# Run by path, not imported: under -I it cannot import mathtune (see its docstring for the protocol).
_CHILD_SCRIPT = Path(__file__).resolve().with_name("sandbox_child.py")


@dataclass(frozen=True)
class SandboxLimits:
    """Resources one program may use."""

    cpu_seconds: float = 2.0  # RLIMIT_CPU, rounded up to whole seconds
    wall_seconds: float = 5.0  # the whole process group is killed after this
    memory_bytes: int = 256 * 2**20  # RLIMIT_AS: address space, so a bomb fails with MemoryError
    # RLIMIT_NPROC counts every process of the uid; 0 forbids fork and threads. Root ignores it,
    # which is why the child drops to uid 65534 when started by root.
    max_processes: int = 0
    max_output_bytes: int = 64 * 1024  # printed characters kept; more is "output too large"

    def __post_init__(self) -> None:
        if self.cpu_seconds <= 0 or self.wall_seconds <= 0:
            raise MathtuneError("sandbox cpu_seconds and wall_seconds must be positive")
        if self.memory_bytes < 64 * 2**20:
            raise MathtuneError("sandbox memory_bytes must be at least 64 MiB (the interpreter needs it)")
        if self.max_processes < 0 or self.max_output_bytes <= 0:
            raise MathtuneError("sandbox max_processes must be >= 0 and max_output_bytes > 0")


@dataclass(frozen=True)
class SandboxResult:
    """What happened. ``ok`` is True only when the program finished cleanly and gave an answer."""

    ok: bool
    answer: str | None  # normalised answer text, None unless the program finished cleanly
    stdout: str  # what the program printed (truncated); empty after a timeout or crash
    reason: str  # "ok", "timeout", "memory", "output too large", "no result", "blocked: <event>",
    # "error: <ExcType>: <message>", "killed: <signal>"
    seconds: float


DEFAULT_LIMITS = SandboxLimits()


def run_program(code: str, limits: SandboxLimits = DEFAULT_LIMITS) -> SandboxResult:
    """Run ``code`` in a fresh sandboxed interpreter. Never raises: failures become ``reason``."""
    start = time.monotonic()
    try:
        reason, answer, stdout = _run(code, limits)
    except Exception as exc:  # the contract is "never raise"; report the sandbox's own failure
        reason, answer, stdout = f"error: sandbox failed: {type(exc).__name__}: {exc}", None, ""
    ok = reason == "ok"
    return SandboxResult(
        ok=ok,
        answer=_normalize_answer(answer) if ok and answer is not None else None,
        stdout=stdout[: limits.max_output_bytes],
        reason=reason,
        seconds=time.monotonic() - start,
    )


def run_programs(
    codes: list[str], limits: SandboxLimits = DEFAULT_LIMITS, max_workers: int = 2
) -> list[SandboxResult]:
    """Run many programs, ``max_workers`` at a time; results are in the order of ``codes``."""
    if max_workers < 1:
        raise MathtuneError(f"max_workers must be at least 1, got {max_workers}")
    if not codes:
        return []
    with ThreadPoolExecutor(max_workers=min(max_workers, len(codes))) as pool:
        return list(pool.map(lambda code: run_program(code, limits), codes))


def _run(code: str, limits: SandboxLimits) -> tuple[str, str | None, str]:
    marker = secrets.token_hex(16).encode("ascii")
    payload = marker + b"\n" + code.encode("utf-8", "replace")
    if len(payload) > _MAX_PROGRAM_BYTES:
        return "error: program too large", None, ""
    file_limit = 10 * limits.max_output_bytes + 65536  # hex-encoded report plus room for small files
    with tempfile.TemporaryDirectory(prefix=SANDBOX_TAG + "-", ignore_cleanup_errors=True) as tmp:
        root = Path(tmp).resolve()
        workdir = _make_workdir(root)
        argv = _child_argv(workdir, limits, file_limit)
        with open(root / "stdout", "w+b") as out, open(root / "stderr", "w+b") as err:
            timed_out, returncode = _execute(argv, payload, out, err, workdir, limits.wall_seconds)
            out.seek(0)
            report = out.read(file_limit)
            err.seek(max(0, err.seek(0, os.SEEK_END) - 4096))
            err_tail = err.read()
    if timed_out:
        return "timeout", None, ""
    fields = _parse_report(report, marker)
    if fields is not None:
        return fields
    if len(report) >= file_limit:  # wrote around sys.stdout (e.g. os.write(1, ...)) up to RLIMIT_FSIZE
        return "output too large", None, ""
    return _failure_reason(returncode, err_tail), None, ""


def _make_workdir(root: Path) -> Path:
    workdir = root / "work"
    workdir.mkdir()
    if os.geteuid() == 0:
        # The child drops to nobody: it must be able to reach and write its own directory only.
        os.chmod(root, 0o711)
        os.chown(workdir, _NOBODY, _NOBODY)
    return workdir


def _child_argv(workdir: Path, limits: SandboxLimits, file_limit: int) -> list[str]:
    drop_to = _NOBODY if os.geteuid() == 0 else -1
    numbers = [
        math.ceil(limits.cpu_seconds),
        limits.memory_bytes,
        limits.max_processes,
        file_limit,
        _MAX_OPEN_FILES,
        limits.max_output_bytes,
        drop_to,
        _MAX_WRITES,
    ]
    # Limits and the allow-list travel as argv data; the marker and the program go over stdin.
    return [
        sys.executable,
        "-I",
        "-S",
        "-B",
        str(_CHILD_SCRIPT),
        SANDBOX_TAG,
        str(workdir),
        *(str(n) for n in numbers),
        ",".join(ALLOWED_MODULES),
    ]


def _execute(
    argv: list[str], payload: bytes, out: IO[bytes], err: IO[bytes], workdir: Path, wall_seconds: float
) -> tuple[bool, int]:
    # No preexec_fn: it is unsafe with threads (run_programs); the child sets its own limits.
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=out,
        stderr=err,
        cwd=workdir,
        env={},  # nothing inherited: no credentials, no PYTHON* variables
        start_new_session=True,
        close_fds=True,
    )
    timed_out = False
    try:
        proc.communicate(payload, timeout=wall_seconds)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        _kill_group(proc.pid)
        proc.wait()
    return timed_out, proc.returncode


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the group is already empty


def _parse_report(report: bytes, marker: bytes) -> tuple[str, str | None, str] | None:
    head = b"\n" + marker + b" "
    index = report.rfind(head)
    if index < 0:
        return None
    parts = report[index + len(head) :].rstrip(b"\n").split(b" ")
    if len(parts) != 3:
        return None
    try:
        reason, answer, stdout = (bytes.fromhex(p.decode("ascii")).decode("utf-8", "replace") for p in parts)
    except ValueError:
        return None
    return reason, answer or None, stdout


def _failure_reason(returncode: int, err_tail: bytes) -> str:
    if returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        # RLIMIT_CPU sends SIGXCPU at the soft limit and SIGKILL at the hard one; RLIMIT_AS makes
        # the OOM killer (the other source of SIGKILL) unlikely.
        return "timeout"
    if returncode == -signal.SIGXFSZ:
        return "output too large"
    if b"MemoryError" in err_tail:
        return "memory"
    if returncode < 0:
        names = {int(sig): sig.name for sig in signal.Signals}
        return f"killed: {names.get(-returncode, -returncode)}"
    return "no result"  # exited without reporting, e.g. os._exit(0)


def _normalize_answer(text: str) -> str:
    stripped = text.strip()
    if _INT_RE.fullmatch(stripped):
        return str(int(stripped)) if len(stripped) < 4000 else stripped
    try:
        value = float(stripped)
    except ValueError:
        return stripped
    return format_number(value) if math.isfinite(value) else stripped
