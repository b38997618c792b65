"""The llama.cpp backend (evaluate/llama_cpp_backend.py) on a tiny Llama exported to GGUF: its loop
reads llama.cpp's logits right (greedy equals llama.cpp's own greedy generation), its multi-sequence
batch decodes as one sequence at a time, and the config/CLI refuse what it cannot do.

Skipped where llama-cpp-python is not installed (it builds from source: CI does not install it)."""

from __future__ import annotations

import pytest
import torch
from helpers import gsm8k_requests

from mathtune.config import build_config
from mathtune.evaluate.generation import GenerationRequest

llama_cpp = pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def tiny_gguf(tiny_models, tmp_path_factory):
    from transformers import AutoModelForCausalLM

    from mathtune.models.gguf_export import write_gguf

    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"], dtype=torch.float32).eval()
    path = tmp_path_factory.mktemp("gguf") / "tiny.f16.gguf"
    write_gguf(model, tiny_models["llama"], path, "f16", name="tiny-llama")
    return path


def test_greedy_equals_llama_cpps_own_greedy(tiny_gguf, data_dir):
    from mathtune.evaluate.llama_cpp_backend import LlamaCppBackend

    backend = LlamaCppBackend(tiny_gguf, threads=1, context=512)
    requests = [GenerationRequest(r.prompt, (), 12) for r in gsm8k_requests(data_dir, count=3)]
    ours = backend.generate(requests)
    for request, generation in zip(requests, ours, strict=True):
        llm = backend.llm
        llm.reset()
        ids = backend.tokenizer.prompt_ids(request.prompt)
        theirs = []
        for token in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0):
            if token in backend.eos or len(theirs) == 12:
                break
            theirs.append(token)
        assert generation.text == backend.tokenizer.decode(theirs)
        assert generation.new_tokens == len(theirs)
    backend.close()


def test_several_sequences_decode_as_one_at_a_time(tiny_gguf, data_dir):
    """The multi-sequence batch refills slots as rows finish (caps 3..15 tokens, a stop string)."""
    from mathtune.evaluate.llama_cpp_backend import LlamaCppBackend

    requests = [GenerationRequest(r.prompt, ("\n\n",) if i % 2 else (), 3 + 2 * i)
                for i, r in enumerate(gsm8k_requests(data_dir, count=7))]
    one = LlamaCppBackend(tiny_gguf, threads=1, context=512)
    alone = one.generate(requests)
    one.close()
    many = LlamaCppBackend(tiny_gguf, threads=1, context=512, parallel=3)
    together = many.generate(requests)
    many.close()
    assert [g.new_tokens for g in together] == [g.new_tokens for g in alone]
    # a different batch may change llama.cpp's float rounding; on this tiny model the texts agree
    assert sum(a.text == b.text for a, b in zip(alone, together, strict=True)) >= len(requests) - 1


def test_config_refuses_perplexity_and_a_run_without_gguf(tmp_path):
    from mathtune.errors import MathtuneError
    from mathtune.evaluate.backend import build_backend

    with pytest.raises(Exception, match="scores no perplexity"):
        build_config({"eval": {"backend": "llama-cpp"}})
    cfg = build_config({"model": {"name": "some/model"}, "eval": {"backend": "llama-cpp", "perplexity": False}})
    (tmp_path / "adapter").mkdir()
    with pytest.raises(MathtuneError, match="mathtune export"):
        build_backend(cfg, tmp_path / "adapter")
