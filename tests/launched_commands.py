"""Run several `mathtune` commands in one process under `accelerate launch`, so one launch (one
process start-up and one gloo group) serves several checks of tests/test_distributed_eval.py.

    accelerate launch ... tests/launched_commands.py eval ... ::: sample ... ::: verifier score ...

Exits with the first failing command's code. MATHTUNE_TEST_RANK1_ARGS (test-only) appends
arguments on rank 1 alone: a launch whose machines disagree (other data, other files)."""

from __future__ import annotations

import os
import shlex
import sys

from mathtune.cli import main


def commands(argv: list[str]) -> list[list[str]]:
    found: list[list[str]] = [[]]
    for arg in argv:
        if arg == ":::":
            found.append([])
        else:
            found[-1].append(arg)
    return [command for command in found if command]


if __name__ == "__main__":
    extra = shlex.split(os.environ.get("MATHTUNE_TEST_RANK1_ARGS", "")) if os.environ.get("RANK") == "1" else []
    for command in commands(sys.argv[1:]):
        sys.argv = ["mathtune", *command, *extra]
        try:
            main()
        except SystemExit as exc:
            if exc.code:
                raise
