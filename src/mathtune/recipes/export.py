"""The export recipe: a finished run's tuned model as files other tools load, checked by loading them back.

check the run dir -> load the tuned model exactly as evaluation does (fp32, CPU) -> note its logits on a
probe prompt -> fold the adapter into the weights (methods/merge.py) -> write into a temp dir beside
the output: `hf` (safetensors, tokenizer, chat template, generation config) or `gguf` (one .gguf file
and an Ollama Modelfile) -> load what was written with plain transformers and compare its logits with
the noted ones -> model card README.md, run_card.json and fingerprint.json -> rename into place.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from mathtune.config import RunConfig, load_config
from mathtune.errors import MathtuneError
from mathtune.evaluate.backend import build_backend
from mathtune.evaluate.scoring import build_prompts, stop_strings
from mathtune.fingerprint import export_fingerprint, files_digest, write_fingerprint
from mathtune.io import atomic_write_json, atomic_write_text, replace_dir
from mathtune.methods.merge import dequantize, fold_stacked_lora, merge_lora
from mathtune.models.cards import (
    DATASETS,
    EMBEDDED_BASE_MODELS,
    model_card,
    model_index_entry,
    modelfile,
    ollama_template,
)
from mathtune.models.gguf_export import QUANTS, check_gguf_architecture, write_gguf
from mathtune.models.loading import EMBEDDED_MODELS, embedded_gguf, is_seq2seq, resolve_source, source_config
from mathtune.prompts import get_strategy, render_prompts
from mathtune.runcard import provenance

FORMATS = ("hf", "gguf")
PLACEHOLDER = "QUESTIONPLACEHOLDER"  # stands for the user's question while the prompt is rendered
PROBE_QUESTION = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                  "How many clips did Natalia sell altogether in April and May?")
# Max |logit| gap, relative to the largest |logit|, between the written model loaded back and the tuned
# model: fp32 safetensors are exact up to summation order; f16 and q8_0 round the weights (SmolLM2-135M,
# 43-token probe: f16 1.6 %). A wrong layout is far past these (Q/K left unpermuted: over 100 %).
LOADED_BACK_TOLERANCE = {"hf": 1e-4, "f16": 5e-2, "q8_0": 1e-1}


def export_workflow(run_dir: Path, fmt: str, quant: str | None = None, out: Path | None = None,
                    overwrite: bool = False) -> dict[str, Any]:
    """Export `run_dir`'s tuned model; returns the export's run card (its `output` is where it went)."""
    started = time.perf_counter()
    cfg = finished_run_config(run_dir)
    quant = check_format(fmt, quant)
    out = out if out is not None else run_dir / "export" / (fmt if fmt == "hf" else f"gguf-{quant}")
    if out.exists() and not overwrite:
        raise MathtuneError(f"{out} already exists; pass --overwrite to replace it, or -o another directory")
    config = source_config(resolve_source(cfg.model.name, cfg.model.gguf_file))
    if is_seq2seq(config):
        raise MathtuneError(f"export writes causal language models; this run's model is '{config.model_type}' "
                            "(encoder-decoder)")
    if fmt == "gguf":
        check_gguf_architecture(config)

    # 1. The tuned model as evaluation loads it, in fp32 on the CPU; its logits on a probe prompt.
    # (the exact weights: none of evaluation's decoding levers, whatever the run's eval section says)
    cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"dtype": "fp32", "int8_decode": False,
                                                                     "backend": "hf"}),
                                 "model": cfg.model.model_copy(update={"device": "cpu"})})
    model, tokenizer, added = load_tuned(cfg, run_dir / "adapter")
    if added:
        raise MathtuneError(f"this run's tokenizer carries characters mathtune added ({''.join(added)!r}, "
                            "models/vocab.py) that a plain tokenizer load would not rebuild; export refused")
    before, after = prompt_around_question(cfg, tokenizer)
    probe = tokenizer(before + PROBE_QUESTION + after, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        tuned_logits = model(probe).logits.float()

    # 2. One plain model: the adapter folded into the weights.
    merged = merge(cfg.method.name, model)

    # 3. Written beside the output and loaded back, then renamed into place.
    out.parent.mkdir(parents=True, exist_ok=True)
    card: dict[str, Any] = {}

    def write(tmp: Path) -> None:
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # a temp dir is private; the export is as readable as any other output
        if fmt == "hf":
            files = write_hf(merged, tokenizer, cfg, tmp)
            loaded = load_back_hf(tmp)
        else:
            files = write_gguf_export(merged, tokenizer, cfg, run_dir, tmp, quant, before, after)
            loaded = load_back_gguf(tmp, files[0])
        with torch.no_grad():
            loaded_logits = loaded(probe).logits.float()
        check = loaded_back_check(tuned_logits, loaded_logits, LOADED_BACK_TOLERANCE[quant or "hf"])
        metrics = tuned_metrics(run_dir)
        card.update(export_card(cfg, run_dir, fmt, quant, out, files, check, metrics, time.perf_counter() - started))
        atomic_write_text(tmp / "README.md", readme(cfg, run_dir, fmt, quant, files, metrics, check, before, after))
        atomic_write_json(tmp / "run_card.json", card)
        write_fingerprint(tmp, export_fingerprint(cfg, run_dir / "adapter", fmt, quant))
        for path in tmp.iterdir():  # some writers create private files (0600); an export is meant to be shared
            path.chmod(0o666 & ~umask)

    replace_dir(out, write)
    return card


def finished_run_config(run_dir: Path) -> RunConfig:
    """The run's own config; a dir that is no run, or a run that did not finish training, is refused."""
    if not run_dir.is_dir() or not (run_dir / "config.yaml").is_file():
        raise MathtuneError(f"{run_dir} is not a run directory (no config.yaml); pass the -o of `mathtune train`/`run`")
    if not (run_dir / "train_card.json").is_file() or not (run_dir / "adapter").is_dir():
        raise MathtuneError(f"{run_dir} is an unfinished run (no train_card.json or adapter/); "
                            "finish it with `mathtune train --resume` first")
    return load_config(run_dir / "config.yaml", None)


def check_format(fmt: str, quant: str | None) -> str | None:
    if fmt not in FORMATS:
        raise MathtuneError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    if fmt == "hf":
        if quant is not None:
            raise MathtuneError("--quant applies to --format gguf; hf writes the merged fp32 weights")
        return None
    quant = quant or "f16"
    if quant not in QUANTS:
        raise MathtuneError(f"--quant {quant}: GGUF export writes {', '.join(QUANTS)}")
    return quant


def load_tuned(cfg: RunConfig, adapter_dir: Path) -> tuple[Any, Any, list[str]]:
    """The tuned model exactly as `mathtune eval` computes it. qlora: its quantized base is dequantized
    first, so the adapter is merged into the weights it was trained on (W0 as quantized)."""
    if cfg.method.name == "qlora":
        from peft import PeftModel

        backend, meta = build_backend(cfg, vocab_dir=adapter_dir)  # the run's added characters, its ids
        base = dequantize(backend.model)
        return PeftModel.from_pretrained(base, adapter_dir).eval(), backend.tokenizer, meta.get("added_characters", [])
    backend, meta = build_backend(cfg, adapter_dir)
    return backend.model.eval(), backend.tokenizer, meta.get("added_characters", [])


def merge(method: str, model: Any) -> Any:
    if method in ("lora", "qlora", "grpo"):
        return merge_lora(model)
    if method == "stacked-lora":
        return fold_stacked_lora(model)
    return model  # full: the saved weights are the tuned model


def prompt_around_question(cfg: RunConfig, tokenizer: Any) -> tuple[str, str]:
    """What mathtune puts before and after a question (few-shot prefix, strategy, chat template)."""
    from mathtune.data.row import Problem

    prompts, _ = build_prompts(cfg, [Problem("export", PLACEHOLDER, "#### 0", "0")])
    rendered = render_prompts(tokenizer, prompts, cfg.prompt.chat_template)[0]
    before, _, after = rendered.partition(PLACEHOLDER)
    return before, after


def write_hf(model: Any, tokenizer: Any, cfg: RunConfig, out: Path) -> list[str]:
    """safetensors + config + tokenizer (with its chat template) + a greedy generation config."""
    from transformers import GenerationConfig

    eos = sorted({i for i in [tokenizer.eos_token_id, model.config.eos_token_id] if isinstance(i, int)})
    model.generation_config = GenerationConfig(
        do_sample=False, max_new_tokens=cfg.eval.max_new_tokens, eos_token_id=eos[0] if len(eos) == 1 else eos,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return sorted(p.name for p in out.iterdir())


def load_back_hf(directory: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, use_kernels=False).eval()


def source_gguf(cfg: RunConfig) -> Path | None:
    """The GGUF file the base model came from, whose tokenizer metadata the export keeps as it was."""
    name = cfg.model.name
    if name in EMBEDDED_MODELS:
        return embedded_gguf(name)
    if name.endswith(".gguf"):
        return Path(name).expanduser()
    if cfg.model.gguf_file:
        return Path(name).expanduser() / cfg.model.gguf_file
    return None


def write_gguf_export(model: Any, tokenizer: Any, cfg: RunConfig, run_dir: Path, out: Path, quant: str,
                      before: str, after: str) -> list[str]:
    """The .gguf file and an Ollama Modelfile beside it."""
    from mathtune import __version__

    gguf_name = f"{run_dir.resolve().name}-{quant}.gguf"
    with tempfile.TemporaryDirectory() as tokenizer_dir:
        tokenizer.save_pretrained(tokenizer_dir)
        write_gguf(model, Path(tokenizer_dir), out / gguf_name, quant, name=run_dir.resolve().name,
                   source_gguf=source_gguf(cfg),
                   extra={"general.source.url": str(run_dir.resolve()), "general.finetune": cfg.method.name,
                          "mathtune.version": __version__})
    stops = list(stop_strings(cfg, get_strategy(cfg.prompt.strategy)))
    atomic_write_text(out / "Modelfile", modelfile(gguf_name, ollama_template(before, after), stops,
                                                   cfg.eval.max_new_tokens))
    return [gguf_name, "Modelfile"]


def load_back_gguf(directory: Path, gguf_name: str) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_name, dtype=torch.float32,
                                                use_kernels=False).eval()


def loaded_back_check(expected: torch.Tensor, got: torch.Tensor, tolerance: float) -> dict[str, Any]:
    """The written model, loaded back, against the tuned model on the probe prompt; refused past tolerance."""
    gap = (expected - got).abs().max().item()
    scale = expected.abs().max().item()
    same_argmax = bool(torch.equal(expected.argmax(-1), got.argmax(-1)))
    check = {"probe_tokens": int(expected.shape[1]), "max_abs_logit_gap": gap, "max_abs_logit": scale,
             "relative_gap": gap / max(scale, 1e-12), "tolerance": tolerance, "same_next_token_everywhere": same_argmax}
    if not check["relative_gap"] <= tolerance:
        raise MathtuneError(f"the exported model, loaded back, differs from the tuned model (max logit gap "
                            f"{gap:.3g}, {check['relative_gap']:.2%} of the largest logit > {tolerance:.2%}); "
                            "nothing was written")
    return check


def tuned_metrics(run_dir: Path) -> dict[str, Any] | None:
    import json

    path = run_dir / "eval" / "tuned" / "metrics.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def export_card(cfg: RunConfig, run_dir: Path, fmt: str, quant: str | None, out: Path, files: list[str],
                check: dict[str, Any], metrics: dict[str, Any] | None, wall: float) -> dict[str, Any]:
    return {"kind": "export", "format": fmt, "quant": quant, "output": str(out), "files": files,
            "source_run": str(run_dir.resolve()), "adapter": files_digest(run_dir / "adapter"),
            "model": cfg.model.name, "method": cfg.method.name, "prompt": cfg.prompt.model_dump(mode="json"),
            "calculator": cfg.eval.calculator, "loaded_back": check,
            "scores": None if metrics is None else {"n": metrics["n"], "scores": metrics["scores"]},
            "wall_seconds": round(wall, 2), **provenance()}


def readme(cfg: RunConfig, run_dir: Path, fmt: str, quant: str | None, files: list[str],
           metrics: dict[str, Any] | None, check: dict[str, Any], before: str, after: str) -> str:
    """A Hugging Face model card: YAML header (base model, library, datasets, measured scores) + usage."""
    base = EMBEDDED_BASE_MODELS.get(cfg.model.name, cfg.model.name)
    dataset = {"name": cfg.data.dataset.upper() if cfg.data.dataset == "gsm8k" else cfg.data.dataset,
               "type": DATASETS.get(cfg.data.dataset, cfg.data.dataset), "config": cfg.data.subset,
               "split": cfg.eval.split}
    header: dict[str, Any] = {"library_name": "transformers" if fmt == "hf" else "gguf"}
    if "/" in base and not Path(base).expanduser().exists():  # a hub id, not a local path
        header["base_model"] = base
    header.update({"datasets": [dataset["type"]], "tags": ["mathtune", "math", cfg.method.name]
                   + (["gguf"] if fmt == "gguf" else [])})
    name = run_dir.resolve().name
    if metrics is not None:
        header["model-index"] = [model_index_entry(name, metrics, dataset)]
    scores = "not evaluated (run `mathtune eval` on the run first)" if metrics is None else ", ".join(
        f"{key} {100 * s['exact_match']:.1f} ± {100 * s['stderr']:.1f} %" for key, s in metrics["scores"].items())
    if fmt == "hf":
        usage = (f"```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
                 f"model = AutoModelForCausalLM.from_pretrained(\"{name}\")\n"
                 f"tokenizer = AutoTokenizer.from_pretrained(\"{name}\")\n```")
    else:
        usage = (f"```bash\nollama create {name} -f Modelfile && ollama run {name} \"Tom has 3 apples...\"\n"
                 f"llama-cli -m {files[0]} --temp 0 -p \"...\"\n```")
    body = f"""
{cfg.method.name} fine-tune of `{base}` by mathtune on {dataset['name']}
({cfg.data.subset}), exported with `mathtune export {run_dir} --format {fmt}{f' --quant {quant}' if quant else ''}`.

**Measured on {dataset['name']} {cfg.eval.split}** (greedy, {metrics['n'] if metrics else '?'} seeded problems,
mathtune's own evaluation of the run{', calculator-augmented decoding' if cfg.eval.calculator else ''}): {scores}.

**Prompt** (what the model was trained and evaluated on; the Modelfile's TEMPLATE writes it):
`{(before + '{question}' + after).replace(chr(10), chr(92) + 'n')}`
{'''
**Calculator**: mathtune's scores used calculator decoding: when the model writes `<<48/2=`, the value
`24>>` is inserted for it. llama.cpp, Ollama and plain `generate` have no calculator: the model does its
own arithmetic there, and may score lower.
''' if cfg.eval.calculator else ''}
**Loaded back**: this export, loaded with plain transformers{' (GGUF loader)' if fmt == 'gguf' else ''}, gives
logits within {check['max_abs_logit_gap']:.2g} of the tuned model's on a {check['probe_tokens']}-token probe
(largest logit {check['max_abs_logit']:.3g}); the next token agrees at every position:
{check['same_next_token_everywhere']}.

{usage}
"""
    return model_card(header, f"{name} ({fmt}{f' {quant}' if quant else ''})", body)
