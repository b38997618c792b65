"""The sampling recipe: draw problems -> prompt -> k sampled solutions each -> extract/execute -> score
-> samples.jsonl. The raw material of maj@k, verifier best-of-N and the test-time compute curve
(evaluate/curves.py), and the verifier's training data when run on the train split.

A row per problem: its k samples, each with the evaluation's own scoring (the extracted answer, or
the sandbox's for program-of-thought, and every score's correctness). Appended per chunk, so a killed
run resumes where it stopped; the fingerprint refuses to mix samples of other settings.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from mathtune.config import RunConfig
from mathtune.data.problems import LoadedSplits
from mathtune.errors import MathtuneError
from mathtune.evaluate.backend import build_backend
from mathtune.evaluate.decoding import SAMPLER
from mathtune.evaluate.generation import GenerationRequest, HFBackend
from mathtune.evaluate.scoring import build_prompts, eval_problems, score_rows, stop_strings
from mathtune.evaluate.sharding import ShardedRows, current_processes, expected_length
from mathtune.fingerprint import (
    check_fingerprint,
    eval_fingerprint,
    first_difference,
    read_fingerprint,
    write_fingerprint,
)
from mathtune.io import atomic_write_json, read_jsonl_tolerant
from mathtune.prompts import get_strategy, render_prompts
from mathtune.runcard import peak_cuda_mb, peak_rss_mb, provenance

SAMPLES_FILE = "samples.jsonl"
# Per sample: what reranking and the verifier need; the prompt and question are stored once per problem.
SAMPLE_KEYS = ("output", "extracted", "correct", "truncated", "new_tokens", "sandbox")


def sampling_fingerprint(cfg: RunConfig, problems: list, adapter_dir: Path | None) -> dict[str, Any]:
    fingerprint = eval_fingerprint(cfg, problems, adapter_dir)
    fingerprint["kind"] = "samples"
    fingerprint["generation"] |= {"samples": cfg.eval.samples, "temperature": cfg.eval.temperature,
                                  "top_p": cfg.eval.top_p, "sample_seed": cfg.eval.sample_seed,
                                  "sampler": SAMPLER}
    return fingerprint


def merge_lora(backend: HFBackend) -> bool:
    """Fold a LoRA adapter into the base weights (peft's `merge_and_unload`): the same function with
    one matmul per layer instead of three, about 1.2x faster sampling on 2 CPU cores at 256 rows.
    In bf16 the merged weights are rounded once, so samples can differ from the unmerged model's in
    the last bits of a logit. Other tuned models (full, stacked LoRA, a quantized base) stay as loaded."""
    from peft import PeftModel

    model = backend.model
    if not isinstance(model, PeftModel) or getattr(model.base_model.model, "is_quantized", False):
        return False
    if model.peft_config[model.active_adapter].peft_type.value != "LORA":
        return False
    backend.model = model.merge_and_unload().eval()
    from mathtune.speedups.int8_decode import drop_int8_copies

    drop_int8_copies(backend.model)  # eval.int8_decode: copy the merged weights, not the base ones
    return True


def earlier_samples(extend: Path, fingerprint: dict[str, Any], k: int) -> dict[str, list[dict[str, Any]]]:
    """The samples of a run with the same settings but fewer samples per problem, by problem id: their
    samples 0..k0-1 are exactly what this run would draw first (each sample has its own seed)."""
    stored = read_fingerprint(extend)
    if stored is None or stored.get("kind") != "samples":
        raise MathtuneError(f"--extend {extend}: no samples of `mathtune sample` there")
    earlier_k = stored["generation"]["samples"]
    difference = first_difference({**stored, "generation": {**stored["generation"], "samples": k}}, fingerprint)
    if difference:
        raise MathtuneError(f"--extend {extend}: its samples have other settings ({difference})")
    if earlier_k >= k:
        raise MathtuneError(f"--extend {extend}: it holds {earlier_k} samples per problem; ask for more than that")
    return {row["id"]: row["samples"] for row in read_samples(extend)}


def sample_model(cfg: RunConfig, out_dir: Path, adapter_dir: Path | None = None, share_prefix: bool = True,
                 show_progress: bool = True, backend: HFBackend | None = None, merge: bool = False,
                 extend: Path | None = None, loaded: LoadedSplits | None = None) -> dict[str, Any]:
    """k = cfg.eval.samples solutions for each drawn problem, into out_dir/samples.jsonl; returns the
    summary written to out_dir/sampling.json. `merge` folds a LoRA adapter into the weights first;
    `extend` names a samples dir of the same settings and fewer samples, whose samples are kept and
    continued instead of drawn again. `loaded`: the splits the command's preflight read (not read again)."""
    processes = current_processes()  # under `accelerate launch`: this rank samples its share of the problems
    problems = eval_problems(cfg, loaded)
    fingerprint = sampling_fingerprint(cfg, problems, adapter_dir)
    fingerprint["generation"]["merged_lora"] = merge
    fingerprint["processes"] = processes.world  # recorded; a relaunch with another number still resumes
    earlier = processes.agreed(lambda: earlier_samples(extend, fingerprint, cfg.eval.samples)
                               if extend is not None else {})
    processes.agreed(lambda: check_fingerprint(out_dir, fingerprint, "samples", "pass --overwrite to replace "
                                               "them, or -o another directory for these samples"))
    processes.check_same(fingerprint, "samples", first_difference)
    if backend is None:
        backend, meta = build_backend(cfg, adapter_dir)
    else:
        meta = {"backend": "hf", "adapter": str(adapter_dir) if adapter_dir else None}
    meta["merged_lora"] = merge and merge_lora(backend)
    if processes.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_fingerprint(out_dir, fingerprint)
    strategy = get_strategy(cfg.prompt.strategy)
    prompts, prompt_record = build_prompts(cfg, problems, loaded)
    prompts = render_prompts(backend.tokenizer, prompts, cfg.prompt.chat_template)
    path = out_dir / SAMPLES_FILE
    sharded = ShardedRows(path, processes, [p.id for p in problems], [expected_length(p) for p in problems])
    done = processes.agreed(sharded.done)
    todo = sharded.mine(done)
    finished = len(done) == len(problems) and sharded.merged_only() and (out_dir / "sampling.json").is_file()
    stop, k = stop_strings(cfg, strategy), cfg.eval.samples
    chunk = max(1, cfg.eval.batch_size // k) * 4  # problems per write; a continuous batch drains once per chunk
    started, new_tokens = time.perf_counter(), 0
    order = {problem.id: index for index, problem in enumerate(problems)}
    shared = processes.world > 1  # rank 0's bar counts its own share
    bar = tqdm(total=len(todo) if shared else len(problems), initial=0 if shared else len(problems) - len(todo),
               desc=f"sample k={k}" + (f" (rank 0 of {processes.world})" if shared else ""),
               disable=not show_progress or not processes.main, dynamic_ncols=True)
    for start in range(0, len(todo), chunk):
        rows = []
        for indices in _by_samples_kept(todo[start : start + chunk], problems, earlier):
            kept = earlier.get(problems[indices[0]].id, [])
            requests = [GenerationRequest(prompts[i], stop, cfg.eval.max_new_tokens, cfg.eval.calculator,
                                          cfg.eval.loop_stop) for i in indices]
            samples = backend.sample(requests, [problems[i].id for i in indices], k, temperature=cfg.eval.temperature,
                                     top_p=cfg.eval.top_p, seed=cfg.eval.sample_seed, share_prefix=share_prefix,
                                     first=len(kept))
            for index, generations in zip(indices, samples, strict=True):
                problem = problems[index]
                scored = score_rows([problem] * len(generations), generations, strategy,
                                    [prompts[index]] * len(generations))
                drawn = [{key: row[key] for key in SAMPLE_KEYS if key in row} for row in scored]
                rows.append({"id": problem.id, "question": problem.question, "reference_answer": problem.answer,
                             "prompt": prompts[index], "samples": earlier.get(problem.id, []) + drawn})
                new_tokens += sum(g.new_tokens for g in generations)
        rows.sort(key=lambda row: order[row["id"]])
        sharded.append(rows)
        bar.update(len(indices))
    bar.close()
    merged = sharded.merge()  # rank 0: every rank's rows in problem order, in samples.jsonl; the others: None
    new_tokens = sum(processes.gather(new_tokens))
    wall = time.perf_counter() - started
    if merged is None:
        return processes.gather(None)[0]  # rank 0's summary, once it has written it
    summary = {"n": len(problems), "k": k, "temperature": cfg.eval.temperature, "top_p": cfg.eval.top_p,
               "sample_seed": cfg.eval.sample_seed, "split": cfg.eval.split, "share_prefix": share_prefix,
               "extended_from": str(extend) if extend is not None else None,
               # wall, tokens and tokens/s are this launch's: a resumed run samples only what was left
               "problems_this_launch": len(problems) - len(done),
               "wall_seconds": round(wall, 2), "generated_tokens": new_tokens,
               "generated_tokens_per_second": round(new_tokens / max(wall, 1e-9), 1),
               "generated_tokens_all_launches": sum(sample.get("new_tokens", 0) for row in merged
                                                    for sample in row["samples"]),
               "peak_rss_mb": round(peak_rss_mb(), 1), "peak_cuda_mb": peak_cuda_mb(),
               "prompt": prompt_record, "stop": list(stop), "max_new_tokens": cfg.eval.max_new_tokens,
               "processes": processes.world, **meta, **provenance()}
    if not finished:
        atomic_write_json(out_dir / "sampling.json", summary)
    return processes.gather(json.loads((out_dir / "sampling.json").read_text(encoding="utf-8")))[0]


def _by_samples_kept(indices: list[int], problems: list, earlier: dict[str, list]) -> list[list[int]]:
    """The chunk's problems grouped by how many samples an extended run keeps (one group without --extend)."""
    groups: dict[int, list[int]] = {}
    for index in indices:
        groups.setdefault(len(earlier.get(problems[index].id, [])), []).append(index)
    return list(groups.values())


def read_samples(path: Path) -> list[dict[str, Any]]:
    """The rows of a samples.jsonl (or of the samples dir holding one)."""
    path = path / SAMPLES_FILE if path.is_dir() else path
    return read_jsonl_tolerant(path)
