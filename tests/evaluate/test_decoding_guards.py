"""Guards on what decoding promises, written against its public behaviour only (`HFBackend.generate`,
`HFBackend.sample`, `model.generate`), so they hold through any rewrite of the decoding loop:

- greedy text is `model.generate`'s, prompt by prompt, whatever the batch: prompts of unequal length
  (left padding) whose rows leave the batch at different steps (EOS, a stop string, their own caps);
- the calculator forces ``result>>`` after ``<<expr=`` into the rows that asked for it, and only there;
- seeded samples differ from greedy and across seeds, and do not depend on the batch.
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
from helpers import gsm8k_requests

from mathtune.evaluate.generation import Generation, GenerationRequest, HFBackend, cut_at_stop

CAPS = (6, 19, 11, 25, 3, 14)


def _load(tiny_models, arch: str, attention: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models[arch])
    model = AutoModelForCausalLM.from_pretrained(tiny_models[arch], dtype=torch.float32,
                                                 attn_implementation=attention).eval()
    return model, tokenizer


def _unequal_requests(data_dir) -> list[GenerationRequest]:
    """0- to 3-shot prompts (tens to hundreds of tokens: heavy left padding), each with its own cap."""
    shots = [r.prompt + " 4 + 5 = 9\n#### 9" for r in gsm8k_requests(data_dir, count=3)]
    return [GenerationRequest("\n\n".join(shots[: i % 4] + [r.prompt.replace("\nAnswer:", " Why?" * i + "\nAnswer:")]),
                              (), cap)
            for i, (r, cap) in enumerate(zip(gsm8k_requests(data_dir, count=6)[::-1], CAPS, strict=True))]


def _generated(model, tokenizer, request: GenerationRequest, eos: set[int]) -> list[int]:
    """`model.generate` on the prompt alone (no padding): the new tokens, up to the cap."""
    encoded = tokenizer(request.prompt, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**encoded, do_sample=False, max_new_tokens=request.max_new_tokens,
                             eos_token_id=sorted(eos), pad_token_id=tokenizer.pad_token_id)
    return out[0, encoded["input_ids"].shape[1]:].tolist()


def _reference(model, tokenizer, request: GenerationRequest, eos: set[int]) -> tuple[Generation, str]:
    """`model.generate`'s tokens cut where our decoding promises to stop: at EOS (excluded), at the
    first token whose text completes a stop string, at the cap; and which of the three it was."""
    tokens = _generated(model, tokenizer, request, eos)
    hit_eos = any(t in eos for t in tokens)
    if hit_eos:
        tokens = tokens[: next(n for n, t in enumerate(tokens) if t in eos)]
    for n in range(1, len(tokens) + 1):
        if cut_at_stop(tokenizer.decode(tokens[:n], skip_special_tokens=True), request.stop)[1]:
            tokens, hit_eos = tokens[:n], False
            break
    text, stopped = cut_at_stop(tokenizer.decode(tokens, skip_special_tokens=True), request.stop)
    truncated = not stopped and not hit_eos and len(tokens) >= request.max_new_tokens
    reason = "stop" if stopped else "eos" if hit_eos else "cap"
    return Generation(text, truncated, len(tokens), 0), reason


@pytest.mark.parametrize("attention", ["sdpa", "eager"])  # sdpa: packed prefill; eager: padded prefill
@pytest.mark.parametrize("arch", ["llama", "phi"])
def test_greedy_equals_generate_with_padding_and_rows_leaving_at_different_steps(tiny_models, data_dir, arch,
                                                                                 attention):
    model, tokenizer = _load(tiny_models, arch, attention)
    requests = _unequal_requests(data_dir)
    assert len({len(tokenizer(r.prompt)["input_ids"]) for r in requests}) == len(requests)
    eos = {tokenizer.eos_token_id}
    # A token that two or three rows write becomes a second EOS (as a chat model's end-of-turn is):
    # those rows end on EOS, each at a step of its own.
    free = [_generated(model, tokenizer, r, eos) for r in requests]
    eos.add(next(t for row in free for t in row[1:] if 2 <= sum(t in other[1:] for other in free) <= 3))
    model.generation_config.eos_token_id = sorted(eos)
    # up to two of the other rows get a stop string they write mid-way: they leave the batch there
    free = [_reference(model, tokenizer, r, eos) for r in requests]
    capped = [i for i, (g, reason) in enumerate(free) if reason == "cap" and len(g.text) > 4]
    requests = [dataclasses.replace(r, stop=(g.text[len(g.text) // 2:][:2],)) if i in capped[1:3] else r
                for i, (r, (g, _)) in enumerate(zip(requests, free, strict=True))]
    expected, reasons = zip(*(_reference(model, tokenizer, r, eos) for r in requests), strict=True)
    expected = list(expected)
    assert set(reasons) == {"eos", "stop", "cap"}, reasons  # rows leave the batch for each reason
    assert len({e.new_tokens for e in expected}) >= 4, "and at different steps"
    for batch_size in (1, 4, 6):
        assert HFBackend(model, tokenizer, torch.device("cpu"), False, batch_size).generate(requests) == expected, \
            f"batch size {batch_size}"


def _scripted_model(tiny_models, scripts: dict[int, list[int]], eos_id: int):
    """A tiny Llama whose next token is scripted: the row whose prompt is L tokens long writes
    `scripts[L]` (then EOS), one token per position, whatever was fed before. The real model runs
    underneath, so any KV-cache handling works; only its logits are replaced."""
    from transformers import AutoModelForCausalLM

    class Scripted(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = AutoModelForCausalLM.from_pretrained(tiny_models["llama"], dtype=torch.float32,
                                                              attn_implementation="eager")
            self.config, self.generation_config = self.inner.config, self.inner.generation_config

        def forward(self, **kwargs):
            out = self.inner(**kwargs)
            width = out.logits.shape[1]
            # tokens of the row up to each position: from its positions, else from its padding mask
            positions = kwargs.get("position_ids")
            seen = (positions[:, -width:] + 1 if positions is not None
                    else kwargs["attention_mask"].long().cumsum(-1)[:, -width:])
            logits = torch.full_like(out.logits, -1e4)
            for row in range(logits.shape[0]):
                for column in range(width):
                    logits[row, column, self.next_token(int(seen[row, column]))] = 0.0
            out.logits = logits
            return out

        @staticmethod
        def next_token(seen: int) -> int:
            for length, script in scripts.items():
                if length <= seen < length + len(script):
                    return script[seen - length]
            return eos_id

    return Scripted().eval()


def test_the_calculator_forces_results_into_the_rows_that_ask_and_nowhere_else(tiny_models):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    wrong = ids("9")[0]

    def writes(*parts: str) -> list[int]:
        """The model's script: text parts; after each '<<expr=' a wrong digit in place of every token
        of the calculator's ``result>>``, so forced tokens and the script stay aligned."""
        from mathtune.evaluate.calculator import complete_calculator_annotation

        script: list[int] = []
        for part in parts:
            script += ids(part)
            value = complete_calculator_annotation(part)
            if value is not None:
                script += [wrong] * len(ids(f"{value}>>"))
        return script

    plans = [  # (what the model writes, calculator on, the text expected with the calculator)
        (("So <<3+4=", " ok"), True, "So <<3+4=7>> ok"),
        (("Two: <<5*6=", " and <<30-2=", " end"), True, "Two: <<5*6=30>> and <<30-2=28>> end"),
        (("no math 12 here",), True, "no math 12 here"),
        (("off <<1+1=",), False, "off <<1+1=" + "9" * len(ids("2>>"))),
        (("Half <<6/4=",), True, "Half <<6/4=1.5>>"),
    ]
    prompts = [f"Question {i}:" + " x" * (60 * i) + "\nAnswer:" for i in range(len(plans))]
    lengths = [len(ids(p)) for p in prompts]
    scripts = {length: writes(*parts) for length, (parts, _, _) in zip(lengths, plans, strict=True)}
    assert all(b - a > 50 for a, b in itertools.pairwise(lengths)), "each row's positions must be its own"
    model = _scripted_model(tiny_models, scripts, tokenizer.eos_token_id)
    requests = [GenerationRequest(prompt, ("Question:",), 40, calculator)
                for prompt, (_, calculator, _) in zip(prompts, plans, strict=True)]
    for batch_size in (1, 3, 5):
        got = HFBackend(model, tokenizer, torch.device("cpu"), False, batch_size).generate(requests)
        assert [g.text for g in got] == [text for _, _, text in plans], f"batch size {batch_size}"
        assert [g.calculator_calls for g in got] == [1, 2, 0, 0, 1], f"batch size {batch_size}"
        assert not any(g.truncated for g in got)
    # without the calculator every row writes what it was scripted to, wrong digits included
    plain = HFBackend(model, tokenizer, torch.device("cpu"), False, 5).generate(
        [dataclasses.replace(r, calculator=False) for r in requests])
    assert [g.text for g in plain] == [tokenizer.decode(scripts[n]) for n in lengths]
    assert [g.calculator_calls for g in plain] == [0] * 5
    # a cap inside the forced result cuts it there, as it cuts any other token
    capped = dataclasses.replace(requests[0], max_new_tokens=len(ids("So <<3+4=")) + 1)
    first = HFBackend(model, tokenizer, torch.device("cpu"), False, 1).generate([capped])[0]
    assert first.text == "So <<3+4=" + tokenizer.decode(ids("7>>")[:1]) and first.truncated


def test_seeded_samples_differ_from_greedy_and_across_seeds_and_not_across_batches(tiny_models, data_dir):
    model, tokenizer = _load(tiny_models, "llama", "sdpa")
    requests = _unequal_requests(data_dir)[:4]
    keys = [f"p{i}" for i in range(len(requests))]

    def backend(rows: int) -> HFBackend:
        return HFBackend(model, tokenizer, torch.device("cpu"), False, rows)

    greedy = backend(4).generate(requests)
    samples = backend(12).sample(requests, keys, 3, seed=11)
    assert backend(3).sample(requests, keys, 3, seed=11) == samples  # one problem per batch
    assert backend(5).sample(requests[::-1], keys[::-1], 3, seed=11) == samples[::-1]  # other order, mixed
    assert all(g.new_tokens <= r.max_new_tokens for r, group in zip(requests, samples, strict=True) for g in group)
    assert all(any(g.text != greedy[i].text for g in group) for i, group in enumerate(samples))  # not greedy
    assert all(len({g.text for g in group}) > 1 for group in samples)  # k draws, not one repeated
    other = backend(12).sample(requests, keys, 3, seed=12)
    assert sum(a.text != b.text for x, y in zip(samples, other, strict=True) for a, b in zip(x, y, strict=True)) >= 6
    # generate(sample=True): seeded, not greedy, other seeds other text
    drawn = backend(4).generate(requests, sample=True, seed=3)
    assert drawn == backend(4).generate(requests, sample=True, seed=3)
    assert drawn != greedy and drawn != backend(4).generate(requests, sample=True, seed=4)


def test_the_repetition_stop_ends_looping_rows_after_the_copies_and_nowhere_else(tiny_models):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    block = ids(" So 3 + 4 = 7 apples each day.")
    short = ids(" 1")
    preamble = ids("Two copies, after a preamble longer than one copy of the block:")
    span = 2 * len(block) + 1  # three copies of `block` are needed to span it, two are not
    copies = -(-span // len(short))  # copies of `short` that span it
    plans = [  # (the script, the tokens expected under the stop: 3 copies spanning >= `span` tokens)
        (ids("First 12 then") + block * 8, ids("First 12 then") + block * 3),  # a loop: cut after 3 copies
        (ids("Count:") + short * 5 + ids(" done"), ids("Count:") + short * 5 + ids(" done")),  # too short a span
        (preamble + block * 2 + ids(" end"), preamble + block * 2 + ids(" end")),
        (ids("A") + short * (copies + 6), ids("A") + short * copies),  # a short block must span `span` tokens
    ]
    assert 5 * len(short) < span and copies > 3 and len(preamble) > len(block)
    longest = max(len(script) for script, _ in plans)
    prompts = [f"Question {i}:" + " x" * (longest * i) + "\nAnswer:" for i in range(len(plans))]
    lengths = [len(ids(p)) for p in prompts]
    assert all(b - a > longest for a, b in itertools.pairwise(lengths)), "each row's script must be its own"
    model = _scripted_model(tiny_models, {n: script for n, (script, _) in zip(lengths, plans, strict=True)},
                            tokenizer.eos_token_id)
    requests = [GenerationRequest(prompt, (), 400, loop_stop=(3, span)) for prompt in prompts]
    # two copies never stop a row, however short the span asked
    requests[2] = dataclasses.replace(requests[2], loop_stop=(3, len(block)))
    for batch_size in (1, 3):
        got = HFBackend(model, tokenizer, torch.device("cpu"), False, batch_size).generate(requests)
        assert [g.text for g in got] == [tokenizer.decode(expected) for _, expected in plans], batch_size
        assert [g.new_tokens for g in got] == [len(expected) for _, expected in plans], batch_size
        assert [g.truncated for g in got] == [True, False, False, True], batch_size  # a cut loop counts as truncated
    # off: every row writes its whole script (the loop runs on)
    plain = HFBackend(model, tokenizer, torch.device("cpu"), False, 3).generate(
        [dataclasses.replace(r, loop_stop=None) for r in requests])
    assert [g.new_tokens for g in plain] == [len(script) for script, _ in plans]


@pytest.mark.parametrize(("tokens", "min_tokens", "expected"), [
    ([1, 2, 3] * 3, 9, True), ([1, 2, 3] * 3, 10, False), ([1, 2, 3] * 2, 6, False),
    ([9, 8, 7] + [1, 2, 3] * 2, 6, False), ([1, 2, 3] * 2 + [1, 2], 6, False),
    ([9] + [1, 2, 3, 4] * 3, 12, True), ([5] * 11, 12, False), ([5] * 12, 12, True), ([1, 2] * 5 + [1], 12, False),
    ([1, 2] * 6, 12, True), ([1, 2] * 6, 13, False), ([], 1, False), ([7, 1, 2, 3, 1, 2, 3, 1, 2, 3, 8], 9, False),
])
def test_repeating_tail_needs_the_copies_and_the_span(tokens, min_tokens, expected):
    from mathtune.evaluate.decoding import repeating_tail

    assert repeating_tail(tokens, 3, min_tokens) is expected
