"""The `mathtune` command's entry point (`mathtune ...`, `python -m mathtune ...`).

The interrupt handlers go in before anything heavy is imported: importing torch and transformers
takes seconds, and a Ctrl-C or SIGTERM in that window would otherwise end the process with a
traceback or silently (interrupts.py)."""

import sys

from mathtune import interrupts


def main() -> None:
    interrupts.install()
    try:
        from mathtune.cli import main as cli_main
    except interrupts.Interrupted as exc:  # during the imports: nothing has been written yet
        print(f"mathtune: interrupted by {exc.signal_name}; {interrupts.summary()}", file=sys.stderr)
        sys.exit(exc.exit_code)
    cli_main()


if __name__ == "__main__":
    main()
