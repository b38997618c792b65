"""A generation backend on llama.cpp (through `llama-cpp-python`) for a GGUF model.

Why: on a CPU, one sequence at a time (the app's Solve tab, and every batch's tail in PyTorch) is
bound by a decoding step's fixed cost, which llama.cpp keeps far below PyTorch eager's
(docs/performance.md, `benchmarks/generation_speed.py`). The decoding rules are mathtune's own:
the same `_Row`/`_advance` as the PyTorch loop (stop strings checked on the decoded tail, EOS, the
token cap, calculator results forced token by token), so only the engine differs. Greedy picks the
arg-max of llama.cpp's logits; sampling draws from the softmax of them with a per-request seed.

`parallel` > 1 decodes several sequences per `llama_decode` call (llama.cpp's multi-sequence batch:
one KV-cache sequence per slot), refilling a slot with the next prompt as soon as its row finishes.

Optional: `pip install llama-cpp-python` (it builds llama.cpp from source, ~15-35 minutes on 2 cores).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mathtune.errors import MathtuneError
from mathtune.evaluate.decoding import _advance, _Row, sampling_probs
from mathtune.evaluate.generation import Generation, GenerationRequest, cut_at_stop

INSTALL_HINT = "pip install llama-cpp-python (builds llama.cpp from source: ~15-35 minutes on 2 cores)"


def import_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as exc:
        raise MathtuneError(f"eval.backend llama-cpp needs llama-cpp-python: {INSTALL_HINT}") from exc
    return llama_cpp


class LlamaCppTokenizer:
    """llama.cpp's own tokenizer behind the two calls the decoding rules make (`decode`, `encode`)."""

    def __init__(self, llm: Any) -> None:
        self.llm = llm

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.llm.detokenize(list(ids), special=not skip_special_tokens).decode("utf-8", errors="replace")

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_special_tokens, special=False)

    def prompt_ids(self, prompt: str) -> list[int]:
        """A prompt's ids: BOS only where the model's metadata asks for it, special tokens (a chat
        template's) parsed as such — as transformers' tokenizer of the same model does."""
        return self.llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)


class LlamaCppBackend:
    """`generate(requests)` on a GGUF file; `target_nll` is not offered (turn eval.perplexity off)."""

    def __init__(self, gguf_path: str | Path, *, threads: int | None = None, context: int = 2048,
                 parallel: int = 1) -> None:
        llama_cpp = import_llama_cpp()
        path = Path(gguf_path)
        if not path.is_file():
            raise MathtuneError(f"GGUF file not found: {path}")
        self.threads = threads or len(os.sched_getaffinity(0))
        self.parallel = max(1, parallel)
        self.context = context
        with _model_params(use_extra_bufts=extra_buffers_work(path, self.threads)):
            self.llm = llama_cpp.Llama(
                model_path=str(path), n_ctx=context * self.parallel, n_batch=512, n_threads=self.threads,
                n_threads_batch=self.threads, verbose=False)
        if self.parallel > 1:
            self._raise_sequences(llama_cpp)
        self.tokenizer = LlamaCppTokenizer(self.llm)
        self.eos = {self.llm.token_eos()}
        self.n_vocab = self.llm.n_vocab()
        self.path = path

    def _raise_sequences(self, llama_cpp: Any) -> None:
        """llama-cpp-python's `Llama` makes a one-sequence context; a multi-sequence one is remade
        with the same parameters and `n_seq_max` slots sharing one KV cache."""
        from llama_cpp import _internals as internals

        params = self.llm.context_params
        params.n_seq_max = self.parallel
        params.kv_unified = True
        self.llm._ctx = self.llm._stack.enter_context(
            contextlib.closing(internals.LlamaContext(model=self.llm._model, params=params, verbose=False)))
        self._llama_cpp = llama_cpp

    def generate(self, requests: list[GenerationRequest], *, sample: bool = False, temperature: float = 1.0,
                 seed: int = 0) -> list[Generation]:
        for request in requests:
            if request.max_new_tokens + 8 > self.context:
                raise MathtuneError(f"llama-cpp backend: a {request.max_new_tokens}-token cap does not fit its "
                                    f"{self.context}-token context")
        if self.parallel > 1:
            return self._generate_parallel(requests, sample, temperature, seed)
        return [self._generate_one(request, sample, temperature, seed + index)
                for index, request in enumerate(requests)]

    def _generate_one(self, request: GenerationRequest, sample: bool, temperature: float, seed: int) -> Generation:
        llm = self.llm
        ids = self.tokenizer.prompt_ids(request.prompt)
        if len(ids) + request.max_new_tokens > self.context:
            raise MathtuneError(f"llama-cpp backend: a {len(ids)}-token prompt plus its cap exceeds the "
                                f"{self.context}-token context (set eval.llama_cpp_context)")
        llm.reset()
        llm.eval(ids)
        row = _Row(0, request.stop, request.max_new_tokens, request.calculator, request.loop_stop)
        rng = np.random.default_rng(seed) if sample else None
        while True:
            logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(self.n_vocab,))
            token = _advance(row, self._choose(logits, rng, temperature), self.tokenizer, self.eos)
            if token is None:
                break
            llm.eval([token])
        return self._generation(row, request)

    def _generate_parallel(self, requests: list[GenerationRequest], sample: bool, temperature: float,
                           seed: int) -> list[Generation]:
        """Continuous batching in llama.cpp: each slot is a KV-cache sequence; a finished row's
        sequence is cleared and the next prompt prefilled into it."""
        lib = self._llama_cpp
        ctx = self.llm._ctx.ctx
        memory = lib.llama_get_memory(ctx)
        batch = lib.llama_batch_init(max(self.llm.n_batch, self.parallel), 0, self.parallel)
        rows = [_Row(i, r.stop, r.max_new_tokens, r.calculator, r.loop_stop) for i, r in enumerate(requests)]
        rngs = [np.random.default_rng(seed + i) if sample else None for i in range(len(requests))]
        pending = list(range(len(requests)))[::-1]
        slots: list[int | None] = [None] * self.parallel
        positions = [0] * self.parallel
        feed: dict[int, list[int]] = {}  # slot -> tokens to decode in the next call
        try:
            lib.llama_memory_clear(memory, True)
            while True:
                for slot in range(self.parallel):
                    if slots[slot] is None and pending:
                        index = pending.pop()
                        ids = self.tokenizer.prompt_ids(requests[index].prompt)
                        if len(ids) + requests[index].max_new_tokens > self.context:
                            raise MathtuneError(f"llama-cpp backend: a {len(ids)}-token prompt plus its cap "
                                                f"exceeds the {self.context}-token context")
                        lib.llama_memory_seq_rm(memory, slot, -1, -1)
                        slots[slot], positions[slot], feed[slot] = index, 0, ids
                if not feed:
                    break
                outputs = self._decode(lib, ctx, batch, feed, positions)
                feed = {}
                for slot, output in outputs.items():
                    index = slots[slot]
                    logits = np.ctypeslib.as_array(lib.llama_get_logits_ith(ctx, output), shape=(self.n_vocab,))
                    token = _advance(rows[index], self._choose(logits, rngs[index], temperature), self.tokenizer,
                                     self.eos)
                    if token is None:
                        slots[slot] = None
                    else:
                        feed[slot] = [token]
                if not feed and not pending and all(s is None for s in slots):
                    break
        finally:
            lib.llama_batch_free(batch)
        return [self._generation(row, request) for row, request in zip(rows, requests, strict=True)]

    def _decode(self, lib: Any, ctx: Any, batch: Any, feed: dict[int, list[int]], positions: list[int]
                ) -> dict[int, int]:
        """`llama_decode` the fed tokens: the prompts' tokens but their last in calls of their own
        (no logits), then every slot's last token in one call; the output index of each slot."""
        head = [(slot, token, False) for slot, tokens in feed.items() for token in tokens[:-1]]
        last = [(slot, tokens[-1], True) for slot, tokens in feed.items()]
        limit = self.llm.n_batch  # llama_decode takes at most n_batch tokens per call
        outputs: dict[int, int] = {}
        for part in [head[i : i + limit] for i in range(0, len(head), limit)] + [last]:
            batch.n_tokens = len(part)
            for n, (slot, token, wanted) in enumerate(part):
                batch.token[n] = token
                batch.pos[n] = positions[slot]
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = slot
                batch.logits[n] = wanted
                positions[slot] += 1
                if wanted:
                    outputs[slot] = n
            if lib.llama_decode(ctx, batch) != 0:
                raise MathtuneError("llama-cpp backend: llama_decode failed (KV cache full? lower eval.batch_size)")
        return outputs

    def _choose(self, logits: np.ndarray, rng: np.random.Generator | None, temperature: float) -> int:
        if rng is None:
            return int(logits.argmax())
        import torch

        probs = sampling_probs(torch.from_numpy(logits.copy()).unsqueeze(0), temperature)[0].double().numpy()
        return int(rng.choice(len(probs), p=probs / probs.sum()))

    def _generation(self, row: _Row, request: GenerationRequest) -> Generation:
        text, stopped = cut_at_stop(self.tokenizer.decode(row.tokens), request.stop)
        truncated = not stopped and not row.hit_eos and (len(row.tokens) >= request.max_new_tokens or row.looped)
        return Generation(text, truncated, len(row.tokens), row.calls)

    def close(self) -> None:
        """Free llama.cpp's model and context now (its own finalizer fails at interpreter exit)."""
        self.llm.close()

    def target_nll(self, pairs: list[tuple[str, str]]) -> list[tuple[float, int]]:
        raise MathtuneError("the llama-cpp backend scores no perplexity: set -s eval.perplexity=false")


@contextlib.contextmanager
def _model_params(**fields: Any) -> Any:
    """llama-cpp-python's `Llama` takes no `use_extra_bufts`; set it on the default model params that
    its constructor asks for, for the duration of that call."""
    from llama_cpp import llama as llama_module

    lib = llama_module.llama_cpp
    default = lib.llama_model_default_params

    def patched() -> Any:
        params = default()
        for name, value in fields.items():
            setattr(params, name, value)
        return params

    lib.llama_model_default_params = patched
    try:
        yield
    finally:
        lib.llama_model_default_params = default


_PROBE = """
import sys
import llama_cpp
from mathtune.evaluate.llama_cpp_backend import _model_params
with _model_params(use_extra_bufts=True):
    llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=64, n_threads=int(sys.argv[2]), verbose=False)
llm.eval(llm.tokenize(b"Question: 1 + 1 = 2, and 3 + 4 = 7. Answer:", add_bos=True))
llm.eval(llm.tokenize(b" 7", add_bos=False))
"""


def extra_buffers_work(path: Path, threads: int) -> bool:
    """Whether llama.cpp's extra CPU buffer types (weights repacked for AMX or AVX kernels, its
    fastest CPU path) run on this machine. Some virtual machines report AMX but fault on its tile
    instructions (measured here: a general-protection fault in `ggml_backend_amx_mul_mat` with 2
    threads, not with 1), which kills the process; so a child process tries it once with the same
    threads, and the answer is cached per llama.cpp build, thread count and CPU."""
    import hashlib
    import subprocess
    import sys

    from mathtune.models.loading import cache_dir

    llama_cpp = import_llama_cpp()
    flags = Path("/proc/cpuinfo").read_text(errors="replace") if Path("/proc/cpuinfo").is_file() else ""
    key = hashlib.sha256(f"{llama_cpp.__version__}\0{threads}\0{flags}".encode()).hexdigest()[:16]
    record = cache_dir() / "llama_cpp" / f"extra_buffers-{key}"
    if record.is_file():
        return record.read_text() == "yes"
    child = subprocess.run([sys.executable, "-c", _PROBE, str(path), str(threads)], capture_output=True, timeout=300)
    works = child.returncode == 0
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text("yes" if works else "no")
    return works


def quantize_gguf(source: Path, target: Path, quant: str) -> Path:
    """Re-quantize a GGUF with llama.cpp's own quantizer (`llama_model_quantize`): f16, bf16, q8_0,
    q4_1 ... (`--allow-requantize` semantics, as the embedded model is Q4_1 already)."""
    llama_cpp = import_llama_cpp()
    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant.upper()}", None)
    if ftype is None:
        raise MathtuneError(f"unknown GGUF quantization '{quant}'")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.allow_requantize = True
    params.nthread = len(os.sched_getaffinity(0))
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    if llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(), ctypes.byref(params)) != 0:
        partial.unlink(missing_ok=True)
        raise MathtuneError(f"llama.cpp could not quantize {source} to {quant}")
    partial.replace(target)
    return target
