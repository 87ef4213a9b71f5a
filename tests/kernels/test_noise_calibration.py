import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dzspec.kernels.noise_calibration import (
    HISTOGRAM_EDGES,
    calibration_from_histogram,
    normalised_residuals,
    residual_histogram,
)


def _noise(nspec=3000, nwave=400, seed=0):
    rng = np.random.default_rng(seed)
    continuum = 5.0 + np.sin(np.arange(nwave) / 60.0)
    sigma = rng.uniform(0.5, 2.0, (nspec, 1)) * np.ones(nwave)
    flux = continuum + rng.normal(0.0, 1.0, (nspec, nwave)) * sigma
    return flux, 1.0 / sigma**2, rng


def test_sky_residual_pixels_are_inflated_and_the_rest_is_not():
    """Residuals of either sign at fixed pixels (sky lines), unknown to the pipeline variance, are measured."""
    flux, ivar, rng = _noise()
    sky = np.array([50, 51, 200, 333])
    flux[:, sky] += rng.normal(0.0, 2.5, (flux.shape[0], sky.size)) / np.sqrt(ivar[:, sky])  # sigma x sqrt(1+6.25)
    scale = calibration_from_histogram(residual_histogram(flux, ivar), smooth_pixels=1)
    np.testing.assert_allclose(scale[sky], np.sqrt(1 + 2.5**2), rtol=0.08)
    others = np.setdiff1d(np.arange(flux.shape[1]), sky)
    assert np.median(scale[others]) < 1.03 and np.max(scale[others]) < 1.12


def test_a_cluster_does_not_inflate_its_own_lines():
    """A third of the spectra hold an emission line at the same observed pixels (a galaxy cluster): the scale is
    read from the lower half of the residuals, so the lines keep their variance."""
    flux, ivar, _ = _noise()
    members = slice(0, flux.shape[0] // 3)
    flux[members, 120:123] += 8.0 / np.sqrt(ivar[members, 120:123])
    scale = calibration_from_histogram(residual_histogram(flux, ivar), smooth_pixels=1)
    assert np.max(scale[118:125]) < 1.12


def test_masked_pixels_and_empty_spectra_are_left_out():
    flux, ivar, _ = _noise(nspec=200, nwave=100)
    ivar[:, 40:60] = 0.0
    ivar[7] = 0.0
    r = normalised_residuals(flux, ivar)
    assert np.isnan(r[:, 40:60]).all() and np.isnan(r[7]).all() and np.isfinite(r[:6, 25:40]).all()
    counts = residual_histogram(flux, ivar)
    assert counts.shape == (100, HISTOGRAM_EDGES.size - 1)
    np.testing.assert_array_equal(counts.sum(axis=1)[40:60], 0)
    np.testing.assert_array_equal(counts.sum(axis=1)[25:40], 199)
    np.testing.assert_array_equal(counts.sum(axis=1)[:25], 0)  # half a window from the end: one-sided, left out
    scale = calibration_from_histogram(counts, min_spectra=150)
    np.testing.assert_array_equal(scale[40:60], 1.0)  # no data: no inflation


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), split=st.integers(1, 59))
def test_histograms_of_blocks_add_up(seed, split):
    """The partial sum is additive: any split of the spectra gives the same total (the tree reduction's premise)."""
    flux, ivar, _ = _noise(nspec=60, nwave=80, seed=seed)
    whole = residual_histogram(flux, ivar)
    parts = residual_histogram(flux[:split], ivar[:split]) + residual_histogram(flux[split:], ivar[split:])
    np.testing.assert_array_equal(parts, whole)
    assert calibration_from_histogram(whole).min() >= 1.0
