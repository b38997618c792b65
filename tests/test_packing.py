"""Padding-free packing is exact: a packed row gives the same loss and hidden states as its examples
run one by one or padded, i.e. no token attends across an example boundary (fp32, tiny models)."""

import pytest
import torch

from mathtune.data.batching import VARLEN_KEYS, causal_example, packed_batch, padded_batch
from mathtune.models.loading import load_model, load_tokenizer, resolve_source
from mathtune.training.loss import causal_loss

PAIRS = [
    ("Q: Tom has 3 apples and buys 4 more. How many apples?\nA:", " 3 + 4 = <<3+4=7>>7\n#### 7"),
    ("Q: 2 + 3?\nA:", " 5\n#### 5"),
    ("Q: Mia has 12 pens, gives away 5, then buys twice as many as she has. How many pens?\nA:",
     " 12 - 5 = <<12-5=7>>7, 7 * 2 = <<7*2=14>>14, 7 + 14 = <<7+14=21>>21\n#### 21"),
]
ATOL = 1e-5


def load(arch, tiny_models):
    source = resolve_source(str(tiny_models[arch]))
    model = load_model(source, dtype=torch.float32).eval()
    return model, load_tokenizer(source)


def token_sum_and_count(model, batch):
    count = int((batch["labels"][:, 1:] != -100).sum())
    return causal_loss(model, batch) * count, count


@pytest.mark.parametrize("arch", ["llama", "phi"])
def test_packed_loss_equals_unpacked_and_padded(arch, tiny_models):
    model, tokenizer = load(arch, tiny_models)
    examples = [causal_example(tokenizer, p, t, 128, "completion") for p, t in PAIRS]
    assert len({ex.num_tokens for ex in examples}) == len(examples)  # unequal lengths: padding matters
    with torch.no_grad():
        packed = causal_loss(model, packed_batch(examples))
        padded = causal_loss(model, padded_batch(examples, tokenizer.pad_token_id))
        parts = [token_sum_and_count(model, padded_batch([ex], tokenizer.pad_token_id)) for ex in examples]
    one_by_one = sum(s for s, _ in parts) / sum(n for _, n in parts)  # token-weighted mean, as one batch
    assert abs(packed.item() - one_by_one.item()) < ATOL, (packed.item(), one_by_one.item())
    assert abs(packed.item() - padded.item()) < ATOL, (packed.item(), padded.item())


@pytest.mark.parametrize("arch", ["llama", "phi"])
def test_packed_hidden_states_match_each_example_alone(arch, tiny_models):
    model, tokenizer = load(arch, tiny_models)
    examples = [causal_example(tokenizer, p, t, 128, "all") for p, t in PAIRS]
    batch = packed_batch(examples)
    # use_cache=False matters: with a KV cache transformers skips the packed-sequence mask (causal_loss
    # passes it; see the third call below for what happens otherwise).
    with torch.no_grad():
        packed = model.base_model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                                  use_cache=False).last_hidden_state
        start = 0
        for ex in examples:
            alone = model.base_model(input_ids=torch.tensor([ex.input_ids]), use_cache=False).last_hidden_state
            torch.testing.assert_close(packed[:, start : start + ex.num_tokens], alone, atol=ATOL, rtol=0)
            start += ex.num_tokens
        # The test has teeth: the same row attends across examples without restarted positions, and
        # also when a KV cache is on (transformers then ignores position-based packing).
        no_positions = model.base_model(input_ids=batch["input_ids"], use_cache=False).last_hidden_state
        with_cache = model.base_model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                                      use_cache=True).last_hidden_state
    tail = slice(examples[0].num_tokens, None)
    assert not torch.allclose(no_positions[:, tail], packed[:, tail], atol=1e-3)
    assert not torch.allclose(with_cache[:, tail], packed[:, tail], atol=1e-3)


@pytest.mark.parametrize("arch", ["llama", "phi"])
def test_varlen_attention_equals_masked_packing_in_loss_and_gradients(arch, tiny_models):
    """The per-example SDPA backend computes what the block-diagonal mask computes, gradients included."""
    from mathtune.speedups.attention import VARLEN_SDPA, use_varlen_sdpa

    model, tokenizer = load(arch, tiny_models)
    batch = packed_batch([causal_example(tokenizer, p, t, 128, "all") for p, t in PAIRS])
    results = []
    for varlen in (False, True):
        if varlen:
            use_varlen_sdpa(model)
            assert model.config._attn_implementation == VARLEN_SDPA
        model.zero_grad()
        loss = causal_loss(model, batch if varlen else {k: v for k, v in batch.items() if k not in VARLEN_KEYS})
        loss.backward()
        results.append((loss.item(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (masked_loss, masked_grads), (varlen_loss, varlen_grads) = results
    assert abs(masked_loss - varlen_loss) < ATOL
    assert len(masked_grads) == len(varlen_grads) > 0
    for got, want in zip(varlen_grads, masked_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_varlen_backend_without_boundaries_is_plain_sdpa(tiny_models):
    """Generation and padded batches carry no boundaries: the backend must then be SDPA itself."""
    from mathtune.speedups.attention import use_varlen_sdpa

    model, tokenizer = load("llama", tiny_models)
    examples = [causal_example(tokenizer, p, t, 128, "completion") for p, t in PAIRS]
    batch = padded_batch(examples, tokenizer.pad_token_id)
    with torch.no_grad():
        before = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        use_varlen_sdpa(model)
        after = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(after, before, atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_causal_attention_matches_sdpa_per_example(dtype):
    """The training attention node (float32 inside, inputs kept in the model dtype) against SDPA
    run example by example through autograd in float32: outputs and q/k/v gradients, with
    grouped-query heads (6 query heads, 2 kv heads)."""
    import torch.nn.functional as F

    from mathtune.speedups.attention import PackedCausalAttention

    torch.manual_seed(0)
    spans = ((0, 5), (5, 17), (17, 30))
    q, k, v = (torch.randn(1, heads, 30, 8).to(dtype).requires_grad_() for heads in (6, 2, 2))
    grad = torch.randn(1, 30, 6, 8)
    PackedCausalAttention.apply(q, k, v, spans, None).float().backward(grad)
    ref = [t.detach().float().requires_grad_() for t in (q, k, v)]
    want = torch.cat([F.scaled_dot_product_attention(*(t[:, :, a:b] for t in ref), is_causal=True, enable_gqa=True)
                      for a, b in spans], dim=2).transpose(1, 2)
    want.backward(grad)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    torch.testing.assert_close(PackedCausalAttention.apply(q, k, v, spans, None).float(), want, **tol)
    for got, expected in zip((q, k, v), ref, strict=True):
        torch.testing.assert_close(got.grad.float(), expected.grad, **tol)
