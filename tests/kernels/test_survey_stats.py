"""Survey statistics kernels: partial sums over any split of the spectra add up to the whole-survey statistic, which
equals the reference definitions of dzspec.kernels.metrics."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dzspec.kernels.metrics import good_fraction, mae_with_rejection, purity_completeness, wilson_interval
from dzspec.kernels.survey_stats import (
    ERROR_EDGES,
    auc,
    bin_index,
    class_histogram_partial,
    error_histogram_partial,
    gf_from_partials,
    gf_partial,
    histogram_quantile,
    kept_error_partial,
    nearest_to_corner,
    rank_auc,
    roc_curve,
    threshold_from_partials,
    threshold_partial,
)


def _survey(seed, n):
    rng = np.random.default_rng(seed)
    z_true = rng.uniform(0, 6, n)
    z_true[rng.random(n) < 0.05] = np.nan  # unknown truth
    z_pred = z_true + rng.normal(0, 2e-4, n) * (1 + z_true)
    wrong = rng.random(n) < 0.2
    z_pred[wrong] = rng.uniform(0, 6, wrong.sum())
    z_pred[rng.random(n) < 0.02] = np.nan  # failed fits
    return z_pred, z_true, rng.uniform(0, 30, n)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), cuts=st.lists(st.integers(1, 499), max_size=5))
def test_gf_partials_over_any_split_add_up_to_the_reference(seed, cuts):
    z_pred, z_true, snr = _survey(seed, 500)
    edges = np.array([0.0, 5.0, 10.0, 30.0])
    blocks = np.split(np.arange(500), sorted(set(cuts)))
    total = sum(gf_partial(z_pred[b], z_true[b], bin_index(snr[b], edges), 3) for b in blocks)
    table = gf_from_partials(total)
    for i in range(3):
        inside = (snr >= edges[i]) & (snr < edges[i + 1])
        gf, good, n = good_fraction(z_pred[inside], z_true[inside])
        assert (table["n"][i], table["n_good"][i]) == (n, good) and table["gf"][i] == pytest.approx(gf)
    centre, half = wilson_interval(total[:, 1], total[:, 0])
    np.testing.assert_allclose(table["gf_lo"], centre - half)


def test_mae_from_histograms_matches_the_exact_rejection():
    z_pred, z_true, _ = _survey(1, 20000)
    known = np.isfinite(z_true)
    error = np.abs(z_pred - z_true) / (1 + z_true)
    index = np.zeros(error.size, dtype=np.int64)
    median = histogram_quantile(error_histogram_partial(error, index, 1), ERROR_EDGES, 0.5)
    mad = histogram_quantile(error_histogram_partial(np.abs(error - median[0]), index, 1), ERROR_EDGES, 0.5)
    kept = kept_error_partial(error, index, 5 * mad, 1)
    exact, n_kept = mae_with_rejection(z_pred[known], z_true[known])
    assert np.nanmedian(error) == pytest.approx(median[0], rel=5e-3)
    assert kept[0, 0] / kept[0, 1] == pytest.approx(exact, rel=1e-3) and abs(kept[0, 1] - n_kept) <= 0.001 * n_kept


def test_threshold_counts_equal_purity_completeness_and_roc():
    rng = np.random.default_rng(2)
    positive = rng.random(3000) < 0.6
    score = rng.normal(np.where(positive, 1.0, -1.0), 1.0)
    score[::50] = np.nan
    thresholds = np.linspace(-3, 3, 61)
    table = threshold_from_partials(threshold_partial(score[:1000], positive[:1000], thresholds)
                                    + threshold_partial(score[1000:], positive[1000:], thresholds))
    purity, completeness = purity_completeness(score, positive, thresholds)
    np.testing.assert_allclose(table["purity"], purity)
    np.testing.assert_allclose(table["completeness"], completeness)
    selected = np.nan_to_num(score, nan=-np.inf)[None] > thresholds[:, None]
    np.testing.assert_allclose(table["fpr"], (selected & ~positive).sum(axis=1) / (~positive).sum())
    # two unit Gaussians 2 sigma apart: AUC = Phi(2 / sqrt 2) = 0.921 (the NaN scores are never selected)
    assert auc(table["fpr"], table["completeness"]) == pytest.approx(0.921, abs=0.02)
    best = nearest_to_corner(table["fpr"], table["completeness"])
    assert abs(thresholds[best]) < 0.4  # equal widths: the corner-nearest cut sits near the midpoint


def test_auc_of_perfect_and_random_classifiers():
    assert auc(np.array([0.0]), np.array([1.0])) == pytest.approx(1.0)
    assert auc(np.linspace(0, 1, 11), np.linspace(0, 1, 11)) == pytest.approx(0.5)


def test_bins_and_class_histograms():
    np.testing.assert_array_equal(bin_index(np.array([np.inf, -1.0, 0.0, 10.0]), np.array([0.0, 5.0, 10.0])),
                                  [-1, -1, 0, 1])
    counts = class_histogram_partial(np.array([0.5, 1.5, 1.5, 9.0, 0.5]), np.array([0, 1, 1, 0, 3]), 2,
                                     np.array([0.0, 1.0, 2.0]))
    np.testing.assert_array_equal(counts, [[1, 0], [0, 2]])


def test_roc_on_known_inputs():
    score = np.array([0.02, 0.012, 0.004, np.nan, 0.03, 0.008, 0.001, 0.0])
    positive = np.array([True, True, True, True, False, False, False, False])
    tpr, fpr = roc_curve(score, positive, np.array([0.003, 0.01, 0.025]))
    np.testing.assert_allclose(tpr, [0.75, 0.5, 0.0])
    np.testing.assert_allclose(fpr, [0.5, 0.25, 0.25])
    # Mann-Whitney by hand: pairs (pos, neg) with pos > neg: 0.02 beats 3, 0.012 beats 3, 0.004 beats 2, NaN none
    assert rank_auc(score, positive) == pytest.approx(8 / 16)
    # distances to (0, 1): 0.559, 0.559, 1.031; the first of a tie wins
    assert nearest_to_corner(fpr, tpr) == 0
    assert rank_auc(np.array([3.0, 2.0, 1.0]), np.array([True, True, False])) == 1.0
    assert rank_auc(np.array([1.0, 2.0, 3.0]), np.array([True, True, False])) == 0.0
    assert np.isnan(rank_auc(np.array([1.0, 2.0]), np.array([True, True])))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 60))
def test_rank_auc_equals_the_closed_trapezoid_over_every_threshold(seed, n):
    rng = np.random.default_rng(seed)
    score = np.round(rng.random(n), 1)  # ties on purpose
    positive = rng.random(n) < 0.4
    positive[:2] = [True, False]
    tpr, fpr = roc_curve(score, positive, np.r_[-np.inf, np.unique(score)])
    assert rank_auc(score, positive) == pytest.approx(auc(fpr, tpr), abs=1e-12)
