"""Ctrl-C and SIGTERM (what job schedulers and `docker stop` send) end a command the same way:
exit code 130 or 143, and one line saying what was kept and the exact command that continues.

SIGINT and SIGTERM raise `Interrupted` in the main thread. It derives from BaseException, not
KeyboardInterrupt, so typer does not turn it into a silent exit code; the directory guard
(`io.output_dir_guard`) removes a directory that holds nothing worth keeping on the way out, and
atomic writes mean nothing is left half-written. A second signal during that clean-up is ignored.
"""

from __future__ import annotations

import shlex
import signal
import sys
from pathlib import Path
from types import FrameType

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal's number, as shells report


class Interrupted(BaseException):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signal_name = signal.Signals(signum).name
        self.exit_code = EXIT_CODES.get(signal.Signals(signum), 128 + signum)


_watched: dict[str, object] = {"path": None, "resume_flag": False}


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    for sig in EXIT_CODES:  # once is enough: let the clean-up finish
        signal.signal(sig, signal.SIG_IGN)
    raise Interrupted(signum)


def install() -> None:
    for sig in EXIT_CODES:
        signal.signal(sig, _raise_interrupted)


def watch(path: Path, resume_flag: bool = False) -> None:
    """The directory this command writes, and whether continuing it needs `--resume` (train, run)
    or just the same command again (eval resumes by itself)."""
    _watched.update(path=path, resume_flag=resume_flag)


def _kept(path: Path) -> str:
    if not path.exists():
        return f"nothing was kept ({path} was removed)"
    kept = []
    steps = sorted(path.glob("checkpoints/step-*"))
    if steps:
        kept.append(f"checkpoint at step {int(steps[-1].name.removeprefix('step-'))}")
    if (path / "adapter").is_dir():
        kept.append("the trained adapter")
    for predictions in sorted(path.rglob("predictions.jsonl")):
        with open(predictions, "rb") as handle:
            count = sum(1 for line in handle if line.endswith(b"\n"))
        kept.append(f"{count} predictions in {predictions.parent}")
    return "kept " + ", ".join(kept) if kept else f"nothing worth resuming in {path}"


def resume_command(argv: list[str], resume_flag: bool) -> str:
    """The command line that continues this one: the same arguments without --overwrite (which
    would wipe what was kept), with --resume where the command needs it."""
    args = [arg for arg in argv if arg not in ("--overwrite", "--no-resume")]
    if resume_flag and "--resume" not in args:
        args.append("--resume")
    return shlex.join(["mathtune", *args])


def summary(argv: list[str] | None = None) -> str:
    """'kept checkpoint at step 50; resume with: mathtune train ... --resume'."""
    argv = sys.argv[1:] if argv is None else argv
    path = _watched["path"]
    if not isinstance(path, Path):
        return "nothing was written"
    return f"{_kept(path)}; continue with: {resume_command(argv, bool(_watched['resume_flag']))}"
