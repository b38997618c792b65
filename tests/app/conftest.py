"""A finished tiny run (train 2 steps, evaluate 4 problems) shared by the app tests."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_models, data_dir) -> Path:
    from mathtune.config import build_config
    from mathtune.recipes.run import run_workflow

    out = tmp_path_factory.mktemp("apprun") / "run"
    cfg = build_config({
        "model": {"name": str(tiny_models["llama"])}, "data": {"data_dir": str(data_dir), "train_size": 8},
        "train": {"max_steps": 2, "batch_size": 4, "precision": "fp32", "log_every": 1},
        "eval": {"num_problems": 4, "max_new_tokens": 8, "batch_size": 4, "perplexity": False},
        "output_dir": str(out),
    })
    run_workflow(cfg)
    return out
