"""Turn a RunConfig into a loaded tokenizer + model placed on the chosen device."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mathtune.models.device import Placement
from mathtune.models.loading import ModelSource, is_seq2seq, load_model, load_tokenizer, resolve_source
from mathtune.models.vocab import add_missing_characters, check_saved_tokenizer, fit_embeddings, run_characters


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    source: ModelSource
    placement: Placement
    seq2seq: bool
    added_characters: list[str] = field(default_factory=list)  # see models/vocab.py (T5's newline, braces...)


def load_for_run(model_cfg: Any, placement: Placement, load_kwargs: dict[str, Any] | None = None,
                 tuned_dir: Path | None = None) -> LoadedModel:
    """The base model and its tokenizer, with the characters mathtune adds (models/vocab.py).
    `tuned_dir`: the saved tuned weights that will be loaded on it (or that training continues from):
    the tokenizer gets exactly the characters, and ids, their run added; None: today's probe decides."""
    source = resolve_source(model_cfg.name, model_cfg.gguf_file)
    tokenizer = load_tokenizer(source)
    added = add_missing_characters(tokenizer, characters=run_characters(tuned_dir))
    if tuned_dir is not None:  # the trained rows belong to the ids the run recorded
        check_saved_tokenizer(tokenizer, tuned_dir, added)
    kwargs = {"dtype": placement.compute_dtype, **(load_kwargs or {})}
    dtype = kwargs.pop("dtype")
    model = load_model(source, model_cfg.architecture, dtype=dtype, **kwargs)
    fit_embeddings(model, tokenizer, added)  # before the method wraps the model: it trains these rows
    if not getattr(model, "is_loaded_in_8bit", False) and not getattr(model, "is_loaded_in_4bit", False):
        model.to(placement.device)
    return LoadedModel(model, tokenizer, source, placement, is_seq2seq(model.config), added)
