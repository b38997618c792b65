"""The training recipe: setup -> loop -> save. One function a reader follows top to bottom.

The loop is our own rather than HF Trainer's because the fast path needs three things Trainer does
not do together: padding-free packing, logits computed only at loss positions, and a bf16 frozen
base with fp32 adapters. It keeps what Trainer gives: checkpoints, --resume, tqdm, TensorBoard.
"""

from __future__ import annotations

import importlib
import json
import math
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from mathtune.config import RunConfig, config_to_yaml
from mathtune.data.batching import Example, causal_example, count_loss_tokens, seq2seq_example, split_by_tokens
from mathtune.data.problems import LoadedSplits, Problem, split_train_dev
from mathtune.errors import MathtuneError
from mathtune.io import atomic_write_json, atomic_write_text, output_dir_guard, read_jsonl_tolerant, replace_dir
from mathtune.methods.base import count_parameters
from mathtune.methods.registry import build_method, method_class
from mathtune.models.device import choose_placement
from mathtune.models.setup import LoadedModel, load_for_run
from mathtune.models.vocab import save_tokenizer
from mathtune.prompts import get_strategy, render_prompts
from mathtune.recipes.checks import check_train_dir, load_train_problems, preflight
from mathtune.runcard import peak_cuda_mb, peak_rss_mb, provenance
from mathtune.speedups import SpeedupReport, apply_speedups
from mathtune.speedups.allocator import active_allocator
from mathtune.training.checkpoints import latest_checkpoint, restore_checkpoint, save_checkpoint
from mathtune.training.distributed import (
    backward_scale,
    configure_deepspeed,
    make_accelerator,
    process_rank,
    rank_shard,
    shards_state,
    uses_deepspeed,
)
from mathtune.training.loss import LossModule, loss_tokens, make_batch
from mathtune.training.optim import make_optimizer


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
    if strategy.writes_programs:
        from mathtune.data.programs import convert_solutions

        given = {p.id: _program_target(p.program) for p in problems if p.program}  # verified by the row's writer
        to_convert = [p for p in problems if p.id not in given]
        converted, report = convert_solutions([(p.solution, p.answer) for p in to_convert])
        programs = {p.id: prog for p, prog in zip(to_convert, converted, strict=True) if prog is not None}
        programs |= given
        stats["program_conversion"] = {
            "total": report.total, "converted": report.converted, "rate": report.rate,
            "dropped_no_annotation": report.dropped_no_annotation, "dropped_mismatch": report.dropped_mismatch,
        }
        if given:
            stats["program_conversion"]["given_in_file"] = len(given)
        problems = [p for p in problems if p.id in programs]
    examples = []
    prompts = render_prompts(loaded.tokenizer, [strategy.format_prompt(p.question) for p in problems],
                             cfg.prompt.chat_template)
    for problem, prompt in zip(problems, prompts, strict=True):
        target = strategy.format_target(problem, programs.get(problem.id))
        if loaded.seq2seq:
            examples.append(seq2seq_example(loaded.tokenizer, prompt, target, cfg.data.max_length))
        else:
            examples.append(causal_example(loaded.tokenizer, prompt, target, cfg.data.max_length, cfg.train.loss_on))
    stats["examples"] = len(examples)
    return examples, stats


def _program_target(program: str) -> str:
    """A file's program as the target's code: the converter's form, ending in one newline before the fence."""
    return program.strip("\n") + "\n"


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


CPU_MICRO_BATCH_TOKENS = 1024  # SmolLM2-135M LoRA: 70-100 MB lower peak, same speed within noise


@dataclass
class Session:
    """Everything the loop needs, built once by `setup`."""

    cfg: RunConfig
    method: Any
    loaded: LoadedModel
    model: Any
    loss_fn: Any
    examples: list[Example]
    data_stats: dict[str, Any]
    problems: list[Problem]
    dev: list[Problem]  # carved from the train split, never the test split
    plan: list[list[int]]
    total_steps: int
    optimizer: Any
    scheduler: Any
    accelerator: Any  # accelerate.Accelerator, one process included (training/distributed.py)
    speedups: SpeedupReport

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def main(self) -> bool:
        return self.rank == 0  # only the main process writes files

    @property
    def micro_batch_tokens(self) -> int:
        """Token budget of one forward/backward (0: none); see TrainConfig.max_micro_batch_tokens."""
        budget = self.cfg.train.max_micro_batch_tokens
        if uses_deepspeed(self.accelerator):  # its engine steps at the first backward of the boundary
            return 0
        if budget is None:
            return CPU_MICRO_BATCH_TOKENS if self.loaded.placement.device.type == "cpu" else 0
        return budget


def setup(cfg: RunConfig, loaded: LoadedSplits | None = None) -> Session:
    torch.manual_seed(cfg.train.seed)
    placement = choose_placement(cfg.model.device, cfg.train.precision)
    accelerator = make_accelerator(placement.device, placement.compute_dtype, cfg.train.grad_accum)
    configure_deepspeed(accelerator, cfg.train.batch_size, cfg.train.max_grad_norm)
    method = build_method(cfg.method)
    problems, dev = load_train_problems(cfg, loaded), []
    if cfg.train.dev_eval_every:
        problems, dev = split_train_dev(problems, cfg.train.dev_size, cfg.train.seed)
    loaded = load_for_run(cfg.model, placement, method.base_load_kwargs(placement), tuned_dir=method.starts_from())
    examples, data_stats = build_examples(cfg, problems, loaded)
    if loaded.added_characters:  # into the train card: the vocabulary the adapter's new rows belong to
        data_stats["added_characters"] = loaded.added_characters
        data_stats["added_token_ids"] = loaded.tokenizer.convert_tokens_to_ids(loaded.added_characters)
    if not examples:
        raise MathtuneError("no training examples left after preparing the data")
    if cfg.train.gradient_checkpointing:
        loaded.model.gradient_checkpointing_enable()
    model = method.apply(loaded.model)
    speedups = apply_speedups(model, cfg.train, placement.device.type == "cpu", placement.autocast)
    plan, total_steps = micro_batch_plan(len(examples), cfg, accelerator.num_processes)
    optimizer, scheduler = make_optimizer(model, cfg, total_steps)
    loss_fn = LossModule(model, loaded.seq2seq, cfg.train.fused_loss)
    # The engine wraps the module whose forward uses the weights (DDP/FSDP/DeepSpeed), the optimizer
    # (fp16 loss scaling; DeepSpeed's step) and the scheduler (held back when fp16 skips a step).
    loss_fn, optimizer, scheduler = accelerator.prepare(loss_fn, optimizer, scheduler)
    return Session(cfg, method, loaded, model, loss_fn, examples, data_stats, problems, dev, plan, total_steps,
                   optimizer, scheduler, accelerator, speedups)


def train_step(s: Session, step: int) -> tuple[float, int]:
    """One optimizer step over its micro-batches; returns (loss, tokens processed)."""
    micros = s.plan[step * s.cfg.train.grad_accum : (step + 1) * s.cfg.train.grad_accum]
    # Each rank's loss is weighted by its share of the step's loss tokens (all micro-batches, all
    # ranks), so the gradient equals one big batch's however it is split (one process: weight 1.0).
    step_loss_tokens = sum(loss_tokens([s.examples[i] for i in micro], s.loaded.seq2seq) for micro in micros)
    scale = backward_scale(s.accelerator, s.cfg.train.grad_accum)
    loss_sum, tokens = 0.0, 0
    for micro in micros:
        shard = [s.examples[i] for i in rank_shard(micro, s.rank, s.world)]
        pieces = split_by_tokens(shard, s.micro_batch_tokens) or [[]]
        with s.accelerator.accumulate(s.loss_fn):  # the step's last micro-batch syncs the gradients
            for piece_index, piece in enumerate(pieces):
                weight = loss_tokens(piece, s.loaded.seq2seq) / max(step_loss_tokens, 1)
                batch = make_batch(piece or [s.examples[micro[0]]], s.loaded, s.cfg.train.packing)  # empty: weight 0
                last_piece = piece_index == len(pieces) - 1
                with nullcontext() if last_piece else s.accelerator.no_sync(s.loss_fn):  # one all-reduce
                    loss = s.loss_fn(batch) * weight
                    s.accelerator.backward(loss * scale)
                loss_sum += loss.item()
        tokens += sum(s.examples[i].num_tokens for i in micro)
    if s.world > 1:
        loss_sum = s.accelerator.reduce(torch.tensor(loss_sum, device=s.accelerator.device), "sum").item()
    s.accelerator.clip_grad_norm_([p for p in s.loss_fn.parameters() if p.requires_grad], s.cfg.train.max_grad_norm)
    s.optimizer.step()  # skipped by the fp16 scaler when a gradient overflowed (the scheduler waits too)
    s.scheduler.step()
    s.optimizer.zero_grad(set_to_none=True)
    if not math.isfinite(loss_sum):
        raise MathtuneError(f"loss became {loss_sum} at step {step + 1}; lower train.lr or use fp32")
    return loss_sum, tokens


def train(cfg: RunConfig, run_dir: Path, resume: bool = False, show_progress: bool = True,
          loaded: LoadedSplits | None = None) -> TrainResult:
    """Fine-tune `cfg.model` with `cfg.method` on the train split; write the adapter and a run card.
    `loaded`: the splits `preflight` read (None: read them here)."""
    loaded = loaded or LoadedSplits()
    own_loop = method_class(cfg.method.name).loop
    if own_loop is not None:  # a method with its own loop (GRPO: TRL's, recipes/rl.py), the same run dir
        module, function = own_loop.split(":")
        card = getattr(importlib.import_module(module), function)(cfg, run_dir, resume, show_progress)
        return TrainResult(run_dir / "adapter", card["steps"], card["final_loss"], card)
    s = setup(cfg, loaded)
    checkpoint = latest_checkpoint(run_dir) if resume else None
    start_step, tokens_before = (0, 0) if checkpoint is None else restore_checkpoint(
        checkpoint, s.accelerator, s.model, s.optimizer, s.scheduler)
    writer, log_path = _start_logs(s, run_dir, resume, start_step)
    started, tokens, loss = time.perf_counter(), 0, float("nan")
    bar = tqdm(range(start_step, s.total_steps), initial=start_step, total=s.total_steps, desc="train",
               disable=not (show_progress and s.main), dynamic_ncols=True)
    for step in bar:
        loss, step_tokens = train_step(s, step)
        tokens += step_tokens
        done = step + 1
        if s.main and (done % cfg.train.log_every == 0 or done == s.total_steps):
            elapsed = time.perf_counter() - started
            _log_step(writer, log_path, done, loss, s.scheduler.get_last_lr()[0], tokens / max(elapsed, 1e-9),
                      tokens, elapsed)
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens / max(elapsed, 1e-9):.0f}")
        if s.main and s.dev and (done % cfg.train.dev_eval_every == 0 or done == s.total_steps):
            _log_dev_accuracy(s, writer, log_path, done)
        if done % cfg.train.save_every == 0 and done < s.total_steps:  # every rank: sharded engines save parts
            save_checkpoint(run_dir, done, s.accelerator, s.model, s.optimizer, s.scheduler, tokens_before + tokens)
    card = _train_card(s, start_step, loss, time.perf_counter() - started, tokens, loaded)
    # FSDP/DeepSpeed: every rank takes part in gathering the whole weights; rank 0 writes them.
    full_state = _gathered_model_state(s) if shards_state(s.accelerator) else None
    if s.main:
        _save_final(s.method, s.model, s.loaded, run_dir / "adapter", full_state)
        writer.close()
        atomic_write_json(run_dir / "train_card.json", card)
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    s.accelerator.wait_for_everyone()  # the adapter exists for every rank once train() returns
    return TrainResult(run_dir / "adapter", s.total_steps, loss, card)


def _log_dev_accuracy(s: Session, writer: Any, log_path: Path, step: int) -> None:
    """Generation accuracy on the dev slice, so a run shows whether answers improve, not just loss."""
    from mathtune.evaluate.generation import HFBackend
    from mathtune.evaluate.scoring import quick_accuracy

    backend = HFBackend(s.model, s.loaded.tokenizer, s.loaded.placement.device, s.loaded.seq2seq,
                        s.cfg.eval.batch_size)
    with s.loaded.placement.autocast_context():
        scores = quick_accuracy(s.cfg, backend, s.dev)
    s.model.train()  # HFBackend put the model in eval mode
    for name, value in scores.items():
        writer.add_scalar(f"dev/{name}", value, step)
    with open(log_path.with_name("dev_log.jsonl"), "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"step": step, **scores}) + "\n")


def _start_logs(s: Session, run_dir: Path, resume: bool, start_step: int) -> tuple[Any, Path]:
    log_path = run_dir / "train_log.jsonl"
    if not s.main:
        return None, log_path
    atomic_write_text(run_dir / "config.yaml", config_to_yaml(s.cfg))
    if not resume:
        log_path.unlink(missing_ok=True)
        log_path.with_name("dev_log.jsonl").unlink(missing_ok=True)
    elif log_path.exists():  # steps logged after the checkpoint run again: keep each step once
        kept = [row for row in read_jsonl_tolerant(log_path) if row.get("step", 0) <= start_step]
        atomic_write_text(log_path, "".join(json.dumps(row) + "\n" for row in kept))
    return _tensorboard(run_dir), log_path


def _train_card(s: Session, start_step: int, loss: float, wall: float, tokens: int,
                loaded: LoadedSplits) -> dict[str, Any]:
    trainable, total = count_parameters(s.model)
    return {
        "kind": "train", "config": s.cfg.model_dump(mode="json"), "model": s.loaded.source.label,
        "method": s.cfg.method.name, "device": str(s.loaded.placement.device),
        "compute_dtype": str(s.loaded.placement.compute_dtype).replace("torch.", ""),
        "trainable_params": trainable, "total_params": total,
        "trainable_percent": round(100 * trainable / total, 4), "steps": s.total_steps,
        "resumed_from_step": start_step, "final_loss": loss, "wall_seconds": round(wall, 2),
        "tokens_trained": tokens, "tokens_per_second": round(tokens / max(wall, 1e-9), 1),
        "loss_tokens": count_loss_tokens(s.examples), "peak_rss_mb": round(peak_rss_mb(), 1),
        "peak_cuda_mb": peak_cuda_mb(), "allocator": active_allocator(),
        "micro_batch_tokens": s.micro_batch_tokens, "data": s.data_stats, "processes": s.world,
        "engine": s.accelerator.distributed_type.value, "mixed_precision": s.accelerator.mixed_precision,
        "loss_scaler": s.accelerator.scaler is not None, "speedups": s.speedups.as_card(),
        "contamination": train_card_entry(s.cfg, s.problems, loaded), **provenance(),
    }


def train_card_entry(cfg: RunConfig, train_problems: list[Problem], loaded: LoadedSplits | None = None
                     ) -> dict[str, Any]:
    """For train_card.json: the rows trained on vs the test problems `mathtune eval` will draw."""
    from mathtune.evaluate.scoring import check_run, eval_problems

    try:
        return check_run(cfg, eval_problems(cfg, loaded), train_problems)
    except MathtuneError as exc:
        return {"skipped": str(exc)}


def _gathered_model_state(s: Session) -> dict[str, Any]:
    """The model's whole state dict from sharded engines (collective: every rank calls it)."""
    state = s.accelerator.get_state_dict(s.loss_fn)
    prefix = "model."  # LossModule holds the model under this name
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}


def _save_final(method: Any, model: Any, loaded: LoadedModel, adapter_dir: Path,
                state_dict: dict[str, Any] | None = None) -> None:
    def write(tmp: Path) -> None:
        method.save(model, tmp, state_dict)
        save_tokenizer(loaded.tokenizer, tmp, loaded.added_characters)  # with the record of its added vocabulary

    replace_dir(adapter_dir, write)


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


def train_workflow(cfg: RunConfig, overwrite: bool = False, resume: bool = False) -> Path:
    from mathtune.fingerprint import write_fingerprint

    loaded = preflight(cfg, ("train",))
    if process_rank() != 0:  # under `accelerate launch`: rank 0 owns (checks, locks, writes) the run dir
        train(cfg, Path(cfg.output_dir), resume=resume, show_progress=False, loaded=loaded)
        return Path(cfg.output_dir)
    fingerprint = check_train_dir(cfg, Path(cfg.output_dir), resume, loaded=loaded)
    with output_dir_guard(cfg.output_dir, overwrite, resume) as run_dir:
        write_fingerprint(run_dir, fingerprint)
        train(cfg, run_dir, resume=resume, loaded=loaded)  # writes config.yaml, the one place it is written
    return run_dir
