"""Drift math on known distributions: same distribution -> low score, shifted -> high.

    pytest tests/test_drift_stats.py
"""

import numpy as np
import pytest

from service.drift.stats import (
    category_psi,
    ks_from_profile,
    mmd_rbf,
    psi,
    psi_from_profile,
)
from training.artifact.profile import distribution


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def test_psi_of_identical_histograms_is_zero_and_grows_with_shift():
    assert psi([10, 20, 30], [1, 2, 3]) == pytest.approx(0.0, abs=1e-12)
    assert psi([10, 20, 30], [30, 20, 10]) > 0.5
    assert psi([10, 20, 30], [0, 0, 0]) == 0.0


def test_profile_psi_and_ks_separate_same_and_shifted_lengths(rng):
    ref = distribution(rng.normal(40, 8, 5000).tolist())
    same = rng.normal(40, 8, 500)
    shifted = rng.normal(70, 8, 500)
    assert psi_from_profile(ref, same) < 0.1
    assert psi_from_profile(ref, shifted) > 1.0
    assert ks_from_profile(ref, same) < 0.1
    assert ks_from_profile(ref, shifted) > 0.8


def test_profile_scores_handle_values_outside_the_reference_range(rng):
    ref = distribution(rng.uniform(0, 10, 1000).tolist())
    far = np.full(100, 1000.0)
    assert ks_from_profile(ref, far) == pytest.approx(1.0)
    assert psi_from_profile(ref, far) > 1.0


def test_ks_matches_scipy_for_a_fine_histogram(rng):
    from scipy.stats import ks_2samp

    ref_values = rng.normal(0, 1, 20000)
    live = rng.normal(0.3, 1, 400)
    ours = ks_from_profile(distribution(ref_values.tolist(), bins=200), live)
    assert ours == pytest.approx(ks_2samp(ref_values, live).statistic, abs=0.02)


def test_category_psi_counts_unseen_categories_in_other():
    ref = {"neg": 0.5, "pos": 0.5}
    assert category_psi(ref, ["neg", "pos"] * 50) < 0.01
    assert category_psi(ref, ["pos"] * 95 + ["neg"] * 5) > 0.5
    assert category_psi(ref, ["spam"] * 100) > 1.0
    assert category_psi(ref, []) == 0.0


def test_mmd_low_for_same_distribution_high_for_shifted(rng):
    ref = rng.normal(0, 1, (200, 16))
    same = rng.normal(0, 1, (32, 16))
    shifted = rng.normal(0.8, 1, (32, 16))
    low, high = mmd_rbf(ref, same), mmd_rbf(ref, shifted)
    assert low < 0.02
    assert high > 5 * max(low, 0.01)
    assert mmd_rbf(ref[:1], same) == 0.0
