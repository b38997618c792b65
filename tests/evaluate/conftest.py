"""A tiny Llama loaded once per module, for the decoding and sampling tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def llama(tiny_models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])
    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"], dtype=torch.float32)
    return model, tokenizer

