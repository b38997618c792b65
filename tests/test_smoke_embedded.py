"""Smoke tests on the embedded SmolLM2-135M model and real GSM8K rows (about a minute)."""

import json
import subprocess
import sys

import pytest
from helpers import SHARED_DATA

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (SHARED_DATA / "gsm8k" / "train.jsonl").is_file(), reason="GSM8K not in ../shared"),
]


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def test_embedded_model_trains_and_evaluates_on_real_rows(tmp_path, shared_cache, monkeypatch):
    monkeypatch.setenv("MATHTUNE_CACHE_DIR", str(shared_cache))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "mathtune.cli", "run", "--data-dir", str(SHARED_DATA), "-o", str(out),
           "--train-size", "8", "--eval-size", "4", "-s", "eval.max_new_tokens=24", "-s", "data.max_length=256"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    card = json.loads((out / "train_card.json").read_text())
    assert card["model"] == "smollm2-135m" and card["steps"] == 2
    assert card["trainable_params"] == 921_600  # r=8 on q,k,v,o of 30 layers
    rows = [json.loads(line) for line in (out / "eval" / "tuned" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and any(r["output"].strip() for r in rows)  # a real model may stop at once
    metrics = json.loads((out / "eval" / "base" / "metrics.json").read_text())
    assert 1 < metrics["perplexity"] < 50  # a real language model, not noise (random ~ 49k)
    assert (shared_cache / "gguf").is_dir()  # the dequantized GGUF was cached
