"""Reference-solution NLL (for perplexity) computed at label positions only equals the full-logits way."""

import pytest
import torch

from mathtune.data.batching import causal_example, seq2seq_example
from mathtune.evaluate.generation import HFBackend
from mathtune.models import heads
from mathtune.models.loading import load_model, load_tokenizer, resolve_source

PAIRS = [("Q: 2 + 3?\nA:", " 2 + 3 = <<2+3=5>>5\n#### 5"), ("Q: Tom has 7 pens and buys 4 more?\nA:", " 11\n#### 11"),
         ("Q: x?\nA:", " #### 0")]


@pytest.mark.parametrize("arch", ["llama", "phi", "t5"])
@pytest.mark.parametrize("rows_per_projection", [256, 3])
def test_target_nll_matches_full_logits(arch, rows_per_projection, tiny_models, monkeypatch):
    # 3: the labelled positions of a batch span several head projections
    monkeypatch.setattr(heads, "NLL_ROWS", rows_per_projection)
    source = resolve_source(str(tiny_models[arch]))
    tokenizer = load_tokenizer(source)
    model = load_model(source, dtype=torch.float32).eval()
    backend = HFBackend(model, tokenizer, torch.device("cpu"), arch == "t5", batch_size=2)
    got = backend.target_nll(PAIRS)
    for (prompt, target), (nll, count) in zip(PAIRS, got, strict=True):
        with torch.no_grad():
            if arch == "t5":
                ex = seq2seq_example(tokenizer, prompt, target, 1024)
                logits = model(input_ids=torch.tensor([ex.input_ids]), labels=torch.tensor([ex.labels])).logits[0]
                targets = torch.tensor(ex.labels)
            else:
                ex = causal_example(tokenizer, prompt, target, 2048, "completion")
                logits = model(input_ids=torch.tensor([ex.input_ids])).logits[0, :-1]
                targets = torch.tensor(ex.labels[1:])
        keep = targets != -100
        expected = torch.nn.functional.cross_entropy(logits[keep], targets[keep], reduction="sum")
        assert count == int(keep.sum()) > 0
        assert nll == pytest.approx(float(expected), rel=1e-4)
