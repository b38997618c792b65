"""The whole study in one call: train, evaluate base and tuned on the same problems, compare."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mathtune.compare import compare_runs, write_comparison
from mathtune.config import RunConfig
from mathtune.io import atomic_write_json, output_dir_guard
from mathtune.recipes.checks import check_train_dir, preflight
from mathtune.recipes.evaluate import evaluate_model
from mathtune.recipes.train import train
from mathtune.runcard import provenance


def run_workflow(cfg: RunConfig, overwrite: bool = False, resume: bool = False) -> dict[str, Any]:
    """Train, evaluate base and tuned on the same problems, compare: the whole study in one call."""
    from mathtune.fingerprint import write_fingerprint

    preflight(cfg, ("train", cfg.eval.split))
    fingerprint = check_train_dir(cfg, Path(cfg.output_dir), resume, finished_is_done=True)
    with output_dir_guard(cfg.output_dir, overwrite, resume) as run_dir:
        write_fingerprint(run_dir, fingerprint)
        base = evaluate_model(cfg, run_dir / "eval" / "base", "base")
        if not (resume and (run_dir / "train_card.json").is_file()):
            train(cfg, run_dir, resume=resume)
        tuned = evaluate_model(cfg, run_dir / "eval" / "tuned", "tuned", adapter_dir=run_dir / "adapter")
        comparison = compare_runs([run_dir / "eval" / "base", run_dir / "eval" / "tuned"], ["base", "tuned"])
        write_comparison(comparison, run_dir / "comparison")
        card = {"kind": "run", "config": cfg.model_dump(mode="json"), "base": _headline(base),
                "tuned": _headline(tuned), "mcnemar": comparison["pairs"][0]["mcnemar"], **provenance()}
        atomic_write_json(run_dir / "run_card.json", card)
    return card


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    return {"n": metrics["n"], "scores": metrics["scores"], "perplexity": metrics["perplexity"],
            "wall_seconds": metrics["wall_seconds"]}
