"""Shared fixtures: a synthetic GSM8K-shaped data dir and tiny models, built once per session."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
CHECKOUT_SRC = Path(__file__).resolve().parents[1] / "src"
# Subprocesses (the console script, `python -m mathtune.cli`, benchmarks) import this checkout's source
# too, not whichever mathtune is installed: PYTHONPATH comes before site-packages (tests/test_layout.py).
if os.environ.get("PYTHONPATH", "").split(os.pathsep)[0] != str(CHECKOUT_SRC):
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CHECKOUT_SRC), os.environ.get("PYTHONPATH")]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # hub calls fail fast instead of hanging offline
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# In-process CLI tests must not re-execute pytest under another allocator (speedups/allocator.py);
# tests/training/test_allocator.py drops this to check the re-execution itself.
os.environ["MATHTUNE_ALLOCATOR"] = "system"

from helpers import make_tiny_model, write_gsm8k_dir  # noqa: E402


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    return write_gsm8k_dir(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def corpus(data_dir) -> list[str]:
    return [line for f in sorted((data_dir / "gsm8k").glob("*.jsonl")) for line in f.read_text().splitlines()]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, corpus) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {arch: make_tiny_model(arch, root / arch, corpus) for arch in ("llama", "phi", "t5")}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MATHTUNE_CACHE_DIR", str(tmp_path / "cache"))


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

