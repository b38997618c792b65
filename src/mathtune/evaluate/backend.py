"""A model (and its tuned weights) loaded behind a generation backend: the one loader evaluation uses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mathtune.config import RunConfig
from mathtune.errors import MathtuneError
from mathtune.evaluate.generation import HFBackend
from mathtune.methods.registry import build_method
from mathtune.models.device import choose_placement
from mathtune.models.setup import load_for_run


def build_backend(cfg: RunConfig, adapter_dir: Path | None = None, vocab_dir: Path | None = None
                  ) -> tuple[HFBackend, dict[str, Any]]:
    """Load the base model (and the tuned weights from `adapter_dir`) behind a generation backend.
    The tokenizer gets the characters the run of `vocab_dir` (default: `adapter_dir`) added, with their
    ids (models/vocab.py); the base alone gets today's."""
    if adapter_dir is not None and not adapter_dir.is_dir():  # before minutes of loading the base
        run_dir = adapter_dir.parent
        steps = sorted(run_dir.glob("checkpoints/step-*"))
        if steps:
            raise MathtuneError(
                f"no trained weights at {adapter_dir}: training of {run_dir} was interrupted (checkpoint at step "
                f"{int(steps[-1].name.removeprefix('step-'))}); finish it with: mathtune train -c "
                f"{run_dir / 'config.yaml'} -o {run_dir} --resume")
        raise MathtuneError(f"no trained weights at {adapter_dir}; train first or check the run dir")
    if cfg.eval.backend == "llama-cpp":
        return build_llama_cpp_backend(cfg, adapter_dir)
    precision = cfg.eval_precision()
    placement = choose_placement(cfg.model.device, precision)
    method = build_method(cfg.method)
    # A quantized base (qlora) is loaded quantized for base and tuned alike, exactly as it was trained,
    # so base vs tuned measures the adapter and not the quantization. Other methods' training dtypes
    # (full: fp32 master weights) do not apply: inference runs in the eval precision.
    quant = method.base_load_kwargs(placement).get("quantization_config")
    if cfg.eval.int8_decode:  # preflight refuses it first; the app and library callers reach here directly
        check_int8_decode(cfg)
    # The characters training added (models/vocab.py), with the same ids: the tuned rows belong to them.
    loaded = load_for_run(cfg.model, placement, {"quantization_config": quant} if quant is not None else None,
                          tuned_dir=vocab_dir or adapter_dir)
    model, tokenizer, source, added = loaded.model, loaded.tokenizer, loaded.source, loaded.added_characters
    if adapter_dir is not None:
        model = method.load(model, adapter_dir)
        if quant is None:
            model = model.to(placement.device)
    seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
    int8 = 0
    if cfg.eval.int8_decode:
        from mathtune.speedups.int8_decode import apply_int8_decode

        int8 = apply_int8_decode(model)
    meta = {"backend": "hf", "model": source.label, "adapter": str(adapter_dir) if adapter_dir else None,
            "device": str(placement.device), "compute_dtype": str(placement.compute_dtype).replace("torch.", ""),
            "quantized": quant is not None}
    if added:
        meta["added_characters"] = added
    if int8:
        meta["int8_decode_linears"] = int8
    return HFBackend(model, tokenizer, placement.device, seq2seq, cfg.eval.batch_size), meta


def check_int8_decode(cfg: RunConfig) -> None:
    """eval.int8_decode runs torch's CPU int8 kernel on bf16/fp32 weights: refused on another device or
    over a quantized base (qlora), before anything is loaded or written."""
    device = choose_placement(cfg.model.device, cfg.eval_precision()).device.type
    quantized = build_method(cfg.method).quantized
    if device != "cpu" or quantized:
        raise MathtuneError("eval.int8_decode is a CPU lever for bf16/fp32 weights (torch's int8 weight-only "
                            f"kernel); this evaluation runs on {device}{' over a quantized base' if quantized else ''}"
                            ": set eval.int8_decode=false")


def build_llama_cpp_backend(cfg: RunConfig, adapter_dir: Path | None) -> tuple[Any, dict[str, Any]]:
    """llama.cpp on `eval.gguf` (or, for the base embedded model, its own GGUF file): mathtune's decoding
    rules, llama.cpp's engine (evaluate/llama_cpp_backend.py). A tuned run must be exported first:
    its adapter is not applied here."""
    from mathtune.evaluate.llama_cpp_backend import LlamaCppBackend
    from mathtune.models.loading import EMBEDDED_MODELS, embedded_gguf

    if cfg.eval.gguf:
        path = Path(cfg.eval.gguf).expanduser()
    elif adapter_dir is None and cfg.model.name in EMBEDDED_MODELS:
        path = embedded_gguf(cfg.model.name)
    elif adapter_dir is None and cfg.model.name.endswith(".gguf"):
        path = Path(cfg.model.name).expanduser()
    else:
        what = f"the run {adapter_dir.parent}" if adapter_dir is not None else f"the model {cfg.model.name}"
        raise MathtuneError(f"eval.backend llama-cpp needs a GGUF file of {what}: mathtune export "
                            f"{adapter_dir.parent if adapter_dir is not None else 'RUN_DIR'} --format gguf, then "
                            "-s eval.gguf=EXPORT/FILE.gguf")
    if cfg.model.device not in ("auto", "cpu"):
        raise MathtuneError("eval.backend llama-cpp runs on the CPU here: set model.device to auto or cpu")
    backend = LlamaCppBackend(path, context=2048, parallel=cfg.eval.batch_size)
    meta = {"backend": "llama-cpp", "model": cfg.model.name, "gguf": str(path),
            "adapter": str(adapter_dir) if adapter_dir else None, "device": "cpu", "threads": backend.threads,
            "parallel": backend.parallel, "compute_dtype": "gguf", "quantized": True}
    return backend, meta
