"""The compiled loops and the batched algebra of the MADGICS scan against straightforward NumPy: the resampling
bit for bit, the per-shift solve, the block's sky factors and the directly evaluated last shifts to round-off."""

import numpy as np
import pytest

from dzspec.engines.madgics.compiled import shift_dchi2
from dzspec.engines.madgics.interlopers import clipped_continuum
from dzspec.engines.madgics.priors import LAE_GRID, to_lae_grid
from dzspec.engines.madgics.scan import (
    _sky_factor,
    _sky_factors,
    _weights,
    madgics_rescale_y,
    reference_lae_scan,
    scan_lae,
)
from dzspec.kernels.restframe import linear_weights, measured_pixels
from tests.engines.madgics.test_scan import make_prior, spectra

WAVE = np.arange(3600.0, 9824.1, 0.8)


def numpy_to_lae_grid(wavelength, flux, ivar, grid, y, variance_model):
    """The resampling as whole-array NumPy (dzspec before the compiled loop): the reference, bit for bit."""
    flux = np.atleast_2d(np.asarray(flux, dtype=np.float64))
    ivar = np.atleast_2d(np.asarray(ivar, dtype=np.float64))
    left, right, t, inside = linear_weights(np.log10(wavelength), grid.loglam())
    good = measured_pixels(flux, ivar)
    usable = inside & good[:, left] & good[:, right]
    with np.errstate(divide="ignore"):
        variance = np.where(good, 1.0 / np.where(good, ivar, 1.0), 0.0)
    clean = np.where(good, flux, 0.0)
    out_flux = np.where(usable, (1 - t) * clean[:, left] + t * clean[:, right], 0.0)
    if variance_model == "propagate":
        out_var = (1 - t) ** 2 * variance[:, left] + t**2 * variance[:, right]
    else:
        native_width = np.diff(wavelength)[np.clip(left, 0, wavelength.size - 2)]
        log_width = grid.wavelength() * (10**grid.step - 1)
        out_var = ((1 - t) * variance[:, left] + t * variance[:, right]) / np.minimum(1.0, log_width / native_width)
    with np.errstate(divide="ignore"):
        out_ivar = np.where(usable & (out_var > 0), 1.0 / np.where(out_var > 0, out_var, 1.0), 0.0)
    if y is not None:
        scale = 10.0**y
        out_flux /= np.sqrt(scale)
        out_ivar *= scale
    return out_flux, out_ivar


@pytest.mark.parametrize("variance_model", ["conserve", "propagate"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_resampling_is_bit_identical_to_numpy(variance_model, dtype):
    rng = np.random.default_rng(3)
    flux = rng.normal(1.0, 2.0, size=(5, WAVE.size)).astype(dtype)
    ivar = rng.uniform(0.1, 4.0, size=(5, WAVE.size)).astype(dtype)
    flux[0, 100:120] = 0.0  # a filled gap (a run of exact zeros)
    flux[1, 300] = np.nan
    ivar[2, 500:540] = 0.0
    ivar[3, 7] = np.inf
    ivar[4] = 0.0  # no data at all
    y = madgics_rescale_y(LAE_GRID.wavelength())
    for rescale in (None, y):
        got = to_lae_grid(WAVE, flux, ivar, y=rescale, variance_model=variance_model)
        expected = numpy_to_lae_grid(WAVE, flux, ivar, LAE_GRID, rescale, variance_model)
        for g, e in zip(got, expected, strict=True):
            assert g.dtype == np.float64
            np.testing.assert_array_equal(g, e)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_shift_solve_matches_a_dense_solve(k):
    rng = np.random.default_rng(k)
    k_sky, ns = 7, 40
    q = rng.normal(size=(k_sky, k, ns))
    a = rng.normal(size=k_sky)
    pairs = np.triu_indices(k)
    # E = QᵀQ + a positive definite part, as the algebra guarantees
    extra = rng.normal(size=(ns, k, k))
    e = np.einsum("mas,mbs->sab", q, q) + np.einsum("sac,sbc->sab", extra, extra)
    g = rng.normal(size=(k, ns))
    dchi2, alpha = shift_dchi2(q, a, np.ascontiguousarray(e[:, pairs[0], pairs[1]].T), g, ns)
    for s in range(ns):
        schur = np.eye(k) + e[s] - q[:, :, s].T @ q[:, :, s]
        r = g[:, s] - q[:, :, s].T @ a
        expected = np.linalg.solve(schur, r)
        np.testing.assert_allclose(alpha[s], expected, rtol=1e-10, atol=1e-12)
        assert dchi2[s] == pytest.approx(-r @ expected, rel=1e-10)


def test_batched_sky_factors_equal_the_per_spectrum_ones():
    prior = make_prior()
    flux, ivar = spectra(prior, 5, seed=4)
    weight, data = _weights(flux, ivar, prior.sky_mask)
    for row, (chol, inverse, projected) in _sky_factors(prior, weight, weight * data, np.arange(5)):
        chol_ref, a_ref, _ = _sky_factor(prior.sky_vectors, weight[row], data[row])
        np.testing.assert_allclose(chol, chol_ref, rtol=1e-12, atol=1e-12 * np.abs(chol_ref).max())
        np.testing.assert_allclose(inverse @ chol, np.eye(chol.shape[0]), atol=1e-12)
        np.testing.assert_allclose(inverse @ projected, a_ref, rtol=1e-11, atol=1e-12 * np.abs(a_ref).max())


@pytest.mark.parametrize("extra", [1, 5, 16, 17])
def test_last_shifts_evaluated_directly_match_the_reference(extra):
    # a scan whose FFT span lies a few points above a fast length, 1 024 (the next is 1 080): the last shifts go
    # direct (up to 16), beyond that the FFT is longer
    prior = make_prior()
    m = prior.lae_vectors.shape[0]
    nshift = 1024 - m + 1 + extra
    shifts = np.arange(-100, -100 + nshift)
    flux, ivar = spectra(prior, 1, seed=5)
    result = scan_lae(flux, ivar, prior, shifts=shifts, return_curve=True)
    reference = reference_lae_scan(flux[0], ivar[0], prior, shifts)
    np.testing.assert_allclose(result.dchi2_curve[0], reference, rtol=0, atol=1e-10 * np.max(np.abs(reference)))


def test_windowed_continuum_matches_the_full_width_mean():
    rng = np.random.default_rng(6)
    flux = rng.normal(2.0, 0.5, size=(6, WAVE.size))
    ivar = np.full_like(flux, 4.0)
    flux[0, 1000] = 1e4
    ivar[1] = 0.0
    lo = np.array([4000.0, 4000.0, 3000.0, 9800.0, np.nan, 5000.0])
    hi = lo + np.array([800.0, 800.0, 700.0, 100.0, 800.0, 0.1])
    level, error = clipped_continuum(WAVE, flux, ivar, lo, hi)
    for row in range(6):
        inside = (lo[row] <= WAVE) & (hi[row] >= WAVE) & (ivar[row] > 0)
        if not inside.any():
            assert np.isnan(level[row]) and np.isnan(error[row])
            continue
        f = flux[row, inside]
        keep = np.abs(f - np.median(f)) * 2.0 < 5.0
        assert level[row] == pytest.approx(f[keep].mean(), rel=1e-12)
