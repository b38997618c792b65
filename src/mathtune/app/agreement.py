"""Agreement between human raters on 1-5 ratings: Krippendorff's alpha and quadratic-weighted kappa.

Krippendorff's alpha = 1 - D_o / D_e, over units (here: one model output) rated by >= 2 raters:

    n   = number of pairable values (values in units with m_u >= 2 ratings)
    D_o = 1/n * sum_u 1/(m_u - 1) * sum_{i != j in u} delta(v_i, v_j)      (disagreement within units)
    D_e = 1/(n (n - 1)) * sum_{i != j over all pairable values} delta(v_i, v_j)  (by chance)

with delta = (a - b)^2 for interval data and [a != b] for nominal data. It allows any number of
raters and missing ratings; 1 is perfect agreement, 0 is chance level.

Cohen's kappa with quadratic weights for two raters on the same items, categories 1..K:

    kappa_w = 1 - sum_ij w_ij O_ij / sum_ij w_ij E_ij,   w_ij = (i - j)^2,

O the observed joint proportions, E the product of the two raters' marginal proportions.
Both return NaN when undefined (no pairable values, or no variation to disagree about).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from itertools import combinations

DELTAS: dict[str, Callable[[float, float], float]] = {
    "interval": lambda a, b: (a - b) ** 2,
    "nominal": lambda a, b: float(a != b),
}


def krippendorff_alpha(units: Sequence[Sequence[float]], metric: str = "interval") -> float:
    """Alpha over `units`, each the list of values the raters gave one item (missing ones left out)."""
    delta = DELTAS[metric]
    pairable = [list(values) for values in units if len(values) >= 2]
    values = [v for unit in pairable for v in unit]
    n = len(values)
    if n < 2:
        return math.nan
    observed = (
        sum(
            sum(delta(a, b) for i, a in enumerate(unit) for j, b in enumerate(unit) if i != j) / (len(unit) - 1)
            for unit in pairable
        )
        / n
    )
    expected = 2 * sum(delta(a, b) for a, b in combinations(values, 2)) / (n * (n - 1))
    if expected == 0:
        return math.nan
    return 1 - observed / expected


def quadratic_weighted_kappa(first: Sequence[int], second: Sequence[int], low: int = 1, high: int = 5) -> float:
    """Cohen's kappa with quadratic weights for two raters' ratings of the same items."""
    if len(first) != len(second):
        raise ValueError(f"kappa needs paired ratings, got {len(first)} and {len(second)}")
    n = len(first)
    if n == 0:
        return math.nan
    categories = range(low, high + 1)
    p_first = {c: sum(1 for a in first if a == c) / n for c in categories}
    p_second = {c: sum(1 for b in second if b == c) / n for c in categories}
    observed = sum((a - b) ** 2 for a, b in zip(first, second, strict=True)) / n
    expected = sum(p_first[i] * p_second[j] * (i - j) ** 2 for i in categories for j in categories)
    if expected == 0:
        return math.nan
    return 1 - observed / expected


def mean_pairwise_kappa(ratings: Mapping[Hashable, Mapping[Hashable, int]], min_shared: int = 2) -> float:
    """Mean quadratic-weighted kappa over rater pairs with >= `min_shared` items both rated.

    `ratings` maps rater -> {item -> rating}. Pairs whose kappa is undefined are left out.
    """
    kappas = []
    for a, b in combinations(sorted(ratings, key=str), 2):
        shared = sorted(set(ratings[a]) & set(ratings[b]), key=str)
        if len(shared) < min_shared:
            continue
        kappa = quadratic_weighted_kappa([ratings[a][i] for i in shared], [ratings[b][i] for i in shared])
        if not math.isnan(kappa):
            kappas.append(kappa)
    return sum(kappas) / len(kappas) if kappas else math.nan
