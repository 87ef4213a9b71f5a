import numpy as np
import pytest

from dzspec.engines.madgics.priors import (
    LAE_GRID,
    RescalePolynomial,
    align_windows,
    gram,
    lae_vectors_from_windows,
    sky_line_counts,
    sky_mask_from_counts,
    sky_spectra_keep,
    sky_vectors_from_gram,
    to_lae_grid,
)
from dzspec.engines.madgics.scan import madgics_rescale_y, sky_component
from dzspec.kernels.restframe import LogGrid

WAVE = np.arange(3600.0, 9824.1, 0.8)


def test_lae_grid_is_u25s():
    assert LAE_GRID.size == 8720 and LAE_GRID.step == 5e-5
    assert LAE_GRID.wavelength()[0] == pytest.approx(3600.0)
    assert LAE_GRID.wavelength()[-1] == pytest.approx(9824.0, abs=1.2)


def test_resampling_interpolates_flux_and_propagates_variance():
    rng = np.random.default_rng(0)
    slope = 1e-3 * WAVE + 2.0
    ivar = rng.uniform(1, 4, WAVE.size)
    ivar[500] = 0.0
    flux, out_ivar = to_lae_grid(WAVE, slope, ivar, variance_model="propagate")
    grid_wave = LAE_GRID.wavelength()
    inside = grid_wave <= WAVE[-1]
    good = inside & (out_ivar[0] > 0)
    # linear in log lambda between natives 0.8 A apart: a line in lambda is reproduced to ~1e-7
    np.testing.assert_allclose(flux[0, good], 1e-3 * grid_wave[good] + 2.0, rtol=1e-6)
    # variance sum w_k^2 var_k at one pixel between natives
    j = 2000
    k = np.searchsorted(WAVE, grid_wave[j]) - 1
    t = (np.log10(grid_wave[j]) - np.log10(WAVE[k])) / (np.log10(WAVE[k + 1]) - np.log10(WAVE[k]))
    assert 1 / out_ivar[0, j] == pytest.approx((1 - t) ** 2 / ivar[k] + t**2 / ivar[k + 1], rel=1e-12)
    # the pixels next to the missing native pixel have no data
    near = np.flatnonzero(np.abs(grid_wave - WAVE[500]) < 0.8)
    assert near.size and np.all(out_ivar[0, near] == 0)
    y = madgics_rescale_y(grid_wave)
    scaled_flux, scaled_ivar = to_lae_grid(WAVE, slope, ivar, y=y, variance_model="propagate")
    np.testing.assert_allclose(scaled_flux * np.sqrt(10**y), flux, rtol=1e-12)
    np.testing.assert_allclose(scaled_ivar, out_ivar * 10**y, rtol=1e-12)


def test_conserving_variance_keeps_the_native_information():
    # the inverse variance summed over log pixels equals the native one where log pixels are narrower (blue), and
    # no pixel gains information over its native neighbours
    ivar = np.full(WAVE.size, 4.0)
    _, conserved = to_lae_grid(WAVE, np.ones(WAVE.size), ivar)
    _, propagated = to_lae_grid(WAVE, np.ones(WAVE.size), ivar, variance_model="propagate")
    grid_wave = LAE_GRID.wavelength()
    blue = (grid_wave > 3700) & (grid_wave < 4700)
    native_blue = (WAVE > 3700) & (WAVE < 4700)
    assert conserved[0, blue].sum() == pytest.approx(ivar[native_blue].sum(), rel=2e-3)
    assert propagated[0, blue].sum() > 2.5 * ivar[native_blue].sum()  # what a diagonal C_res would believe
    assert np.all(conserved[0] <= 4.0 + 1e-12)


def test_rescale_polynomial_fit_in_scaled_variable_and_paper_form():
    wave = LAE_GRID.wavelength()
    truth = madgics_rescale_y(wave)
    usable = np.ones(wave.size, bool)
    usable[1000:1100] = False
    fitted = RescalePolynomial.fit(wave, 10**truth, usable)
    np.testing.assert_allclose(fitted(wave), truth, atol=1e-6)  # the paper's y is itself a quartic in log10(wave)
    assert max(abs(c) for c in fitted.coefficients) < 10  # well conditioned, unlike the printed 1e5 coefficients
    np.testing.assert_array_equal(RescalePolynomial.paper()(wave), truth)


def test_sky_cuts_and_line_mask():
    rng = np.random.default_rng(1)
    n = 400
    flux = rng.normal(size=(30, n))
    flux[:, 200] += 10.0  # a sky line in every spectrum
    flux[:12, 50] -= 10.0  # in 12 of 30 (> 1/3)
    flux[:5, 300] += 10.0  # in 5 of 30 (< 1/3)
    ivar = np.ones_like(flux)
    mask = sky_mask_from_counts(sky_line_counts(flux, ivar), 30, pad=3)
    assert set(np.flatnonzero(mask)) == set(range(197, 204)) | set(range(47, 54))
    ivar[3, :] = 0.0
    ivar[4, :1001 - 990] = 0.0
    flux[5] += 1e6
    keep = sky_spectra_keep(flux, ivar, max_sum=1e5, max_masked=10)
    assert keep.tolist() == [True, True, True, False, False, False] + [True] * 24


def test_sky_prior_recovers_the_subspace_from_summed_grams():
    rng = np.random.default_rng(2)
    n, k = 300, 3
    basis = np.linalg.qr(rng.normal(size=(n, k)))[0] * np.array([5.0, 3.0, 2.0])
    x = (basis @ rng.normal(size=(k, 2000))).T + 0.05 * rng.normal(size=(2000, n))
    ivar = np.ones_like(x)
    ivar[:, 10] = 0.0
    total = gram(x[:1000], ivar[:1000]) + gram(x[1000:], ivar[1000:])
    np.testing.assert_allclose(np.tril(total), np.tril(np.where(ivar > 0, x, 0).T @ np.where(ivar > 0, x, 0)),
                               rtol=1e-10)
    mask = np.zeros(n, bool)
    mask[100:105] = True
    vectors, values = sky_vectors_from_gram(total, 2000, mask, n_vectors=k)
    assert np.all(vectors[mask] == 0) and np.all(np.diff(values) <= 0)
    keep = ~mask & (np.arange(n) != 10)
    true = np.linalg.qr(basis[keep])[0]
    got = np.linalg.qr(vectors[keep])[0]
    assert np.linalg.svd(true.T @ got, compute_uv=False).min() > 0.999  # principal angles ~0
    np.testing.assert_allclose(values, [25, 9, 4], rtol=0.15)
    # Lanczos (few vectors) and LAPACK (many) agree
    _, many = sky_vectors_from_gram(total, 2000, mask, n_vectors=100)
    np.testing.assert_allclose(many[:k], values, rtol=1e-10)


def test_sky_component_is_the_posterior_mean():
    rng = np.random.default_rng(3)
    n = 120
    sky = rng.normal(size=(n, 4))
    ivar = rng.uniform(0.5, 2, n)
    d = sky @ rng.normal(size=4) + rng.normal(size=n) / np.sqrt(ivar)
    c_sky = sky @ sky.T
    expected = c_sky @ np.linalg.solve(c_sky + np.diag(1 / ivar), d)
    np.testing.assert_allclose(sky_component(d, ivar, sky)[0], expected, rtol=1e-9, atol=1e-12)


def test_alignment_puts_lines_at_the_reference_position():
    n, m, start = 600, 40, 100
    pixels = np.arange(n, dtype=float)
    shift = np.array([0.0, 57.3, 210.75, np.nan])
    flux = np.array([np.exp(-0.5 * ((pixels - start - 20 - s) / 3.0) ** 2) if np.isfinite(s) else pixels * 0
                     for s in shift])
    ivar = np.ones_like(flux)
    data, covered = align_windows(flux, ivar, shift, start, m)
    for row in range(3):
        assert np.argmax(data[row]) == 20
        np.testing.assert_allclose(data[row], np.exp(-0.5 * ((np.arange(m) - 20) / 3.0) ** 2), atol=0.02)
    assert covered[:3].all() and not covered[3].any()


def test_lae_window_covariance_with_missing_data():
    rng = np.random.default_rng(4)
    m = 50
    shape = np.exp(-0.5 * ((np.arange(m) - 25) / 4.0) ** 2)
    data = rng.normal(0, 2.0, size=(3000, 1)) * shape + 0.01 * rng.normal(size=(3000, m))
    covered = rng.random((3000, m)) > 0.2
    data = np.where(covered, data, 0.0)
    vectors, values = lae_vectors_from_windows(data.T @ data, covered.T.astype(float) @ covered, n_vectors=1)
    unit = vectors[:, 0] / np.linalg.norm(vectors[:, 0])
    assert abs(unit @ shape / np.linalg.norm(shape)) > 0.999
    assert values[0] == pytest.approx(4.0 * shape @ shape, rel=0.1)
    with pytest.raises(ValueError, match="positive eigenvalues"):
        lae_vectors_from_windows(-np.eye(3), np.ones((3, 3)), n_vectors=1)


def test_custom_grid_is_respected():
    grid = LogGrid(np.log10(4000.0), 1e-4, 100)
    flux, _ = to_lae_grid(WAVE, np.ones(WAVE.size), np.ones(WAVE.size), grid)
    assert flux.shape == (1, 100) and np.all(flux == 1.0)
