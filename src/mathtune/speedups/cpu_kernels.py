"""Builds `cpu_kernels.c` with the machine's C compiler on first use and calls it through ctypes.

The build (`cc -O3 -march=native -fopenmp`, under a second) goes to a cache directory named by the
hash of the source, flags, compiler and CPU, written to a temporary file and renamed, so processes
that build at once (DDP ranks) do not read a half-written library. Without a compiler, on another
OS, or when the build or load fails, `load_cpu_kernels` returns None (with one warning) and callers
run the same math in torch ops: the masks are the same either way (tests/training/test_cpu_kernels.py).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("cpu_kernels.c")
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC")
CACHE_ENV = "MATHTUNE_KERNEL_CACHE"
KERNELS_ATTRIBUTE = "mathtune_cpu_kernels"  # where a module that may use the kernels holds them (or None)


class CpuKernels:
    """Typed wrappers around the library's functions; tensors must be CPU and contiguous."""

    def __init__(self, library: ctypes.CDLL) -> None:
        i64, u64, i32, ptr = ctypes.c_int64, ctypes.c_uint64, ctypes.c_int32, ctypes.c_void_p
        flag = ctypes.c_int  # the last argument of each: the thread count torch uses
        library.keep_mask.argtypes = [ptr, i64, u64, i32, flag]
        library.lora_a_forward.argtypes = [ptr, ptr, ptr, i64, i64, i64, u64, i32, flag, flag]
        library.lora_a_backward.argtypes = [ptr, ptr, ptr, ptr, ptr, i64, i64, i64, u64, i32, flag, flag]
        library.lora_a_forward.restype = library.lora_a_backward.restype = ctypes.c_int  # 1: out of memory
        library.silu_mul_forward.argtypes = [ptr, ptr, ptr, i64, flag]
        library.silu_mul_backward.argtypes = [ptr, ptr, ptr, ptr, ptr, i64, flag]
        library.rms_norm_forward.argtypes = [ptr, ptr, ptr, ptr, i64, i64, ctypes.c_float, flag]
        library.rms_norm_backward.argtypes = [ptr, ptr, ptr, ptr, ptr, i64, i64, flag]
        self.library = library

    def __deepcopy__(self, memo: dict) -> CpuKernels:  # a model copy shares the loaded library
        return self

    def __reduce__(self) -> tuple:  # and a pickled model loads it again
        return load_cpu_kernels, ()

    def keep_mask(self, count: int, seed: int, low: int) -> torch.Tensor:
        keep = torch.empty(count, dtype=torch.bool)
        self.library.keep_mask(keep.data_ptr(), count, seed, low, torch.get_num_threads())
        return keep

    def lora_a_forward(self, x: torch.Tensor, a: torch.Tensor, seed: int, low: int | None) -> torch.Tensor:
        """x [rows, in] bf16, a [rank, in] float32 -> float32 [rows, rank] of dropout(x) @ a.T (low None: no mask)."""
        rows, width = x.shape
        out = torch.empty(rows, a.shape[0], dtype=torch.float32)
        _check(self.library.lora_a_forward(x.data_ptr(), a.data_ptr(), out.data_ptr(), rows, width, a.shape[0],
                                           seed, low or 0, low is not None, torch.get_num_threads()))
        return out

    def lora_a_backward(self, x: torch.Tensor, a: torch.Tensor, grad: torch.Tensor, seed: int, low: int | None,
                        want_x: bool, want_a: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The gradients of `lora_a_forward` for its float32 output gradient: x's as bf16, a's as float32."""
        rows, width = x.shape
        grad_x = torch.empty(rows, width, dtype=torch.bfloat16) if want_x else None
        grad_a = torch.empty(a.shape, dtype=torch.float32) if want_a else None
        _check(self.library.lora_a_backward(x.data_ptr(), a.data_ptr(), grad.data_ptr(), _pointer(grad_x),
                                            _pointer(grad_a), rows, width, a.shape[0], seed, low or 0, low is not None,
                                            torch.get_num_threads()))
        return grad_x, grad_a

    def silu_mul_forward(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """silu(gate) * up for contiguous bf16 tensors of one shape."""
        out = torch.empty_like(gate)
        self.library.silu_mul_forward(gate.data_ptr(), up.data_ptr(), out.data_ptr(), gate.numel(),
                                      torch.get_num_threads())
        return out

    def silu_mul_backward(self, grad: torch.Tensor, gate: torch.Tensor,
                          up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        grad_gate, grad_up = torch.empty_like(gate), torch.empty_like(up)
        self.library.silu_mul_backward(grad.data_ptr(), gate.data_ptr(), up.data_ptr(), grad_gate.data_ptr(),
                                       grad_up.data_ptr(), gate.numel(), torch.get_num_threads())
        return grad_gate, grad_up

    def rms_norm_forward(self, x: torch.Tensor, weight: torch.Tensor,
                         eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        """RMSNorm of contiguous bf16 x over its last dim, with a bf16 weight: (output, float32 1/rms per row)."""
        width = weight.shape[0]
        out, rstd = torch.empty_like(x), torch.empty(*x.shape[:-1], 1, dtype=torch.float32)
        self.library.rms_norm_forward(x.data_ptr(), weight.data_ptr(), out.data_ptr(), rstd.data_ptr(),
                                      x.numel() // width, width, eps, torch.get_num_threads())
        return out, rstd

    def rms_norm_backward(self, grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                          rstd: torch.Tensor) -> torch.Tensor:
        width = weight.shape[0]
        grad_x = torch.empty_like(x)
        self.library.rms_norm_backward(grad.data_ptr(), x.data_ptr(), weight.data_ptr(), rstd.data_ptr(),
                                       grad_x.data_ptr(), x.numel() // width, width, torch.get_num_threads())
        return grad_x


def _check(status: int) -> None:
    if status:
        raise MemoryError("mathtune CPU kernels: out of memory for their scratch buffers")


def _pointer(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


@functools.cache
def load_cpu_kernels() -> CpuKernels | None:
    """The built kernels, or None where they cannot be built or loaded here (a warning says why)."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "aarch64"):
        return None
    compiler = shlex.split(os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or "")
    if not compiler:
        warnings.warn("mathtune: no C compiler found; CPU kernels off, torch ops used instead", stacklevel=2)
        return None
    try:
        library = _build(compiler)
        try:
            return CpuKernels(ctypes.CDLL(str(library)))
        except OSError:  # a cached library that no longer loads (a changed system): build it once more
            library.unlink(missing_ok=True)
            return CpuKernels(ctypes.CDLL(str(_build(compiler))))
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        warnings.warn(f"mathtune: CPU kernels not built ({first_line}); torch ops used instead", stacklevel=2)
        return None


def _build(compiler: list[str]) -> Path:
    version = subprocess.run([*compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    key = hashlib.sha256("\n".join([SOURCE.read_text(), " ".join(FLAGS), version, _cpu_flags()]).encode())
    cache = Path(os.environ.get(CACHE_ENV) or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                 / "mathtune" / "kernels")
    library = cache / f"cpu_kernels-{key.hexdigest()[:16]}.so"
    if library.exists():
        return library
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as scratch:
        built = Path(scratch) / library.name
        result = subprocess.run([*compiler, *FLAGS, "-o", str(built), str(SOURCE)], capture_output=True, text=True,
                                timeout=300)
        if result.returncode != 0:
            raise subprocess.SubprocessError(result.stderr.strip() or f"{compiler[0]} exited with {result.returncode}")
        os.replace(built, library)
    return library


def _cpu_flags() -> str:
    """The CPU's feature flags: a library built with -march=native elsewhere may not run here."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    return next((line for line in info.splitlines() if line.startswith(("flags", "Features"))), "")
