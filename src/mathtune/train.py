"""The training recipe: setup -> loop -> save. One function a reader follows top to bottom.

The loop is our own rather than HF Trainer's because the fast path needs three things Trainer does
not do together: padding-free packing, logits computed only at loss positions, and a bf16 frozen
base with fp32 adapters. It keeps what Trainer gives: checkpoints, --resume, tqdm, TensorBoard.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mathtune.config import RunConfig, config_to_yaml
from mathtune.data.batching import (
    Example,
    causal_example,
    count_loss_tokens,
    packed_batch,
    padded_batch,
    seq2seq_batch,
)
from mathtune.data.problems import Problem, load_split, sample_problems
from mathtune.errors import MathtuneError
from mathtune.evaluate.contamination import train_card_entry
from mathtune.io import atomic_write_json, atomic_write_text, read_jsonl_tolerant
from mathtune.methods.base import count_parameters, load_trainable_state_dict, trainable_state_dict
from mathtune.methods.registry import build_method
from mathtune.models.setup import LoadedModel, load_for_run
from mathtune.prompts import get_strategy
from mathtune.runcard import peak_cuda_mb, peak_rss_mb, provenance

CHECKPOINTS_KEPT = 2


@dataclass
class TrainResult:
    adapter_dir: Path
    steps: int
    final_loss: float
    card: dict[str, Any]


def build_examples(cfg: RunConfig, problems: list[Problem], loaded: LoadedModel) -> tuple[list[Example], dict]:
    """Tokenized (prompt, target) pairs; for the program strategy, only verified programs."""
    strategy = get_strategy(cfg.prompt.strategy)
    programs: dict[str, str] = {}
    stats: dict[str, Any] = {"rows": len(problems)}
    if strategy.name == "program":
        from mathtune.data.programs import convert_solutions

        converted, report = convert_solutions([(p.solution, p.answer) for p in problems])
        programs = {p.id: prog for p, prog in zip(problems, converted, strict=True) if prog is not None}
        stats["program_conversion"] = {
            "total": report.total, "converted": report.converted, "rate": report.rate,
            "dropped_no_annotation": report.dropped_no_annotation, "dropped_mismatch": report.dropped_mismatch,
        }
        problems = [p for p in problems if p.id in programs]
    examples = []
    for problem in problems:
        prompt = strategy.format_prompt(problem.question)
        target = strategy.format_target(problem, programs.get(problem.id))
        if loaded.seq2seq:
            from mathtune.data.batching import seq2seq_example

            examples.append(seq2seq_example(loaded.tokenizer, prompt, target, cfg.data.max_length))
        else:
            examples.append(causal_example(loaded.tokenizer, prompt, target, cfg.data.max_length, cfg.train.loss_on))
    stats["examples"] = len(examples)
    return examples, stats


def micro_batch_plan(num_examples: int, cfg: RunConfig, world: int = 1) -> tuple[list[list[int]], int]:
    """Every global micro-batch of the run (batch_size x processes examples), fixed by the seed, so
    a resumed run replays the same data; each process takes its shard with `rank_shard`."""
    size = cfg.train.batch_size * world
    per_epoch = math.ceil(num_examples / size)
    micro: list[list[int]] = []
    for epoch in range(math.ceil(cfg.train.epochs)):
        order = random.Random(cfg.train.seed + epoch).sample(range(num_examples), num_examples)
        micro += [order[i : i + size] for i in range(0, num_examples, size)]
    micro = micro[: max(1, round(per_epoch * cfg.train.epochs))]
    steps = cfg.train.max_steps or max(1, len(micro) // cfg.train.grad_accum)
    needed = steps * cfg.train.grad_accum
    while len(micro) < needed:  # max_steps past the data: cycle it again
        micro += micro[: needed - len(micro)]
    return micro[:needed], steps


def make_batch(examples: list[Example], loaded: LoadedModel, packing: bool) -> dict[str, torch.Tensor]:
    pad_id = loaded.tokenizer.pad_token_id
    if loaded.seq2seq:
        batch = seq2seq_batch(examples, pad_id)
    elif packing:
        batch = packed_batch(examples)
    else:
        batch = padded_batch(examples, pad_id)
    return {key: value.to(loaded.placement.device) for key, value in batch.items()}


def causal_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean token cross-entropy, with the vocabulary projection run only where labels exist
    (prompt tokens never need logits; on a 49k vocabulary that is most of the head's cost)."""
    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = core.base_model(
        input_ids=batch["input_ids"],
        attention_mask=batch.get("attention_mask"),
        position_ids=batch.get("position_ids"),
        use_cache=False,
    ).last_hidden_state
    labels = batch["labels"][:, 1:]
    keep = labels != -100
    logits = core.get_output_embeddings()(hidden[:, :-1][keep])
    return F.cross_entropy(logits.float(), labels[keep])


def compute_loss(model: Any, batch: dict[str, torch.Tensor], seq2seq: bool) -> torch.Tensor:
    if seq2seq:
        return model(**batch).loss
    return causal_loss(model, batch)


class LossModule(torch.nn.Module):
    """The loss as a module's forward, so a DDP/FSDP wrapper sees the call that uses the weights."""

    def __init__(self, model: Any, seq2seq: bool) -> None:
        super().__init__()
        self.model, self.seq2seq = model, seq2seq

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return compute_loss(self.model, batch, self.seq2seq)


def loss_tokens(examples: list[Example], seq2seq: bool) -> int:
    """Tokens the loss averages over (a causal model never predicts an example's first token)."""
    skip = 0 if seq2seq else 1
    return sum(sum(1 for label in ex.labels[skip:] if label != -100) for ex in examples)


def rank_shard(micro: list[int], rank: int, world: int) -> list[int]:
    return micro[rank::world]


def launched_distributed() -> bool:
    """True under `accelerate launch` / torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def process_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _accelerator(cfg: RunConfig) -> Any:
    from accelerate import Accelerator

    return Accelerator(cpu=_placement_for(cfg).device.type == "cpu")


def make_optimizer(model: Any, cfg: RunConfig, total_steps: int) -> tuple[Any, Any]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise MathtuneError("the method left no trainable parameters")
    try:  # the fused kernel does one pass over all params instead of a loop of small ops
        optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, fused=True)
    except (RuntimeError, TypeError):
        optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    warmup = cfg.train.warmup_steps

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def save_checkpoint(run_dir: Path, step: int, model: Any, optimizer: Any, scheduler: Any, tokens: int) -> None:
    """Write into a temp dir and rename: a kill mid-save leaves the previous checkpoint intact."""
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
    state = {
        "step": step, "tokens": tokens, "trainable": trainable_state_dict(model),
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
    }
    torch.save(state, tmp / "state.pt")
    os.replace(tmp, root / f"step-{step:07d}")
    for old in sorted(root.glob("step-*"))[:-CHECKPOINTS_KEPT]:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = sorted((run_dir / "checkpoints").glob("step-*/state.pt"))
    return found[-1] if found else None


def restore_checkpoint(path: Path, model: Any, optimizer: Any, scheduler: Any) -> tuple[int, int]:
    state = torch.load(path, weights_only=False)  # our own file, written by save_checkpoint
    load_trainable_state_dict(model, state["trainable"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    return state["step"], state["tokens"]


def load_train_problems(cfg: RunConfig) -> list[Problem]:
    problems = load_split(cfg.data, cfg.resolved_data_dir(), "train")
    return sample_problems(problems, cfg.data.train_size, cfg.train.seed)


def train(cfg: RunConfig, run_dir: Path, resume: bool = False, show_progress: bool = True) -> TrainResult:
    """Fine-tune `cfg.model` with `cfg.method` on the train split; write the adapter and a run card."""
    torch.manual_seed(cfg.train.seed)
    accelerator = _accelerator(cfg) if launched_distributed() else None  # before loading: sets the GPU
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    main = rank == 0  # only the main process writes files
    method = build_method(cfg.method)
    problems = load_train_problems(cfg)
    loaded = load_for_run(cfg.model, cfg.train.precision, method.base_load_kwargs(
        _placement_for(cfg)))
    examples, data_stats = build_examples(cfg, problems, loaded)
    if not examples:
        raise MathtuneError("no training examples left after preparing the data")
    if cfg.train.gradient_checkpointing:
        loaded.model.gradient_checkpointing_enable()
    model = method.apply(loaded.model)
    model.train()
    trainable, total = count_parameters(model)
    plan, total_steps = micro_batch_plan(len(examples), cfg, world)
    optimizer, scheduler = make_optimizer(model, cfg, total_steps)
    loss_fn = LossModule(model, loaded.seq2seq)
    if accelerator is not None:  # DDP (or FSDP/DeepSpeed) wrapper: all-reduces gradients in backward
        loss_fn, optimizer = accelerator.prepare(loss_fn, optimizer)
    start_step, tokens_seen = 0, 0
    checkpoint = latest_checkpoint(run_dir) if resume else None
    if checkpoint is not None:
        start_step, tokens_seen = restore_checkpoint(checkpoint, model, optimizer, scheduler)
    if main:
        atomic_write_text(run_dir / "config.yaml", config_to_yaml(cfg))
    writer = _tensorboard(run_dir) if main else None
    log_path = run_dir / "train_log.jsonl"
    if main and not resume:
        log_path.unlink(missing_ok=True)
    elif main and log_path.exists():  # steps logged after the checkpoint are run again: keep each step once
        kept = [row for row in read_jsonl_tolerant(log_path) if row.get("step", 0) <= start_step]
        atomic_write_text(log_path, "".join(json.dumps(row) + "\n" for row in kept))
    started, step_tokens, last_loss = time.perf_counter(), 0, float("nan")
    bar = tqdm(range(start_step, total_steps), initial=start_step, total=total_steps, desc="train",
               disable=not (show_progress and main), dynamic_ncols=True)
    trainable_params = [p for p in model.parameters() if p.requires_grad]
    for step in bar:
        loss_sum = 0.0
        step_micros = plan[step * cfg.train.grad_accum : (step + 1) * cfg.train.grad_accum]
        # Every rank's loss is a token sum over the whole step (all micro-batches, all ranks): the
        # gradient equals one big batch's, however it is split (single process: a factor of 1.0).
        step_loss_tokens = sum(loss_tokens([examples[i] for i in micro], loaded.seq2seq) for micro in step_micros)
        for index, micro in enumerate(step_micros):
            shard = [examples[i] for i in rank_shard(micro, rank, world)]
            weight = loss_tokens(shard, loaded.seq2seq) / max(step_loss_tokens, 1)
            batch = make_batch(shard or [examples[micro[0]]], loaded, cfg.train.packing)  # empty: weight 0
            last = index == len(step_micros) - 1
            with _maybe_no_sync(accelerator, loss_fn, last), loaded.placement.autocast_context():
                loss = loss_fn(batch) * weight
            (loss * world).backward()  # DDP averages gradients over ranks; we want their sum
            loss_sum += loss.item()
            step_tokens += sum(examples[i].num_tokens for i in micro)
        if accelerator is not None:
            loss_sum = accelerator.reduce(torch.tensor(loss_sum, device=accelerator.device), "sum").item()
            accelerator.clip_grad_norm_(trainable_params, cfg.train.max_grad_norm)
        else:
            torch.nn.utils.clip_grad_norm_(trainable_params, cfg.train.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        last_loss = loss_sum
        if not math.isfinite(last_loss):
            raise MathtuneError(f"loss became {last_loss} at step {step + 1}; lower train.lr or use fp32")
        elapsed = time.perf_counter() - started
        if main and ((step + 1) % cfg.train.log_every == 0 or step + 1 == total_steps):
            rate = step_tokens / max(elapsed, 1e-9)
            _log_step(writer, log_path, step + 1, last_loss, scheduler.get_last_lr()[0], rate, step_tokens, elapsed)
            bar.set_postfix(loss=f"{last_loss:.3f}", tok_s=f"{rate:.0f}")
        if main and (step + 1) % cfg.train.save_every == 0 and step + 1 < total_steps:
            save_checkpoint(run_dir, step + 1, model, optimizer, scheduler, tokens_seen + step_tokens)
    wall = time.perf_counter() - started
    adapter_dir = run_dir / "adapter"
    card = {
        "kind": "train", "config": cfg.model_dump(mode="json"), "model": loaded.source.label,
        "method": cfg.method.name, "device": str(loaded.placement.device),
        "compute_dtype": str(loaded.placement.compute_dtype).replace("torch.", ""),
        "trainable_params": trainable, "total_params": total,
        "trainable_percent": round(100 * trainable / total, 4), "steps": total_steps,
        "resumed_from_step": start_step, "final_loss": last_loss, "wall_seconds": round(wall, 2),
        "tokens_trained": step_tokens, "tokens_per_second": round(step_tokens / max(wall, 1e-9), 1),
        "loss_tokens": count_loss_tokens(examples), "peak_rss_mb": round(peak_rss_mb(), 1),
        "peak_cuda_mb": peak_cuda_mb(), "data": data_stats, "processes": world, **provenance(),
        "contamination": train_card_entry(cfg, problems),
    }
    if main:
        _save_final(method, model, loaded.tokenizer, adapter_dir)
        writer.close()
        atomic_write_json(run_dir / "train_card.json", card)
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    if accelerator is not None:
        accelerator.wait_for_everyone()  # the adapter exists for every rank once train() returns
    return TrainResult(adapter_dir, total_steps, last_loss, card)


def _maybe_no_sync(accelerator: Any, module: Any, last: bool) -> Any:
    """Skip the gradient all-reduce on all but the last micro-batch of an accumulated step."""
    from contextlib import nullcontext

    return nullcontext() if accelerator is None or last else accelerator.no_sync(module)


def _placement_for(cfg: RunConfig) -> Any:
    from mathtune.models.device import choose_placement

    return choose_placement(cfg.model.device, cfg.train.precision)


def _save_final(method: Any, model: Any, tokenizer: Any, adapter_dir: Path) -> None:
    tmp = Path(tempfile.mkdtemp(dir=adapter_dir.parent, prefix=".adapter-"))
    try:
        method.save(model, tmp)
        tokenizer.save_pretrained(tmp)
        if adapter_dir.exists():
            shutil.rmtree(adapter_dir)
        os.replace(tmp, adapter_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _tensorboard(run_dir: Path) -> Any:
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def _log_step(writer: Any, log_path: Path, step: int, loss: float, lr: float, tokens_per_s: float,
              tokens: int, seconds: float) -> None:
    writer.add_scalar("train/loss", loss, step)
    writer.add_scalar("train/lr", lr, step)
    writer.add_scalar("train/tokens_per_second", tokens_per_s, step)
    with open(log_path, "a", encoding="utf-8") as handle:
        row = {"step": step, "loss": loss, "lr": lr, "tokens_per_second": tokens_per_s, "tokens": tokens,
               "seconds": round(seconds, 4)}  # cumulative since the loop started (benchmarks diff these)
        handle.write(json.dumps(row) + "\n")
