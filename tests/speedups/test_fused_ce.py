"""The chunked linear cross-entropy equals autograd through `F.cross_entropy(head(h).float(), y)`:
the same loss and the same gradients for the hidden states, the head's weight and its bias."""

import pytest
import torch
import torch.nn.functional as F

from mathtune.speedups import fused_ce
from mathtune.speedups.fused_ce import linear_cross_entropy


def reference_and_fused(rows: int, bias: bool, train_head: bool, dtype: torch.dtype):
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=bias).to(dtype)
    head.requires_grad_(train_head)
    hidden = torch.randn(rows, 16, dtype=dtype, requires_grad=True)
    labels = torch.randint(0, 50, (rows,))
    results = []
    unfused = lambda: F.cross_entropy(head(hidden).float(), labels)  # noqa: E731
    fused = lambda: linear_cross_entropy(hidden, head, labels)  # noqa: E731
    for loss_fn in (unfused, fused):
        hidden.grad = None
        head.zero_grad()
        loss = loss_fn()
        (loss * 3.0).backward()  # a non-unit upstream gradient must scale every gradient
        grads = [hidden.grad.clone()] + [p.grad.clone() for p in head.parameters() if p.requires_grad]
        results.append((loss.detach(), grads))
    return results


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("train_head", [False, True])
def test_matches_autograd_in_fp32(bias, train_head, monkeypatch):
    # 3 rows per head matmul (7 rows span 3 chunks), softmax blocks of 2 rows (a chunk spans 2 blocks)
    monkeypatch.setattr(fused_ce, "ROWS_PER_MATMUL", 3)
    monkeypatch.setattr(fused_ce, "SOFTMAX_ELEMENTS", 50 * 2)
    (ref_loss, ref_grads), (loss, grads) = reference_and_fused(7, bias, train_head, torch.float32)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
    assert len(grads) == len(ref_grads) == 1 + train_head * (1 + bias)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_matches_autograd_in_bf16():
    (ref_loss, ref_grads), (loss, grads) = reference_and_fused(33, True, False, torch.bfloat16)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(grads[0].float(), ref_grads[0].float(), rtol=2e-2, atol=2e-3)


def test_wrong_labels_raise_a_different_loss():
    """Teeth: shuffled labels give a different loss, so the equality above is not vacuous."""
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    hidden, labels = torch.randn(9, 16), torch.randint(0, 50, (9,))
    shuffled = linear_cross_entropy(hidden, head, labels.roll(1))
    assert not torch.isclose(linear_cross_entropy(hidden, head, labels), shuffled)
