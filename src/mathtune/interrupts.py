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
_received: list[int] = []  # the first signal; main() checks it even if the exception was swallowed


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    if _received:  # once is enough: let the clean-up of the first finish
        return
    _received.append(signum)
    raise Interrupted(signum)


def _quiet_about_interrupts(unraisable: sys.UnraisableHookArgs) -> None:
    """A signal that lands in a weakref callback or a __del__ (matplotlib's teardown, say) raises
    where Python can only print and drop it; `received()` still reports it, so stay quiet here."""
    if isinstance(unraisable.exc_value, Interrupted):
        return
    sys.__unraisablehook__(unraisable)


def install() -> None:
    for sig in EXIT_CODES:
        signal.signal(sig, _raise_interrupted)
    sys.unraisablehook = _quiet_about_interrupts


def received() -> Interrupted | None:
    """The interrupt this process received, if any, whether or not its exception got through."""
    return Interrupted(_received[0]) if _received else None


def ignore_from_now() -> None:
    """The command is done and its results are written: a signal during interpreter shutdown must
    not turn a finished run into a killed one."""
    for sig in EXIT_CODES:
        signal.signal(sig, signal.SIG_IGN)


def close_progress_bars() -> None:
    """End any progress bar on its own line, so the interrupt message is one clean last line."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()


def watch(path: Path, resume_flag: bool = False) -> None:
    """The directory this command writes, and whether continuing it needs `--resume` (train, run)
    or just the same command again (eval resumes by itself)."""
    _watched.update(path=path, resume_flag=resume_flag)


def watched() -> Path | None:
    """The directory this command writes (`watch`), if it said."""
    path = _watched["path"]
    return path if isinstance(path, Path) else None


def _kept(path: Path) -> str:
    if not path.exists():
        return f"nothing was kept ({path} was removed)"
    if (path / "train_card.json").is_file() and (path / "adapter").is_dir():
        return f"training had finished: the adapter and train card are in {path}"
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
    if kept:
        return "kept " + ", ".join(kept)
    files = [f for f in path.rglob("*") if f.is_file() and not f.name.startswith(".")]
    return f"kept {len(files)} complete files in {path}" if files else f"nothing worth resuming in {path}"


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
