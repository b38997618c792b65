"""The verifier recipes: train one on sampled solutions of train problems, and score samples with it.

train: samples.jsonl (train split) -> labels from the evaluation's extractor -> split by problem ->
balance the classes -> LoRA + scalar head, transformers' Trainer -> adapter/ + verifier_card.json.
score: a verifier + a samples dir -> verifier_scores.jsonl (one probability per sample), which
`mathtune curve` reranks with.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import torch

from mathtune.config import RunConfig, config_to_yaml
from mathtune.errors import MathtuneError
from mathtune.evaluate.curves import rerank_table
from mathtune.io import append_jsonl, atomic_write_json, atomic_write_text, read_jsonl_tolerant, replace_dir
from mathtune.models.device import choose_placement
from mathtune.models.setup import LoadedModel, load_for_run
from mathtune.models.verifier import encode, load_verifier, lora_verifier, scalar_head_model, score_texts
from mathtune.recipes.sample import read_samples
from mathtune.runcard import peak_cuda_mb, peak_rss_mb, provenance

SCORES_FILE = "verifier_scores.jsonl"


def split_by_problem(rows: list[dict[str, Any]], dev_fraction: float, seed: int
                     ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, dev) rows: every sample of a problem falls on one side, so the dev score never rates
    solutions of a problem the verifier trained on."""
    ids = sorted({row["id"] for row in rows})
    random.Random(seed).shuffle(ids)
    dev_ids = set(ids[: round(dev_fraction * len(ids))])
    return [r for r in rows if r["id"] not in dev_ids], [r for r in rows if r["id"] in dev_ids]


def labelled(rows: list[dict[str, Any]], score: str) -> list[tuple[str, float]]:
    """(prompt + solution, 1.0 right / 0.0 wrong) for every sample, right as the evaluation scores it."""
    return [(row["prompt"] + sample["output"], float(bool(sample["correct"].get(score))))
            for row in rows for sample in row["samples"]]


def balanced(examples: list[tuple[str, float]], seed: int) -> list[tuple[str, float]]:
    """The minority class repeated (seeded draw) until both classes are as many; shuffled."""
    right = [e for e in examples if e[1] == 1.0]
    wrong = [e for e in examples if e[1] == 0.0]
    if not right or not wrong:
        raise MathtuneError(f"verifier: the train samples hold {len(right)} right and {len(wrong)} wrong "
                            "solutions; both are needed (sample more problems, or more per problem)")
    rng = random.Random(seed)
    minority, majority = sorted((right, wrong), key=len)
    extra = [minority[rng.randrange(len(minority))] for _ in range(len(majority) - len(minority))]
    out = majority + minority + extra
    rng.shuffle(out)
    return out


def auc(scores: list[float], labels: list[float]) -> float | None:
    """Area under the ROC curve (the chance a right solution outscores a wrong one; ties count half)."""
    right = [s for s, y in zip(scores, labels, strict=True) if y == 1.0]
    wrong = [s for s, y in zip(scores, labels, strict=True) if y == 0.0]
    if not right or not wrong:
        return None
    wins = sum((r > w) + 0.5 * (r == w) for r in right for w in wrong)
    return wins / (len(right) * len(wrong))


def train_verifier(cfg: RunConfig, sample_dirs: list[Path], out_dir: Path, show_progress: bool = True
                   ) -> dict[str, Any]:
    settings = cfg.verifier
    rows = [row for directory in sample_dirs for row in read_samples(directory)]
    if not rows:
        raise MathtuneError(f"verifier: no samples in {', '.join(map(str, sample_dirs))} (run `mathtune sample`)")
    train_rows, dev_rows = split_by_problem(rows, settings.dev_fraction, settings.seed)
    train_examples = labelled(train_rows, settings.score)
    examples = balanced(train_examples, settings.seed) if settings.balance else train_examples
    torch.manual_seed(settings.seed)
    placement = choose_placement(cfg.model.device, cfg.train.precision)
    loaded = load_for_run(cfg.model, placement, {"dtype": torch.float32})  # fp32 master weights
    model = lora_verifier(scalar_head_model(loaded.model, loaded.tokenizer), settings.r, settings.alpha)
    atomic_write_text(out_dir / "config.yaml", config_to_yaml(cfg))
    started = time.perf_counter()
    losses = _fit(model, loaded, examples, settings, placement, out_dir, show_progress)
    wall = time.perf_counter() - started
    dev = _dev_report(model.eval(), loaded, dev_rows, settings) if dev_rows else None

    def write_adapter(tmp: Path) -> None:
        model.save_pretrained(tmp)
        loaded.tokenizer.save_pretrained(tmp)

    replace_dir(out_dir / "adapter", write_adapter)
    card = {"kind": "verifier", "model": loaded.source.label, "head": "scalar (last token), BCE",
            "config": settings.model_dump(mode="json"), "samples": [str(d) for d in sample_dirs],
            "train_problems": len({r["id"] for r in train_rows}), "dev_problems": len({r["id"] for r in dev_rows}),
            "train_samples": len(train_examples), "train_right": int(sum(y for _, y in train_examples)),
            "train_examples_after_balance": len(examples), "loss_curve": losses,
            "wall_seconds": round(wall, 2), "dev": dev, "device": str(placement.device),
            "compute_dtype": str(placement.compute_dtype).replace("torch.", ""),
            "peak_rss_mb": round(peak_rss_mb(), 1), "peak_cuda_mb": peak_cuda_mb(), **provenance()}
    atomic_write_json(out_dir / "verifier_card.json", card)
    return card


def _fit(model: Any, loaded: LoadedModel, examples: list[tuple[str, float]], settings: Any, placement: Any,
         out_dir: Path, show_progress: bool) -> list[float]:
    """transformers' Trainer over (text, label): the standard loop on accelerate, nothing hand-rolled."""
    from transformers import Trainer, TrainingArguments

    tokenizer = loaded.tokenizer

    def collate(batch: list[tuple[str, float]]) -> dict[str, torch.Tensor]:
        encoded = encode(tokenizer, [text for text, _ in batch], settings.max_length)
        return {**encoded, "labels": torch.tensor([[label] for _, label in batch])}

    args = TrainingArguments(
        output_dir=str(out_dir / "checkpoints"), per_device_train_batch_size=settings.batch_size,
        num_train_epochs=settings.epochs, learning_rate=settings.lr, lr_scheduler_type="linear",
        warmup_steps=0, logging_steps=1, save_strategy="no", report_to=[], seed=settings.seed,
        bf16=placement.compute_dtype == torch.bfloat16, fp16=placement.compute_dtype == torch.float16,
        use_cpu=placement.device.type == "cpu", disable_tqdm=not show_progress, remove_unused_columns=False,
        dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=examples, data_collator=collate)
    if not show_progress:
        from transformers import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    trainer.train()
    return [round(row["loss"], 4) for row in trainer.state.log_history if "loss" in row]


def _dev_report(model: Any, loaded: LoadedModel, dev_rows: list[dict[str, Any]], settings: Any
                ) -> dict[str, Any]:
    """On problems it never trained on: AUC, accuracy at 0.5, and verifier@k vs maj@k."""
    examples = labelled(dev_rows, settings.score)
    scores = score_texts(model, loaded.tokenizer, [text for text, _ in examples], settings.max_length,
                         settings.batch_size, loaded.placement.autocast_context())
    labels = [label for _, label in examples]
    by_id, position = {}, 0
    for row in dev_rows:
        by_id[row["id"]] = scores[position : position + len(row["samples"])]
        position += len(row["samples"])
    accuracy = sum((s >= 0.5) == (y == 1.0) for s, y in zip(scores, labels, strict=True)) / len(labels)
    return {"samples": len(labels), "right": int(sum(labels)), "auc": auc(scores, labels),
            "accuracy_at_0.5": accuracy, "rerank": rerank_table(dev_rows, None, by_id, settings.score)}


def score_samples(cfg: RunConfig, verifier_dir: Path, samples_dir: Path, show_progress: bool = True
                  ) -> Path:
    """One verifier probability per sample into samples_dir/verifier_scores.jsonl (resumed per problem)."""
    from tqdm.auto import tqdm

    rows = read_samples(samples_dir)
    if not rows:
        raise MathtuneError(f"no samples in {samples_dir} (run `mathtune sample`)")
    path = samples_dir / SCORES_FILE
    done = {row["id"] for row in read_jsonl_tolerant(path) if row.get("verifier") == str(verifier_dir)}
    if path.is_file() and not done and read_jsonl_tolerant(path):
        raise MathtuneError(f"{path} holds another verifier's scores; remove it to score with {verifier_dir}")
    placement = choose_placement(cfg.model.device, cfg.eval_precision())
    loaded = load_for_run(cfg.model, placement)
    model = load_verifier(verifier_dir, loaded.model, loaded.tokenizer).to(placement.device)
    settings = cfg.verifier
    todo = [row for row in rows if row["id"] not in done]
    for row in tqdm(todo, desc="verifier", disable=not show_progress, dynamic_ncols=True):
        texts = [row["prompt"] + sample["output"] for sample in row["samples"]]
        scores = score_texts(model, loaded.tokenizer, texts, settings.max_length, settings.batch_size,
                             placement.autocast_context())
        append_jsonl(path, [{"id": row["id"], "verifier": str(verifier_dir), "scores": scores}])
    return path
