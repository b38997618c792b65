"""Our decoding loop: batch-size invariant, same as `generate`, calculator insertion, majority voting."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import STOP, gsm8k_requests

from mathtune.config import build_config
from mathtune.evaluate.decoding import _advance, _Row, calculator_tokens, majority_vote
from mathtune.evaluate.extraction import numbers_equal
from mathtune.evaluate.generation import GenerationRequest, HFBackend


def test_greedy_does_not_depend_on_batch_size(llama, data_dir):
    model, tokenizer = llama
    requests = gsm8k_requests(data_dir)
    one = HFBackend(model, tokenizer, torch.device("cpu"), False, 1).generate(requests)
    eight = HFBackend(model, tokenizer, torch.device("cpu"), False, 8).generate(requests)
    assert one == eight
    assert any(g.new_tokens > 1 for g in one)


def test_greedy_loop_matches_transformers_generate(llama, data_dir):
    model, tokenizer = llama
    requests = gsm8k_requests(data_dir, count=4, max_new=12)
    ours = HFBackend(model, tokenizer, torch.device("cpu"), False, 4).generate(requests)
    for request, generation in zip(requests, ours, strict=True):
        encoded = tokenizer(request.prompt, return_tensors="pt")
        out = model.generate(**encoded, do_sample=False, max_new_tokens=12, pad_token_id=tokenizer.pad_token_id)
        text = tokenizer.decode(out[0, encoded["input_ids"].shape[1]:], skip_special_tokens=True)
        for stop in request.stop:
            text = text.split(stop)[0]
        assert generation.text == text


def test_sampling_is_seeded(llama, data_dir):
    model, tokenizer = llama
    backend = HFBackend(model, tokenizer, torch.device("cpu"), False, 4)
    requests = gsm8k_requests(data_dir, count=4)
    first = backend.generate(requests, sample=True, temperature=1.0, seed=7)
    assert first == backend.generate(requests, sample=True, temperature=1.0, seed=7)
    assert first != backend.generate(requests)  # sampled, not greedy
    assert first != backend.generate(requests, sample=True, temperature=1.0, seed=8)


@pytest.mark.parametrize(("written", "inserted"), [("3 + 4 = <<3+4=", "7>>"), ("<<48/2=", "24>>"),
                                                   ("<<1/3=", "0.333333>>"), ("so 5 = 5", None)])
def test_calculator_forces_the_result_after_an_open_annotation(llama, written, inserted):
    _, tokenizer = llama
    row = _Row(0, ("Question:",), 100, calculator=True)
    for token in tokenizer.encode(written, add_special_tokens=False):
        assert _advance(row, token, tokenizer, eos=set()) is not None
        if row.forced:
            break
    forced = tokenizer.decode(row.forced) if row.forced else None
    assert forced == inserted
    if inserted:  # the forced tokens are fed next, whatever the model would pick
        fed = [_advance(row, 0, tokenizer, eos=set()) for _ in range(len(row.forced))]
        assert tokenizer.decode(fed) == inserted
        assert tokenizer.decode(row.tokens).endswith(written.split("<<")[-1] + inserted)
        assert row.calls == 1


def test_a_negative_result_is_computed_when_its_sign_came_with_the_equals_token(llama):
    """SmolLM2's vocabulary holds `=-`: the model writes `<<5-33=-` and the text never ends in a bare
    `=`. The calculator still writes the result; with `=` and `-` apart it writes the sign itself."""
    import copy

    _, plain = llama
    merged = copy.deepcopy(plain)
    merged.add_tokens(["=-"])
    for tokenizer, inserted in ((merged, "28>>"), (plain, "-28>>")):
        written = tokenizer.encode("<<5-33=-", add_special_tokens=False)
        row = _Row(0, ("Question:",), 100, calculator=True)
        for token in written:
            _advance(row, token, tokenizer, eos=set())
            if row.forced:
                break
        assert tokenizer.decode(row.forced) == inserted
        for _ in range(len(row.forced)):
            _advance(row, 0, tokenizer, eos=set())
        assert tokenizer.decode(row.tokens).endswith("5-33=-28>>") and row.calls == 1


def test_calculator_refuses_what_is_not_arithmetic(llama):
    _, tokenizer = llama
    assert calculator_tokens(tokenizer, "<<9**9**9=") == []
    assert calculator_tokens(tokenizer, "<<x=") == []


def test_calculator_decoding_runs_batched_on_a_tiny_model(llama, data_dir):
    model, tokenizer = llama
    backend = HFBackend(model, tokenizer, torch.device("cpu"), False, 4)
    with_calc = backend.generate(gsm8k_requests(data_dir, count=4, calculator=True))
    plain = backend.generate(gsm8k_requests(data_dir, count=4))
    for a, b in zip(with_calc, plain, strict=True):
        assert a.calculator_calls > 0 or a.text == b.text  # no annotation written: nothing changes


def test_majority_vote():
    assert majority_vote([3.0, 5.0, 3.0, None]) == 3.0
    assert majority_vote([5.0, 3.0]) == 5.0  # a tie goes to the first seen
    assert majority_vote([None, None]) is None
    assert majority_vote([0.1 + 0.2, 0.3, 7.0], numbers_equal) == pytest.approx(0.3)
    assert math.isclose(majority_vote([2.0, 1.0, 1.0000000001], numbers_equal), 1.0)


def test_self_consistency_reports_maj_at_k_beside_greedy(tiny_models, data_dir, tmp_path):
    from mathtune.evaluate.backend import build_backend
    from mathtune.recipes.evaluate import evaluate

    cfg = build_config({"model": {"name": str(tiny_models["llama"])}, "data": {"data_dir": str(data_dir)},
                        "eval": {"num_problems": 3, "batch_size": 4, "max_new_tokens": 8, "dtype": "fp32",
                                 "perplexity": False, "samples": 3, "calculator": True}})
    backend, meta = build_backend(cfg)
    metrics = evaluate(cfg, backend, tmp_path, "base", backend.tokenizer, meta, show_progress=False)
    assert set(metrics["self_consistency"]) == {"maj@3"}
    assert metrics["self_consistency"]["maj@3"]["n"] == 3
    assert "numeric-match" in metrics["scores"]
    assert metrics["reproducibility"]["generation"]["calculator"] is True


@pytest.mark.parametrize("arch", ["llama", "phi"])
def test_packed_prefill_equals_padded_prefill(arch, tiny_models, data_dir):
    """The padding-free prefill gives the padded prefill's next-token logits and a KV cache that
    decodes to the same text (fp32), on prompts of unequal length."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mathtune.evaluate import decoding
    from mathtune.speedups.attention import use_varlen_sdpa

    tokenizer = AutoTokenizer.from_pretrained(tiny_models[arch])
    model = AutoModelForCausalLM.from_pretrained(tiny_models[arch], dtype=torch.float32)
    shots = [r.prompt + " 4 + 5 = 9\n#### 9" for r in gsm8k_requests(data_dir, count=4)]
    requests = [GenerationRequest("\n\n".join(shots[:k] + [r.prompt]), STOP, 20)  # 0..4-shot: unequal lengths
                for k, r in enumerate(gsm8k_requests(data_dir, count=5))]
    prompts = [r.prompt for r in requests]
    assert len({len(tokenizer(p)["input_ids"]) for p in prompts}) > 1
    use_varlen_sdpa(model)
    assert decoding.packed_prefill_supported(model)
    cpu = torch.device("cpu")
    with torch.inference_mode():
        packed_logits, _, packed_mask, packed_pos = decoding.prefill_packed(model, tokenizer, prompts, cpu)
        padded_logits, _, padded_mask, padded_pos = decoding.prefill_padded(model, tokenizer, prompts, cpu)
    torch.testing.assert_close(packed_logits, padded_logits, atol=1e-4, rtol=1e-4)
    assert torch.equal(packed_mask, padded_mask) and torch.equal(packed_pos, padded_pos)
    packed = HFBackend(model, tokenizer, torch.device("cpu"), False, 5).generate(requests)
    original = decoding.packed_prefill_supported
    decoding.packed_prefill_supported = lambda _model: False
    try:
        padded = HFBackend(model, tokenizer, torch.device("cpu"), False, 5).generate(requests)
    finally:
        decoding.packed_prefill_supported = original
    assert packed == padded
    assert any(g.new_tokens > 1 for g in packed)


@pytest.mark.parametrize("arch", ["llama", "phi"])
def test_a_common_prefix_prefilled_once_decodes_as_the_whole_prompts_do(arch, tiny_models, data_dir):
    """Fixed few-shot examples before every question (lm-eval's gsm8k_cot): the shared tokens are
    prefilled once and the questions on top; logits and greedy text equal the unshared prefill's (fp32)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mathtune.evaluate import decoding
    from mathtune.speedups.attention import use_varlen_sdpa

    tokenizer = AutoTokenizer.from_pretrained(tiny_models[arch])
    model = AutoModelForCausalLM.from_pretrained(tiny_models[arch], dtype=torch.float32)
    use_varlen_sdpa(model)
    shots = "\n\n".join(r.prompt + " 4 + 5 = 9\n#### 9" for r in gsm8k_requests(data_dir, count=3))
    requests = [GenerationRequest(shots + "\n\n" + r.prompt.replace("\nAnswer:", " Why?" * i + "\nAnswer:"), STOP, 20)
                for i, r in enumerate(gsm8k_requests(data_dir, count=8)[3:])]  # questions of unequal length
    prompts = [r.prompt for r in requests]
    ids, common = decoding.common_prefix_ids(tokenizer, prompts)
    assert common >= decoding.SHARED_PREFIX_MIN_TOKENS and len({len(x) for x in ids}) > 1
    cpu = torch.device("cpu")
    with torch.inference_mode():
        shared_logits, *_ = decoding.prefill_common_prefix(model, tokenizer, ids, common, cpu)
        padded_logits, *_ = decoding.prefill_padded(model, tokenizer, prompts, cpu)
    torch.testing.assert_close(shared_logits, padded_logits, atol=1e-4, rtol=1e-4)
    backend = HFBackend(model, tokenizer, cpu, False, 8)
    shared = backend.generate(requests)
    backend.share_common_prefix = False
    assert backend.generate(requests) == shared
    assert any(g.new_tokens > 1 for g in shared)


@pytest.mark.parametrize("arch", ["llama", "phi"])
def test_the_in_place_cache_decodes_exactly_as_transformers_dynamic_cache(tiny_models, data_dir, monkeypatch, arch):
    """GrowingLayer (writes each step in place) against DynamicLayer (concatenates): the same greedy
    and sampled tokens, through shared-prefix expansion, rows leaving the batch and buffer growth."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

    import mathtune.evaluate.decoding as decoding
    from mathtune.evaluate.kv_cache import GrowingLayer

    model = AutoModelForCausalLM.from_pretrained(tiny_models[arch], dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_models[arch])
    assert all(isinstance(layer, GrowingLayer) for layer in decoding._new_cache(model).layers)
    import dataclasses

    # caps of 9, 24 and 40 new tokens: rows leave the batch at different steps, the buffer grows twice
    requests = [dataclasses.replace(request, max_new_tokens=cap)
                for request, cap in zip(gsm8k_requests(data_dir, count=3), (9, 24, 40), strict=True)]

    def decode(backend):
        return (backend.generate(requests), backend.sample(requests, ["a", "b", "c"], 4, seed=5))

    growing = decode(HFBackend(model, tokenizer, torch.device("cpu"), False, 12))
    monkeypatch.setattr(decoding, "_new_cache", lambda model: DynamicCache(config=model.config))
    concatenating = decode(HFBackend(model, tokenizer, torch.device("cpu"), False, 12))
    assert growing == concatenating
    assert {g.new_tokens for g in growing[0]} == {9, 24, 40}
