"""mimalloc as the process's heap allocator for CPU training, preloaded by re-executing the command.

Why: glibc malloc leaves holes between the tensors autograd keeps for backward, and every
micro-batch longer than the ones before grows the heap again: a 20-step LoRA run on SmolLM2-135M
peaked at 1,922-1,967 MB under glibc and at 1,645-1,651 MB under mimalloc, at the same speed within
noise (docs/performance.md). Purging is off (`MIMALLOC_PURGE_DELAY=-1`): freed pages stay with the
process and are reused; with mimalloc's default 10 ms purge the run was 10 % slower.
The re-executed process also caps oneDNN's primitive cache at 64 entries (ONEDNN_PRIMITIVE_CACHE_CAPACITY;
default 1,024): a 50-step LoRA run then peaked at 1,533-1,555 MB instead of 1,796-1,824, at the same
speed within noise (docs/performance.md).

How: an allocator has to be in place before the first allocation, so `mathtune train` / `run`
re-execute themselves once with `LD_PRELOAD` set, as PyTorch's CPU launcher
(`python -m torch.backends.xeon.run_cpu`) does for jemalloc and tcmalloc. mimalloc comes from the
`cmeel-mimalloc` wheel on Linux; elsewhere, or with `train.allocator=system`, nothing changes.
"""

from __future__ import annotations

import os
import sys
from importlib import metadata
from pathlib import Path

ACTIVE_MARKER = "MATHTUNE_ALLOCATOR"  # set in the re-executed process, so it never re-executes again
LIBRARY_NAME = "libmimalloc.so"
# oneDNN (PyTorch's bf16 matmuls on CPU) keeps every matmul primitive it built, up to 1,024, each
# holding memory; packed rows give each step new shapes, so that cache grew the heap step after step.
# 64 holds a few steps' shapes (a LoRA step on SmolLM2 runs 17 distinct matmul shapes) and lets older
# steps' go.
PRIMITIVE_CACHE, PRIMITIVE_CACHE_ENTRIES = "ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64"


def mimalloc_library() -> Path | None:
    """The shared library shipped by the `cmeel-mimalloc` wheel, if installed (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        files = metadata.distribution("cmeel-mimalloc").files or []
    except metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name == LIBRARY_NAME:
            path = Path(file.locate())
            return path if path.is_file() else None
    return None


def allocator_environment(choice: str, environ: dict[str, str]) -> dict[str, str] | None:
    """The environment to re-execute with (the allocator's settings and oneDNN's cache cap), or None
    when there is nothing to do."""
    if choice != "mimalloc" or environ.get(ACTIVE_MARKER):
        return None
    library = mimalloc_library()
    if library is None:
        return None
    preload = " ".join(filter(None, [str(library), environ.get("LD_PRELOAD", "")]))
    return {**environ, "LD_PRELOAD": preload, "MIMALLOC_PURGE_DELAY": environ.get("MIMALLOC_PURGE_DELAY", "-1"),
            PRIMITIVE_CACHE: environ.get(PRIMITIVE_CACHE, PRIMITIVE_CACHE_ENTRIES), ACTIVE_MARKER: "mimalloc"}


def reexec_with_allocator(choice: str, program: tuple[str, ...] = ("-m", "mathtune")) -> None:
    """Replace this process by `python <program> <same arguments>` under the chosen allocator."""
    env = allocator_environment(choice, dict(os.environ))
    if env is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *program, *sys.argv[1:]], env)


def reexecuted() -> bool:
    """Whether this process is the one `reexec_with_allocator` started (tests set the marker to
    "system" to stay in-process, which does not count)."""
    return os.environ.get(ACTIVE_MARKER) == "mimalloc"


def active_allocator() -> str:
    """What this process allocates with: 'mimalloc' if its library is mapped, else 'system'."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "system"
    return "mimalloc" if "libmimalloc" in maps else "system"
