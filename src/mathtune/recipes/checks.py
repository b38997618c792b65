"""Checks every recipe runs before touching an output directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mathtune.config import RunConfig
from mathtune.data.problems import LoadedSplits, sample_problems
from mathtune.data.row import Problem
from mathtune.errors import MathtuneError
from mathtune.methods.registry import build_method
from mathtune.models.loading import is_seq2seq, load_tokenizer, resolve_source, source_config


def load_train_problems(cfg: RunConfig, loaded: LoadedSplits | None = None) -> list[Problem]:
    """The rows a run trains on: the train split, a seeded `data.train_size` subset of it."""
    problems = (loaded or LoadedSplits()).of(cfg, "train")
    return sample_problems(problems, cfg.data.train_size, cfg.train.seed)


def preflight(cfg: RunConfig, splits: tuple[str, ...] = ("train", "test"), training: bool = True,
              loaded: LoadedSplits | None = None) -> LoadedSplits:
    """Fail on bad data or an unknown model before any output dir is touched. Returns the splits it
    read, for the recipe to pass down (each split is read once per command)."""
    loaded = loaded or LoadedSplits()
    for split in splits:
        loaded.of(cfg, split)
    if training:
        check_no_test_problems_in_training(cfg, loaded=loaded)
    source = resolve_source(cfg.model.name, cfg.model.gguf_file)
    config = source_config(source)
    architecture = cfg.model.architecture
    seq2seq = is_seq2seq(config) if architecture == "auto" else architecture == "seq2seq"
    if cfg.eval.calculator and seq2seq and cfg.eval.split in splits:
        # seq2seq models decode with `generate`, which has no calculator: refused, never recorded as used
        raise MathtuneError(f"eval.calculator works with causal models only; {cfg.model.name} is an "
                            "encoder-decoder (seq2seq) model: set eval.calculator=false")
    if cfg.eval.repetition_stop and seq2seq and cfg.eval.split in splits:
        raise MathtuneError(f"eval.repetition_stop works with causal models only; {cfg.model.name} is an "
                            "encoder-decoder (seq2seq) model: set eval.repetition_stop=0")
    if cfg.eval.int8_decode and cfg.eval.split in splits:
        from mathtune.evaluate.backend import check_int8_decode

        check_int8_decode(cfg)
    if cfg.prompt.chat_template:
        from mathtune.prompts import check_chat_template

        check_chat_template(load_tokenizer(source))
    if training:  # e.g. stacked-lora, grpo: the adapter they start from
        build_method(cfg.method).check(cfg.model.name)
    return loaded


def check_no_test_problems_in_training(cfg: RunConfig, test: list[Any] | None = None,
                                       loaded: LoadedSplits | None = None) -> None:
    """The rows a run trains on must not be test problems (SVAMP with `svamp_test: all`, a jsonl
    train file that is its test file), unless `data.allow_test_overlap` says it is meant."""
    from mathtune.data.problems import check_train_test_disjoint

    loaded = loaded or LoadedSplits()
    if test is None:
        try:
            test = loaded.of(cfg, "test")
        except MathtuneError:
            return  # no test split (a jsonl run with only a train file): nothing to overlap with
    check_train_test_disjoint(load_train_problems(cfg, loaded), test, cfg.data.allow_test_overlap)


def check_train_dir(cfg: RunConfig, run_dir: Path, resume: bool, finished_is_done: bool = False,
                    loaded: LoadedSplits | None = None) -> dict[str, Any]:
    """The run's fingerprint; resuming a run dir that trained something else is refused, naming the
    first difference, and so is resuming a finished training (unless `finished_is_done`: `run` goes on
    to its evaluations)."""
    from mathtune.fingerprint import check_fingerprint, train_fingerprint

    fingerprint = train_fingerprint(cfg, load_train_problems(cfg, loaded))
    if resume and run_dir.is_dir():
        if not finished_is_done and (run_dir / "train_card.json").is_file() and (run_dir / "adapter").is_dir():
            card = json.loads((run_dir / "train_card.json").read_text(encoding="utf-8"))
            raise MathtuneError(f"{run_dir} is a finished run ({card.get('steps')} steps, adapter in "
                                f"{run_dir / 'adapter'}); evaluate it with `mathtune eval {run_dir}`, or pass "
                                f"--overwrite to train it again")
        check_fingerprint(run_dir, fingerprint, "a training run",
                          "pass --overwrite to start it again with these settings, or -o another directory")
    return fingerprint
