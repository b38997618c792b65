"""Agreement statistics against hand-computed values and Krippendorff's published example."""

import math

import pytest

from mathtune.app.agreement import krippendorff_alpha, mean_pairwise_kappa, quadratic_weighted_kappa

# Krippendorff (2011), "Computing Krippendorff's alpha-reliability": 4 observers, 12 units, gaps.
_ = None
OBSERVERS = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, _, _, _],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, _, 3],
    [_, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, _],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, _],
]
UNITS = [[obs[u] for obs in OBSERVERS if obs[u] is not None] for u in range(12)]


def test_alpha_matches_krippendorffs_published_example():
    assert krippendorff_alpha(UNITS, "nominal") == pytest.approx(0.743, abs=5e-4)
    assert krippendorff_alpha(UNITS, "interval") == pytest.approx(0.849, abs=5e-4)


def test_alpha_by_hand():
    # units {1,2} {3,3} {5,4}: D_o = (2 + 0 + 2) / 6 = 2/3; the 15 pairs of all six values have
    # squared differences summing to 60, so D_e = 2 * 60 / (6 * 5) = 4; alpha = 1 - (2/3) / 4 = 5/6.
    assert krippendorff_alpha([[1, 2], [3, 3], [5, 4]]) == pytest.approx(5 / 6)
    assert krippendorff_alpha([[1, 1], [4, 4], [2, 2, 2]]) == 1.0
    assert krippendorff_alpha([[3], [4]]) != krippendorff_alpha([[3], [4]])  # nan: nothing pairable
    assert math.isnan(krippendorff_alpha([[2, 2], [2, 2]]))  # nan: no variation at all


def test_quadratic_kappa_by_hand():
    # observed mean squared difference 1/3; expected under independent marginals
    # (1/3,1/3,1/3) x (1/3,2/3,0) is 1; kappa = 1 - (1/3) / 1 = 2/3
    assert quadratic_weighted_kappa([1, 2, 3], [1, 2, 2]) == pytest.approx(2 / 3)
    assert quadratic_weighted_kappa([1, 3, 5], [1, 3, 5]) == 1.0
    assert quadratic_weighted_kappa([1, 5], [5, 1]) == pytest.approx(-1.0)
    assert math.isnan(quadratic_weighted_kappa([3, 3], [3, 3]))
    with pytest.raises(ValueError):
        quadratic_weighted_kappa([1], [1, 2])


def test_mean_pairwise_kappa_skips_pairs_without_enough_shared_items():
    ratings = {"ann": {"a": 1, "b": 2, "c": 3}, "bob": {"a": 1, "b": 2, "c": 2}, "cy": {"z": 4}}
    assert mean_pairwise_kappa(ratings) == pytest.approx(2 / 3)
    assert math.isnan(mean_pairwise_kappa({"ann": {"a": 1}}))
