"""Provenance for every output: versions, git commit, host, peak memory."""

from __future__ import annotations

import platform
import resource
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("mathtune", "torch", "transformers", "peft", "accelerate", "datasets", "lm_eval")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                           text=True, timeout=5, cwd=Path(__file__).resolve().parent).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_cuda_mb() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def provenance() -> dict[str, Any]:
    return {
        "versions": library_versions(),
        "git_commit": git_commit(),
        "host": {"machine": platform.machine(), "processor": platform.processor(), "system": platform.system()},
    }
