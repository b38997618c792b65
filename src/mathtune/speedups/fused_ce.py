"""Cross-entropy through the output head, chunk by chunk, with the gradient made in the forward pass.

`F.cross_entropy(head(hidden).float(), labels)` materialises [tokens, vocab] float32 logits, runs
log-softmax over them, keeps them for backward and makes a second tensor of that size there. On
SmolLM2's 49k vocabulary that is ~200 MB per 1,000 loss tokens. Here each chunk of rows is
projected, reduced to its loss and turned into its gradient at once (softmax - one-hot is the whole
backward of cross-entropy), so only the [tokens, hidden] input gradient is kept and a chunk bounds
the float32 working set. The head's matmuls take 256 rows at a time: each one streams the whole
head weight (56 MB in bf16 on SmolLM2), which ran at ~230 GFLOP/s at ~43 rows, ~310-345 at 128 and
~360-385 at 256 (docs/performance.md). The chunk is 256 rows whenever a step has that many: a version
that split the rows evenly over the chunks (a buffer of another size each step) ran slower. The
softmax then works on ~43-row float32 blocks of those logits (8 MB), so in bf16 training the
float32 working set stays what it was. The same idea as Liger-Kernel's fused
linear cross-entropy, in plain PyTorch so it runs on CPU and CUDA.
"""

from __future__ import annotations

import torch

ROWS_PER_MATMUL = 256  # rows of one head projection (and of its gradient's matmul)
SOFTMAX_ELEMENTS = 1 << 21  # float32 logits worked on at once (8 MB): ~43 rows on a 49k vocabulary


class LinearCrossEntropy(torch.autograd.Function):
    """mean_i CE(hidden_i @ weight.T + bias, labels_i), matmuls in hidden's dtype, softmax in float32."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                labels: torch.Tensor) -> torch.Tensor:
        rows, vocab = hidden.shape[0], weight.shape[0]
        chunk, block = max(1, min(ROWS_PER_MATMUL, rows)), max(1, SOFTMAX_ELEMENTS // vocab)
        head = weight.to(hidden.dtype)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if ctx.needs_input_grad[1] \
            else None
        grad_bias = torch.zeros(vocab, dtype=torch.float32, device=weight.device) \
            if bias is not None and ctx.needs_input_grad[2] else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        denominator = max(rows, 1)
        # One logits buffer per dtype for the whole call, every op in place or into it: fresh 8 MB
        # tensors per chunk were page-faulted in each time inside a training step (the cast and the
        # subtraction cost 5-11 ms per chunk against ~0.3 ms on reused memory; docs/performance.md).
        low = torch.empty(chunk, vocab, dtype=hidden.dtype, device=hidden.device)
        full = torch.empty(min(block, chunk), vocab, dtype=torch.float32, device=hidden.device)
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, rows, chunk):
                part = hidden[start : start + chunk]
                logits_low = low[: len(part)]
                torch.mm(part, head.t(), out=logits_low)
                for offset in range(0, len(part), block):
                    rows_low = logits_low[offset : offset + block]  # becomes this block's grad_logits
                    target = labels[start + offset : start + offset + len(rows_low)]
                    total += _softmax_gradient_(rows_low, full[: len(rows_low)], bias, target, denominator)
                torch.mm(logits_low, head, out=grad_hidden[start : start + chunk])
                if grad_weight is not None:
                    grad_weight.addmm_(logits_low.t().float(), part.float())
                if grad_bias is not None:
                    grad_bias += logits_low.float().sum(0)
        ctx.save_for_backward(grad_hidden, *(g if g is not None else torch.empty(0) for g in (grad_weight, grad_bias)))
        ctx.param_dtypes = (weight.dtype, bias.dtype if bias is not None else None)
        return total / denominator

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        weight_dtype, bias_dtype = ctx.param_dtypes
        grad_w = (grad_weight * grad_output).to(weight_dtype) if ctx.needs_input_grad[1] else None
        grad_b = (grad_bias * grad_output).to(bias_dtype) if ctx.needs_input_grad[2] else None
        return grad_hidden * grad_output.to(grad_hidden.dtype), grad_w, grad_b, None


def _softmax_gradient_(logits_low: torch.Tensor, logits: torch.Tensor, bias: torch.Tensor | None,
                       target: torch.Tensor, denominator: int) -> torch.Tensor:
    """Sum of these rows' cross-entropies; overwrites `logits_low` with their gradient, (softmax -
    one-hot) / denominator, through the float32 buffer `logits`."""
    logits.copy_(logits_low)
    if bias is not None:
        logits += bias.float()
    picked = logits.gather(1, target[:, None])
    peak = logits.amax(dim=-1, keepdim=True)
    probs = logits.sub_(peak).exp_()  # exp(logit - max), in place of the logits
    norm = probs.sum(dim=-1, keepdim=True)
    loss = (norm.log() + peak - picked).sum()  # log-sum-exp minus the label's logit
    probs.div_(norm * denominator)
    probs[torch.arange(len(target), device=probs.device), target] -= 1.0 / denominator
    logits_low.copy_(probs)
    return loss


def linear_cross_entropy(hidden: torch.Tensor, head: torch.nn.Linear, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of `head(hidden)` against `labels`, never holding all the logits."""
    return LinearCrossEntropy.apply(hidden, head.weight, head.bias, labels)
