"""The RL recipe (method: grpo): GRPO with verifiable rewards through TRL's GRPOTrainer, on a LoRA adapter.

setup (model, adapter, prompts, rewards) -> TRL's loop -> save. The algorithm is TRL's, not ours;
mathtune supplies what it owns: the prompts the evaluation uses, rewards from the evaluation's own
extractor and sandbox, and a run dir like every other run (config.yaml, adapter/ in PEFT format,
train_card.json, train_log.jsonl, dev_log.jsonl, tensorboard/, checkpoints and --resume), so
`mathtune eval RUN` and `compare` work on it unchanged.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from mathtune.config import RunConfig, config_to_yaml
from mathtune.data.problems import Problem, split_train_dev
from mathtune.errors import MathtuneError
from mathtune.evaluate.rewards import build_rewards
from mathtune.io import atomic_write_json, atomic_write_text, replace_dir
from mathtune.methods.base import count_parameters
from mathtune.methods.grpo.method import GrpoMethod, check_same_base, init_adapter_dir
from mathtune.methods.lora.method import peft_lora_config
from mathtune.models.device import choose_placement
from mathtune.models.setup import LoadedModel, load_for_run
from mathtune.models.vocab import save_tokenizer
from mathtune.prompts import get_strategy, render_prompts
from mathtune.recipes.checks import load_train_problems
from mathtune.runcard import peak_cuda_mb, peak_rss_mb, provenance

CHECKPOINT_DIR = "checkpoints"
CALCULATION = re.compile(r"<<[^>]*>>")


def solution_steps(solution: str) -> int:
    """Calculations in a reference solution: its <<expr=value>> annotations (GSM8K), else its reasoning
    lines before the final '#### N' (at least 1)."""
    found = len(CALCULATION.findall(solution))
    if found:
        return found
    body = solution.split("####")[0]
    return max(1, sum(1 for line in body.splitlines() if line.strip()))


def train_grpo(cfg: RunConfig, run_dir: Path, resume: bool = False, show_progress: bool = True) -> dict[str, Any]:
    """Train and write the run dir; returns the train card."""
    torch.manual_seed(cfg.train.seed)
    method = GrpoMethod(cfg.method)
    placement = choose_placement(cfg.model.device, cfg.train.precision)
    problems, dev = load_train_problems(cfg), []
    if cfg.train.dev_eval_every:
        problems, dev = split_train_dev(problems, cfg.train.dev_size, cfg.train.seed)
    loaded = load_for_run(cfg.model, placement, method.base_load_kwargs(placement), tuned_dir=method.starts_from())
    model, peft_config = _policy(cfg, loaded)
    strategy = get_strategy(cfg.prompt.strategy)
    reward_funcs, weights = build_rewards(cfg.method, strategy)
    dataset = _prompt_dataset(cfg, problems, loaded)
    atomic_write_text(run_dir / "config.yaml", config_to_yaml(cfg))
    trainer = _trainer(cfg, model, peft_config, loaded, placement, reward_funcs, weights, dataset, dev, run_dir,
                       show_progress)
    checkpoint = _latest_checkpoint(run_dir) if resume else None
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    wall = time.perf_counter() - started
    card = _card(cfg, trainer, loaded, [], wall, weights, reward_funcs, checkpoint, len(dataset))
    if not trainer.accelerator.is_main_process:  # under `accelerate launch`: rank 0 writes the run dir
        trainer.accelerator.wait_for_everyone()
        return card
    log = _write_logs(trainer.state.log_history, run_dir)
    card = _card(cfg, trainer, loaded, log, wall, weights, reward_funcs, checkpoint, len(dataset))
    def write_adapter(tmp: Path) -> None:  # PEFT's format, as `lora` saves it
        trainer.model.save_pretrained(tmp)
        save_tokenizer(loaded.tokenizer, tmp, loaded.added_characters)

    replace_dir(run_dir / "adapter", write_adapter)
    atomic_write_json(run_dir / "train_card.json", card)
    shutil.rmtree(run_dir / CHECKPOINT_DIR, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()  # the adapter exists for every rank once this returns
    return card


def _policy(cfg: RunConfig, loaded: LoadedModel) -> tuple[Any, Any]:
    """The model TRL trains: the SFT run's adapter made trainable again, or the base + a fresh LoRA
    config (TRL wraps it). Returns (model, peft_config or None)."""
    if cfg.method.init_adapter is None:
        return loaded.model, peft_lora_config(cfg.method, loaded.model)
    from peft import PeftModel

    adapter = init_adapter_dir(cfg.method.init_adapter)
    check_same_base(adapter, cfg.model.name)
    try:
        return PeftModel.from_pretrained(loaded.model, adapter, is_trainable=True), None
    except (RuntimeError, ValueError, KeyError) as exc:  # shapes of another base model
        raise MathtuneError(f"grpo: init_adapter {adapter} does not fit model '{cfg.model.name}': "
                            f"{str(exc).splitlines()[0][:200]}") from None


def _prompt_dataset(cfg: RunConfig, problems: list[Problem], loaded: LoadedModel) -> Any:
    """One row per train problem: the prompt the evaluation would give it, and what the rewards check."""
    from datasets import Dataset

    strategy = get_strategy(cfg.prompt.strategy)
    if cfg.method.max_solution_steps is not None:
        problems = [p for p in problems if solution_steps(p.solution) <= cfg.method.max_solution_steps]
    if not problems:
        raise MathtuneError("no training problems for GRPO" + (
            f" with at most {cfg.method.max_solution_steps} solution steps (method.max_solution_steps)"
            if cfg.method.max_solution_steps is not None else ""))
    prompts = render_prompts(loaded.tokenizer, [strategy.format_prompt(p.question) for p in problems],
                             cfg.prompt.chat_template)
    return Dataset.from_list([{"prompt": prompt, "solution": p.solution, "answer": p.answer, "kind": p.kind}
                              for prompt, p in zip(prompts, problems, strict=True)])


def _trainer(cfg: RunConfig, model: Any, peft_config: Any, loaded: LoadedModel, placement: Any,
             reward_funcs: list, weights: list[float], dataset: Any, dev: list[Problem], run_dir: Path,
             show_progress: bool) -> Any:
    from trl import GRPOConfig, GRPOTrainer

    grpo = cfg.method
    args = GRPOConfig(
        output_dir=str(run_dir / CHECKPOINT_DIR),
        max_steps=cfg.train.max_steps or -1,
        num_train_epochs=cfg.train.epochs,
        # TRL counts completions: each step takes batch_size prompts x num_generations completions
        per_device_train_batch_size=cfg.train.batch_size * grpo.num_generations,
        gradient_accumulation_steps=cfg.train.grad_accum,
        num_generations=grpo.num_generations,
        max_completion_length=grpo.max_completion_length,
        temperature=grpo.temperature,
        top_p=grpo.top_p,
        beta=grpo.beta,
        loss_type=grpo.loss_type,
        scale_rewards=grpo.scale_rewards,
        reward_weights=weights,
        learning_rate=cfg.train.lr,
        weight_decay=cfg.train.weight_decay,
        warmup_steps=cfg.train.warmup_steps,
        max_grad_norm=cfg.train.max_grad_norm,
        gradient_checkpointing=cfg.train.gradient_checkpointing,
        lr_scheduler_type="linear",
        logging_steps=cfg.train.log_every,
        save_steps=cfg.train.save_every,
        save_total_limit=2,
        save_only_model=False,
        seed=cfg.train.seed,
        bf16=placement.compute_dtype == torch.bfloat16,
        fp16=placement.compute_dtype == torch.float16,
        use_cpu=placement.device.type == "cpu",
        use_vllm=grpo.use_vllm,
        vllm_mode="colocate",
        report_to=["tensorboard"],  # into run_dir/tensorboard (TENSORBOARD_LOGGING_DIR, set below)
        disable_tqdm=not show_progress,
        remove_unused_columns=False,  # the rewards read solution/answer/kind
        dataloader_num_workers=0,
        log_completions=False,
    )
    callbacks = [_dev_accuracy_callback(cfg, dev, loaded, run_dir)] if dev else []

    class TimedGRPOTrainer(GRPOTrainer):
        """TRL's trainer, timing its generation so the card can split wall time into generating
        completions and everything else (scoring, log-probs, the update)."""

        generation_seconds = 0.0

        def _generate(self, prompts: list) -> Any:
            started = time.perf_counter()
            try:
                return super()._generate(prompts)
            finally:
                self.generation_seconds += time.perf_counter() - started

    # transformers 5's TensorBoard callback takes its directory from the environment when it is built
    previous = os.environ.get("TENSORBOARD_LOGGING_DIR")
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir / "tensorboard")
    try:
        trainer = TimedGRPOTrainer(model=model, reward_funcs=reward_funcs, args=args, train_dataset=dataset,
                                   processing_class=loaded.tokenizer, peft_config=peft_config, callbacks=callbacks)
    finally:
        if previous is None:
            os.environ.pop("TENSORBOARD_LOGGING_DIR", None)
        else:
            os.environ["TENSORBOARD_LOGGING_DIR"] = previous
    if not show_progress:  # without a progress bar transformers prints every log dict to stdout instead
        from transformers import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    return trainer


def _dev_accuracy_callback(cfg: RunConfig, dev: list[Problem], loaded: LoadedModel, run_dir: Path) -> Any:
    """Dev-slice accuracy during RL with the evaluation's extractor, as SFT logs it (dev_log.jsonl)."""
    from transformers import TrainerCallback

    from mathtune.evaluate.generation import HFBackend
    from mathtune.evaluate.scoring import quick_accuracy

    class DevAccuracy(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            if state.global_step % cfg.train.dev_eval_every and state.global_step != state.max_steps:
                return
            backend = HFBackend(model, loaded.tokenizer, loaded.placement.device, loaded.seq2seq, cfg.eval.batch_size)
            with loaded.placement.autocast_context():
                scores = quick_accuracy(cfg, backend, dev)
            model.train()
            with open(run_dir / "dev_log.jsonl", "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": state.global_step, **scores}) + "\n")

    return DevAccuracy()


def _latest_checkpoint(run_dir: Path) -> Path | None:
    found = sorted((run_dir / CHECKPOINT_DIR).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    return found[-1] if found else None


LOGGED = {"loss": "loss", "reward": "reward", "reward_std": "reward_std", "kl": "kl",
          "completions/mean_length": "completion_mean_length", "completions/clipped_ratio": "completion_clipped_ratio",
          "learning_rate": "lr", "grad_norm": "grad_norm"}


def _write_logs(history: list[dict[str, Any]], run_dir: Path) -> list[dict[str, Any]]:
    """train_log.jsonl in mathtune's form (one row per logged step), from TRL's log history."""
    rows = []
    for entry in history:
        if "step" not in entry or "reward" not in entry:
            continue
        row = {"step": entry["step"], **{ours: entry[theirs] for theirs, ours in LOGGED.items() if theirs in entry}}
        row.update({key.removeprefix("rewards/").removesuffix("/mean"): value for key, value in entry.items()
                    if key.startswith("rewards/") and key.endswith("/mean")})
        rows.append(row)
    atomic_write_text(run_dir / "train_log.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    return rows


def _card(cfg: RunConfig, trainer: Any, loaded: LoadedModel, log: list[dict[str, Any]], wall: float,
          weights: list[float], reward_funcs: list, checkpoint: Path | None, prompts: int) -> dict[str, Any]:
    trainable, total = count_parameters(trainer.model)
    rewards = [row["reward"] for row in log]
    generation = getattr(trainer, "generation_seconds", 0.0)
    return {
        "kind": "train", "config": cfg.model_dump(mode="json"), "model": loaded.source.label, "method": "grpo",
        "algorithm": f"TRL GRPOTrainer, loss {cfg.method.loss_type}", "device": str(loaded.placement.device),
        "compute_dtype": str(loaded.placement.compute_dtype).replace("torch.", ""),
        "trainable_params": trainable, "total_params": total, "trainable_percent": round(100 * trainable / total, 4),
        "steps": trainer.state.global_step, "resumed_from": checkpoint.name if checkpoint else None,
        "final_loss": log[-1].get("loss", float("nan")) if log else float("nan"),
        "rewards": {func.__name__: weight for func, weight in zip(reward_funcs, weights, strict=True)},
        "reward_first": rewards[0] if rewards else None, "reward_last": rewards[-1] if rewards else None,
        "reward_curve": rewards, "kl_curve": [row.get("kl") for row in log],
        "completion_mean_length": [row.get("completion_mean_length") for row in log],
        "train_prompts": prompts, "init_adapter": cfg.method.init_adapter,
        "processes": trainer.accelerator.num_processes,
        "wall_seconds": round(wall, 2), "generation_seconds": round(generation, 2),
        "optimisation_seconds": round(wall - generation, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1), "peak_cuda_mb": peak_cuda_mb(), **provenance(),
    }
