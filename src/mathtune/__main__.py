"""The `mathtune` command's entry point (`mathtune ...`, `python -m mathtune ...`).

The interrupt handlers go in before anything heavy is imported: importing torch and transformers
takes seconds, and a Ctrl-C or SIGTERM in that window would otherwise end the process with a
traceback or silently (interrupts.py)."""

from mathtune import interrupts


def main() -> None:
    interrupts.install()
    from mathtune.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
