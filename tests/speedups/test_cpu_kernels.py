"""The C kernels make the masks torch ops make, compute LoRA's dropout + A as the torch path does, and a
failed build leaves torch ops in charge instead of failing the run."""

import warnings
from pathlib import Path

import pytest
import torch
from helpers import CountingKernels, built_cpu_kernels

from mathtune.speedups import cpu_kernels
from mathtune.speedups.cpu_kernels import KERNELS_ATTRIBUTE, load_cpu_kernels
from mathtune.speedups.dropout import LANES, FastDropout, keep_mask, splitmix64_words
from mathtune.speedups.fused_lora import DropoutLinearFunction, KernelDropoutLinearFunction, MaskSpec


@pytest.fixture(scope="module")
def kernels() -> cpu_kernels.CpuKernels:
    return built_cpu_kernels()


def test_the_draws_are_splitmix64():
    # splitmix64 seeded with 0: its published first outputs (e.g. the reference in Vigna's xoshiro code)
    first = splitmix64_words(3, 0, torch.device("cpu"))
    assert [w % (1 << 64) for w in first.tolist()] == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]


@pytest.mark.parametrize("shape", [(5,), (8,), (3, 7), (789, 576), (2, 3, 13), (0, 4), (10_001,)])
@pytest.mark.parametrize("seed", [0, 1, 2**62 - 1])
def test_kernel_masks_are_the_torch_masks(kernels, shape, seed):
    for threshold in (1, 6554, 32768, 65535):
        want = keep_mask(torch.Size(shape), torch.device("cpu"), threshold, seed)
        assert torch.equal(keep_mask(torch.Size(shape), torch.device("cpu"), threshold, seed, kernels), want)


def test_fast_dropout_with_kernels_drops_the_same_elements(kernels):
    x = torch.ones(300, 77)
    torch.manual_seed(5)
    want = FastDropout(0.25).train()(x)
    torch.manual_seed(5)
    assert torch.equal(FastDropout(0.25, kernels).train()(x), want)
    assert abs((want == 0).float().mean().item() - 0.25) < 0.01


def lora_a(function: type, x: torch.Tensor, weight: torch.Tensor, mask: MaskSpec | None, last: object,
           grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    x, weight = x.detach().requires_grad_(x.requires_grad), weight.detach().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = function.apply(x, weight, mask, last)
    out.backward(grad)
    return out, weight.grad, x.grad


@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("x_grad", [True, False])
def test_kernel_lora_a_matches_the_torch_path(kernels, dropout, x_grad):
    torch.manual_seed(0)
    x = torch.randn(3, 57, 41, dtype=torch.bfloat16, requires_grad=x_grad)  # 41: rows start mid-word
    weight, grad = torch.randn(8, 41) * 0.2, torch.randn(3, 57, 8, dtype=torch.bfloat16)
    threshold = round(dropout * LANES)
    mask = MaskSpec(threshold, 1 / (1 - threshold / LANES), 1234) if dropout else None
    want = lora_a(DropoutLinearFunction, x, weight, mask, "seed", grad)
    got = lora_a(KernelDropoutLinearFunction, x, weight, mask, kernels, grad)
    assert got[0].dtype == want[0].dtype == torch.bfloat16
    # both sum bf16 products in float32, in different orders, and round the output to bf16
    torch.testing.assert_close(got[0], want[0], rtol=1e-2, atol=1e-2)
    # the torch path rounds A's gradient to bf16 first; the kernel keeps float32
    torch.testing.assert_close(got[1], want[1], rtol=1e-2, atol=1e-2 * want[1].abs().max().item())
    if x_grad:
        assert torch.equal(got[2] == 0, want[2] == 0)  # the same elements dropped
        torch.testing.assert_close(got[2], want[2], rtol=1e-2, atol=1e-3)
    else:
        assert got[2] is None and want[2] is None


def test_kernel_results_are_deterministic_and_follow_the_thread_count(kernels):
    """Run twice with one thread count: bit-identical. With another: A's gradient is summed in other
    slices, so it agrees to float32 rounding, and the rest is bit-identical."""
    torch.manual_seed(1)
    x = torch.randn(1000, 100, dtype=torch.bfloat16, requires_grad=True)
    weight, grad = torch.randn(4, 100), torch.randn(1000, 4, dtype=torch.bfloat16)
    mask = MaskSpec(6554, 1 / (1 - 6554 / LANES), 99)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (3, 3, 1):
            torch.set_num_threads(count)
            results.append(lora_a(KernelDropoutLinearFunction, x, weight, mask, kernels, grad))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(results[0], results[1], strict=True))
    out, grad_weight, grad_x = results[2]
    assert torch.equal(out, results[0][0]) and torch.equal(grad_x, results[0][2])
    torch.testing.assert_close(grad_weight, results[0][1], rtol=1e-5, atol=1e-5 * grad_weight.abs().max().item())


def test_a_failed_build_falls_back_with_one_warning(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    monkeypatch.setenv(cpu_kernels.CACHE_ENV, str(tmp_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert load_cpu_kernels.__wrapped__() is None
    assert len(caught) == 1 and "torch ops used instead" in str(caught[0].message)
    assert list(tmp_path.iterdir()) == []  # no half-written library left behind


def test_training_with_and_without_kernels_learns_the_same(tiny_models, data_dir, tmp_path, monkeypatch):
    """A bf16 LoRA run with dropout through `train`: with kernels on they are wired in, with them off none
    are, and the losses agree to bf16 rounding step by step (masks and gradients: the tests above)."""
    import json

    from mathtune.config import build_config
    from mathtune.recipes.train import setup, train

    counting = CountingKernels(built_cpu_kernels())  # skips where no C compiler is found

    def tree(out: Path, kernels: bool) -> dict:
        return {"model": {"name": str(tiny_models["llama"])}, "data": {"data_dir": str(data_dir), "train_size": 16},
                "method": {"name": "lora", "dropout": 0.1},
                "train": {"max_steps": 3, "batch_size": 4, "precision": "bf16", "lr": 2e-3, "log_every": 1,
                          "cpu_kernels": kernels},
                "output_dir": str(out)}

    off = setup(build_config(tree(tmp_path / "off", False)))
    assert not any(getattr(m, KERNELS_ATTRIBUTE, None) for m in off.model.modules())
    on = setup(build_config(tree(tmp_path / "on", True)))
    assert sum(getattr(m, KERNELS_ATTRIBUTE, None) is not None for m in on.model.modules()) > 0
    calls = counting.calls
    monkeypatch.setattr(cpu_kernels, "load_cpu_kernels", lambda: counting)  # apply_speedups reads it per run
    losses = {}
    for kernels in (True, False):
        out = tmp_path / str(kernels)
        train(build_config(tree(out, kernels)), out, show_progress=False)
        rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
        losses[kernels] = [row["loss"] for row in rows if "loss" in row]
        if kernels:  # every kernel ran in the bf16 steps, and none runs with them off
            assert len(calls) == 6 and min(calls.values()) > 0, calls
            calls.clear()
    assert not calls
    assert len(losses[True]) == len(losses[False]) == 3
    for got, want in zip(losses[True], losses[False], strict=True):
        assert abs(got - want) <= 0.01 * abs(want), losses


def test_fused_forwards_survive_model_train_and_are_recorded(tiny_models, data_dir, tmp_path):
    """transformers 5.25 re-kernelizes hub-kernel layers (RMSNorm) on every `train()`/`eval()` unless a
    model loads with `use_kernels=False`; the fused forwards must still be bound after both, and the
    train card must say how many ran."""
    from mathtune.config import build_config
    from mathtune.recipes.train import setup
    from mathtune.speedups.fused_ops import check_fused_ops_kept

    cfg = build_config({"model": {"name": str(tiny_models["llama"])}, "data": {"data_dir": str(data_dir),
                        "train_size": 4}, "method": {"name": "lora"},
                        "train": {"max_steps": 1, "precision": "bf16"}, "output_dir": str(tmp_path)})
    session = setup(cfg)
    bound = session.speedups.bound["fused_ops"]
    assert bound == 7  # 2 layers x (2 norms + 1 MLP) + the final norm
    session.model.eval()
    session.model.train()
    assert check_fused_ops_kept(session.model, bound) == bound
