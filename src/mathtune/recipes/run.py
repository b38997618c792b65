"""The whole study in one call: train, evaluate base and tuned on the same problems, compare."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mathtune.compare import compare_runs, write_comparison
from mathtune.config import RunConfig
from mathtune.data.problems import benchmark_name
from mathtune.errors import MathtuneError
from mathtune.evaluate.sharding import current_processes, main_process_output
from mathtune.io import atomic_write_json, output_dir_guard
from mathtune.recipes.checks import check_train_dir, preflight
from mathtune.recipes.evaluate import evaluate_model_on
from mathtune.recipes.train import train
from mathtune.runcard import provenance


def run_workflow(cfg: RunConfig, overwrite: bool = False, resume: bool = False) -> dict[str, Any]:
    """Train, evaluate base and tuned on the same problems, compare: the whole study in one call.
    Each `eval.also` benchmark is evaluated and compared the same way, by the same loaded models."""
    from mathtune.fingerprint import write_fingerprint

    processes = current_processes()  # under `accelerate launch` every step uses every process
    also = also_benchmarks(cfg)
    loaded = preflight(cfg, ("train", cfg.eval.split))  # each split read once, passed down
    for also_cfg in also.values():
        loaded.of(also_cfg, also_cfg.eval.split)  # a missing benchmark fails before training, not after
    fingerprint = processes.agreed(lambda: check_train_dir(cfg, Path(cfg.output_dir), resume, finished_is_done=True,
                                                           loaded=loaded))
    run_path = Path(cfg.output_dir)
    with main_process_output(run_path, lambda: output_dir_guard(run_path, overwrite, resume)) as run_dir:
        if processes.main:
            write_fingerprint(run_dir, fingerprint)
        # eval/base and eval/tuned for the run's own benchmark, eval/<benchmark>/... for the others
        targets = {"": (cfg, run_dir / "eval")} | {name: (c, run_dir / "eval" / name) for name, c in also.items()}

        def evaluate_all(label: str, adapter_dir: Path | None = None) -> dict[str, dict[str, Any]]:
            results = evaluate_model_on([(c, root / label) for c, root in targets.values()], label, adapter_dir,
                                        show_progress=processes.main, loaded=loaded)
            return dict(zip(targets, results, strict=True))

        base = evaluate_all("base")
        if not (resume and (run_dir / "train_card.json").is_file()):
            train(cfg, run_dir, resume=resume, show_progress=processes.main, loaded=loaded)
        tuned = evaluate_all("tuned", run_dir / "adapter")
        if not processes.main:  # rank 0 compares and writes the card
            return {"base": _headline(base[""]), "tuned": _headline(tuned[""])}
        results = {}
        for name, (_, root) in targets.items():
            comparison = compare_runs([root / "base", root / "tuned"], ["base", "tuned"])
            write_comparison(comparison, run_dir / (f"comparison_{name}" if name else "comparison"))
            pair = comparison["pairs"][0]
            results[name] = {"base": _headline(base[name]), "tuned": _headline(tuned[name]),
                             "mcnemar": pair["mcnemar"], "mcnemar_by_score": pair["mcnemar_by_score"]}
        card = {"kind": "run", "config": cfg.model_dump(mode="json"), **results.pop(""),
                **({"also": results} if results else {}), **provenance()}
        atomic_write_json(run_dir / "run_card.json", card)
    return card


def also_benchmarks(cfg: RunConfig) -> dict[str, RunConfig]:
    """{benchmark folder name: its config} for `eval.also`; two entries may not share a folder."""
    also: dict[str, RunConfig] = {}
    for also_cfg in cfg.also_configs():
        name = benchmark_name(also_cfg.data)
        if name in also:
            raise MathtuneError(f"eval.also names the benchmark {name} twice: its results would share eval/{name}/")
        also[name] = also_cfg
    return also


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    return {"n": metrics["n"], "scores": metrics["scores"], "perplexity": metrics["perplexity"],
            "wall_seconds": metrics["wall_seconds"], **({"voted": metrics["voted"]} if metrics.get("voted") else {})}
