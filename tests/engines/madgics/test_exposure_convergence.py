"""Kernels of the exposure-time convergence (U25 §4.3): draws, coadds, sigma_z, the per-target bootstrap and the
Fig. 9 table, against direct loops and as properties."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dzspec.engines.madgics.exposure_convergence import (
    ConvergenceWarn,
    coadd_subsets,
    converged_counts,
    converged_fraction_grid,
    redshift_spread,
    subset_counts,
    subset_draws,
    target_convergence,
)

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)


@given(key=st.integers(0, 10**9), n=st.integers(1, 20), m=st.integers(1, 30), draws=st.integers(1, 12),
       seed=st.integers(0, 2**31))
def test_draws_are_in_range_reproducible_and_counted(key, n, m, draws, seed):
    d = subset_draws(key, n, m, draws, seed=seed)
    assert d.shape == (draws, n) and d.min() >= 0 and d.max() < m
    np.testing.assert_array_equal(d, subset_draws(key, n, m, draws, seed=seed))
    counts = subset_counts(d, m)
    assert counts.shape == (draws, m) and (counts.sum(axis=1) == n).all()
    for row, c in zip(d, counts, strict=True):
        np.testing.assert_array_equal(c, np.bincount(row, minlength=m))


def test_draws_depend_on_key_seed_and_n_only():
    base = subset_draws(3, 5, 15, 10, seed=1)
    assert not np.array_equal(base, subset_draws(4, 5, 15, 10, seed=1))
    assert not np.array_equal(base, subset_draws(3, 5, 15, 10, seed=2))
    # with replacement: over many draws, repeats happen and every exposure is used
    many = subset_draws(3, 15, 15, 200, seed=1)
    assert any(np.unique(row).size < 15 for row in many) and np.unique(many).size == 15
    with pytest.raises(ValueError, match="key and seed"):
        subset_draws(-1, 2, 3)


@settings(max_examples=50, deadline=None)
@given(data=st.data(), m=st.integers(1, 6), nwave=st.integers(1, 8), sets=st.integers(1, 5))
def test_coadd_equals_the_per_pixel_weighted_mean(data, m, nwave, sets):
    flux = data.draw(hnp.arrays(np.float64, (m, nwave), elements=finite))
    ivar = data.draw(hnp.arrays(np.float64, (m, nwave), elements=st.sampled_from([0.0, 0.5, 1.0, 4.0, 25.0])))
    counts = data.draw(hnp.arrays(np.int64, (sets, m), elements=st.integers(0, 3)))
    coadd, total = coadd_subsets(flux, ivar, counts)
    for s in range(sets):
        for j in range(nwave):
            w = counts[s] * ivar[:, j]
            assert total[s, j] == pytest.approx(w.sum())
            expected = (w * flux[:, j]).sum() / w.sum() if w.sum() > 0 else 0.0
            assert coadd[s, j] == pytest.approx(expected, rel=1e-9, abs=1e-9)
    # the order of the exposures does not matter
    order = data.draw(st.permutations(range(m)))
    again = coadd_subsets(flux[order], ivar[order], counts[:, order])
    np.testing.assert_allclose(again[0], coadd, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(again[1], total, rtol=1e-12)


def test_coadd_ignores_bad_pixels_and_repeats_add_weight():
    flux = np.array([[1.0, np.nan, 5.0], [3.0, 2.0, np.inf]])
    ivar = np.array([[1.0, 1.0, 1.0], [1.0, 1.0, np.nan]])
    coadd, total = coadd_subsets(flux, ivar, np.array([[1, 1], [2, 0]]))
    np.testing.assert_array_equal(coadd, [[2.0, 2.0, 5.0], [1.0, 0.0, 5.0]])
    np.testing.assert_array_equal(total, [[2.0, 1.0, 1.0], [2.0, 0.0, 2.0]])


@given(hnp.arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(2, 12)), elements=st.floats(0, 7)),
       st.floats(-3, 3))
def test_std_spread_is_numpy_std_and_shift_invariant(z, shift):
    np.testing.assert_allclose(redshift_spread(z), np.std(z, axis=1, ddof=1), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(redshift_spread(z + shift), redshift_spread(z), rtol=1e-6, atol=1e-9)


def test_spread_estimators_and_missing_values():
    z = np.r_[np.full(8, 3.0) + np.linspace(-1e-4, 1e-4, 8), 3.8, np.nan]
    assert redshift_spread(z) > 0.2  # one catastrophic draw of nine: not converged
    assert redshift_spread(z, "iqr") < 1e-3  # the robust spread ignores it
    assert np.isnan(redshift_spread(np.array([3.0, np.nan])))
    assert redshift_spread(np.zeros((2, 3, 5)), axis=1).shape == (2, 5)
    with pytest.raises(ValueError, match="estimator"):
        redshift_spread(z, "mad")


def _line_target(rng, m=8, nwave=60, amplitude=2.0):
    flux = rng.normal(size=(m, nwave))
    flux[:, 30] += amplitude
    return flux, np.ones((m, nwave)), rng.uniform(600, 1400, m)


def _peak_scan(flux, ivar):
    z = np.argmax(flux * np.sqrt(ivar), axis=1) / 1000.0
    return np.where(ivar.sum(axis=1) > 0, z, np.nan)


def test_target_convergence_converges_with_more_exposures():
    rng = np.random.default_rng(1)
    flux, ivar, exptime = _line_target(rng)
    r = target_convergence(flux, ivar, exptime, _peak_scan, key=4, n_values=[1, 2, 4, 8, 16], n_draws=10)
    assert r.z.shape == (5, 10) and r.warn == 0 and (r.n_valid == 10).all()
    # the total time of each draw is the sum of its exposures; the mean grows like n
    np.testing.assert_allclose(r.exptime_mean / np.array([1, 2, 4, 8, 16]), exptime.mean(), rtol=0.25)
    assert r.sigma_z[0] > 1e-3 and r.sigma_z[-1] == 0.0 and r.z_all == 0.03
    # reproducible per key; the result for one n does not depend on the others
    alone = target_convergence(flux, ivar, exptime, _peak_scan, key=4, n_values=[4], n_draws=10)
    np.testing.assert_array_equal(alone.z[0], r.z[2])
    np.testing.assert_array_equal(alone.exptime[0], r.exptime[2])


def test_target_convergence_flags_failed_scans():
    rng = np.random.default_rng(2)
    flux, ivar, exptime = _line_target(rng, m=3)
    ivar[0] = 0.0  # exposure 0 has no data: a draw of it alone fails
    r = target_convergence(flux, ivar, exptime, _peak_scan, key=0, n_values=[1], n_draws=12)
    assert r.warn & ConvergenceWarn.SCAN_FAILED and r.n_valid[0] < 12
    np.testing.assert_array_equal(np.isfinite(r.z[0]).sum(), r.n_valid[0])
    with pytest.raises(ValueError, match="scan returned"):
        target_convergence(flux, ivar, exptime, lambda f, i: np.zeros(2), key=0, n_values=[1])


@settings(max_examples=40, deadline=None)
@given(data=st.data(), nt=st.integers(1, 12), n=st.integers(1, 4))
def test_counts_are_a_brute_force_count_cumulative_in_flux_and_summable(data, nt, n):
    sigma = data.draw(hnp.arrays(np.float64, (nt, n), elements=st.sampled_from([0.0, 5e-4, 2e-3, 0.1, np.nan])))
    time = data.draw(hnp.arrays(np.float64, (nt, n), elements=st.sampled_from([100.0, 900.0, 2000.0, 5000.0])))
    flux = data.draw(hnp.arrays(np.float64, (nt,), elements=st.sampled_from([0.5, 1.0, 3.0, 10.0, np.nan])))
    edges, thresholds = [0.0, 1000.0, 3000.0], [0.0, 1.0, 5.0]
    converged, count = converged_counts(sigma, time, flux, edges, thresholds)
    for t, limit in enumerate(thresholds):
        for b in range(2):
            points = [(i, k) for i in range(nt) for k in range(n) if flux[i] >= limit and np.isfinite(sigma[i, k])
                      and edges[b] <= time[i, k] < edges[b + 1]]
            assert count[t, b] == len(points)
            assert converged[t, b] == sum(sigma[i, k] < 1e-3 for i, k in points)
    assert (np.diff(count, axis=0) <= 0).all()  # brighter limits keep fewer points
    cut = data.draw(st.integers(0, nt))
    first = converged_counts(sigma[:cut], time[:cut], flux[:cut], edges, thresholds)
    second = converged_counts(sigma[cut:], time[cut:], flux[cut:], edges, thresholds)
    np.testing.assert_array_equal(first[0] + second[0], converged)
    np.testing.assert_array_equal(first[1] + second[1], count)
    fraction, again = converged_fraction_grid(sigma, time, flux, edges, thresholds)
    np.testing.assert_array_equal(again, count)
    assert np.array_equal(np.isnan(fraction), count == 0)


def test_counts_refuse_bad_edges():
    with pytest.raises(ValueError, match="increasing"):
        converged_counts(np.zeros((1, 1)), np.zeros((1, 1)), np.zeros(1), [1.0, 1.0], [0.0])
    with pytest.raises(ValueError, match="differ"):
        converged_counts(np.zeros((1, 2)), np.zeros((1, 1)), np.zeros(1), [0.0, 1.0], [0.0])
