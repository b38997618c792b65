"""FastDropout is inverted dropout: drop rate p (to 1/65536), unbiased, identity in eval mode."""

import pytest
import torch
from torch import nn

from mathtune.speedups.dropout import FastDropout, pack_mask, unpack_mask, use_fast_dropout


def test_drop_rate_and_scale_match_p():
    torch.manual_seed(0)
    layer = FastDropout(0.1).train()
    x = torch.ones(1000, 1001)  # odd element count: the last 64-bit draw is only partly used
    y = layer(x)
    dropped = (y == 0).float().mean().item()
    sigma = (0.1 * 0.9 / x.numel()) ** 0.5
    assert abs(dropped - 0.1) < 5 * sigma, dropped
    assert torch.all((y == 0) | torch.isclose(y, torch.tensor(1 / (1 - layer.p))))
    assert abs(y.mean().item() - 1.0) < 5 * sigma / 0.9  # unbiased: E[y] = x
    assert abs(layer.p - 0.1) < 1 / 65536


def test_masks_differ_per_call_and_per_position():
    torch.manual_seed(0)
    layer = FastDropout(0.5).train()
    x = torch.ones(64, 64)
    first, second = layer(x) == 0, layer(x) == 0
    assert not torch.equal(first, second)
    assert 0.4 < first[:, 0].float().mean().item() < 0.6  # each lane of a draw is used, none is stuck


def test_eval_mode_and_zero_p_are_identity():
    x = torch.randn(8, 8)
    assert FastDropout(0.3).eval()(x) is x
    assert FastDropout(0.0).train()(x) is x


def test_use_fast_dropout_replaces_only_active_dropouts():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1), nn.ModuleDict({"a": nn.Dropout(0.2), "b": nn.Dropout(0.0)}))
    assert use_fast_dropout(model) == 2
    assert isinstance(model[1], FastDropout) and isinstance(model[2]["a"], FastDropout)
    assert type(model[2]["b"]) is nn.Dropout
    assert abs(model[2]["a"].p - 0.2) < 1 / 65536


@pytest.mark.parametrize("shape", [(5,), (8,), (3, 7), (1104, 576), (2, 3, 13)])
def test_masks_pack_to_bits_and_back(shape):
    keep = torch.rand(shape) < 0.9
    packed = pack_mask(keep)
    assert packed.dtype == torch.uint8 and packed.numel() == (keep.numel() + 7) // 8
    assert torch.equal(unpack_mask(packed, keep.shape), keep)
    assert torch.equal(unpack_mask(pack_mask(torch.ones(shape, dtype=torch.bool)), keep.shape).sum(),
                       torch.tensor(keep.numel()))


def test_an_empty_input_gets_an_empty_mask():
    assert FastDropout(0.1).train()(torch.randn(0, 8)).shape == (0, 8)
