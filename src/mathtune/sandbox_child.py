"""The sandbox's child: runs one untrusted program and reports its result (see ``sandbox.py``).

``sandbox.py`` runs this file by path as ``python -I -S -B sandbox_child.py <argv>``, in a new
session, with an empty environment, inside a fresh working directory. Under ``-I`` the project is
not importable, so this module must stay a standalone script that imports only the standard
library; importing it (e.g. for linting) has no side effects.

Protocol:

* ``argv[1:]``: ``tag workdir cpu memory nproc fsize nofile max_output drop_to max_writes allowed``.
  ``tag`` only marks the process for ``ps``; then eight integers (RLIMIT_CPU seconds, RLIMIT_AS,
  RLIMIT_NPROC, RLIMIT_FSIZE, RLIMIT_NOFILE, characters of output kept, the uid/gid to drop to or
  -1 to stay, files the program may open for writing); ``allowed`` is the comma-separated import
  allow-list. None of this is secret, and none of it is ever executed.
* ``stdin``: ``<marker>\\n<program source>``, read in full before anything else. The marker stays
  off the command line, which anything on the host (and ``/proc/self/cmdline``) can read.
* ``stdout``: after the program, one line ``\\n<marker> <reason> <answer> <stdout>``, each field the
  hex of its UTF-8 text, so nothing the program prints can be taken for the report. The process then
  leaves with ``os._exit(0)``. No report means the parent judges from the exit status and stderr.

The order inside ``setup`` is the security argument: every allowed module is imported and the
process is isolated and limited (as root: ``no_new_privs``, a network namespace, then uid
``drop_to``) before the audit hook is installed, and the hook is installed before the program is
even compiled. Everything the hook consults is bound into its closure, so a program that patches
builtins, modules or this module's globals cannot change its decisions.
"""

import os
import sys

# typing is not imported at run time: every module loaded here is one more the program can reach
# through sys.modules. Type checkers treat this constant as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from types import ModuleType
    from typing import Any, BinaryIO

# Imported by the setup and then dropped from sys.modules, so the program cannot reach them there.
FORGET = frozenset(
    {
        "ctypes",
        "_ctypes",
        "resource",
        "gc",
        "_signal",
        "signal",
        "_thread",
        "threading",
        "_posixsubprocess",
        "subprocess",
        "_socket",
        "socket",
        "select",
        "fcntl",
    }
)
# Audit events the program may raise; every other event (outside imports and open) is refused.
SAFE_EVENTS = frozenset(
    {
        "compile",
        "exec",
        "builtins.id",
        "builtins.input",
        "time.sleep",
        "sys.unraisablehook",
        "cpython._PySys_ClearAuditHooks",
    }
)
PR_SET_NO_NEW_PRIVS = 38
CLONE_NEWNET = 0x40000000


class Blocked(BaseException):
    """BaseException, so `except Exception` in the program does not swallow it."""


class OutputTooLarge(BaseException):
    """Raised by a write that takes the program's output past the limit."""


class Capture:
    """A text stream that keeps at most ``limit`` characters and raises beyond them."""

    def __init__(self, limit: int) -> None:
        self.parts: list[str] = []
        self.size, self.limit, self.overflowed = 0, limit, False

    def write(self, text: str) -> int:
        if type(text) is not str:
            raise TypeError("write() argument must be str")
        self.size += len(text)
        if self.size > self.limit:
            self.overflowed = True
            raise OutputTooLarge
        self.parts.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def text(self) -> str:
        return "".join(self.parts)


def main() -> None:
    marker, _, code = sys.stdin.buffer.read().partition(b"\n")
    # Keep the text wrapper alive: once sys.stdout is replaced, dropping it would close the fd.
    real_stdout, exit_now = sys.stdout, os._exit
    real_out = real_stdout.buffer
    try:
        max_output, user_builtins, capture, violations = setup(sys.argv[2:])
    except BaseException as exc:
        report(real_out, marker, ["error: sandbox setup failed: " + describe(exc)[len("error: ") :], "", ""])
        exit_now(0)
    reason, answer = run(code, user_builtins, capture)
    if violations:
        reason, answer = "blocked: " + violations[0], None
    elif capture.overflowed:
        reason, answer = "output too large", None
    report(real_out, marker, [reason, answer or "", capture.text()[:max_output]])
    exit_now(0)  # skip interpreter shutdown, where the program's __del__ methods would run


def setup(args: list[str]) -> tuple[int, dict[str, object], Capture, list[str]]:
    import io

    workdir = args[0]
    cpu, memory, nproc, fsize, nofile, max_output, drop_to, max_writes = map(int, args[1:9])
    allowed = frozenset(args[9].split(","))
    stdlib = os.path.realpath(os.path.dirname(os.__file__))
    for name in allowed:
        __import__(name)
    import warnings

    warnings.simplefilter("ignore")  # warnings.warn walks frames, which the hook refuses
    # Both imported while still root (/root may be unreadable for nobody), and kept local so that
    # once they leave sys.modules nothing the program can reach refers to them.
    import ctypes
    import resource

    isolate(ctypes, drop_to)
    set_limits(resource, cpu, memory, nproc, fsize, nofile)
    for name in [m for m in sys.modules if m.split(".")[0] in FORGET]:
        del sys.modules[name]
    violations: list[str] = []
    capture = Capture(max_output)
    user_builtins = guarded_builtins(allowed, violations)
    sys.stdin = sys.__stdin__ = io.StringIO("")  # type: ignore[misc,assignment]  # replaced on purpose
    sys.stdout = sys.__stdout__ = capture  # type: ignore[misc,assignment]  # only write/flush are used
    sys.stderr = sys.__stderr__ = Capture(max_output)  # type: ignore[misc,assignment]
    install_hook(workdir, stdlib, allowed, violations, max_writes)
    return max_output, user_builtins, capture, violations


def report(real_out: "BinaryIO", marker: bytes, fields: list[str]) -> None:
    encoded = [f.encode("utf-8", "replace").hex().encode("ascii") for f in fields]
    real_out.write(b"\n" + b" ".join([marker] + encoded) + b"\n")
    real_out.flush()


def isolate(ctypes: "ModuleType", drop_to: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    if os.geteuid() == 0:
        libc.unshare(CLONE_NEWNET)  # best effort: needs CAP_SYS_ADMIN
    if drop_to >= 0:
        os.setgroups([])
        os.setgid(drop_to)
        os.setuid(drop_to)
    os.umask(0o077)


def set_limits(r: "ModuleType", cpu: int, memory: int, nproc: int, fsize: int, nofile: int) -> None:
    r.setrlimit(r.RLIMIT_CORE, (0, 0))
    r.setrlimit(r.RLIMIT_CPU, (cpu, cpu + 1))
    r.setrlimit(r.RLIMIT_NPROC, (nproc, nproc))
    r.setrlimit(r.RLIMIT_FSIZE, (fsize, fsize))
    r.setrlimit(r.RLIMIT_NOFILE, (nofile, nofile))
    r.setrlimit(r.RLIMIT_AS, (memory, memory))


def guarded_builtins(allowed: frozenset[str], violations: list[str]) -> dict[str, object]:
    import builtins

    real_import, names = builtins.__import__, dict(builtins.__dict__)

    def guarded_import(
        name: str,
        globals: "Mapping[str, object] | None" = None,
        locals: "Mapping[str, object] | None" = None,
        fromlist: tuple[str, ...] = (),
        level: int = 0,
    ) -> "ModuleType":
        if level != 0 or name.partition(".")[0] not in allowed:
            detail = "import " + "." * level + str(name)[:80]
            violations.append(detail)
            raise Blocked(detail)
        return real_import(name, globals, locals, fromlist, level)

    names["__import__"] = guarded_import
    for name in ("breakpoint", "exit", "quit", "help"):
        names.pop(name, None)
    return names


def install_hook(workdir: str, stdlib: str, allowed: frozenset[str], violations: list[str], max_writes: int) -> None:
    safe = SAFE_EVENTS
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    getcwd, type_of, text, str_type, bytes_type = os.getcwd, type, str, str, bytes
    blocked, writes = Blocked, [0]

    # Only names bound here are used: the program may replace builtins such as isinstance.
    def resolve(path: "Any") -> str | None:
        # Lexical: the program cannot create symlinks (os.symlink is refused) to fool it.
        if type_of(path) is bytes_type:
            path = path.decode("utf-8", "surrogateescape")
        if type_of(path) is not str_type:
            return None
        if not path.startswith("/"):
            path = getcwd() + "/" + path
        parts: list[str] = []
        for part in path.split("/"):
            if part == "..":
                if parts:
                    parts.pop()
            elif part not in ("", "."):
                parts.append(part)
        return "/" + "/".join(parts)

    def open_allowed(path: object, mode: object, flags: int) -> bool:
        full = resolve(path)
        if full is None or type_of(mode) is not str_type:  # fds, and os.open (mode None, dir_fd)
            return False
        if full == workdir or full.startswith(workdir + "/"):
            if flags & write_flags:
                writes[0] += 1
                return writes[0] <= max_writes
            return True
        return not flags & write_flags and full.startswith(stdlib + "/")

    def hook(event: str, args: "tuple[Any, ...]") -> None:
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


def run(code: bytes, user_builtins: dict[str, object], capture: Capture) -> tuple[str, str | None]:
    namespace: dict[str, object] = {"__name__": "__main__", "__builtins__": user_builtins}
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


def pick_answer(namespace: dict[str, object], capture: Capture) -> str | None:
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


def as_text(value: object) -> str:
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


def describe(exc: BaseException) -> str:
    try:
        message = str(exc)[:300]
    except BaseException:  # a hostile __str__ must not take the report down with it
        message = "?"
    kind = type(exc).__name__
    if isinstance(exc, Blocked):
        return "blocked: " + message
    return "error: " + kind + (": " + message if message else "")


if __name__ == "__main__":
    main()
