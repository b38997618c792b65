"""Heap trimming hooks: on the right layers, and only in training forwards with gradients."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from mathtune.training import heap


def test_trims_after_every_nth_layer_only_in_training(monkeypatch):
    calls = []
    monkeypatch.setattr(heap, "_glibc_trim", lambda: calls.append)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=5,
                                         num_attention_heads=2, num_key_value_heads=1))
    assert heap.decoder_layers(model) is model.model.layers
    assert heap.trim_heap_between_layers(model, 2) == 2  # after layers 2 and 4
    ids = torch.randint(0, 32, (1, 6))
    model.train()
    model(input_ids=ids)
    assert calls == [0, 0]
    with torch.no_grad():
        model(input_ids=ids)
    model.eval()
    model(input_ids=ids)
    assert len(calls) == 2  # generation and evaluation never trim


def test_real_glibc_trim_runs_or_is_absent():
    trim = heap._glibc_trim()
    assert trim is None or trim(0) in (0, 1)
