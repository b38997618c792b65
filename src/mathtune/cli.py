"""`mathtune` command line: one typer command per recipe (`mathtune --help` lists them: train, eval,
sample, verifier (train, score), curve, augment, compare, run, report, app, lm-eval). Every command builds one
RunConfig; the choices its help lists (benchmarks, methods, prompt strategies) come from the registries.

Bad input of any kind ends in one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer

from mathtune import interrupts
from mathtune.config import DEFAULT_CONFIG_DIR, RunConfig, build_config, parse_override, read_yaml
from mathtune.data.benchmarks import benchmarks_help
from mathtune.errors import MathtuneError
from mathtune.methods.registry import hide_unused_bitsandbytes, methods_help
from mathtune.prompts import strategies_help
from mathtune.speedups.allocator import reexec_with_allocator, reexecuted

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fine-tune small language models on math word problems and measure them honestly.")

QUICKSTART = DEFAULT_CONFIG_DIR / "quickstart.yaml"

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config (default: quickstart)")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override a key: -s train.lr=1e-4")]
ModelOpt = Annotated[str | None, typer.Option(help="Model: smollm2-135m, a hub id, a directory or a .gguf")]
MethodOpt = Annotated[str | None, typer.Option(help=f"Tuning method: {methods_help()}")]
PromptOpt = Annotated[str | None, typer.Option(help=f"Prompt strategy (prompts.yaml): {strategies_help()}")]
DataDirOpt = Annotated[str | None, typer.Option(help="Folder with gsm8k/ and svamp/ (env MATHTUNE_DATA_DIR)")]
OutOpt = Annotated[str | None, typer.Option("--output-dir", "-o", help="Run directory to write")]
TrainSizeOpt = Annotated[int | None, typer.Option(help="Train rows to use (seeded subset)")]
EvalSizeOpt = Annotated[int | None, typer.Option(help="Test problems to draw (seeded)")]
StepsOpt = Annotated[int | None, typer.Option(help="Stop training after this many steps")]
OverwriteOpt = Annotated[bool, typer.Option(help="Replace a non-empty output directory")]
ResumeOpt = Annotated[bool, typer.Option(help="Continue from the run directory's last checkpoint")]


def build_run_config(config: Path | None, sets: list[str] | None, runs: list[Path] | None = None,
                     **flags: Any) -> RunConfig:
    """YAML (or quickstart) < --set overrides < named flags; one validated object for everything.

    Where a run's model is used (`runs`) and no `-c` is given, the run's own recorded eval settings
    (its config.yaml: calculator, batch, tokens, problems) replace quickstart's; `-s eval.*` still wins."""
    overrides = dict(parse_override(item) for item in sets or [])
    named = {"model.name": flags.get("model"), "method.name": flags.get("method"),
             "prompt.strategy": flags.get("prompt"), "data.data_dir": flags.get("data_dir"),
             "output_dir": flags.get("output_dir"), "data.train_size": flags.get("train_size"),
             "eval.num_problems": flags.get("eval_size"), "train.max_steps": flags.get("max_steps")}
    overrides.update({key: value for key, value in named.items() if value is not None})
    path = config if config is not None else (QUICKSTART if QUICKSTART.is_file() else None)
    for run in runs or []:
        if not run.exists():
            raise MathtuneError(f"run directory {run} does not exist")
        if not (run / "config.yaml").is_file():
            raise MathtuneError(f"{run} is not a run directory: it has no config.yaml (written by `mathtune train` "
                                "and `mathtune run`)")
    tree = read_yaml(path) if path else {}
    if config is None and runs:
        tree["eval"] = recorded_eval_settings(runs)
    chosen, section = overrides.get("method.name"), tree.get("method")
    if chosen and isinstance(section, dict) and section.get("name", "lora") != chosen:
        tree["method"] = {}  # the file's settings are another method's (lora's `bias` means nothing to full)
    return build_config(tree, overrides)


def recorded_eval_settings(runs: list[Path]) -> dict[str, Any]:
    """The eval section of the runs' config.yaml (one run, or several that agree); {} without one."""
    sections = [(run, read_yaml(run / "config.yaml").get("eval") or {}) for run in runs
                if (run / "config.yaml").is_file()]
    if not sections:
        return {}
    first_run, first = sections[0]
    for run, section in sections[1:]:
        differing = sorted(key for key in {*first, *section} if first.get(key) != section.get(key))
        if differing:
            key = differing[0]
            raise MathtuneError(f"{first_run} and {run} record different eval settings (eval.{key}: "
                                f"{first.get(key)} vs {section.get(key)}); evaluate them one at a time, or "
                                "pass -c CONFIG to use one config's settings for all")
    return dict(first)


def show_eval_settings(cfg: RunConfig, config: Path | None, sets: list[str] | None, runs: list[Path] | None,
                       **named: Any) -> None:
    """One line saying which eval settings this call uses and where they come from."""
    source = f"-c {config}" if config else (f"{runs[0] / 'config.yaml'}" if runs else
                                             f"{QUICKSTART.name} (the default config)")
    explicit = [item for item in sets or [] if item.startswith("eval.")]
    explicit += [f"{key}={value}" for key, value in named.items() if value is not None]
    settings = (f"calculator {'on' if cfg.eval.calculator else 'off'}, max_new_tokens {cfg.eval.max_new_tokens}, "
                f"batch {cfg.eval.batch_size}, dtype {cfg.eval.dtype}, problems {cfg.eval.num_problems or 'all'} "
                f"(seed {cfg.eval.seed}, split {cfg.eval.split})")
    typer.echo(f"eval settings from {source}: {settings}" + (f"; set here: {', '.join(explicit)}" if explicit else ""))


def become_training_process(cfg: Any, program: tuple[str, ...] = ("-m", "mathtune")) -> None:
    """`train` and `run` re-execute themselves once under the heap allocator (speedups/allocator.py);
    the re-executed process exists for this run alone, so it also leaves out bitsandbytes when neither
    the method nor the checkpoint is quantized (methods/registry.py). In-process callers (tests) keep
    their imports."""
    from mathtune.models.loading import may_store_quantized_weights

    reexec_with_allocator(cfg.train.allocator, program)
    if reexecuted() and not may_store_quantized_weights(cfg.model.name):
        hide_unused_bitsandbytes(cfg.method.name)


@app.command("train")
def train_cmd(config: ConfigOpt = None, set_: SetOpt = None, model: ModelOpt = None, method: MethodOpt = None,
              prompt: PromptOpt = None, data_dir: DataDirOpt = None, output_dir: OutOpt = None,
              train_size: TrainSizeOpt = None, max_steps: StepsOpt = None, overwrite: OverwriteOpt = False,
              resume: ResumeOpt = False) -> None:
    """Fine-tune a model; writes the adapter (PEFT format), tokenizer and a run card."""
    from mathtune.recipes.train import train_workflow

    cfg = build_run_config(config, set_, model=model, method=method, prompt=prompt, data_dir=data_dir,
                           output_dir=output_dir, train_size=train_size, max_steps=max_steps)
    become_training_process(cfg)
    interrupts.watch(Path(cfg.output_dir), resume_flag=True)
    run_dir = train_workflow(cfg, overwrite=overwrite, resume=resume)
    typer.echo(f"adapter written to {run_dir / 'adapter'}")


@app.command("eval")
def eval_cmd(run_dirs: Annotated[list[Path] | None, typer.Argument(
                 help="Finished run dir(s) whose tuned models to test; several LoRA runs share one loaded base")]
             = None, base: Annotated[bool, typer.Option(help="Evaluate the base model instead")] = False,
             config: ConfigOpt = None, set_: SetOpt = None, model: ModelOpt = None, prompt: PromptOpt = None,
             data_dir: DataDirOpt = None, eval_size: EvalSizeOpt = None,
             dataset: Annotated[str | None, typer.Option(
                 help=f"Benchmark to test on ({benchmarks_help()}; jsonl with data.test_file); a "
                      "run's model is tested on it instead of the run's own data, into eval/<benchmark>/")] = None,
             output_dir: OutOpt = None, overwrite: OverwriteOpt = False) -> None:
    """Evaluate a base model or runs' tuned models; writes predictions.jsonl and metrics.json."""
    from mathtune.data.problems import benchmark_name
    from mathtune.evaluate.sharding import current_processes, main_process_output
    from mathtune.io import output_dir_guard
    from mathtune.recipes.checks import preflight
    from mathtune.recipes.evaluate import eval_adapters_workflow, eval_workflow, tuned_config

    sets = [*(set_ or []), *([f"data.dataset={dataset}"] if dataset else [])]
    runs = None if base else run_dirs
    cfg = build_run_config(config, sets, runs, model=model, prompt=prompt, data_dir=data_dir, eval_size=eval_size)
    show_eval_settings(cfg, config, set_, runs, **{"eval.num_problems": eval_size})
    if run_dirs and len(run_dirs) > 1 and not base:
        if output_dir:
            raise MathtuneError("--output-dir takes one run; with several, each run's eval/tuned is written")
        if dataset:
            raise MathtuneError("--dataset takes one run at a time")
        for metrics, out in eval_adapters_workflow(cfg, run_dirs, overwrite):
            _print_scores(metrics)
            typer.echo(f"predictions and metrics written to {out}")
        return
    run_dir = run_dirs[0] if run_dirs else None
    # A run's model is tested on its own data unless the call names a benchmark (--dataset or any
    # -s data.* key but the data folder); then the results go to eval/<benchmark>/, apart from the
    # run's own.
    own_data = not dataset and not any(key.startswith("data.") and key != "data.data_dir"
                                       for key, _ in map(parse_override, set_ or []))
    root = (run_dir if run_dir and not base else Path(cfg.output_dir)) / "eval"
    if run_dir and not base and not own_data:
        root = root / benchmark_name(cfg.data)
    default = root / ("tuned" if run_dir and not base else "base")
    if cfg.eval.perturbed:  # never mixed with the original problems' predictions (same ids)
        default = default.with_name(default.name + "-perturbed")
    loaded = preflight(tuned_config(cfg, run_dir, own_data) if run_dir and not base else cfg, (cfg.eval.split,),
                       training=False)  # the problems it read are passed down: each split is read once
    # An existing eval dir of the same evaluation is resumed: finished predictions are kept and skipped.
    out_path = Path(output_dir) if output_dir else default
    interrupts.watch(out_path)
    # Under `accelerate launch` rank 0 prepares and locks the dir; every rank evaluates its share.
    with main_process_output(out_path, lambda: output_dir_guard(out_path, overwrite, resume=not overwrite)) as out:
        finished = (out / "metrics.json").is_file()  # metrics.json is written last: this evaluation is done
        metrics = eval_workflow(cfg, run_dir, base, out, own_data, loaded)
    if not current_processes().main:
        return
    _print_scores(metrics)
    typer.echo(f"already finished: predictions and metrics in {out} are unchanged (--overwrite evaluates again)"
               if finished else f"predictions and metrics written to {out}")


@app.command("sample")
def sample_cmd(run_dir: Annotated[Path | None, typer.Argument(help="Finished run dir whose tuned model to sample")]
               = None, base: Annotated[bool, typer.Option(help="Sample the base model instead")] = False,
               k: Annotated[int, typer.Option("--k", "-k", min=2, max=64, help="Samples per problem")] = 16,
               temperature: Annotated[float | None, typer.Option(help="Sampling temperature (eval.temperature)")]
               = None,
               top_p: Annotated[float | None, typer.Option(help="Nucleus sampling (eval.top_p)")] = None,
               seed: Annotated[int | None, typer.Option(help="Seed of the samples (eval.sample_seed)")] = None,
               split: Annotated[str | None, typer.Option(help="test, or train (the verifier's training data)")]
               = None,
               share_prefix: Annotated[bool, typer.Option(help="One prefill per problem for its k samples")] = True,
               merge: Annotated[bool, typer.Option(help="Fold a LoRA adapter into the weights first (faster)")]
               = True,
               rows: Annotated[int | None, typer.Option(min=1, help="Rows decoded at once: problems x k "
                                                                 "(eval.batch_size; default 64)")] = None,
               extend: Annotated[Path | None, typer.Option(help="Samples dir of these settings and a smaller k: "
                                                                "keep its samples, draw only the rest")] = None,
               config: ConfigOpt = None, set_: SetOpt = None, model: ModelOpt = None, prompt: PromptOpt = None,
               data_dir: DataDirOpt = None, eval_size: EvalSizeOpt = None, output_dir: OutOpt = None,
               overwrite: OverwriteOpt = False) -> None:
    """k sampled solutions per problem, each scored like an evaluation (for maj@k, verifiers, curves)."""
    from mathtune.evaluate.sharding import current_processes, main_process_output
    from mathtune.io import output_dir_guard
    from mathtune.recipes.checks import preflight
    from mathtune.recipes.evaluate import tuned_config
    from mathtune.recipes.sample import sample_model

    # 64 rows suit sampling better than a config's evaluation batch size, but `-s eval.batch_size=N`
    # still wins over that default; only an explicit --rows overrides it.
    if rows is None and not any(item.startswith("eval.batch_size=") for item in set_ or []):
        rows = 64
    named = {"eval.samples": k, "eval.temperature": temperature, "eval.top_p": top_p, "eval.sample_seed": seed,
             "eval.split": split, "eval.batch_size": rows}
    sets = [*(set_ or []), *(f"{key}={value}" for key, value in named.items() if value is not None)]
    tuned = run_dir is not None and not base
    cfg = build_run_config(config, sets, [run_dir] if tuned else None, model=model, prompt=prompt,
                           data_dir=data_dir, eval_size=eval_size)
    show_eval_settings(cfg, config, set_, [run_dir] if tuned else None, **named)
    if tuned:
        cfg = tuned_config(cfg, run_dir)
    loaded = preflight(cfg, (cfg.eval.split,), training=False)
    root = run_dir if tuned else Path(cfg.output_dir)
    default = root / "samples" / f"{'tuned' if tuned else 'base'}-{cfg.eval.split}-k{cfg.eval.samples}"
    out_path = Path(output_dir) if output_dir else default
    interrupts.watch(out_path)
    with main_process_output(out_path, lambda: output_dir_guard(out_path, overwrite, resume=not overwrite)) as out:
        summary = sample_model(cfg, out, run_dir / "adapter" if tuned else None, share_prefix,
                               merge=merge, extend=extend, loaded=loaded)
    if not current_processes().main:
        return
    typer.echo(f"{summary['n']} problems x {summary['k']} samples in {summary['wall_seconds']:.0f} s "
               f"({summary['generated_tokens_per_second']} tokens/s) written to {out / 'samples.jsonl'}")


def read_json_or_empty(path: Path) -> dict[str, Any]:
    """A small JSON file written by mathtune, or {} when it is absent or unreadable."""
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


verifier_app = typer.Typer(no_args_is_help=True, help="Train a verifier on sampled solutions; score samples with it.")
app.add_typer(verifier_app, name="verifier")


@verifier_app.command("train")
def verifier_train_cmd(samples: Annotated[list[Path], typer.Argument(
                           help="Samples dirs of train problems (`mathtune sample RUN --split train`)")],
                       output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Verifier dir to write")],
                       config: ConfigOpt = None, set_: SetOpt = None, model: ModelOpt = None,
                       overwrite: OverwriteOpt = False) -> None:
    """LoRA + scalar head on the base model, labels from the evaluation's extractor, split by problem."""
    from mathtune.io import output_dir_guard
    from mathtune.recipes.verifier import train_verifier

    cfg = build_run_config(config, set_, model=model)
    for directory in samples:
        if not (directory / "samples.jsonl").is_file():
            raise MathtuneError(f"{directory} holds no samples.jsonl (run `mathtune sample ... --split train`)")
        if read_json_or_empty(directory / "sampling.json").get("split") == "test":
            raise MathtuneError(f"{directory} holds samples of test problems: a verifier trained on them would "
                                "later rank solutions of problems it has seen; sample with --split train")
    with output_dir_guard(output_dir, overwrite) as out:
        card = train_verifier(cfg, samples, out)
    dev = card["dev"] or {}
    auc = dev.get("auc")
    typer.echo(f"verifier trained on {card['train_samples']} samples of {card['train_problems']} problems "
               f"({card['train_right']} right) in {card['wall_seconds']:.0f} s; dev AUC "
               f"{'n/a' if auc is None else f'{auc:.3f}'}; written to {out}")


@verifier_app.command("score")
def verifier_score_cmd(verifier: Annotated[Path, typer.Argument(help="Verifier dir (`mathtune verifier train`)")],
                       samples: Annotated[Path, typer.Argument(help="Samples dir to score")]) -> None:
    """One probability of being right per sample, into SAMPLES/verifier_scores.jsonl."""
    from mathtune.config import load_config
    from mathtune.evaluate.sharding import current_processes
    from mathtune.recipes.verifier import score_samples

    if not (verifier / "config.yaml").is_file():
        raise MathtuneError(f"no verifier at {verifier}: train one with `mathtune verifier train`")
    path = score_samples(load_config(verifier / "config.yaml"), verifier, samples)
    if current_processes().main:
        typer.echo(f"verifier scores written to {path}")


@app.command("curve")
def curve_cmd(samples: Annotated[Path, typer.Argument(help="Samples dir (`mathtune sample`)")],
              greedy: Annotated[Path | None, typer.Option(
                  help="Eval dir (or run dir) of the same model's greedy predictions, compared at N = k")] = None,
              score: Annotated[str, typer.Option(help="Score that counts a sample right")] = "numeric-match",
              output: Annotated[Path | None, typer.Option("--output", "-o", help="Write <output>.md/.json/.png "
                                                          "(default: SAMPLES/curve)")] = None) -> None:
    """Test-time compute curve: pass@N, maj@N and (with verifier scores) best-of-N and weighted voting."""
    from mathtune.evaluate.curves import compute_curve, curve_markdown, plot_curve, rerank_table, scores_by_id
    from mathtune.io import atomic_write_json, atomic_write_text, read_jsonl_tolerant
    from mathtune.recipes.sample import read_samples
    from mathtune.recipes.verifier import SCORES_FILE

    rows = read_samples(samples)
    if not rows:
        raise MathtuneError(f"no samples in {samples} (run `mathtune sample`)")
    scored = read_jsonl_tolerant(samples / SCORES_FILE)
    scores = scores_by_id(scored) if scored else None
    if scores is not None and any(row["id"] not in scores for row in rows):
        raise MathtuneError(f"{samples / SCORES_FILE} lacks some problems: finish `mathtune verifier score`")
    greedy_correct = None
    if greedy is not None:
        path = next((p for p in (greedy / "predictions.jsonl", greedy / "eval" / "tuned" / "predictions.jsonl")
                     if p.is_file()), None)
        if path is None:
            raise MathtuneError(f"no predictions.jsonl in {greedy} or {greedy / 'eval' / 'tuned'}")
        greedy_correct = {row["id"]: bool(row["correct"].get(score)) for row in read_jsonl_tolerant(path)}
    try:
        curve = compute_curve(rows, scores, score)
        rerank = rerank_table(rows, greedy_correct, scores, score)
    except ValueError as exc:
        raise MathtuneError(f"curve: {exc}") from None
    prefix = output if output is not None else samples / "curve"
    atomic_write_json(prefix.with_suffix(".json"), {"curve": curve, "rerank": rerank})
    text = curve_markdown(curve, rerank)
    atomic_write_text(prefix.with_suffix(".md"), text)
    plot_curve(curve, prefix.with_suffix(".png"), greedy=rerank["methods"].get("greedy"))
    typer.echo(text)


@app.command("augment")
def augment_cmd(output: Annotated[Path, typer.Option("--output", "-o", help="JSONL file to write")],
                variants: Annotated[int, typer.Option(min=1, max=32, help="Variants asked for per problem")] = 3,
                seed: Annotated[int, typer.Option(help="Seed of the new numbers")] = 0,
                include_original: Annotated[bool, typer.Option(help="Write the original rows too")] = False,
                config: ConfigOpt = None, set_: SetOpt = None, data_dir: DataDirOpt = None,
                train_size: TrainSizeOpt = None, overwrite: OverwriteOpt = False) -> None:
    """New train problems with new numbers and recomputed, verified answers (never from the test split)."""
    from mathtune.recipes.augment import augment_workflow

    cfg = build_run_config(config, set_, data_dir=data_dir, train_size=train_size)
    report = augment_workflow(cfg, output, variants, seed, include_original, overwrite)
    typer.echo(f"{report['kept']} variants of {report['problems']} problems ({report['requested']} asked for; "
               f"dropped: {report['dropped'] or 'none'}); {report['rows']} rows written to {output}")


@app.command("improve")
def improve_cmd(run_dir: Annotated[Path, typer.Argument(help="Finished run dir whose tuned model starts round 1")],
                config: ConfigOpt = None, set_: SetOpt = None, data_dir: DataDirOpt = None) -> None:
    """Self-training: sample train problems, keep the verified distinct solutions, retrain; per round."""
    from mathtune.recipes.improve import improve_workflow

    cfg = build_run_config(config, set_, data_dir=data_dir)
    become_training_process(cfg)
    interrupts.watch(run_dir / "improve")
    for card in improve_workflow(cfg, run_dir):
        kept = card["filter"]
        typer.echo(f"round {card['round']}: kept {kept['kept']} of {kept['samples']} samples "
                   f"({kept['problems_with_a_kept_sample']} of {kept['problems']} problems), {card['rows']} train "
                   f"rows {card['sources']}; model in {run_dir / 'improve' / ('round-' + str(card['round']))}/model")


@app.command("compare")
def compare_cmd(paths: Annotated[list[Path], typer.Argument(help="Run dirs or eval dirs to put side by side")],
                output: Annotated[Path | None, typer.Option("--output", "-o", help="Write <output>.md/.json/.png")]
                = None) -> None:
    """Table of models on the same problems, exact McNemar test, and problems where they differ."""
    from mathtune.compare import compare_runs, render_comparison_markdown, write_comparison

    comparison = compare_runs(paths)
    if output is not None:
        write_comparison(comparison, output)
        from mathtune.report.plots import accuracy_bar_chart, by_benchmark, chart_path

        for index, (benchmark, rows) in enumerate(by_benchmark(comparison["rows"]).items()):
            accuracy_bar_chart(rows, chart_path(output.with_suffix(".png"), benchmark, index == 0))
    typer.echo(render_comparison_markdown(comparison))


@app.command("run")
def run_cmd(config: ConfigOpt = None, set_: SetOpt = None, model: ModelOpt = None, method: MethodOpt = None,
            prompt: PromptOpt = None, data_dir: DataDirOpt = None, output_dir: OutOpt = None,
            train_size: TrainSizeOpt = None, eval_size: EvalSizeOpt = None, max_steps: StepsOpt = None,
            overwrite: OverwriteOpt = False, resume: ResumeOpt = False) -> None:
    """Train, evaluate base and tuned on the same problems, and compare: the whole study."""
    from mathtune.evaluate.sharding import current_processes
    from mathtune.recipes.run import run_workflow
    from mathtune.training.distributed import process_rank

    cfg = build_run_config(config, set_, model=model, method=method, prompt=prompt, data_dir=data_dir,
                           output_dir=output_dir, train_size=train_size, eval_size=eval_size,
                           max_steps=max_steps)
    become_training_process(cfg)
    interrupts.watch(Path(cfg.output_dir), resume_flag=True)
    # On stdout: stderr is kept for the one line of an error.
    if process_rank() == 0:
        from mathtune.data.problems import benchmark_name

        also = "".join(f", {benchmark_name(c.data)} {c.eval.num_problems or 'all'}" for c in cfg.also_configs())
        typer.echo(f"mathtune run: model {cfg.model.name}, method {cfg.method.name}, prompt {cfg.prompt.strategy}, "
                   f"train rows {cfg.data.train_size or 'all'}, test problems {cfg.eval.num_problems or 'all'}{also} "
                   f"(seed {cfg.eval.seed}) -> {cfg.output_dir}")
    card = run_workflow(cfg, overwrite=overwrite, resume=resume)
    if not current_processes().main:
        return
    for name, result in {"": card, **card.get("also", {})}.items():
        for label in ("base", "tuned"):
            _print_scores({"label": f"{name} {label}".strip(), **result[label]})
        _print_mcnemar(result)
        stem = f"comparison_{name}" if name else "comparison"
        typer.echo(f"comparison written to {Path(cfg.output_dir) / stem}.md")


def _print_mcnemar(result: dict[str, Any]) -> None:
    """The exact McNemar test of base vs tuned on each score (b: only base right, c: only tuned right)."""
    tests = {"strict-match": result["mcnemar"], **result.get("mcnemar_by_score", {})}
    typer.echo("base vs tuned, exact McNemar: " + "; ".join(
        f"{name} {test['b']} vs {test['c']}, p = {test['p_value']:.3g}" for name, test in tests.items() if test))


def _print_scores(metrics: dict[str, Any]) -> None:
    parts = [f"{name} {100 * s['exact_match']:.1f}±{100 * s['stderr']:.1f}%" for name, s in metrics["scores"].items()]
    typer.echo(f"{metrics.get('label', '')}: n={metrics['n']} " + ", ".join(parts))
    voted = metrics.get("voted")
    if voted:  # test-time compute beside greedy, on the same problems
        numeric = voted["scores"].get("numeric-match") or next(iter(voted["scores"].values()))
        test = voted["mcnemar_vs_greedy"].get("numeric-match") or next(iter(voted["mcnemar_vs_greedy"].values()))
        typer.echo(f"{metrics.get('label', '')} {voted['method']}@{voted['k']}: "
                   + ", ".join(f"{name} {100 * s['exact_match']:.1f}±{100 * s['stderr']:.1f}%"
                               for name, s in voted["scores"].items())
                   + f" (vs greedy: only greedy right {test['b']}, only voted right {test['c']}, "
                   f"McNemar p = {test['p_value']:.3g}; numeric-match {100 * numeric['exact_match']:.1f}%)")


@app.command("report")
def report_cmd(paths: Annotated[list[Path], typer.Argument(help="Run dirs (or eval dirs) to report on")],
               output: Annotated[Path | None, typer.Option("--output", "-o", help="Folder for report.html/.md "
                                                           "and PNGs (default: RUN_DIR/report)")] = None) -> None:
    """One self-contained HTML page and a Markdown report: accuracy with 95% CIs, loss, cost, failures."""
    from mathtune.report.build import write_report

    output = output or (paths[0] / "report" if len(paths) == 1 else Path("report"))
    interrupts.watch(output)
    written = write_report(paths, output)
    typer.echo(f"report written to {written['html']} and {written['markdown']}")


@app.command("app")
def app_cmd(paths: Annotated[list[Path] | None, typer.Argument(help="Run dirs whose tuned models to offer")]
            = None, model: ModelOpt = None, data_dir: DataDirOpt = None,
            db: Annotated[Path, typer.Option(help="SQLite file for human ratings")] = Path("ratings.sqlite"),
            host: Annotated[str, typer.Option(help="Address to serve on")] = "127.0.0.1",
            port: Annotated[int | None, typer.Option(help="Port (default: 7860 or the next free one)")] = None,
            auth: Annotated[Path | None, typer.Option(help="Users file, one 'user:password' (or 'user:<hash>' "
                                                      "from python -m mathtune.app.auth USER) a line: Gradio's "
                                                      "login; ratings are stored under the logged-in user")] = None,
            insecure: Annotated[bool, typer.Option(help="Serve on a non-loopback --host without --auth "
                                                   "(anyone who can reach it can rate and download ratings)")]
            = False,
            int8_decode: Annotated[bool, typer.Option(help="Weight-only int8 matmuls for one-sequence decoding "
                                                      "(CPU; faster, other numerics than bf16: eval.int8_decode)")]
            = False) -> None:
    """Demo app: base vs tuned answers streamed side by side, and blind human evaluation."""
    from mathtune.app.ui import launch

    launch(paths or [], model, data_dir, db, host, port, auth=auth, insecure=insecure, int8_decode=int8_decode)


@app.command("lm-eval")
def lm_eval_cmd(run_dir: Annotated[Path | None, typer.Argument(help="Finished run dir whose tuned model to test")]
                = None, base: Annotated[bool, typer.Option(help="Evaluate the base model instead")] = False,
                tasks: Annotated[str, typer.Option(help="Comma-separated: gsm8k, gsm8k_cot")] = "gsm8k",
                limit: Annotated[int | None, typer.Option(help="lm-eval's first N test problems "
                                                          "(default: the problems `mathtune eval` draws)")] = None,
                batch_size: Annotated[int, typer.Option(help="lm-eval batch size")] = 1,
                config: ConfigOpt = None, set_: SetOpt = None, model: ModelOpt = None, data_dir: DataDirOpt = None,
                eval_size: EvalSizeOpt = None, output_dir: OutOpt = None) -> None:
    """Run lm-evaluation-harness itself (offline on local data); writes lm_eval.json beside metrics.json."""
    from mathtune.evaluate.lm_eval_bridge import headline
    from mathtune.recipes.lm_eval import lm_eval_workflow

    runs = [run_dir] if run_dir and not base else None
    cfg = build_run_config(config, set_, runs, model=model, data_dir=data_dir, eval_size=eval_size)
    show_eval_settings(cfg, config, set_, runs, **{"eval.num_problems": eval_size})
    default = (run_dir / "eval" / "tuned") if run_dir and not base else Path(cfg.output_dir) / "eval" / "base"
    out = Path(output_dir) if output_dir else default
    record = lm_eval_workflow(cfg, run_dir, base, out, [t.strip() for t in tasks.split(",") if t.strip()],
                              limit=limit, batch_size=batch_size)
    for task, entry in headline(record).items():
        _print_scores({"label": f"lm-eval {task}", **entry})
    typer.echo(f"lm-eval results written to {out / 'lm_eval.json'}")


@app.command("export")
def export_cmd(run_dir: Annotated[Path, typer.Argument(help="Finished run dir whose tuned model to export")],
               format_: Annotated[str, typer.Option("--format", help="hf: merged safetensors; gguf: llama.cpp/Ollama")]
               = "hf",
               quant: Annotated[str | None, typer.Option(help="GGUF weights: f16 (default) or q8_0")] = None,
               output_dir: Annotated[Path | None, typer.Option("--output-dir", "-o", help="Folder to write "
                                                               "(default: RUN_DIR/export/hf or gguf-QUANT)")] = None,
               overwrite: OverwriteOpt = False) -> None:
    """The tuned model merged into plain weights (hf) or one GGUF file + Ollama Modelfile, loaded back and checked."""
    from mathtune.recipes.export import export_workflow

    card = export_workflow(run_dir, format_, quant, output_dir, overwrite)
    check = card["loaded_back"]
    typer.echo(f"exported {card['format']}{' ' + card['quant'] if card['quant'] else ''} to {card['output']} "
               f"({', '.join(card['files'][:3])}{', ...' if len(card['files']) > 3 else ''}); loaded back: max logit "
               f"gap {check['max_abs_logit_gap']:.2g} of {check['max_abs_logit']:.3g}")

def main() -> None:
    # Our own log at MATHTUNE_LOG; other libraries' import-time chatter (torchao/bitsandbytes kernels
    # missing on CPU, torch pytree deprecations) only at ERROR, so a failure stays one line on stderr.
    logging.basicConfig(level=logging.ERROR, format="%(message)s")
    logging.getLogger("mathtune").setLevel(os.environ.get("MATHTUNE_LOG", "WARNING").upper())
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)  # "Retrying in 8s [Retry 5/5]" chatter
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Library progress bars ("Loading weights") and warnings would bury our one-line errors.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notices, not ours
    interrupts.install()  # again: `python -m mathtune.cli` and in-process callers skip __main__.py
    try:
        code = app(standalone_mode=False)
    except interrupts.Interrupted as exc:
        _exit_interrupted(exc)
    except MathtuneError as exc:
        if not getattr(exc, "quiet", False):  # a refusal all ranks of a launch share: rank 0 prints it
            print(f"mathtune: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except Exception as exc:
        _exit_if_write_failed(exc)
        _exit_unexpected(exc)
    except KeyboardInterrupt:  # raised before our handler was installed, or by a library's own
        print(f"mathtune: interrupted; {interrupts.summary()}", file=sys.stderr)
        sys.exit(130)
    swallowed = interrupts.received()
    if swallowed is not None:  # raised where Python drops exceptions (a weakref callback): still an interrupt
        _exit_interrupted(swallowed)
    if code == 130:  # typer's answer to a KeyboardInterrupt our handler did not raise (a library's own)
        print(f"mathtune: interrupted; {interrupts.summary()}", file=sys.stderr)
    interrupts.ignore_from_now()
    if isinstance(code, int) and code:
        sys.exit(code)


def _exit_if_write_failed(exc: BaseException) -> None:
    """A full disk, a quota, a read-only or foreign folder: one line naming the path, what was kept
    and the command that continues (the same one, with --resume for train/run), exit 2. Temp files
    are removed where they are written (io.atomic_write_text, io.replace_dir, checkpoints)."""
    from mathtune.io import write_failure

    failed = write_failure(exc)
    if failed is None:
        return
    reason, path = failed
    interrupts.close_progress_bars()
    where = path or interrupts.watched() or "the output"
    verb = "access" if reason in (os.strerror(errno.EACCES), os.strerror(errno.EPERM)) else "write"  # reads too
    print(f"mathtune: error: cannot {verb} {where}: {reason}; {interrupts.summary()} "
          "(after freeing space or fixing permissions, or with -o on another disk)", file=sys.stderr)
    sys.exit(2)


def _exit_unexpected(exc: Exception) -> None:
    """Click's usage errors and anything unforeseen: still one line."""
    # By class name: typer >= 0.20 raises its vendored copy of click's exceptions (typer._click).
    names = {cls.__name__ for cls in type(exc).__mro__}
    if "ClickException" in names:
        # no_args_is_help raises with an empty message after printing the help
        print(f"mathtune: error: {exc.format_message() or 'missing command (see above)'}", file=sys.stderr)
        sys.exit(2)
    if names & {"Exit", "Abort"}:
        sys.exit(getattr(exc, "exit_code", 1))
    print(f"mathtune: internal error: {type(exc).__name__}: {exc}".splitlines()[0], file=sys.stderr)
    sys.exit(1)


def _exit_interrupted(exc: interrupts.Interrupted) -> None:
    interrupts.close_progress_bars()
    print(f"mathtune: interrupted by {exc.signal_name}; {interrupts.summary()}", file=sys.stderr)
    sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
