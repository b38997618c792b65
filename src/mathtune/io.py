"""Atomic file output and run-directory locking: nothing is ever half-written."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mathtune.errors import MathtuneError

# A write the filesystem refused: full (ENOSPC), over quota (EDQUOT), read-only (EROFS), not ours
# (EACCES, EPERM), or over a file-size limit (EFBIG: RLIMIT_FSIZE, FAT32's 4 GiB).
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})


def write_failure(exc: BaseException) -> tuple[str, str | None] | None:
    """(reason, path or None) when `exc`, or an exception it was raised from, is a refused write;
    None for anything else. Libraries wrap the OSError: torch.save raises `RuntimeError: [enforce fail
    at inline_container.cc] unexpected pos` and safetensors a `SafetensorError` naming the OS error."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in WRITE_ERRNOS:
            filename = current.filename if isinstance(current.filename, str | os.PathLike) else None
            return os.strerror(current.errno), None if filename is None else str(filename)
        text = str(current)
        if isinstance(current, RuntimeError) and ("inline_container" in text or "file write failed" in text):
            return "the write failed (full disk or file-size limit)", None
        if type(current).__name__ == "SafetensorError":
            for code in WRITE_ERRNOS:
                if f"os error {code})" in text or os.strerror(code) in text:
                    return os.strerror(code), None
        current = current.__cause__ or current.__context__
    return None


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` via a temp file in the same directory and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), 0o644)  # mkstemp's 0600 would hide reports from other users
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise _with_filename(exc, path) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def append_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Append whole lines and fsync, so a kill loses at most the rows not yet passed in."""
    drop_torn_tail(path)
    try:
        with open(path, "a", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:  # a write's OSError names no file; the message must (a torn row is cut next time)
        raise _with_filename(exc, path) from None


def _with_filename(exc: OSError, path: str | Path) -> OSError:
    return exc if exc.filename else type(exc)(exc.errno, exc.strerror, str(path))


def drop_torn_tail(path: str | Path) -> None:
    """Cut a last line left without its newline by a kill mid-write; appending after it would
    glue the next row onto the fragment and lose that row too."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) == b"\n":
            return
        handle.seek(0)
        handle.truncate(handle.read().rfind(b"\n") + 1)


def read_jsonl_tolerant(path: str | Path) -> list[dict[str, Any]]:
    """Read rows we wrote ourselves; a torn last line (killed mid-write) is dropped, not fatal."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def prepare_output_dir(path: str | Path, overwrite: bool, resume: bool = False) -> Path:
    """Check an output directory can be used: absent, empty, resumed, or explicitly overwritten."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise MathtuneError(f"output path {path} exists and is not a directory")
    if path.exists() and any(path.iterdir()) and not resume:
        if not overwrite:
            raise MathtuneError(f"output directory {path} is not empty; pass --overwrite or --resume")
        with run_lock(path):
            pass  # refuse to delete a directory another run is writing
        shutil.rmtree(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MathtuneError(f"cannot create output directory {path}: {exc.strerror}") from None
    if not os.access(path, os.W_OK):
        raise MathtuneError(f"output directory {path} is not writable")
    return path


@contextmanager
def output_dir_guard(path: str | Path, overwrite: bool, resume: bool = False) -> Iterator[Path]:
    """Prepare the run dir and hold its lock. If the run fails before producing anything worth
    resuming (only the config written), the dir it created is removed: no half-written run dirs.
    Once checkpoints or predictions exist they are kept, so `--resume` can continue."""
    path = Path(path)
    # The topmost folder this call creates (run/eval/ for run/eval/tuned): removed with the rest.
    created = next((p for p in reversed([path, *path.parents]) if not p.exists()), None)
    prepared = prepare_output_dir(path, overwrite, resume)
    # Lock first, then guard: a run that loses the lock race must not delete the winner's dir.
    with run_lock(prepared):
        try:
            yield prepared
        except BaseException:  # errors and interrupts (Ctrl-C, SIGTERM) alike
            if created is not None and not holds_results(prepared):
                shutil.rmtree(created, ignore_errors=True)
            raise


# What a run or eval dir holds before it has produced anything: safe to remove when it stops.
NOT_RESULTS = {"config.yaml", ".lock", "tensorboard", "fingerprint.json", "train_log.jsonl", "dev_log.jsonl"}


def holds_results(directory: Path) -> bool:
    """Whether `directory` (or an eval dir below it) holds something worth resuming: a checkpoint,
    an adapter, predictions, metrics or cards. Logs and the config alone are not."""
    for entry in directory.iterdir():
        if entry.name in NOT_RESULTS:
            continue
        if entry.name == "eval" and entry.is_dir():
            if any(holds_results(sub) for sub in entry.iterdir() if sub.is_dir()):
                return True
            continue
        if entry.name == "checkpoints" and entry.is_dir():
            if any(entry.glob("step-*")):
                return True
            continue
        if entry.is_dir() and not any(entry.iterdir()):
            continue
        if entry.is_file() and entry.stat().st_size == 0:
            continue
        return True
    return False


@contextmanager
def run_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock file so two runs never write one directory at once.

    Plain flock rather than the filelock package: its Unix lock keeps the file after release by
    design (its maintainers call unlinking it unsafe), while ours is removed on release, which is
    only safe with the unlink-while-held and inode check below; filelock would also fall back to a
    PID-marker lock, which a killed run leaves behind, where flock is missing.
    """
    import fcntl

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    handle = open(path / ".lock", "a")  # "a": trying the lock leaves the holder's file untouched
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # The holder unlinks .lock on release; a lock on that unlinked file would lock nothing.
        if os.fstat(handle.fileno()).st_ino != os.stat(path / ".lock").st_ino:
            raise BlockingIOError
    except (BlockingIOError, FileNotFoundError):
        handle.close()
        raise MathtuneError(f"another mathtune process is writing {path}") from None
    try:
        yield
    finally:
        # Unlink while still holding the lock: a run that flocks the old file after we let go then
        # fails the inode check above. Unlinking after the unlock let such a run pass the check
        # first, and a third run then locked a fresh .lock while it still believed it held the lock.
        (path / ".lock").unlink(missing_ok=True)
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def replace_dir(target: Path, write: Callable[[Path], None]) -> None:
    """Write a directory (an adapter) through a temp dir beside it and renames: at every moment either
    the old or the new one exists whole under a known name (directories cannot be swapped atomically)."""
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        write(tmp)
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
