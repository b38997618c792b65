"""The verifier recipes: train one on sampled solutions of train problems, and score samples with it.

train: samples.jsonl (train split) -> labels from the evaluation's extractor -> split by problem ->
balance the classes -> LoRA + scalar head, transformers' Trainer -> adapter/ + verifier_card.json.
score: a verifier + a samples dir -> verifier_scores.jsonl (one probability per sample), which
`mathtune curve` reranks with.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import torch

from mathtune.config import RunConfig, config_to_yaml
from mathtune.errors import MathtuneError
from mathtune.evaluate.curves import rerank_table
from mathtune.evaluate.metrics import auc
from mathtune.evaluate.sharding import ShardedRows, current_processes
from mathtune.fingerprint import files_digest, first_difference
from mathtune.io import (
    atomic_write_json,
    atomic_write_text,
    read_jsonl_tolerant,
    replace_dir,
)
from mathtune.models.device import choose_placement
from mathtune.models.setup import LoadedModel, load_for_run
from mathtune.models.verifier import encode, load_verifier, lora_verifier, scalar_head_model, score_solutions
from mathtune.models.vocab import save_tokenizer
from mathtune.recipes.sample import read_samples
from mathtune.runcard import peak_cuda_mb, peak_rss_mb, provenance

SCORES_FILE = "verifier_scores.jsonl"


def samples_by_problem(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per problem, in first-seen order: its samples from every samples dir, less those an
    earlier dir already holds for it.

    Two rounds of `mathtune improve` sample the same train problems with the same seeds, so the same
    solution comes from both: counted once, it neither doubles its weight in training nor misaligns the
    dev report's scores with their labels (looked up by problem). Repeats within one dir are the
    model's own (two samples that agree) and stay."""
    merged: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["id"] not in merged:
            merged[row["id"]] = {**row, "samples": list(row["samples"])}
            continue
        into = merged[row["id"]]
        if into["prompt"] != row["prompt"]:
            raise MathtuneError(f"verifier: problem {row['id']} has two different prompts in the samples dirs "
                                "(sampled with different prompt settings); train on one kind at a time")
        earlier = {sample["output"] for sample in into["samples"]}
        into["samples"] += [sample for sample in row["samples"] if sample["output"] not in earlier]
    return list(merged.values())


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


def right_class_weight(examples: list[tuple[str, float]]) -> float:
    """BCE's `pos_weight` that makes both classes weigh the same in the loss: wrong / right. A small
    model's samples are mostly wrong; weighting costs nothing, where repeating the right ones until
    the classes are even would double the forward-backward passes."""
    right = sum(1 for _, label in examples if label == 1.0)
    wrong = len(examples) - right
    if not right or not wrong:
        raise MathtuneError(f"verifier: the train samples hold {right} right and {wrong} wrong "
                            "solutions; both are needed (sample more problems, or more per problem)")
    return wrong / right


def fewer_wrong(examples: list[tuple[str, float]], per_right: float, seed: int) -> list[tuple[str, float]]:
    """Every right example and at most `per_right` wrong ones for each (a seeded draw, order kept)."""
    wrong = [index for index, (_, label) in enumerate(examples) if label == 0.0]
    keep = round(per_right * (len(examples) - len(wrong)))
    if keep >= len(wrong):
        return examples
    dropped = set(wrong) - set(random.Random(seed).sample(wrong, keep))
    return [example for index, example in enumerate(examples) if index not in dropped]


def train_verifier(cfg: RunConfig, sample_dirs: list[Path], out_dir: Path, show_progress: bool = True
                   ) -> dict[str, Any]:
    settings = cfg.verifier
    rows = samples_by_problem([row for directory in sample_dirs for row in read_samples(directory)])
    if not rows:
        raise MathtuneError(f"verifier: no samples in {', '.join(map(str, sample_dirs))} (run `mathtune sample`)")
    train_rows, dev_rows = split_by_problem(rows, settings.dev_fraction, settings.seed)
    train_examples = labelled(train_rows, settings.score)
    if settings.wrong_per_right is not None:
        train_examples = fewer_wrong(train_examples, settings.wrong_per_right, settings.seed)
    weight = right_class_weight(train_examples) if settings.balance else 1.0
    examples = random.Random(settings.seed).sample(train_examples, len(train_examples))
    torch.manual_seed(settings.seed)
    placement = choose_placement(cfg.model.device, cfg.train.precision)
    loaded = load_for_run(cfg.model, placement, {"dtype": torch.float32})  # fp32 master weights
    model = lora_verifier(scalar_head_model(loaded.model, loaded.tokenizer), settings.r, settings.alpha)
    atomic_write_text(out_dir / "config.yaml", config_to_yaml(cfg))
    started = time.perf_counter()
    losses = _fit(model, loaded, examples, weight, settings, placement, out_dir, show_progress)
    wall = time.perf_counter() - started
    dev = _dev_report(model.eval(), loaded, dev_rows, settings) if dev_rows else None

    def write_adapter(tmp: Path) -> None:
        model.save_pretrained(tmp)
        save_tokenizer(loaded.tokenizer, tmp, loaded.added_characters)

    replace_dir(out_dir / "adapter", write_adapter)
    card = {"kind": "verifier", "model": loaded.source.label, "head": "scalar (last token), BCE",
            "config": settings.model_dump(mode="json"), "samples": [str(d) for d in sample_dirs],
            "train_problems": len({r["id"] for r in train_rows}), "dev_problems": len({r["id"] for r in dev_rows}),
            "train_samples": len(train_examples), "train_right": int(sum(y for _, y in train_examples)),
            "right_class_weight": round(weight, 4), "loss_curve": losses,
            "wall_seconds": round(wall, 2), "dev": dev, "device": str(placement.device),
            "compute_dtype": str(placement.compute_dtype).replace("torch.", ""),
            "peak_rss_mb": round(peak_rss_mb(), 1), "peak_cuda_mb": peak_cuda_mb(), **provenance()}
    atomic_write_json(out_dir / "verifier_card.json", card)
    return card


def _fit(model: Any, loaded: LoadedModel, examples: list[tuple[str, float]], right_weight: float, settings: Any,
         placement: Any, out_dir: Path, show_progress: bool) -> list[float]:
    """transformers' Trainer over (text, label): the standard loop on accelerate, nothing hand-rolled;
    the loss is BCE with the right class weighted by `right_weight`."""
    from transformers import Trainer, TrainingArguments

    tokenizer = loaded.tokenizer

    def weighted_bce(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
        logits = outputs.logits.float()
        return torch.nn.functional.binary_cross_entropy_with_logits(
            logits, labels.to(logits), pos_weight=torch.tensor(right_weight, device=logits.device))

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
    trainer = Trainer(model=model, args=args, train_dataset=examples, data_collator=collate,
                      compute_loss_func=weighted_bce)
    if not show_progress:
        from transformers import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    trainer.train()
    return [round(row["loss"], 4) for row in trainer.state.log_history if "loss" in row]


def _dev_report(model: Any, loaded: LoadedModel, dev_rows: list[dict[str, Any]], settings: Any
                ) -> dict[str, Any]:
    """On problems it never trained on: AUC, accuracy at 0.5, and verifier@k vs maj@k."""
    labels = [label for _, label in labelled(dev_rows, settings.score)]
    by_id = {row["id"]: score_solutions(model, loaded.tokenizer, row["prompt"], [s["output"] for s in row["samples"]],
                                        settings.max_length, loaded.placement.autocast_context(),
                                        rows=settings.solutions_per_pass)
             for row in dev_rows}
    scores = [score for row in dev_rows for score in by_id[row["id"]]]
    accuracy = sum((s >= 0.5) == (y == 1.0) for s, y in zip(scores, labels, strict=True)) / len(labels)
    return {"samples": len(labels), "right": int(sum(labels)), "auc": auc(scores, labels),
            "accuracy_at_0.5": accuracy, "rerank": rerank_table(dev_rows, None, by_id, settings.score)}


def score_samples(cfg: RunConfig, verifier_dir: Path, samples_dir: Path, show_progress: bool = True
                  ) -> Path:
    """One verifier probability per sample into samples_dir/verifier_scores.jsonl (resumed per problem)."""
    from tqdm.auto import tqdm

    processes = current_processes()  # under `accelerate launch`: this rank scores its share of the problems
    rows = read_samples(samples_dir)
    if not rows:
        processes.refuse(f"no samples in {samples_dir} (run `mathtune sample`)")
    path = samples_dir / SCORES_FILE

    def this_verifier(row: dict[str, Any]) -> bool:
        return row.get("verifier") == str(verifier_dir)

    if path.is_file() and read_jsonl_tolerant(path) and not any(map(this_verifier, read_jsonl_tolerant(path))):
        processes.refuse(f"{path} holds another verifier's scores; remove it to score with {verifier_dir}")
    processes.check_same({"verifier": str(verifier_dir), "verifier_files": files_digest(verifier_dir / "adapter"),
                          "samples": files_digest(samples_dir / "samples.jsonl")}, "verifier scores",
                         first_difference)
    scores_out = ShardedRows(path, processes, [row["id"] for row in rows],
                             [len(row["prompt"]) + sum(len(s["output"]) for s in row["samples"]) for row in rows],
                             keep=this_verifier)
    done = processes.agreed(scores_out.done)
    todo_positions = scores_out.mine(done)
    placement = choose_placement(cfg.model.device, cfg.eval_precision())
    loaded = load_for_run(cfg.model, placement, tuned_dir=verifier_dir / "adapter")
    model = load_verifier(verifier_dir, loaded.model, loaded.tokenizer).to(placement.device)
    settings = cfg.verifier
    model = model.merge_and_unload().eval()  # LoRA folded in: one matmul per layer; the head is kept
    todo = [rows[index] for index in todo_positions]
    earlier = extended_scores(samples_dir, verifier_dir)
    for row in tqdm(todo, desc="verifier", disable=not show_progress or not processes.main, dynamic_ncols=True):
        kept = earlier.get(row["id"], [])
        new_outputs = [s["output"] for s in row["samples"][len(kept) :]]
        scores = kept + (score_solutions(model, loaded.tokenizer, row["prompt"], new_outputs, settings.max_length,
                                         placement.autocast_context(), rows=settings.solutions_per_pass)
                         if new_outputs else [])
        scores_out.append([{"id": row["id"], "verifier": str(verifier_dir), "scores": scores}])
    scores_out.merge()  # rank 0 writes every rank's scores into verifier_scores.jsonl, in samples order
    processes.barrier()
    return path


def extended_scores(samples_dir: Path, verifier_dir: Path) -> dict[str, list[float]]:
    """This verifier's scores of the samples an `--extend`ed run kept, by problem id ({} when none).

    A `sample --extend` run's first k0 samples of a problem are the earlier run's, output for output,
    so their scores are reused and only the new samples are scored: k = 32 after k = 16 costs 16 more
    scores per problem, not 32. A score depends on its own text alone (fp32: exactly; in bf16 the
    group a solution is batched with can move the last bits)."""
    summary = samples_dir / "sampling.json"
    extended_from = json.loads(summary.read_text(encoding="utf-8")).get("extended_from") if summary.is_file() else None
    if not extended_from:
        return {}
    earlier_dir = Path(extended_from)
    kept = {row["id"]: [s["output"] for s in row["samples"]] for row in read_samples(earlier_dir)}
    current = {row["id"]: [s["output"] for s in row["samples"]] for row in read_samples(samples_dir)}
    reused: dict[str, list[float]] = {}
    for row in read_jsonl_tolerant(earlier_dir / SCORES_FILE):
        texts = kept.get(row["id"], [])
        if (row.get("verifier") == str(verifier_dir) and len(row["scores"]) == len(texts)
                and current.get(row["id"], [])[: len(texts)] == texts):
            reused[row["id"]] = row["scores"]
    return reused
