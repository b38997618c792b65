"""What produced an output directory: a rerun continues only the same work, never another's.

Every train and eval directory holds `fingerprint.json`: the identity of the model and adapter (a
hash of their files), the method, prompt, data (a hash of the very problems used), generation
settings, extractor version and mathtune version. Settings that change how fast a result comes but
not what it is (batch size of generation, checkpoint and log intervals, fast paths) are left out,
so a resume on another machine or with more memory is still a resume.

`check_fingerprint` refuses to continue a directory whose fingerprint differs and names the first
difference; `--overwrite` is the way to replace such a directory.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any

from mathtune import __version__
from mathtune.errors import MathtuneError

FINGERPRINT_FILE = "fingerprint.json"
# Bump when answer extraction or scoring changes what a stored prediction's scores would be.
EXTRACTOR_VERSION = "2026-12-03 strict/flexible (lm-eval gsm8k), numeric-match, math-verify, choice letters"
# Train settings that change speed or memory, not the weights a run is meant to produce.
TRAIN_KEYS_OF_SPEED = ("save_every", "log_every", "dev_eval_every", "allocator", "max_micro_batch_tokens",
                       "cpu_kernels", "fused_loss", "fused_ops", "fused_lora", "dropout_mask_storage",
                       "fast_dropout", "varlen_attention", "packing", "gradient_checkpointing")
# Recorded, never compared: how many processes (`accelerate launch`) wrote the dir. Each problem's row
# is the same whichever process wrote it, so a relaunch with another number of processes resumes.
RECORD_ONLY_KEYS = ("processes",)
# Data settings that locate files; the problems themselves are hashed instead.
DATA_KEYS_OF_LOCATION = ("data_dir", "train_file", "test_file")


@cache
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def files_digest(path: str | Path | None) -> str | None:
    """sha256 over a file's bytes, or a directory's file names and bytes (hidden files skipped);
    None for a path that is not on disk (a hub id: its name and revision identify it)."""
    if path is None:
        return None
    path = Path(path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
    else:
        return None
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        name = file.name if file == path else str(file.relative_to(path))
        digest.update(f"{name}\0{_file_digest(str(file), stat.st_size, stat.st_mtime_ns)}\0".encode())
    return digest.hexdigest()


def problems_digest(problems: list[Any]) -> str:
    """Hash of the problems' ids, questions and reference solutions, in order."""
    digest = hashlib.sha256()
    for problem in problems:
        program = getattr(problem, "program", None)  # only rows that carry one: older digests stay as they were
        digest.update(json.dumps([problem.id, problem.question, problem.solution, *([program] if program else [])
                                  ]).encode())
    return digest.hexdigest()


def _model_identity(cfg: Any) -> dict[str, Any]:
    from mathtune.models.loading import resolve_source

    source = resolve_source(cfg.model.name, cfg.model.gguf_file)
    return {"name": cfg.model.name, "gguf_file": cfg.model.gguf_file, "revision": cfg.model.revision,
            "files": files_digest(source.path)}


def _data_identity(cfg: Any, problems: list[Any]) -> dict[str, Any]:
    data = {k: v for k, v in cfg.data.model_dump(mode="json").items() if k not in DATA_KEYS_OF_LOCATION}
    return {**data, "n": len(problems), "problems": problems_digest(problems)}


def train_fingerprint(cfg: Any, train_problems: list[Any]) -> dict[str, Any]:
    train = {k: v for k, v in cfg.train.model_dump(mode="json").items() if k not in TRAIN_KEYS_OF_SPEED}
    return {"kind": "train", "model": _model_identity(cfg), "method": cfg.method.model_dump(mode="json"),
            "prompt": cfg.prompt.model_dump(mode="json"), "data": _data_identity(cfg, train_problems),
            "train": train, "mathtune": __version__}


def eval_fingerprint(cfg: Any, problems: list[Any], adapter_dir: Path | None) -> dict[str, Any]:
    settings = cfg.eval.model_dump(mode="json")
    generation = {key: settings[key] for key in ("split", "max_new_tokens", "stop", "dtype", "calculator",
                                                 "samples", "perturbed", "perplexity", "text_metrics")}
    if cfg.eval.int8_decode:  # other weights' numerics (old fingerprints stay as they were)
        generation["int8_decode"] = True
    if cfg.eval.repetition_stop:  # other outputs for looping rows (old fingerprints stay as they were)
        generation["repetition_stop"] = [cfg.eval.repetition_stop, cfg.eval.repetition_min_tokens]
    if cfg.eval.backend != "hf":  # another engine: other numerics (old fingerprints stay as they were)
        generation["backend"] = cfg.eval.backend
        generation["gguf"] = files_digest(cfg.eval.gguf)
    if cfg.eval.samples > 1:
        from mathtune.evaluate.decoding import SAMPLER

        generation["temperature"] = settings["temperature"]
        generation["sampler"] = SAMPLER  # other draws, same distribution: not mixed into these samples
    if cfg.eval.vote != "none":  # per-problem seeded samples voted on (recipes/evaluate.py)
        generation |= {"vote": cfg.eval.vote, "sample_seed": settings["sample_seed"], "top_p": settings["top_p"],
                       "verifier": files_digest(Path(cfg.eval.verifier) / "adapter") if cfg.eval.verifier else None}
    # A base model is loaded as its run's method loads it: only quantization changes what it is.
    from mathtune.methods.registry import method_class

    method = cfg.method.model_dump(mode="json") if adapter_dir is not None else (
        {"name": cfg.method.name, "bits": cfg.method.bits} if method_class(cfg.method.name).quantized else None)
    return {"kind": "eval", "model": _model_identity(cfg), "adapter": files_digest(adapter_dir),
            "method": method, "precision": cfg.eval_precision(),
            "prompt": cfg.prompt.model_dump(mode="json"), "data": _data_identity(cfg, problems),
            "generation": generation, "extractor": EXTRACTOR_VERSION, "mathtune": __version__}


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def first_difference(stored: dict[str, Any], current: dict[str, Any]) -> str | None:
    """'data.n: 200 -> 2' for the first key (in the current fingerprint's order) that differs."""
    old, new = (_flatten({k: v for k, v in tree.items() if k not in RECORD_ONLY_KEYS}) for tree in (stored, current))
    for key in [*new, *(k for k in old if k not in new)]:
        if old.get(key, "<absent>") != new.get(key, "<absent>"):
            shown = {"problems": "other problems", "files": "other files"}
            leaf = key.rsplit(".", 1)[-1]
            if leaf in shown and key in old and key in new:
                return f"{key}: {shown[leaf]}"
            return f"{key}: {old.get(key, '<absent>')!r} -> {new.get(key, '<absent>')!r}"
    return None


def read_fingerprint(directory: Path) -> dict[str, Any] | None:
    path = directory / FINGERPRINT_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


# What mathtune writes into run and eval dirs: a dir holding anything else is not one of ours.
MATHTUNE_NAMES = frozenset({
    FINGERPRINT_FILE, "config.yaml", "train_log.jsonl", "dev_log.jsonl", "tensorboard", "checkpoints", "adapter",
    "train_card.json", "run_card.json", "eval", "samples", "report", "comparison.md", "comparison.json",
    "comparison.png", "predictions.jsonl", "metrics.json", "lm_eval.json",
})


def check_fingerprint(directory: Path, current: dict[str, Any], what: str, advice: str) -> None:
    """Refuse to continue `directory` if it holds the results of something else.

    A directory without a fingerprint but with results (written before fingerprints existed, or by
    hand) is refused too: nothing says what produced it."""
    stored = read_fingerprint(directory)
    if stored is None:
        if (directory / "predictions.jsonl").is_file() or (directory / "checkpoints").is_dir():
            raise MathtuneError(f"{directory} holds {what} with no record of what produced them; {advice}")
        foreign = sorted(entry.name for entry in directory.iterdir() if not entry.name.startswith(".")
                         and entry.name not in MATHTUNE_NAMES) if directory.is_dir() else []
        if foreign:  # resumed or adopted, these would be mixed with (or trained over) the new results
            raise MathtuneError(f"{directory} holds files mathtune did not write ({', '.join(foreign[:3])}"
                                f"{', ...' if len(foreign) > 3 else ''}) and no {what} to continue; "
                                "-o a new or empty directory, or pass --overwrite to replace it")
        return
    difference = first_difference(stored, current)
    if difference:
        launches = ""
        written_by, launched = stored.get("processes", 1), current.get("processes", 1)
        if written_by != launched:
            launches = f", written by {written_by} processes, this launch has {launched}"
        raise MathtuneError(f"{directory} holds {what} of different settings ({difference}{launches}); {advice}")


def write_fingerprint(directory: Path, fingerprint: dict[str, Any]) -> None:
    from mathtune.io import atomic_write_json

    atomic_write_json(directory / FINGERPRINT_FILE, fingerprint)


def export_fingerprint(cfg: Any, adapter_dir: Path, fmt: str, quant: str | None) -> dict[str, Any]:
    """What an exported model is: the base model, the tuned weights (a hash of the run's adapter dir),
    the method and prompt it was tuned with, and the format and quantization it was written in."""
    return {"kind": "export", "model": _model_identity(cfg), "adapter": files_digest(adapter_dir),
            "method": cfg.method.model_dump(mode="json"), "prompt": cfg.prompt.model_dump(mode="json"),
            "format": fmt, "quant": quant, "mathtune": __version__}
