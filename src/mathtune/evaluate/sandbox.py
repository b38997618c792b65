"""Run model-generated Python (treat it as hostile) and return its answer.

Each program runs in a fresh ``python -I -S -B`` process with layered containment; any one layer
failing should not be enough to escape:

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

from mathtune.errors import MathtuneError
from mathtune.evaluate.calculator import format_number

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
    return [sys.executable, "-I", "-S", "-B", "-c", _CHILD_SOURCE, SANDBOX_TAG, str(workdir)] + [
        str(n) for n in numbers
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


# The child: a plain script, because under -I -S it cannot import mathtune. It runs as root until
# isolate(); everything the audit hook uses is bound into its closure so a program that patches
# builtins or modules cannot change the hook's decisions.
_CHILD_SOURCE = r'''
import sys


class Blocked(BaseException):
    """BaseException, so `except Exception` in the program does not swallow it."""


class OutputTooLarge(BaseException):
    pass


class Capture:
    def __init__(self, limit):
        self.parts, self.size, self.limit, self.overflowed = [], 0, limit, False

    def write(self, text):
        if type(text) is not str:
            raise TypeError("write() argument must be str")
        self.size += len(text)
        if self.size > self.limit:
            self.overflowed = True
            raise OutputTooLarge
        self.parts.append(text)
        return len(text)

    def flush(self):
        pass

    def text(self):
        return "".join(self.parts)


def main():
    import os
    marker, _, code = sys.stdin.buffer.read().partition(b"\n")
    # Keep the text wrapper alive: once sys.stdout is replaced, dropping it would close the fd.
    real_stdout, exit_now = sys.stdout, os._exit
    real_out = real_stdout.buffer
    try:
        max_output, user_builtins, capture, violations = setup(os)
    except BaseException as exc:
        report(real_out, marker, ["error: sandbox setup failed: " + describe(exc)[len("error: "):], "", ""])
        exit_now(0)
    reason, answer = run(code, user_builtins, capture)
    if violations:
        reason, answer = "blocked: " + violations[0], None
    elif capture.overflowed:
        reason, answer = "output too large", None
    report(real_out, marker, [reason, answer or "", capture.text()[:max_output]])
    exit_now(0)  # skip interpreter shutdown, where the program's __del__ methods would run


def setup(os):
    import io
    workdir = sys.argv[2]
    cpu, memory, nproc, fsize, nofile, max_output, drop_to, max_writes = map(int, sys.argv[3:11])
    stdlib = os.path.realpath(os.path.dirname(os.__file__))
    allowed = frozenset(ALLOWED)
    for name in allowed:
        __import__(name)
    import warnings
    warnings.simplefilter("ignore")  # warnings.warn walks frames, which the hook refuses
    import ctypes
    import resource  # both imported while still root: /root may be unreadable for nobody
    isolate(os, ctypes, drop_to)
    set_limits(resource, cpu, memory, nproc, fsize, nofile)
    for name in [m for m in sys.modules if m.split(".")[0] in FORGET]:
        del sys.modules[name]
    violations, capture = [], Capture(max_output)
    user_builtins = guarded_builtins(allowed, violations)
    sys.stdin = sys.__stdin__ = io.StringIO("")
    sys.stdout = sys.__stdout__ = capture
    sys.stderr = sys.__stderr__ = Capture(max_output)
    install_hook(os, workdir, stdlib, allowed, violations, max_writes)
    return max_output, user_builtins, capture, violations


def report(real_out, marker, fields):
    encoded = [f.encode("utf-8", "replace").hex().encode("ascii") for f in fields]
    real_out.write(b"\n" + b" ".join([marker] + encoded) + b"\n")
    real_out.flush()


def isolate(os, ctypes, drop_to):
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    if os.geteuid() == 0:
        libc.unshare(0x40000000)  # CLONE_NEWNET: best effort, needs CAP_SYS_ADMIN
    if drop_to >= 0:
        os.setgroups([])
        os.setgid(drop_to)
        os.setuid(drop_to)
    os.umask(0o077)


def set_limits(r, cpu, memory, nproc, fsize, nofile):
    r.setrlimit(r.RLIMIT_CORE, (0, 0))
    r.setrlimit(r.RLIMIT_CPU, (cpu, cpu + 1))
    r.setrlimit(r.RLIMIT_NPROC, (nproc, nproc))
    r.setrlimit(r.RLIMIT_FSIZE, (fsize, fsize))
    r.setrlimit(r.RLIMIT_NOFILE, (nofile, nofile))
    r.setrlimit(r.RLIMIT_AS, (memory, memory))


def guarded_builtins(allowed, violations):
    import builtins
    real_import, names = builtins.__import__, dict(builtins.__dict__)

    def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
        if level != 0 or name.partition(".")[0] not in allowed:
            detail = "import " + "." * level + str(name)[:80]
            violations.append(detail)
            raise Blocked(detail)
        return real_import(name, globals, locals, fromlist, level)

    names["__import__"] = guarded_import
    for name in ("breakpoint", "exit", "quit", "help"):
        names.pop(name, None)
    return names


def install_hook(os, workdir, stdlib, allowed, violations, max_writes):
    safe = frozenset(SAFE_EVENTS)
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    getcwd, type_of, text, str_type, bytes_type = os.getcwd, type, str, str, bytes
    blocked, writes = Blocked, [0]

    def resolve(path):
        # Lexical: the program cannot create symlinks (os.symlink is refused) to fool it.
        if type_of(path) is bytes_type:
            path = path.decode("utf-8", "surrogateescape")
        if type_of(path) is not str_type:
            return None
        if not path.startswith("/"):
            path = getcwd() + "/" + path
        parts = []
        for part in path.split("/"):
            if part == "..":
                if parts:
                    parts.pop()
            elif part not in ("", "."):
                parts.append(part)
        return "/" + "/".join(parts)

    def open_allowed(path, mode, flags):
        full = resolve(path)
        if full is None or type_of(mode) is not str_type:  # fds, and os.open (mode None, dir_fd)
            return False
        if full == workdir or full.startswith(workdir + "/"):
            if flags & write_flags:
                writes[0] += 1
                return writes[0] <= max_writes
            return True
        return not flags & write_flags and full.startswith(stdlib + "/")

    def hook(event, args):
        if event in safe:
            return
        if event == "import" and args[0].partition(".")[0] in allowed:
            return
        if event == "open" and open_allowed(*args[:3]):
            return
        detail = event if event not in ("open", "import") else event + " " + text(args[0])[:120]
        violations.append(detail)
        raise blocked(detail)

    sys.addaudithook(hook)


def run(code, user_builtins, capture):
    namespace = {"__name__": "__main__", "__builtins__": user_builtins}
    try:
        exec(compile(code, "<program>", "exec", dont_inherit=True), namespace)
        answer = pick_answer(namespace, capture)
        return ("ok" if answer else "no result"), answer
    except OutputTooLarge:
        return "output too large", None
    except MemoryError:
        namespace.clear()
        return "memory", None
    except BaseException as exc:
        namespace.clear()
        return describe(exc), None


def pick_answer(namespace, capture):
    for name in ("answer", "result"):
        value = namespace.get(name)
        if value is not None and not callable(value):
            return as_text(value)
    solution = namespace.get("solution")
    if callable(solution):
        value = solution()
        if value is not None:
            return as_text(value)
    lines = [line.strip() for line in capture.text().splitlines() if line.strip()]
    return lines[-1][:1000] if lines else None


def as_text(value):
    import decimal
    import fractions
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        if value.bit_length() > 10000:
            raise ValueError("answer is too large")
        return str(int(value))
    if isinstance(value, fractions.Fraction):
        return str(value.numerator) if value.denominator == 1 else repr(float(value))
    if isinstance(value, float):
        return repr(float(value))
    if isinstance(value, decimal.Decimal):
        return str(value)
    return str(value)[:1000]


def describe(exc):
    try:
        message = str(exc)[:300]
    except BaseException:
        message = "?"
    kind = type(exc).__name__
    if isinstance(exc, Blocked):
        return "blocked: " + message
    return "error: " + kind + (": " + message if message else "")


ALLOWED = __ALLOWED__
FORGET = {"ctypes", "_ctypes", "resource", "gc", "_signal", "signal", "_thread", "threading",
          "_posixsubprocess", "subprocess", "_socket", "socket", "select", "fcntl"}
SAFE_EVENTS = {"compile", "exec", "builtins.id", "builtins.input", "time.sleep",
               "sys.unraisablehook", "cpython._PySys_ClearAuditHooks"}
main()
'''.replace("__ALLOWED__", repr(ALLOWED_MODULES))
