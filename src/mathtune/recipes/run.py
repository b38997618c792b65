"""The whole study in one call: train, evaluate base and tuned on the same problems, compare."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mathtune.compare import compare_runs, write_comparison
from mathtune.config import RunConfig
from mathtune.evaluate.sharding import current_processes, main_process_output
from mathtune.io import atomic_write_json, output_dir_guard
from mathtune.recipes.checks import check_train_dir, preflight
from mathtune.recipes.evaluate import evaluate_model
from mathtune.recipes.train import train
from mathtune.runcard import provenance


def run_workflow(cfg: RunConfig, overwrite: bool = False, resume: bool = False) -> dict[str, Any]:
    """Train, evaluate base and tuned on the same problems, compare: the whole study in one call."""
    from mathtune.fingerprint import write_fingerprint

    processes = current_processes()  # under `accelerate launch` every step uses every process
    loaded = preflight(cfg, ("train", cfg.eval.split))  # each split read once, passed down
    fingerprint = processes.agreed(lambda: check_train_dir(cfg, Path(cfg.output_dir), resume, finished_is_done=True,
                                                           loaded=loaded))
    run_path = Path(cfg.output_dir)
    with main_process_output(run_path, lambda: output_dir_guard(run_path, overwrite, resume)) as run_dir:
        if processes.main:
            write_fingerprint(run_dir, fingerprint)
        base = evaluate_model(cfg, run_dir / "eval" / "base", "base", show_progress=processes.main, loaded=loaded)
        if not (resume and (run_dir / "train_card.json").is_file()):
            train(cfg, run_dir, resume=resume, show_progress=processes.main, loaded=loaded)
        tuned = evaluate_model(cfg, run_dir / "eval" / "tuned", "tuned", adapter_dir=run_dir / "adapter",
                               show_progress=processes.main, loaded=loaded)
        if not processes.main:  # rank 0 compares and writes the card
            return {"base": _headline(base), "tuned": _headline(tuned)}
        comparison = compare_runs([run_dir / "eval" / "base", run_dir / "eval" / "tuned"], ["base", "tuned"])
        write_comparison(comparison, run_dir / "comparison")
        card = {"kind": "run", "config": cfg.model_dump(mode="json"), "base": _headline(base),
                "tuned": _headline(tuned), "mcnemar": comparison["pairs"][0]["mcnemar"], **provenance()}
        atomic_write_json(run_dir / "run_card.json", card)
    return card


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    return {"n": metrics["n"], "scores": metrics["scores"], "perplexity": metrics["perplexity"],
            "wall_seconds": metrics["wall_seconds"], **({"voted": metrics["voted"]} if metrics.get("voted") else {})}
