"""Fixtures for the reliability tests: one tiny Llama (no Phi/T5 needed) and runs of it (run_cli: tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import make_tiny_model


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, corpus) -> Path:
    return make_tiny_model("llama", tmp_path_factory.mktemp("rel-model") / "llama", corpus)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_llama, data_dir) -> Path:
    """A finished 2-step LoRA run of the tiny Llama (train_size 8, fp32), trained once per session."""
    from mathtune.config import build_config
    from mathtune.recipes.train import train_workflow

    out = tmp_path_factory.mktemp("trained") / "run"
    cfg = build_config({"model": {"name": str(tiny_llama)}, "data": {"data_dir": str(data_dir), "train_size": 8},
                        "train": {"max_steps": 2, "precision": "fp32"}, "output_dir": str(out)})
    return train_workflow(cfg)


@pytest.fixture
def finished_run(trained_run, tmp_path) -> Path:
    """A copy of `trained_run` for one test to evaluate into (eval dirs differ between tests)."""
    import shutil

    return Path(shutil.copytree(trained_run, tmp_path / "finished-run"))
