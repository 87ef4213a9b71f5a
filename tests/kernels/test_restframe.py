import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dzspec.kernels.restframe import (
    MIN_ZERO_RUN,
    MOOSE_GRID,
    PAPER_GRID,
    LogGrid,
    measured_pixels,
    observed_window,
    to_log_grid,
)

WAVE = 4750.0 + 1.25 * np.arange(3681)


def test_grids_match_the_paper_and_moose_constants():
    assert PAPER_GRID.size == 53918 and math.isclose(PAPER_GRID.start, math.log10(4600 / 7.7))
    assert abs(PAPER_GRID.loglam()[-1] - math.log10(9350.0)) < PAPER_GRID.step
    assert math.isclose(MOOSE_GRID.start, math.log10(562.5)) and 56230 < MOOSE_GRID.size < 56250
    z = np.array([0.0, 1.0, 6.7])
    # Nearest shift: at most half a pixel, dz/(1+z) <= ln10 * delta / 2 = 2.6e-5.
    assert (np.abs(PAPER_GRID.redshift_of(PAPER_GRID.shift_of(z)) - z) <= (1 + z) * 2.6e-5).all()


def test_flux_is_conserved_and_lines_land_at_rest_wavelength():
    z = 0.8
    line = 20.0 * np.exp(-0.5 * ((WAVE - 3728.0 * (1 + z)) / 2.0) ** 2)
    flux = 1.0 + 1e-4 * WAVE + line
    f, _ = to_log_grid(WAVE, flux, np.ones_like(WAVE), PAPER_GRID, z=z)
    observed_integral = np.trapezoid(flux, WAVE)
    assert abs(f[0].sum() * PAPER_GRID.step - observed_integral) < 1e-3 * observed_integral
    rest = PAPER_GRID.wavelength()
    near = (rest > 3700) & (rest < 3756)
    excess = f[0, near] - np.median(f[0, near])
    assert abs((excess * rest[near]).sum() / excess.sum() - 3728.0) < 0.2


def test_missing_data_and_range_edges_get_zero_weight():
    ivar = np.ones_like(WAVE)
    ivar[1000:1010] = 0.0
    f, w = to_log_grid(WAVE, np.ones_like(WAVE), ivar, PAPER_GRID)
    obs = PAPER_GRID.wavelength()
    gap = (obs > WAVE[999]) & (obs < WAVE[1010])
    assert (w[0, gap] == 0).all() and (f[0, gap] == 0).all()
    assert (w[0, obs < WAVE[0]] == 0).all() and (w[0, obs > WAVE[-1]] == 0).all()
    inside = (obs > WAVE[0]) & (obs < WAVE[-1]) & ~gap
    # Variance picks up (ln10 * lambda)^2.
    np.testing.assert_allclose(w[0, inside], 1 / (math.log(10) * obs[inside]) ** 2, rtol=1e-3)


@settings(max_examples=25, deadline=None)
@given(k=st.integers(0, 40000))
def test_redshift_is_an_exact_integer_shift(k):
    """De-redshifting by z_k = 10^(k delta) - 1 equals reading the observed log grid k pixels further."""
    rng = np.random.default_rng(k)
    flux = rng.normal(size=WAVE.size)
    z = float(PAPER_GRID.redshift_of(k))
    j0, n = observed_window(WAVE, PAPER_GRID)
    observed, w_obs = to_log_grid(WAVE, flux, np.ones_like(WAVE), PAPER_GRID, window=(j0, n))
    rest, w_rest = to_log_grid(WAVE, flux, np.ones_like(WAVE), PAPER_GRID, z=z, window=(j0 - k, n))
    np.testing.assert_allclose(rest, observed, rtol=1e-9, atol=1e-9 * np.abs(observed).max())
    np.testing.assert_array_equal(w_rest > 0, w_obs > 0)


def test_vectorised_over_spectra_with_their_own_redshifts():
    flux = np.vstack([np.ones_like(WAVE), 2 * np.ones_like(WAVE)])
    both = to_log_grid(WAVE, flux, np.ones_like(flux), LogGrid.spanning(2000.0, 9400.0, 1e-4), z=[0.0, 1.0])
    one = to_log_grid(WAVE, flux[1], np.ones_like(WAVE), LogGrid.spanning(2000.0, 9400.0, 1e-4), z=1.0)
    np.testing.assert_array_equal(both[0][1], one[0][0])


@settings(max_examples=50, deadline=None)
@given(runs=st.lists(st.tuples(st.integers(0, 60), st.integers(1, 12)), max_size=6), seed=st.integers(0, 2**16))
def test_measured_pixels_rejects_exactly_the_long_zero_runs(runs, seed):
    rng = np.random.default_rng(seed)
    flux = rng.normal(size=(2, 80)) + 3.0  # never exactly zero
    ivar = rng.uniform(0.5, 2.0, size=(2, 80))
    for start, length in runs:
        flux[1, start : start + length] = 0.0
    zero = np.r_[0, (flux[1] == 0).astype(int), 0]
    starts, ends = np.flatnonzero(np.diff(zero) == 1), np.flatnonzero(np.diff(zero) == -1)
    expected = np.ones(80, bool)
    for a, b in zip(starts, ends, strict=True):
        if b - a >= MIN_ZERO_RUN:
            expected[a:b] = False
    good = measured_pixels(flux, ivar)
    assert good[0].all()
    np.testing.assert_array_equal(good[1], expected)


def test_a_zero_filled_notch_with_finite_variance_is_no_data():
    """MUSE AO products: flux 0 and a finite STAT in the laser notch; the transform must not see measurements."""
    flux = 1.0 + 1e-4 * WAVE
    notch = (WAVE >= 5800.0) & (WAVE <= 5966.25)
    filled, masked = flux.copy(), flux.copy()
    filled[notch] = 0.0
    ivar_masked = np.where(notch, 0.0, 1.0)
    f1, w1 = to_log_grid(WAVE, filled, np.ones_like(WAVE), PAPER_GRID)
    f2, w2 = to_log_grid(WAVE, masked, ivar_masked, PAPER_GRID)
    np.testing.assert_array_equal(w1, w2)
    np.testing.assert_array_equal(f1, f2)
