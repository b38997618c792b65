"""The four workflows the CLI and the app call: train, evaluate, compare, run (all three).

Run directory layout:
    config.yaml  train_card.json  train_log.jsonl  tensorboard/  adapter/
    eval/base/{predictions.jsonl,metrics.json}  eval/tuned/{...}  comparison.md  run_card.json
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from mathtune.compare import compare_runs, write_comparison
from mathtune.config import RunConfig, load_config
from mathtune.data.problems import load_split
from mathtune.errors import MathtuneError
from mathtune.evaluate.evaluator import evaluate
from mathtune.evaluate.generation import HFBackend
from mathtune.io import atomic_write_json, atomic_write_text, output_dir_guard
from mathtune.methods.registry import build_method
from mathtune.models.device import choose_placement
from mathtune.models.loading import load_tokenizer, resolve_source, source_config
from mathtune.models.setup import load_for_run
from mathtune.models.vocab import check_saved_tokenizer
from mathtune.runcard import provenance
from mathtune.train import train
from mathtune.training.distributed import process_rank

log = logging.getLogger("mathtune")


def build_backend(cfg: RunConfig, adapter_dir: Path | None = None) -> tuple[HFBackend, dict[str, Any]]:
    """Load the base model (and the tuned weights from `adapter_dir`) behind a generation backend."""
    if adapter_dir is not None and not adapter_dir.is_dir():  # before minutes of loading the base
        raise MathtuneError(f"no trained weights at {adapter_dir}; train first or check the run dir")
    precision = cfg.eval_precision()
    placement = choose_placement(cfg.model.device, precision)
    method = build_method(cfg.method)
    # A quantized base (qlora) is loaded quantized for base and tuned alike, exactly as it was trained,
    # so base vs tuned measures the adapter and not the quantization. Other methods' training dtypes
    # (full: fp32 master weights) do not apply: inference runs in the eval precision.
    quant = method.base_load_kwargs(placement).get("quantization_config")
    loaded = load_for_run(cfg.model, placement, {"quantization_config": quant} if quant is not None else None)
    model, tokenizer, source, added = loaded.model, loaded.tokenizer, loaded.source, loaded.added_characters
    # The characters training added (models/vocab.py) must have the same ids: the tuned rows belong to them.
    if added and adapter_dir is not None:
        check_saved_tokenizer(tokenizer, adapter_dir, added)
    if adapter_dir is not None:
        model = method.load(model, adapter_dir)
        if quant is None:
            model = model.to(placement.device)
    seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
    meta = {"backend": "hf", "model": source.label, "adapter": str(adapter_dir) if adapter_dir else None,
            "device": str(placement.device), "compute_dtype": str(placement.compute_dtype).replace("torch.", ""),
            "quantized": quant is not None}
    if added:
        meta["added_characters"] = added
    return HFBackend(model, tokenizer, placement.device, seq2seq, cfg.eval.batch_size), meta


def evaluate_model(cfg: RunConfig, out_dir: Path, label: str, adapter_dir: Path | None = None,
                   show_progress: bool = True) -> dict[str, Any]:
    from mathtune.evaluate.evaluator import check_eval_dir

    check_eval_dir(cfg, out_dir, adapter_dir)  # before minutes of loading the model
    backend, meta = build_backend(cfg, adapter_dir)
    return evaluate(cfg, backend, out_dir, label, backend.tokenizer, meta, show_progress)


def preflight(cfg: RunConfig, splits: tuple[str, ...] = ("train", "test"), training: bool = True) -> None:
    """Fail on bad data or an unknown model before any output dir is touched."""
    loaded = {split: load_split(cfg.data, cfg.resolved_data_dir(), split) for split in splits}
    if training:
        check_no_test_problems_in_training(cfg, loaded.get("test"))
    source = resolve_source(cfg.model.name, cfg.model.gguf_file)
    source_config(source)
    if cfg.prompt.chat_template:
        from mathtune.prompts import check_chat_template

        check_chat_template(load_tokenizer(source))
    method = build_method(cfg.method)
    if training and hasattr(method, "check"):  # e.g. stacked-lora: its stage-1 adapter must exist
        method.check()


def check_no_test_problems_in_training(cfg: RunConfig, test: list[Any] | None = None) -> None:
    """The rows a run trains on must not be test problems (SVAMP with `svamp_test: all`, a jsonl
    train file that is its test file), unless `data.allow_test_overlap` says it is meant."""
    from mathtune.data.problems import check_train_test_disjoint
    from mathtune.train import load_train_problems

    if test is None:
        try:
            test = load_split(cfg.data, cfg.resolved_data_dir(), "test")
        except MathtuneError:
            return  # no test split (a jsonl run with only a train file): nothing to overlap with
    check_train_test_disjoint(load_train_problems(cfg), test, cfg.data.allow_test_overlap)


def augment_workflow(cfg: RunConfig, output: Path, variants: int, seed: int, include_original: bool = False,
                     overwrite: bool = False) -> dict[str, Any]:
    """Verified variants of the train split (data/augment.py) as JSONL rows that `data.dataset=jsonl`
    reads (question, answer ending in '#### N', program, source_id); `<output>.report.json` counts
    what was kept and dropped. Variants that repeat or share a 13-word n-gram with a test question
    are dropped."""
    from mathtune.data.augment import augment, overlaps_test_split
    from mathtune.data.problems import sample_problems

    output = Path(output)
    if output.exists() and not overwrite:
        raise MathtuneError(f"{output} exists; pass --overwrite to replace it")
    problems = sample_problems(load_split(cfg.data, cfg.resolved_data_dir(), "train"), cfg.data.train_size,
                               cfg.train.seed)
    test = load_split(cfg.data, cfg.resolved_data_dir(), "test")
    kept, report = augment(problems, variants, seed, exclude_questions=[p.question for p in test])
    overlapping = overlaps_test_split([variant for variant, _ in kept], test)
    kept = [(variant, program) for variant, program in kept if variant.id not in overlapping]
    report.kept = len(kept)
    if overlapping:
        report.dropped["shares a 13-gram with a test question"] += len(overlapping)
    rows = [{"id": p.id, "question": p.question, "answer": p.solution, "source_id": p.id} for p in problems
            ] if include_original else []
    rows += [{"id": v.id, "question": v.question, "answer": v.solution, "program": program,
              "source_id": v.id.rpartition("~")[0]} for v, program in kept]
    atomic_write_text(output, "".join(json.dumps(row) + "\n" for row in rows))
    record = {**report.to_dict(), "rows": len(rows), "seed": seed, "variants": variants,
              "include_original": include_original, "source": cfg.data.model_dump(mode="json")}
    atomic_write_json(output.with_name(output.name + ".report.json"), record)
    return record


def check_train_dir(cfg: RunConfig, run_dir: Path, resume: bool, finished_is_done: bool = False
                    ) -> dict[str, Any]:
    """The run's fingerprint; resuming a run dir that trained something else is refused, naming the
    first difference, and so is resuming a finished training (unless `finished_is_done`: `run` goes on
    to its evaluations)."""
    from mathtune.fingerprint import check_fingerprint, train_fingerprint
    from mathtune.train import load_train_problems

    fingerprint = train_fingerprint(cfg, load_train_problems(cfg))
    if resume and run_dir.is_dir():
        if not finished_is_done and (run_dir / "train_card.json").is_file() and (run_dir / "adapter").is_dir():
            card = json.loads((run_dir / "train_card.json").read_text(encoding="utf-8"))
            raise MathtuneError(f"{run_dir} is a finished run ({card.get('steps')} steps, adapter in "
                                f"{run_dir / 'adapter'}); evaluate it with `mathtune eval {run_dir}`, or pass "
                                f"--overwrite to train it again")
        check_fingerprint(run_dir, fingerprint, "a training run",
                          "pass --overwrite to start it again with these settings, or -o another directory")
    return fingerprint


def train_workflow(cfg: RunConfig, overwrite: bool = False, resume: bool = False) -> Path:
    from mathtune.fingerprint import write_fingerprint

    preflight(cfg, ("train",))
    if process_rank() != 0:  # under `accelerate launch`: rank 0 owns (checks, locks, writes) the run dir
        train(cfg, Path(cfg.output_dir), resume=resume, show_progress=False)
        return Path(cfg.output_dir)
    fingerprint = check_train_dir(cfg, Path(cfg.output_dir), resume)
    with output_dir_guard(cfg.output_dir, overwrite, resume) as run_dir:
        write_fingerprint(run_dir, fingerprint)
        train(cfg, run_dir, resume=resume)  # writes config.yaml, the one place it is written
    return run_dir


def eval_workflow(cfg: RunConfig, run_dir: Path | None, base: bool, out_dir: Path,
                  own_data: bool = True) -> dict[str, Any]:
    """Evaluate the base model, or the tuned model of a finished run dir (its config wins; with
    `own_data=False` the benchmark is this call's `data` section instead of the run's)."""
    if base:
        return evaluate_model(cfg, out_dir, "base")
    if run_dir is None:
        raise MathtuneError("pass a run directory to evaluate its tuned model, or --base")
    return evaluate_model(tuned_config(cfg, run_dir, own_data), out_dir, "tuned", adapter_dir=run_dir / "adapter")


def eval_adapters_workflow(cfg: RunConfig, run_dirs: list[Path], overwrite: bool = False
                           ) -> list[tuple[dict[str, Any], Path]]:
    """Evaluate several PEFT adapters of one base model with the base loaded once: each adapter is
    added to the same PeftModel and switched to with `set_adapter`, never reloading the base."""
    configs = [tuned_config(cfg, run_dir) for run_dir in run_dirs]
    first = configs[0]
    for run_dir, run_cfg in zip(run_dirs, configs, strict=True):
        if run_cfg.model.name != first.model.name or run_cfg.method.name not in ("lora", "qlora") \
                or run_cfg.method.name != first.method.name:
            raise MathtuneError(f"{run_dir}: shared-base evaluation needs LoRA/QLoRA adapters of one model "
                                f"({first.model.name}, {first.method.name}); evaluate it on its own")
        preflight(run_cfg, (cfg.eval.split,), training=False)
    backend, meta = build_backend(first, run_dirs[0] / "adapter")
    results = []
    for index, (run_dir, run_cfg) in enumerate(zip(run_dirs, configs, strict=True)):
        name = "default" if index == 0 else f"adapter{index}"
        if index:
            backend.model.load_adapter(str(run_dir / "adapter"), adapter_name=name)
        backend.model.set_adapter(name)
        with output_dir_guard(run_dir / "eval" / "tuned", overwrite, resume=not overwrite) as out:
            metrics = evaluate(run_cfg, backend, out, "tuned", backend.tokenizer,
                               {**meta, "adapter": str(run_dir / "adapter"), "shared_base": True})
        results.append((metrics, out))
    return results


def tuned_config(cfg: RunConfig, run_dir: Path, own_data: bool = True) -> RunConfig:
    """A finished run's own config (model, method, data, prompt) with this call's eval settings, and
    this call's data section too when the run is tested on another benchmark (`own_data=False`)."""
    update: dict[str, Any] = {"eval": cfg.eval} if own_data else {"eval": cfg.eval, "data": cfg.data}
    return load_config(run_dir / "config.yaml", None).model_copy(update=update)


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
