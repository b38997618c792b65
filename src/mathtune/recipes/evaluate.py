"""The evaluation recipe: draw problems -> prompt -> generate -> extract -> score -> write, and its
entry points for a base model, a run's tuned model, or several adapters on one base."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from mathtune.config import RunConfig, load_config
from mathtune.data.problems import LoadedSplits, Problem, benchmark_name
from mathtune.errors import MathtuneError
from mathtune.evaluate.backend import build_backend
from mathtune.evaluate.curves import vote_outcomes, voted_summary
from mathtune.evaluate.decoding import CONTINUOUS_BATCHING, add_majority_votes, majority_summary
from mathtune.evaluate.extraction import CHOICE_FILTERS, FILTERS
from mathtune.evaluate.generation import Backend, GenerationRequest
from mathtune.evaluate.scoring import (
    build_prompts,
    check_run,
    eval_problems,
    score_rows,
    stop_strings,
    summarize_predictions,
    text_metrics,
)
from mathtune.evaluate.sharding import ShardedRows, current_processes, expected_length
from mathtune.io import atomic_write_json, output_dir_guard
from mathtune.methods.registry import METHODS, method_class
from mathtune.prompts import get_strategy, render_prompts
from mathtune.recipes.checks import preflight
from mathtune.runcard import peak_cuda_mb, peak_rss_mb, provenance


def check_eval_dir(cfg: RunConfig, out_dir: Path, adapter_dir: Path | None,
                   problems: list[Problem] | None = None, loaded: LoadedSplits | None = None) -> dict[str, Any]:
    """This evaluation's fingerprint; an eval dir holding another evaluation's predictions (another
    model, adapter, prompt, problem draw or generation setting) is refused, never mixed or replaced."""
    from mathtune.fingerprint import check_fingerprint, eval_fingerprint, first_difference

    processes = current_processes()
    fingerprint = eval_fingerprint(cfg, problems if problems is not None else eval_problems(cfg, loaded),
                                   adapter_dir)
    fingerprint["processes"] = processes.world  # recorded; a relaunch with another number still resumes
    processes.agreed(lambda: check_fingerprint(out_dir, fingerprint, "predictions",
                                                "pass --overwrite to replace them, or -o another directory "
                                                "for this evaluation"))
    processes.check_same(fingerprint, "predictions", first_difference)
    return fingerprint


def evaluate(cfg: RunConfig, backend: Backend, out_dir: Path, label: str, tokenizer: Any = None,
             meta: dict[str, Any] | None = None, show_progress: bool = True,
             loaded: LoadedSplits | None = None) -> dict[str, Any]:
    """Evaluate one model (already behind `backend`) and write predictions + metrics into out_dir.
    `loaded`: the splits `preflight` read (None: read them here).

    A dir holding this same evaluation is resumed (finished: its metrics are returned as they are);
    one holding another is refused (`check_eval_dir`)."""
    from mathtune.fingerprint import write_fingerprint

    processes = current_processes()  # under `accelerate launch`: this rank does its share of the problems
    if processes.world > 1 and cfg.eval.samples > 1 and cfg.eval.vote == "none":
        processes.refuse("eval.samples > 1 with eval.vote=none draws its samples per chunk of problems, so a "
                         "process's share would draw other samples than one process does; set eval.vote=majority "
                         "(a seed per problem and sample), or use `mathtune sample`")
    loaded = loaded or LoadedSplits()
    problems = eval_problems(cfg, loaded)
    if cfg.eval.vote != "none" and not hasattr(backend, "sample"):  # before any output is written
        raise MathtuneError(f"eval.vote needs the transformers backend's seeded sampler; {type(backend).__name__} "
                            "has none")
    adapter = (meta or {}).get("adapter")
    fingerprint = check_eval_dir(cfg, out_dir, Path(adapter) if adapter else None, problems)
    if processes.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_fingerprint(out_dir, fingerprint)
    strategy = get_strategy(cfg.prompt.strategy)
    prompts, prompt_record = build_prompts(cfg, problems, loaded)
    if tokenizer is not None:
        prompts = render_prompts(tokenizer, prompts, cfg.prompt.chat_template)
    predictions = ShardedRows(out_dir / "predictions.jsonl", processes, [p.id for p in problems],
                              [expected_length(p) for p in problems])
    done = processes.agreed(predictions.done)
    if len(done) == len(problems) and predictions.merged_only() and (out_dir / "metrics.json").is_file():
        return json.loads((out_dir / "metrics.json").read_text(encoding="utf-8"))  # finished: as it was
    todo = predictions.mine(done)
    stop = stop_strings(cfg, strategy)
    started = time.perf_counter()
    # several batches per write: length-sorting has room to work, and a continuous batch drains (its
    # rows finish one by one with nothing left to admit) once per chunk, not once per batch
    chunk = cfg.eval.batch_size * 4
    shared = processes.world > 1  # rank 0's bar counts its own share
    bar = tqdm(total=len(todo) if shared else len(problems), initial=0 if shared else len(problems) - len(todo),
               desc=f"eval {label}" + (f" (rank 0 of {processes.world})" if shared else ""),
               disable=not show_progress or not processes.main, dynamic_ncols=True)
    new_tokens = 0
    scorer = verifier_scorer(cfg) if todo else None  # verifier-weighted voting: loaded once
    for start in range(0, len(todo), chunk):
        indices = todo[start : start + chunk]
        rows, tokens = _predict_chunk(cfg, backend, [problems[i] for i in indices], [prompts[i] for i in indices],
                                      stop, cfg.eval.seed + start, scorer)
        new_tokens += tokens
        predictions.append(rows)
        bar.update(len(indices))
    bar.close()
    merged = predictions.merge()  # rank 0: every rank's rows in problem order; the others: None
    new_tokens = sum(processes.gather(new_tokens))
    wall = time.perf_counter() - started
    if merged is None:
        return processes.gather(None)[0]  # rank 0's metrics, once it has written them
    rows = merged
    metrics = summarize_predictions(rows)
    if cfg.eval.samples > 1 and cfg.eval.vote == "none":
        metrics["self_consistency"] = majority_summary(rows)
    if cfg.eval.vote != "none":  # greedy and voted side by side, on the same problems
        metrics["voted"] = voted_summary(rows)
    metrics["contamination"] = check_run(cfg, problems, loaded=loaded)
    if cfg.eval.text_metrics:
        metrics.update(text_metrics(rows))
    metrics.update({
        "label": label, "benchmark": benchmark_name(cfg.data), "wall_seconds": round(wall, 2),
        "generated_tokens": new_tokens,
        "generated_tokens_per_second": round(new_tokens / max(wall, 1e-9), 1),
        "peak_rss_mb": round(peak_rss_mb(), 1), "peak_cuda_mb": peak_cuda_mb(),
        "reproducibility": {**_reproducibility(cfg, problems, prompt_record, stop, meta),
                            "processes": processes.world},
    })
    atomic_write_json(out_dir / "metrics.json", metrics)
    return processes.gather(metrics)[0]


def _predict_chunk(cfg: RunConfig, backend: Backend, problems: list[Problem], prompts: list[str],
                   stop: tuple[str, ...], seed: int, scorer: Scorer | None = None) -> tuple[list[dict[str, Any]], int]:
    """Generate, extract and score one chunk of problems (plus the reference's perplexity, maj@k and
    the vote when asked); returns the prediction rows and the tokens generated."""
    strategy = get_strategy(cfg.prompt.strategy)
    requests = [GenerationRequest(prompt, stop, cfg.eval.max_new_tokens, cfg.eval.calculator, cfg.eval.loop_stop)
                for prompt in prompts]
    generations = backend.generate(requests)
    rows = score_rows(problems, generations, strategy, prompts)
    if cfg.eval.perplexity:
        pairs = [(prompt, strategy.format_target(problem, strategy.reference_program(problem)))
                 for prompt, problem in zip(prompts, problems, strict=True)]
        for row, (nll, count) in zip(rows, backend.target_nll(pairs), strict=True):
            row["reference_nll"], row["reference_tokens"] = nll, count
    tokens = sum(g.new_tokens for g in generations)
    if cfg.eval.vote != "none":  # test-time compute beside greedy: k seeded samples per problem, voted on
        tokens += _add_votes(cfg, backend, problems, prompts, requests, rows, scorer)
    elif cfg.eval.samples > 1:  # self-consistency beside greedy: sample k, vote on the numbers
        add_majority_votes(rows, backend, requests, [p.solution for p in problems], cfg.eval.samples,
                           cfg.eval.temperature, seed)
    return rows, tokens


Scorer = Callable[[str, list[str]], list[float]]


def _add_votes(cfg: RunConfig, backend: Backend, problems: list[Problem], prompts: list[str],
               requests: list[GenerationRequest], rows: list[dict[str, Any]], scorer: Scorer | None) -> int:
    """row["vote"] for each problem: its k samples (seeded by sample_seed, problem id and index, so a
    process's share draws what one process would), each scored like greedy, and the voted outcome per
    score. Returns the tokens sampled."""
    strategy, k = get_strategy(cfg.prompt.strategy), cfg.eval.samples
    drawn = backend.sample(requests, [p.id for p in problems], k, temperature=cfg.eval.temperature,
                           top_p=cfg.eval.top_p, seed=cfg.eval.sample_seed)
    for row, problem, prompt, generations in zip(rows, problems, prompts, drawn, strict=True):
        scored = score_rows([problem] * k, generations, strategy, [prompt] * k)
        samples = [{"output": r["output"], "extracted": r["extracted"], "correct": r["correct"]} for r in scored]
        weights = scorer(prompt, [g.text for g in generations]) if scorer is not None else None
        row["vote"] = {"method": cfg.eval.vote, "k": k, "samples": samples, "weights": weights,
                       "correct": vote_outcomes(samples, weights)}
    return sum(g.new_tokens for generations in drawn for g in generations)


def verifier_scorer(cfg: RunConfig) -> Scorer | None:
    """For vote verifier-weighted: the verifier (`cfg.eval.verifier`, on its own base model) scoring one
    problem's solutions; None for the other votes."""
    if cfg.eval.vote != "verifier-weighted":
        return None
    from mathtune.models.device import choose_placement
    from mathtune.models.setup import load_for_run
    from mathtune.models.verifier import load_verifier, score_solutions

    verifier_dir = Path(cfg.eval.verifier)
    if not (verifier_dir / "config.yaml").is_file():
        raise MathtuneError(f"no verifier at {verifier_dir}: train one with `mathtune verifier train`")
    settings = load_config(verifier_dir / "config.yaml")
    placement = choose_placement(cfg.model.device, cfg.eval_precision())
    loaded = load_for_run(settings.model, placement, tuned_dir=verifier_dir / "adapter")
    model = load_verifier(verifier_dir, loaded.model, loaded.tokenizer).to(placement.device)
    model = model.merge_and_unload().eval()

    def score(prompt: str, outputs: list[str]) -> list[float]:
        return score_solutions(model, loaded.tokenizer, prompt, outputs, settings.verifier.max_length,
                               placement.autocast_context(), rows=settings.verifier.solutions_per_pass)

    return score


def _reproducibility(cfg: RunConfig, problems: list[Problem], prompt_record: dict[str, Any],
                     stop: tuple[str, ...], meta: dict[str, Any] | None) -> dict[str, Any]:
    """Everything needed to rerun this evaluation: prompt, problems, extraction, generation, data, model."""
    filters = CHOICE_FILTERS if problems and problems[0].kind == "choice" else FILTERS
    return {
        "prompt": prompt_record,
        "problems": {"split": cfg.eval.split, "n": len(problems), "perturbed": cfg.eval.perturbed,
                     "seed": cfg.eval.seed, "ids": [p.id for p in problems]},
        "extraction": {name: {"regex": f.pattern, "group_select": f.group_select} for name, f in filters.items()},
        "generation": {"greedy": True, "max_new_tokens": cfg.eval.max_new_tokens, "stop": list(stop),
                       "batch_size": cfg.eval.batch_size, "batching": CONTINUOUS_BATCHING, "dtype": cfg.eval.dtype,
                       "calculator": cfg.eval.calculator, "repetition_stop": cfg.eval.loop_stop,
                       "int8_decode": cfg.eval.int8_decode,
                       "samples": cfg.eval.samples,
                       "temperature": cfg.eval.temperature if cfg.eval.samples > 1 else None,
                       "vote": cfg.eval.vote, "sample_seed": cfg.eval.sample_seed if cfg.eval.vote != "none" else None,
                       "verifier": cfg.eval.verifier if cfg.eval.vote == "verifier-weighted" else None},
        "dataset": cfg.data.model_dump(mode="json"), **(meta or {}), **provenance(),
    }


def evaluate_model(cfg: RunConfig, out_dir: Path, label: str, adapter_dir: Path | None = None,
                   show_progress: bool = True, loaded: LoadedSplits | None = None) -> dict[str, Any]:
    return evaluate_model_on([(cfg, out_dir)], label, adapter_dir, show_progress, loaded)[0]


def evaluate_model_on(targets: list[tuple[RunConfig, Path]], label: str, adapter_dir: Path | None = None,
                      show_progress: bool = True, loaded: LoadedSplits | None = None) -> list[dict[str, Any]]:
    """One model, loaded once, evaluated on several benchmarks: (config, eval dir) each, the configs
    differing only in their data section and problem count (`RunConfig.also_configs`)."""
    loaded = loaded or LoadedSplits()
    for cfg, out_dir in targets:
        check_eval_dir(cfg, out_dir, adapter_dir, loaded=loaded)  # before minutes of loading the model
    backend, meta = build_backend(targets[0][0], adapter_dir)
    return [evaluate(cfg, backend, out_dir, label, backend.tokenizer, meta, show_progress, loaded)
            for cfg, out_dir in targets]


def eval_workflow(cfg: RunConfig, run_dir: Path | None, base: bool, out_dir: Path,
                  own_data: bool = True, loaded: LoadedSplits | None = None) -> dict[str, Any]:
    """Evaluate the base model, or the tuned model of a finished run dir (its config wins; with
    `own_data=False` the benchmark is this call's `data` section instead of the run's)."""
    if base:
        return evaluate_model(cfg, out_dir, "base", loaded=loaded)
    if run_dir is None:
        raise MathtuneError("pass a run directory to evaluate its tuned model, or --base")
    return evaluate_model(tuned_config(cfg, run_dir, own_data), out_dir, "tuned", adapter_dir=run_dir / "adapter",
                          loaded=loaded)


def eval_adapters_workflow(cfg: RunConfig, run_dirs: list[Path], overwrite: bool = False
                           ) -> list[tuple[dict[str, Any], Path]]:
    """Evaluate several PEFT adapters of one base model with the base loaded once: each adapter is
    added to the same PeftModel and switched to with `set_adapter`, never reloading the base."""
    configs = [tuned_config(cfg, run_dir) for run_dir in run_dirs]
    first = configs[0]
    for run_dir, run_cfg in zip(run_dirs, configs, strict=True):
        if run_cfg.model.name != first.model.name or not method_class(run_cfg.method.name).shares_base \
                or run_cfg.method.name != first.method.name:
            shared = "/".join(name for name, method in METHODS.items() if method.shares_base)
            raise MathtuneError(f"{run_dir}: shared-base evaluation needs {shared} adapters of one model "
                                f"({first.model.name}, {first.method.name}); evaluate it on its own")
    loaded = LoadedSplits()
    for run_cfg in configs:
        preflight(run_cfg, (cfg.eval.split,), training=False, loaded=loaded)
    backend, meta = build_backend(first, run_dirs[0] / "adapter")
    results = []
    for index, (run_dir, run_cfg) in enumerate(zip(run_dirs, configs, strict=True)):
        name = "default" if index == 0 else f"adapter{index}"
        if index:
            backend.model.load_adapter(str(run_dir / "adapter"), adapter_name=name)
        backend.model.set_adapter(name)
        with output_dir_guard(run_dir / "eval" / "tuned", overwrite, resume=not overwrite) as out:
            metrics = evaluate(run_cfg, backend, out, "tuned", backend.tokenizer,
                               {**meta, "adapter": str(run_dir / "adapter"), "shared_base": True}, loaded=loaded)
        results.append((metrics, out))
    return results


def tuned_config(cfg: RunConfig, run_dir: Path, own_data: bool = True) -> RunConfig:
    """A finished run's own config (model, method, data, prompt) with this call's eval settings, and
    this call's data section too when the run is tested on another benchmark (`own_data=False`)."""
    update: dict[str, Any] = {"eval": cfg.eval} if own_data else {"eval": cfg.eval, "data": cfg.data}
    return load_config(run_dir / "config.yaml", None).model_copy(update=update)
