"""The training loop on accelerate's contract (training/distributed.py), for what CPU CI can run:
fp16 with loss scaling, DeepSpeed's calling convention, engine-aware checkpoints and the card's record.
DDP with 2 CPU processes is tests/test_ddp.py; FSDP and real DeepSpeed need an accelerator device under
accelerate 1.16 (docs/gpu.md), so scripts/gpu_check.sh runs them on a GPU."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from accelerate.utils.deepspeed import DeepSpeedEngineWrapper, DeepSpeedOptimizerWrapper, DeepSpeedSchedulerWrapper
from safetensors.torch import load_file

import mathtune.recipes.train as train_module
from mathtune.config import build_config
from mathtune.recipes.train import setup, train, train_step
from mathtune.training import loss as loss_module

# A loss this small gives fp16 gradients below fp16's smallest subnormal (6e-8): they flush to zero
# unless the loss is scaled up before backward (GradScaler starts at 2**16).
UNDERFLOWING_LOSS_FACTOR = 2.0**-26


def tree(model_dir: Path, data_dir: Path, out: Path, **train_fields: Any) -> dict:
    return {
        "model": {"name": str(model_dir)}, "data": {"data_dir": str(data_dir), "train_size": 16},
        "method": {"name": "lora", "dropout": 0.0},
        "train": {"max_steps": 3, "batch_size": 4, "precision": "fp32", "lr": 2e-3, "log_every": 1, **train_fields},
        "output_dir": str(out),
    }


def lora_b(model: Any) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if "lora_B" in name}


def test_fp16_on_cpu_scales_the_loss_where_plain_backward_underflows(tiny_models, data_dir, tmp_path, monkeypatch):
    real_forward = loss_module.LossModule.forward
    monkeypatch.setattr(loss_module.LossModule, "forward",
                        lambda self, batch: real_forward(self, batch) * UNDERFLOWING_LOSS_FACTOR)
    cfg = build_config(tree(tiny_models["llama"], data_dir, tmp_path, precision="fp16"))
    session = setup(cfg)
    assert session.accelerator.mixed_precision == "fp16" and session.accelerator.scaler is not None

    # Without loss scaling: the same forward under fp16 autocast, a plain backward: every LoRA gradient
    # underflows to exactly zero, so no optimizer could learn from it.
    batch = train_module.make_batch([session.examples[i] for i in session.plan[0]], session.loaded, True)
    with torch.autocast("cpu", dtype=torch.float16):
        loss = session.loss_fn.module(batch) if hasattr(session.loss_fn, "module") else session.loss_fn(batch)
    loss.backward()
    grads = [p.grad for name, p in session.model.named_parameters() if "lora_A" in name]
    assert grads and all(g is not None and torch.count_nonzero(g) == 0 for g in grads)
    session.optimizer.zero_grad(set_to_none=True)

    # mathtune's step: the scaler lifts the gradients into fp16's range, unscales them in fp32, and
    # the adapters move (lora_B starts at zero and stays there without a gradient).
    before = lora_b(session.model)
    for step in range(3):
        train_step(session, step)
    after = lora_b(session.model)
    assert all(torch.isfinite(t).all() for t in after.values())
    assert max((after[k] - before[k]).abs().max().item() for k in after) > 1e-4


def test_fp16_run_records_its_engine_and_resumes_with_the_scaler(tiny_models, data_dir, tmp_path):
    out = tmp_path / "run"
    cfg = build_config(tree(tiny_models["llama"], data_dir, out, precision="fp16", max_steps=4, save_every=2))
    result = train(cfg, out, show_progress=False)
    card = result.card
    assert card["engine"] == "NO" and card["mixed_precision"] == "fp16" and card["loss_scaler"] is True
    assert all(torch.isfinite(t).all() for t in load_file(out / "adapter" / "adapter_model.safetensors").values())

    # A checkpoint carries the scaler's state (its scale grows and backs off during a run).
    from mathtune.training.checkpoints import save_checkpoint

    session = setup(cfg)
    train_step(session, 0)
    save_checkpoint(tmp_path / "ck", 1, session.accelerator, session.model, session.optimizer, session.scheduler, 0)
    state = torch.load(next((tmp_path / "ck" / "checkpoints").glob("step-*/state.pt")), weights_only=False)
    assert state["scaler"]["scale"] == session.accelerator.scaler.get_scale()


class FakeDeepSpeedEngine:
    """What DeepSpeed's engine does for accelerate's DeepSpeedEngineWrapper (ZeRO-2 on one process):
    backward divides the loss by its accumulation steps; step() at a boundary clips, steps the
    optimizer and the scheduler and zeroes the gradients; elsewhere it does nothing."""

    def __init__(self, optimizer: Any, scheduler: Any, config: dict, params: list[torch.nn.Parameter]) -> None:
        self.optimizer, self.scheduler, self.config, self.params = optimizer, scheduler, config, params
        self.boundary, self.updates, self.norm = False, 0, 0.0

    def set_gradient_accumulation_boundary(self, is_boundary: bool) -> None:
        self.boundary = is_boundary

    def backward(self, loss: torch.Tensor, **kwargs: Any) -> None:
        (loss / self.config["gradient_accumulation_steps"]).backward()

    def step(self) -> None:
        if not self.boundary:
            return
        self.norm = torch.nn.utils.clip_grad_norm_(self.params, self.config["gradient_clipping"]).item()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.updates += 1

    def get_global_grad_norm(self) -> float:
        return self.norm


class DeepSpeedContractAccelerator(Accelerator):
    """A single-process Accelerator that takes accelerate's DeepSpeed code paths (backward through the
    engine wrapper; DeepSpeedOptimizerWrapper/SchedulerWrapper, whose step() and zero_grad() are
    no-ops; clip_grad_norm_ returning the engine's norm) with FakeDeepSpeedEngine behind them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ds_config = {"gradient_accumulation_steps": self.gradient_accumulation_steps,
                          "train_micro_batch_size_per_gpu": "auto", "gradient_clipping": "auto",
                          "zero_optimization": {"stage": 2}}
        self.engine: FakeDeepSpeedEngine | None = None

    @property
    def distributed_type(self) -> DistributedType:
        return DistributedType.DEEPSPEED

    @property
    def deepspeed_plugin(self) -> Any:
        return SimpleNamespace(deepspeed_config=self.ds_config)

    def prepare(self, module: Any, optimizer: Any, scheduler: Any) -> tuple[Any, Any, Any]:
        params = [p for p in module.parameters() if p.requires_grad]
        self.engine = FakeDeepSpeedEngine(optimizer, scheduler, self.ds_config, params)
        self.deepspeed_engine_wrapped = DeepSpeedEngineWrapper(self.engine)
        return module, DeepSpeedOptimizerWrapper(optimizer), DeepSpeedSchedulerWrapper(scheduler, optimizer)

    def get_state_dict(self, model: Any, unwrap: bool = True) -> dict:  # ZeRO-2: weights are whole
        return model.state_dict()


def test_the_loop_trains_under_deepspeeds_calling_convention(tiny_models, data_dir, tmp_path, monkeypatch):
    """Under DeepSpeed the prepared optimizer's step() and zero_grad() do nothing: the weights change
    only if the loop goes through accelerator.backward with the accumulation boundary set. The
    result must equal the plain single-process run's (fp32, same data and order)."""
    fields = {"grad_accum": 2, "batch_size": 2, "max_micro_batch_tokens": 0, "max_grad_norm": 0.5}
    # AdamW barely sees a constant factor on the gradients, so the norms are compared too: a loss
    # divided twice by the accumulation steps (accelerate's and the engine's) shows up there.
    norms: list[float] = []
    real_clip = Accelerator.clip_grad_norm_

    def recording_clip(self: Accelerator, *args: Any, **kwargs: Any) -> Any:
        norm = real_clip(self, *args, **kwargs)
        norms.append(float(norm))
        return norm

    monkeypatch.setattr(Accelerator, "clip_grad_norm_", recording_clip)
    reference = tmp_path / "reference"
    train(build_config(tree(tiny_models["llama"], data_dir, reference, **fields)), reference, show_progress=False)
    reference_norms, norms[:] = list(norms), []
    # ... and the first one against autograd on the step's whole batch at once (the token mean).
    fresh = setup(build_config(tree(tiny_models["llama"], data_dir, tmp_path / "fresh", **fields)))
    step_examples = [fresh.examples[i] for micro in fresh.plan[:2] for i in micro]
    fresh.loss_fn(train_module.make_batch(step_examples, fresh.loaded, True)).backward()
    by_hand = torch.nn.utils.clip_grad_norm_([p for p in fresh.model.parameters() if p.requires_grad], 1e9).item()
    assert reference_norms[0] == pytest.approx(by_hand, rel=1e-4)

    made: list[DeepSpeedContractAccelerator] = []
    real_make = train_module.make_accelerator

    def make_deepspeed_contract(device: torch.device, dtype: torch.dtype, grad_accum: int) -> Any:
        real_make(device, dtype, grad_accum)  # resets accelerate's process-wide state as the real one does
        made.append(DeepSpeedContractAccelerator(cpu=True, gradient_accumulation_steps=grad_accum))
        return made[-1]

    monkeypatch.setattr(train_module, "make_accelerator", make_deepspeed_contract)
    ours = tmp_path / "deepspeed"
    result = train(build_config(tree(tiny_models["llama"], data_dir, ours, **fields)), ours, show_progress=False)

    engine = made[-1].engine
    assert engine is not None and engine.updates == 3  # one engine step per optimizer step, at the boundary
    assert norms == pytest.approx(reference_norms, rel=1e-4) and min(norms) > 0
    assert made[-1].ds_config["train_micro_batch_size_per_gpu"] == 2  # filled from train.batch_size
    assert made[-1].ds_config["gradient_clipping"] == 0.5  # filled from train.max_grad_norm
    assert result.card["engine"] == "DEEPSPEED"
    got = load_file(ours / "adapter" / "adapter_model.safetensors")
    want = load_file(reference / "adapter" / "adapter_model.safetensors")
    assert got.keys() == want.keys()
    assert max(want[k].abs().max().item() for k in want if "lora_B" in k) > 1e-3  # it trained
    assert max((got[k] - want[k]).abs().max().item() for k in got) < 1e-5


def test_a_grad_accum_that_disagrees_with_accelerate_launch_is_refused(tiny_models, data_dir, tmp_path, monkeypatch):
    from mathtune.errors import MathtuneError

    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "4")
    with pytest.raises(MathtuneError, match="train.grad_accum is 1"):
        setup(build_config(tree(tiny_models["llama"], data_dir, tmp_path)))


def test_the_train_log_is_the_same_with_one_accelerator_per_run(tiny_models, data_dir, tmp_path):
    """accelerate keeps process-wide state; runs of different precision one after the other in one
    process (the app, the tests) each get their own Accelerator and the same numbers as before."""
    losses = []
    for index, precision in enumerate(("fp32", "bf16", "fp32")):
        out = tmp_path / f"run{index}"
        train(build_config(tree(tiny_models["llama"], data_dir, out, precision=precision)), out, show_progress=False)
        losses.append([json.loads(line)["loss"] for line in (out / "train_log.jsonl").read_text().splitlines()])
    assert losses[0] == losses[2] and losses[0] != losses[1]
