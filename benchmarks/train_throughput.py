"""Training throughput: the HF reference stack vs mathtune's default path, same data, same order.

    nice -n 15 python benchmarks/train_throughput.py                       # 20 steps, LoRA, both arms
    python benchmarks/train_throughput.py --arms mathtune -s train.fused_loss=false   # one lever off
    (levers as config fields: train.varlen_attention, train.fused_loss, train.fast_dropout, train.fused_ops,
    train.fused_lora, train.precision, train.gradient_checkpointing, train.packing; docs/performance.md has each
    one's effect; benchmarks/activation_memory.py shows what each keeps for backward)

Arm (a) "reference": HF `Trainer` + PEFT LoRA (r, alpha, dropout, targets as mathtune's config),
fp32, `DataCollatorForSeq2Seq` dynamic padding, completion-only labels, a sequential sampler.
Arm (b) "mathtune": `mathtune.recipes.train.train` with a RunConfig (its defaults; `-s` overrides them), in a
process set up as `mathtune train` sets up its own: under the heap allocator it re-executes itself
with (mimalloc on Linux; `-s train.allocator=system` for glibc's) and, for methods that do not
quantize, without bitsandbytes. The table's last line says which allocator each arm had.
Both arms get their examples and their batch order from the same code: mathtune's `build_examples`
and `micro_batch_plan`, so step k of one arm sees exactly the examples of step k of the other.

Each arm runs in a fresh `spawn` child, so its peak RSS (ru_maxrss) is its own. The arms run in lock
step: both children live at once, and this process lets one step of one arm run at a time, in the
order A B B A A B ..., while the other waits. Step k of both arms is timed within seconds of each
other, so the machine's slow and fast spells (run-to-run spread of about +-10 % here) fall on both
arms alike and mostly cancel in the ratio; `--sequential` runs one arm after the other instead.
Timing skips the first step (allocator and kernel warm-up) in both arms: tokens/s = non-padding
tokens of steps 2..N / the time spent in those steps.

FLOPs per step (the same "useful work" count for both arms, so padding and full logits are waste):
    linear layers: 4 * N_lin per token for LoRA (2 forward + 2 backward input-grads; frozen weights
                   need no weight-grads; the LoRA weight-grads, 2 * N_lora, are added), 6 * N_lin
                   per token for full fine-tuning
    output head:   4 * V * d per loss token (LoRA) or 6 * V * d (full), only loss positions count
    attention:     6 * d * n^2 per layer per example of n tokens (causal half of QK^T and PV,
                   forward 2 * d * n^2, backward twice that)
MFU = FLOPs / step time / peak, the peak being a bf16 2048^3 matmul timed here (fp32 also shown):
before the arms start and, in lock step, every fifth step while both arms wait; the highest counts
(a single timing came out as low as 256 GFLOP/s against ~415 in a slow spell).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DATA_DIR = "/work/shared/datasets"


def bench_config(args: argparse.Namespace, overrides: dict[str, Any]) -> Any:
    from mathtune.config import build_config, parse_override

    method: dict[str, Any] = {"name": args.method}
    tree = {
        "model": {"name": args.model}, "method": method,
        "data": {"dataset": "gsm8k", "data_dir": args.data_dir, "train_size": args.rows, "max_length": args.max_length},
        "train": {"batch_size": args.batch_size, "max_steps": args.steps, "lr": 2e-4, "warmup_steps": 0,
                  "log_every": 1, "save_every": 10**6, "seed": 42},
    }
    extra = dict(parse_override(item) for item in args.set or [])
    return build_config(tree, {**extra, **overrides})


def shared_data(cfg: Any, loaded: Any) -> tuple[list[Any], list[list[int]], int]:
    """Examples and the micro-batch order both arms consume (mathtune's own data code)."""
    from mathtune.recipes.train import build_examples, load_train_problems, micro_batch_plan

    examples, _ = build_examples(cfg, load_train_problems(cfg), loaded)
    plan, steps = micro_batch_plan(len(examples), cfg)
    return examples, plan, steps


def flops_per_step(model: Any, examples: list[Any], method: str) -> float:
    """The formula in the module docstring, for one micro-batch of `examples`."""
    from torch import nn

    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = core.get_output_embeddings()
    lin = sum(m.weight.numel() for m in core.modules() if isinstance(m, nn.Linear) and m is not head)
    lora = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "lora_" in n)
    cfg = core.config
    d, layers, vocab = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size
    per_token = (6 * lin) if method == "full" else (4 * lin + 2 * lora)
    per_loss_token = (6 if method == "full" else 4) * vocab * d
    total = 0.0
    for ex in examples:
        n = ex.num_tokens
        loss_tokens = sum(1 for label in ex.labels[1:] if label != -100)
        total += n * per_token + loss_tokens * per_loss_token + layers * 6 * d * n * n
    return total


def matmul_peak(dtype_name: str, size: int = 2048, repeats: int = 10) -> float:
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    for _ in range(3):
        a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - started)


def _window(step_seconds: list[float], step_tokens: list[int]) -> dict[str, float]:
    timed = step_seconds[1:] or step_seconds
    tokens = step_tokens[1:] if len(step_seconds) > 1 else step_tokens
    return {"seconds_per_step": sum(timed) / len(timed), "tokens_per_second": sum(tokens) / sum(timed)}


class Gate:
    """One arm's side of the lock step. A turn ends when the arm asks for its next one (or ends its
    run), so its work between steps (logging, the next batch; after the last step, saving and
    reporting) never runs while the other arm's step is timed."""

    def __init__(self, turn: Any = None, done: Any = None) -> None:
        self.turn, self.done, self.holding = turn, done, False

    def wait_turn(self) -> None:
        self.finished()
        if self.turn is not None:
            self.turn.acquire()
            self.holding = True

    def finished(self) -> None:
        if self.holding:
            self.done.release()
            self.holding = False


def run_reference(args: argparse.Namespace, overrides: dict[str, Any], gate: Gate) -> dict[str, Any]:
    import torch
    from peft import get_peft_model
    from torch.utils.data import SequentialSampler
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    from mathtune.methods.lora.method import peft_lora_config
    from mathtune.models.device import choose_placement
    from mathtune.models.loading import load_tokenizer, resolve_source
    from mathtune.models.setup import LoadedModel

    cfg = bench_config(args, overrides)
    torch.manual_seed(cfg.train.seed)
    source = resolve_source(cfg.model.name)
    tokenizer = load_tokenizer(source)
    placement = choose_placement("cpu", "fp32")
    quantized: dict[str, Any] = {}
    if cfg.method.name == "qlora":  # the HF QLoRA recipe: bitsandbytes config, kbit preparation, PEFT LoRA
        from peft import prepare_model_for_kbit_training

        from mathtune.methods.registry import build_method

        quantized = {"quantization_config": build_method(cfg.method).base_load_kwargs(placement)["quantization_config"]}
    model = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch.float32, **quantized)
    loaded = LoadedModel(model, tokenizer, source, placement, False)
    examples, plan, steps = shared_data(cfg, loaded)
    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if cfg.method.name in ("lora", "qlora"):
        model = get_peft_model(model, peft_lora_config(cfg.method, model))
    ordered = [examples[i] for micro in plan for i in micro]
    dataset = [{"input_ids": ex.input_ids, "labels": ex.labels} for ex in ordered]

    class InPlanOrder(Trainer):
        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

    marks: list[float] = []
    spans: list[list[float]] = []  # wall-clock [start, end] of each step, to check the lock step
    losses: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *_: Any, **__: Any) -> None:
            gate.wait_turn()
            spans.append([time.time()])
            marks.append(time.perf_counter())

        def on_step_end(self, *_: Any, **__: Any) -> None:
            marks.append(time.perf_counter())
            spans[-1].append(time.time())

        def on_log(self, _args: Any, _state: Any, _control: Any, logs: dict | None = None, **__: Any) -> None:
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    training_args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="ref-"), per_device_train_batch_size=cfg.train.batch_size,
        max_steps=steps, learning_rate=cfg.train.lr, lr_scheduler_type="linear", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=cfg.train.max_grad_norm, logging_steps=1, save_strategy="no",
        report_to="none", use_cpu=True, dataloader_num_workers=0, remove_unused_columns=False, seed=cfg.train.seed,
        disable_tqdm=True,
    )
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    trainer = InPlanOrder(model=model, args=training_args, train_dataset=dataset, data_collator=collator,
                          callbacks=[Clock()])
    trainer.train()
    step_seconds = [end - begin for begin, end in zip(marks[0::2], marks[1::2], strict=True)]
    step_tokens = [sum(examples[i].num_tokens for i in micro) for micro in plan[:steps]]
    return {"arm": "reference", "losses": losses, "step_seconds": step_seconds, "step_tokens": step_tokens,
            "step_spans": spans,
            "optim": str(training_args.optim), **_window(step_seconds, step_tokens),
            "flops": [flops_per_step(model, [examples[i] for i in micro], cfg.method.name) for micro in plan[:steps]]}


def run_mathtune(args: argparse.Namespace, overrides: dict[str, Any], gate: Gate) -> dict[str, Any]:
    import torch

    from mathtune.cli import become_training_process
    from mathtune.methods.registry import build_method
    from mathtune.recipes import train as train_module

    cfg = bench_config(args, overrides)
    become_training_process(cfg)  # what `mathtune train` does first (the allocator is already in place)
    seen: dict[str, Any] = {}
    original_plan = train_module.micro_batch_plan

    def recording_plan(num_examples: int, run_cfg: Any, world: int = 1) -> tuple[list[list[int]], int]:
        plan, steps = original_plan(num_examples, run_cfg, world)
        seen["plan"], seen["steps"] = plan, steps
        return plan, steps

    original_build = train_module.build_examples

    def recording_build(*a: Any, **k: Any) -> Any:
        examples, stats = original_build(*a, **k)
        seen["examples"] = examples
        return examples, stats

    original_step = train_module.train_step
    step_seconds: list[float] = []
    spans: list[list[float]] = []  # wall-clock [start, end] of each step, to check the lock step

    def gated_step(*a: Any, **k: Any) -> Any:  # train() looks train_step up in its module at each step
        gate.wait_turn()
        wall, started = time.time(), time.perf_counter()
        result = original_step(*a, **k)
        step_seconds.append(time.perf_counter() - started)
        spans.append([wall, time.time()])
        return result

    train_module.micro_batch_plan, train_module.build_examples = recording_plan, recording_build
    train_module.train_step = gated_step
    for lever in args.ablate or []:
        ABLATIONS[lever](train_module)
    with tempfile.TemporaryDirectory(prefix="mt-") as run_dir:
        card = train_module.train(cfg, Path(run_dir), show_progress=False).card
        log = [json.loads(line) for line in (Path(run_dir) / "train_log.jsonl").read_text().splitlines()]
    tokens = [0] + [row["tokens"] for row in log]
    step_tokens = [b - a for a, b in zip(tokens, tokens[1:], strict=False)]
    examples, plan, steps = seen["examples"], seen["plan"], seen["steps"]
    model = _param_model(cfg, build_method, torch)
    return {"arm": "mathtune", "losses": [row["loss"] for row in log], "step_seconds": step_seconds,
            "step_spans": spans,
            "step_tokens": step_tokens, "compute_dtype": card["compute_dtype"],
            **_window(step_seconds, step_tokens),
            "flops": [flops_per_step(model, [examples[i] for i in micro], cfg.method.name) for micro in plan[:steps]],
            "threads": torch.get_num_threads()}


def _param_model(cfg: Any, build_method: Any, torch: Any) -> Any:
    """A meta-device copy of the tuned model, only to count parameters for the FLOPs formula."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from mathtune.models.loading import resolve_source

    config = AutoConfig.from_pretrained(resolve_source(cfg.model.name).path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    method_cfg = cfg.method
    if method_cfg.name == "qlora":  # same adapters as LoRA; quantizing needs real weights, not meta ones
        from mathtune.methods.lora.config import LoraMethodConfig

        method_cfg = LoraMethodConfig(**method_cfg.model_dump(exclude={"name", "bits"}))
    return build_method(method_cfg).apply(model)


def _full_logits(train_module: Any) -> None:
    """Lever off: logits at every position (what `model(**batch).loss` does)."""
    from mathtune.training import loss as loss_module

    def compute_loss(model: Any, batch: dict, *_: Any) -> Any:
        return model(**batch).loss

    loss_module.compute_loss = compute_loss


def _unfused_adamw(train_module: Any) -> None:
    import torch

    original = torch.optim.AdamW

    class ForEachAdamW(original):  # type: ignore[misc, valid-type]
        def __init__(self, params: Any, *a: Any, fused: Any = None, **k: Any) -> None:
            super().__init__(params, *a, **k)

    torch.optim.AdamW = ForEachAdamW


def _group_by_length(train_module: Any) -> None:
    """Lever on: sort each window of 16 micro-batches by example length (HF-style mega-batches)."""
    original = train_module.micro_batch_plan
    examples_ref: dict[str, Any] = {}
    build = train_module.build_examples

    def recording_build(*a: Any, **k: Any) -> Any:
        examples, stats = build(*a, **k)
        examples_ref["examples"] = examples
        return examples, stats

    def grouped(num_examples: int, cfg: Any, world: int = 1) -> tuple[list[list[int]], int]:
        plan, steps = original(num_examples, cfg, world)
        flat = [i for micro in plan for i in micro]
        size, window = cfg.train.batch_size, 16 * cfg.train.batch_size
        lengths = [ex.num_tokens for ex in examples_ref["examples"]]
        out: list[int] = []
        for start in range(0, len(flat), window):
            out += sorted(flat[start : start + window], key=lambda i: -lengths[i])
        return [out[i : i + size] for i in range(0, len(out), size)], steps

    train_module.build_examples, train_module.micro_batch_plan = recording_build, grouped


def _compiled(train_module: Any) -> None:
    """Lever on: torch.compile each decoder layer (dynamic shapes: every packed row has its own length)."""
    import torch

    original = train_module.build_method

    def build(cfg: Any) -> Any:
        method = original(cfg)
        apply = method.apply

        def compiled_apply(model: Any) -> Any:
            tuned = apply(model)
            core = tuned.get_base_model() if hasattr(tuned, "get_base_model") else tuned
            for layer in core.model.layers:
                layer.compile(dynamic=True)
            return tuned

        method.apply = compiled_apply
        return method

    train_module.build_method = build
    del torch


ABLATIONS = {"full_logits": _full_logits, "unfused_adamw": _unfused_adamw, "group_by_length": _group_by_length,
             "compile": _compiled}
ARMS = {"reference": run_reference, "mathtune": run_mathtune}


def _child(arm: str, args: argparse.Namespace, overrides: dict[str, Any], queue: Any, gate: Gate) -> None:
    from mathtune.speedups.allocator import active_allocator

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        result = ARMS[arm](args, overrides, gate)
        gate.finished()  # the last turn ends here, after saving and reporting
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result["allocator"] = active_allocator()
        queue.put(result)
    except Exception as exc:  # report, don't hang the parent
        queue.put({"arm": arm, "error": f"{type(exc).__name__}: {exc}"})
        raise


def start_arm(arm: str, args: argparse.Namespace, overrides: dict[str, Any], gate: Gate) -> tuple[Any, Any]:
    """The arm's child process (started) and the queue its result arrives on."""
    from mathtune.speedups.allocator import allocator_environment

    context = mp.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_child, args=(arm, args, overrides, queue, gate))
    # mathtune's arm runs under the allocator `mathtune train` would re-execute itself with
    # (speedups/allocator.py); the spawned child inherits this process's environment.
    allocator_env = allocator_environment(bench_config(args, overrides).train.allocator, dict(os.environ)) \
        if arm == "mathtune" else None
    saved = dict(os.environ)
    try:
        os.environ.update(allocator_env or {})
        child.start()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return child, queue


def collect(child: Any, queue: Any) -> dict[str, Any]:
    result = queue.get()
    child.join()
    return result


def run_sequential(arms: list[str], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    return {arm: collect(*start_arm(arm, args, {}, Gate())) for arm in arms}


def run_lock_step(arms: list[str], args: argparse.Namespace, peak: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Both arms alive; one step of one arm at a time, in the order A B B A A B ... (module docstring).
    Every fifth step, while both arms wait, the matmul peak is timed again; `peak` keeps the highest."""
    context = mp.get_context("spawn")
    gates = {arm: Gate(context.Semaphore(0), context.Semaphore(0)) for arm in arms}
    started = {arm: start_arm(arm, args, {}, gates[arm]) for arm in arms}
    for step in range(args.steps):
        for arm in (arms if step % 2 == 0 else arms[::-1]):
            child = started[arm][0]
            if not child.is_alive():
                continue
            gates[arm].turn.release()
            while not gates[arm].done.acquire(timeout=1.0):  # an arm that failed or ran out of steps
                if not child.is_alive():
                    break
        if step % 5 == 4:
            for dtype, value in peaks(args).items():
                peak[dtype] = max(peak[dtype], value)
    return {arm: collect(*started[arm]) for arm in arms}


def peaks(args: argparse.Namespace) -> dict[str, float]:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    return {"bf16": matmul_peak("bfloat16"), "fp32": matmul_peak("float32")}


def report(results: dict[str, dict[str, Any]], peak: dict[str, float], args: argparse.Namespace) -> int:
    print(f"\nmodel {args.model}, method {args.method}, {args.rows} rows, max_length {args.max_length}, "
          f"batch {args.batch_size}, {args.steps} steps (timing: steps 2..N), arms "
          f"{'one after the other' if args.sequential else 'in lock step'}; overrides {args.set or []} "
          f"ablate {args.ablate or []}")
    print(f"matmul peak (2048^3, {args.threads or 'default'} threads, best timing): "
          f"bf16 {peak['bf16'] / 1e9:.1f} GFLOP/s, fp32 {peak['fp32'] / 1e9:.1f} GFLOP/s")
    print(f"{'arm':<10} {'tokens/s':>9} {'s/step':>8} {'peak RSS MB':>12} {'MFU(bf16)':>10} {'MFU(fp32)':>10}")
    for name, r in results.items():
        if "error" in r:
            print(f"{name:<10} error: {r['error']}")
            continue
        flops = sum(r["flops"][1:]) / sum(r["step_seconds"][1:])
        r["mfu_bf16"], r["mfu_fp32"] = flops / peak["bf16"], flops / peak["fp32"]
        print(f"{name:<10} {r['tokens_per_second']:>9.1f} {r['seconds_per_step']:>8.2f} {r['peak_rss_mb']:>12.0f} "
              f"{100 * r['mfu_bf16']:>9.1f}% {100 * r['mfu_fp32']:>9.1f}%")
    allocators = {name: r.get("allocator", "system") for name, r in results.items() if "error" not in r}
    print("heap allocator:", ", ".join(f"{name} {allocator}" for name, allocator in allocators.items()))
    status = 0
    if "reference" in results and "mathtune" in results and not any("error" in r for r in results.values()):
        a, b = results["reference"], results["mathtune"]
        print(f"ratio mathtune/reference tokens/s: {b['tokens_per_second'] / a['tokens_per_second']:.2f}x")
        k = min(args.check_steps, len(a["losses"]), len(b["losses"]))
        # Step 1 is the same function of the same weights (bf16 and dropout masks differ); later steps
        # also differ by the updates those masks caused, so they are compared as a mean.
        first = abs(a["losses"][0] - b["losses"][0]) / abs(a["losses"][0])
        mean_a, mean_b = sum(a["losses"][:k]) / k, sum(b["losses"][:k]) / k
        mean = abs(mean_a - mean_b) / abs(mean_a)
        ok = first <= args.first_step_rtol and mean <= args.loss_rtol
        print(f"loss agreement: step 1 relative difference {first:.4f} (tolerance {args.first_step_rtol}), "
              f"mean of steps 1..{k} {mean:.4f} (tolerance {args.loss_rtol}) -> {'OK' if ok else 'MISMATCH'}")
        print("  reference:", " ".join(f"{x:.4f}" for x in a["losses"][:k]))
        print("  mathtune: ", " ".join(f"{x:.4f}" for x in b["losses"][:k]))
        status = 0 if ok else 1
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "peak": peak, "results": results}, indent=1))
    return status


def prep_cost(args: argparse.Namespace) -> None:
    """Cost vs dataset size: load + tokenize + plan (no model weights) for each row count."""
    from mathtune.models.device import choose_placement
    from mathtune.models.loading import load_tokenizer, resolve_source
    from mathtune.models.setup import LoadedModel
    from mathtune.recipes.train import build_examples, load_train_problems, micro_batch_plan

    tokenizer = load_tokenizer(resolve_source(args.model))
    print(f"{'rows':>6} {'load s':>7} {'tokenize s':>10} {'plan s':>7} {'tokens':>9} {'us/row':>7}")
    for rows in (int(x) for x in args.prep_cost.split(",")):
        cfg = bench_config(args, {"data.train_size": rows, "train.max_steps": None})
        started = time.perf_counter()
        problems = load_train_problems(cfg)
        loaded_at = time.perf_counter()
        examples, _ = build_examples(cfg, problems, LoadedModel(None, tokenizer, None, choose_placement("cpu", "fp32"),
                                                                False))
        tokenized_at = time.perf_counter()
        micro_batch_plan(len(examples), cfg)
        done = time.perf_counter()
        print(f"{len(examples):>6} {loaded_at - started:>7.3f} {tokenized_at - loaded_at:>10.3f} "
              f"{done - tokenized_at:>7.4f} {sum(ex.num_tokens for ex in examples):>9} "
              f"{1e6 * (done - started) / len(examples):>7.0f}")


def add_run_arguments(parser: argparse.ArgumentParser, steps: int = 20) -> None:
    """The arguments `bench_config` reads (also used by activation_memory.py)."""
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--method", default="lora", choices=["lora", "qlora", "full"])
    parser.add_argument("--data-dir", default=DATA_DIR)
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=steps)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser)
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads in each arm (0: default)")
    parser.add_argument("--arms", default="reference,mathtune")
    parser.add_argument("--set", "-s", action="append", help="RunConfig override for both arms: train.packing=false")
    parser.add_argument("--ablate", action="append", choices=sorted(ABLATIONS), help="Turn a mathtune lever off/on")
    parser.add_argument("--sequential", action="store_true",
                        help="Run the arms one after the other, not in lock step (module docstring)")
    parser.add_argument("--check-steps", type=int, default=5, help="Steps whose losses must agree")
    parser.add_argument("--loss-rtol", type=float, default=0.02,
                        help="Tolerance on the mean loss of the checked steps (bf16 vs fp32, other dropout masks)")
    parser.add_argument("--first-step-rtol", type=float, default=0.01,
                        help="Tolerance on the first step's loss (same weights in both arms)")
    parser.add_argument("--json", help="Also write all numbers to this JSON file")
    parser.add_argument("--prep-cost", help="Only time data preparation for these row counts: 100,1000,7473")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.prep_cost:
        prep_cost(args)
        return 0
    peak = peaks(args)
    arms = args.arms.split(",")
    args.sequential = args.sequential or len(arms) == 1  # one arm has nothing to step with
    results = run_sequential(arms, args) if args.sequential else run_lock_step(arms, args, peak)
    return report(results, peak, args)


if __name__ == "__main__":
    sys.exit(main())
