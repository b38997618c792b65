"""Fixtures for the reliability tests: one tiny Llama (no Phi/T5 needed) and a CLI driver."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import make_tiny_model


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, corpus) -> Path:
    return make_tiny_model("llama", tmp_path_factory.mktemp("rel-model") / "llama", corpus)


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """Call the `mathtune` entry point (mathtune.cli:main) in-process with argv, as the shell would."""
    from mathtune.cli import main

    monkeypatch.delenv("MATHTUNE_DATA_DIR", raising=False)  # `make test` sets it; cases set their own

    def run(*argv: str) -> CliResult:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["mathtune", *argv])
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run

