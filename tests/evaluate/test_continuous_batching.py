"""Continuous batching (evaluate/decoding.py): prompts join a running batch as rows finish, and every
row decodes exactly as it would alone — unequal prompt lengths, rows stopping at different steps
(stop strings, token caps), shared few-shot prefixes, packed prefill and seeded sampling."""

from __future__ import annotations

import pytest
import torch
from helpers import gsm8k_requests

from mathtune.evaluate import decoding
from mathtune.evaluate.generation import GenerationRequest, HFBackend


def _load(tiny_models, arch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models[arch])
    model = AutoModelForCausalLM.from_pretrained(tiny_models[arch], dtype=torch.float32).eval()
    return model, tokenizer


def _unequal_requests(data_dir, tokenizer, model, count: int = 10) -> list[GenerationRequest]:
    """Prompts of unequal length (0..3 worked examples before the question), caps from 6 to 33 tokens,
    and stop strings taken from each prompt's own output alone, so rows stop at different steps."""
    base = gsm8k_requests(data_dir, count=count)
    shots = [r.prompt + " 4 + 5 = 9\n#### 9" for r in base[:3]]
    prompts = ["\n\n".join(shots[: i % 4] + [r.prompt]) for i, r in enumerate(base)]
    caps = [6 + (7 * i) % 28 for i in range(count)]
    requests = []
    for i, (prompt, cap) in enumerate(zip(prompts, caps, strict=True)):
        alone = decoding.decode_batch(model, tokenizer, [prompt], [()], [cap])[0]
        text = tokenizer.decode(alone.tokens, skip_special_tokens=True)
        # every third row gets a stop string from the middle of its own output
        stop = (text[len(text) // 2 : len(text) // 2 + 2],) if i % 3 == 0 and len(text) > 6 else ()
        requests.append(GenerationRequest(prompt, stop, cap))
    return requests


def _alone(model, tokenizer, requests):
    return [decoding.decode_batch(model, tokenizer, [r.prompt], [r.stop], [r.max_new_tokens])[0] for r in requests]


def _continuous(model, tokenizer, requests, max_rows, **kwargs):
    return decoding.decode_batch(model, tokenizer, [r.prompt for r in requests], [r.stop for r in requests],
                                 [r.max_new_tokens for r in requests], max_rows=max_rows, **kwargs)


@pytest.fixture
def merges(monkeypatch):
    """Counts the admissions of new prompts into a running batch."""
    calls = []
    original = decoding.concat_left_padded

    def counted(*args, **kwargs):
        calls.append(args[-1])
        return original(*args, **kwargs)

    monkeypatch.setattr(decoding, "concat_left_padded", counted)
    return calls


@pytest.mark.parametrize("arch", ["llama", "phi"])
def test_rows_joining_a_running_batch_decode_as_alone(arch, tiny_models, data_dir, merges):
    model, tokenizer = _load(tiny_models, arch)
    requests = _unequal_requests(data_dir, tokenizer, model)
    alone = _alone(model, tokenizer, requests)
    assert len({len(d.tokens) for d in alone}) > 3  # rows really end at different steps
    assert any(d.stopped for d in alone)
    merges.clear()
    together = _continuous(model, tokenizer, requests, max_rows=3)
    assert together == alone
    assert len(merges) >= 2  # prompts joined a batch that was already decoding


@pytest.mark.parametrize("arch", ["llama", "phi"])
def test_backend_batch_sizes_agree_with_packed_prefill(arch, tiny_models, data_dir, merges):
    """HFBackend (varlen packed prefill, longest prompts first) at batch 1, 3 and all rows."""
    model, tokenizer = _load(tiny_models, arch)
    requests = _unequal_requests(data_dir, tokenizer, model)
    results = [HFBackend(model, tokenizer, torch.device("cpu"), False, size).generate(requests)
               for size in (1, 3, len(requests))]
    assert results[0] == results[1] == results[2]
    assert merges


def test_a_shared_few_shot_prefix_is_reused_by_every_admission(tiny_models, data_dir, merges, monkeypatch):
    model, tokenizer = _load(tiny_models, "llama")
    shots = "\n\n".join(r.prompt + " 4 + 5 = 9\n#### 9" for r in gsm8k_requests(data_dir, count=3)) + "\n\n"
    requests = [GenerationRequest(shots + r.prompt, (), 5 + 3 * i)
                for i, r in enumerate(gsm8k_requests(data_dir, count=8))]
    prefixes = []
    original = decoding.prefill_prefix
    monkeypatch.setattr(decoding, "prefill_prefix", lambda *a: prefixes.append(1) or original(*a))
    together = _continuous(model, tokenizer, requests, max_rows=3)
    assert prefixes == [1] and merges  # prefilled once, reused by the later groups
    assert together == _alone(model, tokenizer, requests)


def test_seeded_samples_do_not_depend_on_admission(tiny_models, data_dir, merges):
    """Per-row random streams: k samples of each prompt, admitted at different times, equal the
    same samples decoded alone; they differ from greedy and between seeds."""
    model, tokenizer = _load(tiny_models, "llama")
    requests = [GenerationRequest(r.prompt, r.stop, cap)
                for r, cap in zip(gsm8k_requests(data_dir, count=5), (6, 14, 9, 16, 8), strict=True)]
    k = 3
    seeds = [1000 * i + j for i in range(len(requests)) for j in range(k)]
    together = _continuous(model, tokenizer, requests, max_rows=6, sample=True, copies=k, row_seeds=seeds)
    assert merges
    for i, request in enumerate(requests):
        alone = decoding.decode_batch(model, tokenizer, [request.prompt], [request.stop], [request.max_new_tokens],
                                      sample=True, copies=k, row_seeds=seeds[i * k : (i + 1) * k])
        assert together[i * k : (i + 1) * k] == alone
    greedy = _alone(model, tokenizer, requests)
    assert [d.tokens for d in together[::k]] != [d.tokens for d in greedy]
    other = _continuous(model, tokenizer, requests, max_rows=6, sample=True, copies=k,
                        row_seeds=[s + 1 for s in seeds])
    assert [d.tokens for d in other] != [d.tokens for d in together]


def test_one_shared_seed_is_reproducible_under_a_fixed_admission_order(tiny_models, data_dir):
    model, tokenizer = _load(tiny_models, "llama")
    requests = gsm8k_requests(data_dir, count=6, max_new=10)
    first = _continuous(model, tokenizer, requests, max_rows=2, sample=True, seed=3)
    assert first == _continuous(model, tokenizer, requests, max_rows=2, sample=True, seed=3)
    assert first != _continuous(model, tokenizer, requests, max_rows=2, sample=True, seed=4)


def test_finished_rows_are_dropped_and_padding_columns_trimmed(tiny_models, data_dir, monkeypatch):
    """In the tail (nothing left to admit) finished rows leave the cache, and columns that are
    padding in every remaining row are cut, so a long row does not keep paying for a short one's
    padding."""
    model, tokenizer = _load(tiny_models, "llama")
    by_length = sorted(_unequal_requests(data_dir, tokenizer, model, count=8), key=lambda r: -len(r.prompt))
    # the longest prompt finishes first, the shortest last: its row had the most padding
    requests = [GenerationRequest(r.prompt, (), 4 + 4 * i) for i, r in enumerate(by_length)]
    widths = []
    original = decoding._Batch.step

    def step(self, model_, ids):
        widths.append((len(self.slots), self.mask.shape[1], int((self.mask.sum(1) == self.mask.shape[1]).sum())))
        return original(self, model_, ids)

    monkeypatch.setattr(decoding._Batch, "step", step)
    _continuous(model, tokenizer, requests, max_rows=None)
    assert widths[-1][0] < len(requests)  # rows left
    assert widths[-1] == (1, widths[-1][1], 1)  # the last row alone: no padding column survives
