"""`mathtune improve RUN_DIR`: self-training on verified solutions (rejection-sampling fine-tuning, STaR,
expert iteration). Round r, into RUN_DIR/improve/round-<r>/:

  samples/     k solutions per train problem from the current model (`mathtune sample`'s machinery:
               seeded per problem and sample, appended per chunk, resumed where it stopped)
  data.jsonl   the distinct right solutions (data/self_training.py), never a test problem, mixed with
               the human solutions and, if asked, `mathtune augment`'s; data.json: its sha256, sources,
               counts, round, seed and the run it came from
  model/       the next model: the run's method trained on data.jsonl afresh from the base model, or
               on from the sampled model (`improve.start_from`; the train recipe, resumed from its last
               checkpoint)

The current model of round 1 is the run's own tuned model, of round r the model of round r-1. A round
whose model is trained is skipped; the same settings give the same samples, data and fingerprints.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mathtune.config import RunConfig, load_config
from mathtune.data.problems import LoadedSplits
from mathtune.data.self_training import (
    FilterReport,
    augmented_rows,
    drop_test_problems,
    human_rows,
    verified_solutions,
    write_rows,
)
from mathtune.errors import MathtuneError
from mathtune.fingerprint import files_digest
from mathtune.io import atomic_write_json
from mathtune.prompts import extract_program, get_strategy
from mathtune.recipes.checks import load_train_problems, preflight
from mathtune.recipes.sample import read_samples, sample_model
from mathtune.recipes.train import train_workflow
from mathtune.runcard import provenance

DATA_FILE = "data.jsonl"
DATA_CARD = "data.json"


def improve_workflow(cfg: RunConfig, run_dir: Path, show_progress: bool = True) -> list[dict[str, Any]]:
    """Every round of `cfg.improve` on the finished run `run_dir` (its model, method, data and prompt;
    this call's `improve` and `eval` generation settings); returns each round's data card."""
    if not (run_dir / "config.yaml").is_file() or not (run_dir / "adapter").is_dir():
        raise MathtuneError(f"{run_dir} is not a finished run (no config.yaml and adapter/); train it first")
    run_cfg = load_config(run_dir / "config.yaml").model_copy(update={"improve": cfg.improve, "eval": cfg.eval})
    if cfg.data.data_dir:  # this call's --data-dir: where the run's data lives on this machine
        run_cfg = run_cfg.model_copy(update={"data": run_cfg.data.model_copy(update={"data_dir": cfg.data.data_dir})})
    if run_cfg.method.name == "grpo":
        raise MathtuneError("mathtune improve trains with the run's method on the kept solutions; a grpo run "
                            "has no supervised targets: self-train a lora/full run instead")
    if cfg.improve.start_from == "continue" and run_cfg.method.name != "full":
        raise MathtuneError(f"improve.start_from=continue trains on from the sampled model's whole weights: it "
                            f"needs a full fine-tuning run ({run_dir} is {run_cfg.method.name}); use start_from=base")
    loaded = preflight(run_cfg, ("train", "test"), training=False)  # each split read once, passed down
    test = loaded.of(run_cfg, "test")
    cards, current = [], run_dir
    for round_number in range(1, cfg.improve.rounds + 1):
        round_dir = run_dir / "improve" / f"round-{round_number}"
        round_dir.mkdir(parents=True, exist_ok=True)

        # 1. k samples per train problem from the current model (resumed where a killed round stopped)
        sampling = sampling_config(run_cfg, round_number)
        sample_model(sampling, round_dir / "samples", current / "adapter", show_progress=show_progress, merge=True,
                     loaded=loaded)

        # 2. the distinct right ones, no test problem, mixed with the other sources, fingerprinted
        card = write_round_data(run_cfg, round_dir, run_dir, current, round_number,
                                [(p.id, p.question) for p in test], loaded)
        cards.append(card)

        # 3. the next model, trained on this round's data from the base model (or the sampled one: continue)
        model_dir = round_dir / "model"
        if not (model_dir / "train_card.json").is_file():
            train_workflow(training_config(run_cfg, round_dir, current), resume=model_dir.is_dir())
        current = model_dir
    return cards


def sampling_config(run_cfg: RunConfig, round_number: int) -> RunConfig:
    """The run's config with this round's sampling: its train split, k samples, the round's seed. (Every
    round's model has the run's model and method: each is trained afresh from the base model.)"""
    improve = run_cfg.improve
    evals = run_cfg.eval.model_copy(update={
        "split": "train", "samples": improve.samples_per_problem, "temperature": improve.temperature,
        "num_problems": improve.problems, "seed": improve.seed, "sample_seed": improve.seed + round_number})
    return run_cfg.model_copy(update={"eval": evals})


def write_round_data(run_cfg: RunConfig, round_dir: Path, run_dir: Path, model_dir: Path, round_number: int,
                     test_questions: list[tuple[str, str]], loaded: LoadedSplits | None = None) -> dict[str, Any]:
    """data.jsonl (the round's train rows) and data.json (its fingerprint and counts)."""
    improve = run_cfg.improve
    loaded = loaded or LoadedSplits()
    human = load_train_problems(run_cfg, loaded)
    report = FilterReport()
    rows: list[dict[str, Any]] = []
    if "human" in improve.mix:
        rows += human_rows(human)
    if "self" in improve.mix:
        samples = read_samples(round_dir / "samples")
        # a sample repeating its problem's human solution is recall, not a solution of the model's own
        references = {p.id: p.solution for p in loaded.of(run_cfg, "train")}
        programs = extract_program if get_strategy(run_cfg.prompt.strategy).writes_programs else None
        kept, report = verified_solutions(samples, programs=programs, score=improve.score, human=references,
                                          max_per_problem=improve.max_per_problem)
        rows += kept
    if "augmented" in improve.mix:
        rows += augmented_rows(Path(improve.augmented_file))
    rows = drop_test_problems(rows, test_questions, report)
    if not any(row["source"] != "human" for row in rows) and improve.mix != ["human"]:
        raise MathtuneError(f"round {round_number}: no sample was right, so there is nothing new to train on "
                            f"({report.samples} samples of {report.problems} problems; see "
                            f"{round_dir / 'samples'}); sample more per problem or a higher temperature")
    digest = write_rows(round_dir / DATA_FILE, rows)
    sources = {source: sum(row["source"] == source for row in rows) for source in ("human", "self", "augmented")}
    card = {"kind": "self-training data", "round": round_number, "sha256": digest, "rows": len(rows),
            "sources": sources, "filter": report.to_dict(), "source_run": str(run_dir),
            "sampled_model": str(model_dir), "sampled_adapter": files_digest(model_dir / "adapter"),
            "seed": improve.seed, "sample_seed": improve.seed + round_number,
            "improve": improve.model_dump(mode="json"), **provenance()}
    stored = _read_json(round_dir / DATA_CARD)
    if stored.get("sha256") != digest:  # rewritten only when the data changed: the card dates the data
        atomic_write_json(round_dir / DATA_CARD, card)
        return card
    return stored


def training_config(run_cfg: RunConfig, round_dir: Path, sampled: Path) -> RunConfig:
    """The run's own config training on the round's data (every row of it) into round_dir/model; the
    test split stays the run's, so the train recipe's test-overlap check and the evaluation see it.
    With start_from=continue the model trained is the sampled one's saved weights (full fine-tuning)."""
    update: dict[str, Any] = {}
    if run_cfg.improve.start_from == "continue":
        update["model"] = run_cfg.model.model_copy(update={"name": str(sampled / "adapter"), "gguf_file": None,
                                                           "revision": None})
    if run_cfg.improve.max_steps is not None:
        update["train"] = run_cfg.train.model_copy(update={"max_steps": run_cfg.improve.max_steps})
    data = run_cfg.data.model_dump()
    test_file = _test_file(run_cfg)
    data.update({"dataset": "jsonl", "train_file": str(round_dir / DATA_FILE), "test_file": test_file,
                 "question_field": "question", "answer_field": "answer", "train_size": None})
    return run_cfg.model_copy(update={"data": type(run_cfg.data).model_validate(data),
                                      "output_dir": str(round_dir / "model"), **update})


def _test_file(run_cfg: RunConfig) -> str | None:
    """The run's test split as a file the jsonl loader reads: GSM8K's local copy, or the run's own test file."""
    if run_cfg.data.dataset == "jsonl":
        return run_cfg.data.test_file
    if run_cfg.data.dataset == "gsm8k" and run_cfg.resolved_data_dir() is not None:
        name = "test_socratic.jsonl" if run_cfg.data.subset == "socratic" else "test.jsonl"
        path = run_cfg.resolved_data_dir() / "gsm8k" / name
        return str(path) if path.is_file() else None
    return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
