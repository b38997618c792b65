"""The training loop's engine: an `accelerate.Accelerator` always, one process included.

Under `accelerate launch` the same loop runs DDP (CPU over gloo, or GPUs), FSDP or DeepSpeed; in one
process the Accelerator still owns mixed precision (autocast, and fp16's loss scaling), the
backward, gradient clipping and accumulation. What the loop calls, and why each engine needs it:
- `accelerator.accumulate(loss_fn)` around each micro-batch: DDP/FSDP skip the all-reduce until the
  step's last one; DeepSpeed's engine learns where the accumulation boundary is;
- `accelerator.backward(loss)`: fp16 loss scaling; under DeepSpeed the engine's backward *and step*
  (the prepared optimizer's `step()`/`zero_grad()` are then no-ops, so a plain `loss.backward()` +
  `optimizer.step()` loop never updates a DeepSpeed model);
- `accelerator.clip_grad_norm_`: unscales fp16 gradients first; FSDP's sharded norm; DeepSpeed clips
  inside its step (`gradient_clipping`, set here from train.max_grad_norm);
- `prepare(loss_fn, optimizer, scheduler)`: the engine wraps the module whose forward uses the weights.
On a machine without GPUs accelerate 1.16 runs DDP only: its FSDP and DeepSpeed paths need an
accelerator device (docs/gpu.md has the evidence); tests/training/test_engines.py checks the DeepSpeed
contract with accelerate's own DeepSpeed wrappers.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from mathtune.errors import MathtuneError

MIXED_PRECISION = {torch.float32: "no", torch.bfloat16: "bf16", torch.float16: "fp16"}


def rank_shard(micro: list[int], rank: int, world: int) -> list[int]:
    return micro[rank::world]


def launched_distributed() -> bool:
    """True under `accelerate launch` / torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def process_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def make_accelerator(device: torch.device, compute_dtype: torch.dtype, grad_accum: int) -> Any:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import DataLoaderConfiguration

    if not launched_distributed():
        # accelerate keeps one process-wide state and refuses a second Accelerator with another
        # precision; one process (the tests, the app, `mathtune run`) may train several runs in turn.
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    accelerator = Accelerator(
        cpu=device.type == "cpu",
        mixed_precision=MIXED_PRECISION[compute_dtype],
        gradient_accumulation_steps=grad_accum,
        device_placement=False,  # models/setup.py placed the model; a quantized model cannot be moved
        # Our batch plan already splits each global batch over the processes: one scheduler step per
        # optimizer step (accelerate otherwise steps it once per process).
        dataloader_config=DataLoaderConfiguration(split_batches=True),
    )
    if accelerator.gradient_accumulation_steps != grad_accum:  # `accelerate launch --gradient_accumulation_steps`
        raise MathtuneError(f"accelerate's gradient accumulation is {accelerator.gradient_accumulation_steps} "
                            f"but train.grad_accum is {grad_accum}; set one value in both")
    if accelerator.mixed_precision == "fp16" and accelerator.scaler is None and not uses_deepspeed(accelerator):
        # accelerate builds its GradScaler for accelerator devices only; torch's own works on CPU too,
        # and without it small fp16 gradients underflow to zero (tests/training/test_engines.py).
        accelerator.scaler = torch.amp.GradScaler("cpu")
        accelerator.native_amp = True
    return accelerator


def uses_deepspeed(accelerator: Any) -> bool:
    return accelerator.distributed_type.value == "DEEPSPEED"


def shards_state(accelerator: Any) -> bool:
    """Whether weights or optimizer state are split over processes (FSDP, DeepSpeed): checkpoints
    then go through accelerate's save_state/load_state, and the final weights are gathered first."""
    return accelerator.distributed_type.value in ("FSDP", "DEEPSPEED")


def configure_deepspeed(accelerator: Any, batch_size: int, max_grad_norm: float) -> None:
    """Fill the DeepSpeed config values accelerate cannot infer without a DataLoader (we have none)."""
    if not uses_deepspeed(accelerator):
        return
    config = accelerator.deepspeed_plugin.deepspeed_config
    if config.get("train_micro_batch_size_per_gpu", "auto") == "auto":
        config["train_micro_batch_size_per_gpu"] = batch_size
    if config.get("gradient_clipping", "auto") == "auto":
        config["gradient_clipping"] = max_grad_norm


def backward_scale(accelerator: Any, grad_accum: int) -> float:
    """The factor on each piece's loss before `accelerator.backward`. Each piece's loss is already its
    share of the step's loss tokens over all ranks, so the gradients must be summed: DDP, FSDP and
    DeepSpeed average over processes, and accelerate (or, under DeepSpeed, its engine) divides by the
    accumulation steps; this undoes both."""
    return float(accelerator.num_processes * grad_accum)
