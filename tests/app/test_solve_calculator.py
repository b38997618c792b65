"""The app decodes a run's model as the run was evaluated: with the calculator when its config says so."""

from __future__ import annotations

import torch
import yaml

from mathtune.app.engine import CalculatorForcing, Engine


def test_calculator_forcing_writes_the_result(tiny_models):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])
    prompt = tokenizer.encode("Q: 48*17?", add_special_tokens=False)
    written = tokenizer.encode(" So <<48*17=", add_special_tokens=False)
    forcing = CalculatorForcing(tokenizer, len(prompt))
    ids = torch.tensor([prompt + written])
    expected = tokenizer.encode("816>>", add_special_tokens=False)
    got = []
    for _ in expected:
        scores = forcing(ids, torch.zeros(1, len(tokenizer)))
        got.append(int(scores.argmax()))
        assert torch.isinf(scores).sum() == len(tokenizer) - 1  # one token allowed
        ids = torch.cat([ids, torch.tensor([[got[-1]]])], dim=1)
    assert tokenizer.decode(got) == "816>>"
    untouched = torch.randn(1, len(tokenizer))
    assert torch.equal(forcing(ids, untouched), untouched)  # the annotation is closed: free again


def test_engine_uses_the_runs_calculator_setting(tiny_run, tmp_path, monkeypatch):
    import shutil

    run = shutil.copytree(tiny_run, tmp_path / "run")
    tree = yaml.safe_load((run / "config.yaml").read_text())
    tree["eval"]["calculator"] = True
    (run / "config.yaml").write_text(yaml.safe_dump(tree))
    engine = Engine.from_paths([run])
    name = next(iter(engine.runs))
    model = engine.runs[name].config.model.name
    assert engine.config_for(model, name, "qa", 16).eval.calculator is True
    assert engine.config_for(model, name, "qa", 16, calculator=False).eval.calculator is False

    seen = {}

    def fake_stream(backend, prompt, stops, max_new_tokens, calculator=False, loop_stop=None):
        seen["calculator"] = calculator
        yield "x"

    monkeypatch.setattr("mathtune.app.engine.stream_generate", fake_stream)
    monkeypatch.setattr(engine, "backend", lambda cfg, run_name: type("B", (), {"tokenizer": None})())
    monkeypatch.setattr(engine, "prompt_for", lambda cfg, question, tokenizer: question)
    list(engine.stream(engine.config_for(model, name, "qa", 16), name, "What is 48*17?"))
    assert seen["calculator"] is True


def test_streaming_with_the_calculator_runs_through_generate(tiny_run):
    """The logits processor goes through transformers' generate with the streamer and stop strings."""
    engine = Engine.from_paths([tiny_run])
    name = next(iter(engine.runs))
    model = engine.runs[name].config.model.name
    cfg = engine.config_for(model, name, "qa", 12, calculator=True)
    texts = list(engine.stream(cfg, name, "Tom has 48 boxes of 17 pens. How many pens?"))
    assert texts and isinstance(texts[-1], str)


def test_the_app_decodes_with_int8_weights_when_asked(tiny_run):
    from mathtune.speedups.int8_decode import Int8DecodeLinear

    engine = Engine.from_paths([tiny_run], int8_decode=True)
    name = next(iter(engine.runs))
    model = engine.runs[name].config.model.name
    cfg = engine.config_for(model, name, "qa", 8)
    assert cfg.eval.int8_decode is True
    texts = list(engine.stream(cfg, name, "Tom has 48 boxes of 17 pens. How many pens?"))
    assert texts and isinstance(texts[-1], str)
    assert any(isinstance(m, Int8DecodeLinear) for m in engine.backend(cfg, name).model.modules())
    assert Engine.from_paths([tiny_run]).config_for(model, name, "qa", 8).eval.int8_decode is False
