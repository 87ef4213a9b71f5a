"""nmf_zfind options: sub-pixel refinement and the (decimated) chi2 curve."""

import numpy as np
import pytest

from dzspec.engines.nmf.grams import prepare_basis
from dzspec.engines.nmf.zfind import decimate_min, nmf_zfind, sky_nuisance_vector
from dzspec.kernels.restframe import LogGrid, observed_window

WAVE = 4750.0 + 1.25 * np.arange(400)  # 4750-5249 A
GRID = LogGrid.spanning(4700.0 / 1.4, 5300.0, 1e-4)
LINES = ((3727.4, 2.0), (4102.9, 1.5), (4862.7, 3.0), (5008.2, 4.0))


def _components(wave_rest):
    lines = sum(np.exp(-0.5 * ((wave_rest - c) / s) ** 2) for c, s in LINES)
    return np.vstack([np.ones_like(wave_rest), lines])


@pytest.fixture(scope="module")
def problem():
    rest = GRID.wavelength()
    prepared = prepare_basis(_components(rest) * np.log(10) * rest, observed_window(WAVE, GRID)[1])
    rng = np.random.default_rng(1)
    z_true = np.array([0.031, 0.1237, 0.2049])
    flux = np.vstack([np.array([1.0, 6.0]) @ _components(WAVE / (1 + z)) / (1 + z) for z in z_true])
    flux += rng.normal(0, 0.02, flux.shape)
    ivar = np.full(flux.shape, 1 / 0.02**2)
    ivar[1] = 0.0  # no data
    shifts = GRID.shift_of(np.arange(0, 0.3 + 1e-9, 0.0005))
    return prepared, flux, ivar, shifts, z_true


def test_decimate_min_keeps_minima():
    rng = np.random.default_rng(0)
    chi2 = rng.uniform(1, 2, (3, 23))
    chi2[0, 22] = 0.5
    chi2[2] = np.nan
    for n in (1, 2, 4, 23, 30):
        got = decimate_min(chi2, n)
        assert got.shape == (3, -(-23 // n))
        np.testing.assert_array_equal(np.nanmin(got[:2], axis=1), chi2[:2].min(axis=1))
        np.testing.assert_array_equal(got[1], [chi2[1, i : i + n].min() for i in range(0, 23, n)])
        assert np.all(np.isnan(got[2]))


def test_nmf_zfind_refined_z_and_chi2_curve(problem):
    prepared, flux, ivar, shifts, z_true = problem
    kw = {"prepared": prepared, "grid": GRID, "shifts": shifts}
    out = nmf_zfind(WAVE, flux, ivar, store_chi2=True, chi2_decimate=4, **kw)
    plain = nmf_zfind(WAVE, flux, ivar, refine=False, **kw)
    assert "z_refined" not in plain and "zchi2" not in plain and "chi2_refined" not in plain
    for name, values in plain.items():
        np.testing.assert_array_equal(out[name], values, err_msg=name)
    assert out["zchi2"].dtype == np.float32 and out["zchi2"].shape == (3, -(-shifts.size // 4))
    good = [0, 2]
    np.testing.assert_array_equal(out["zchi2"][good].min(axis=1), out["chi2"][good].astype(np.float32))
    assert np.all(np.isnan(out["zchi2"][1])) and np.isnan(out["z_refined"][1]) and np.isnan(out["chi2_refined"][1])
    assert np.all(out["chi2_refined"][good] <= out["chi2"][good])
    pixel = np.log(10) * GRID.step * (1 + z_true[good])  # one basis pixel in z
    assert np.all(np.abs(out["z_refined"][good] - z_true[good]) < 0.5 * pixel)
    full = nmf_zfind(WAVE, flux, ivar, store_chi2=True, **kw)["zchi2"]
    np.testing.assert_array_equal(out["zchi2"], decimate_min(full, 4))


@pytest.mark.parametrize("bad", [0, -2, 1.5])
def test_nmf_zfind_rejects_bad_decimation(problem, bad):
    prepared, flux, ivar, shifts, _ = problem
    with pytest.raises(ValueError, match="chi2_decimate"):
        nmf_zfind(WAVE, flux, ivar, prepared=prepared, grid=GRID, shifts=shifts, store_chi2=True, chi2_decimate=bad)


def test_a_zero_filled_gap_scans_as_no_data(problem):
    """A stretch of flux exactly 0 with a finite variance (MUSE's AO notch) gives the outputs of the same stretch
    masked: it is not taken as a precise measurement of zero flux."""
    prepared, flux, ivar, shifts, _ = problem
    kw = {"prepared": prepared, "grid": GRID, "shifts": shifts}
    filled, masked = flux.copy(), ivar.copy()
    filled[:, 150:260] = 0.0
    masked[:, 150:260] = 0.0
    got = nmf_zfind(WAVE, filled, ivar, **kw)
    expected = nmf_zfind(WAVE, flux, masked, **kw)
    for name, values in expected.items():
        np.testing.assert_array_equal(got[name], values, err_msg=name)
    assert not np.array_equal(nmf_zfind(WAVE, flux, ivar, **kw)["chi2"][0], expected["chi2"][0])


def _sky(wave):
    """A night-sky-like continuum: bands that no low-order polynomial follows."""
    x = (wave - wave[0]) / (wave[-1] - wave[0])
    return 1.0 + 0.8 * np.sin(9 * x) ** 2 + 0.5 * np.exp(-0.5 * ((x - 0.6) / 0.05) ** 2)


@pytest.mark.parametrize("depth", [-3.0, -0.4, 0.7])
def test_a_sky_over_subtraction_of_any_depth_changes_only_the_sky_coefficient(problem, depth):
    """With the sky continuum as a nuisance term, subtracting any multiple of it from the spectra (a sky over- or
    under-subtraction) leaves z, chi2, the B26 scores and the candidates unchanged and moves only the last nuisance
    coefficient; with the constant alone the same pedestal changes the fit."""
    prepared, flux, ivar, shifts, _ = problem
    kw = {"prepared": prepared, "grid": GRID, "shifts": shifts}
    sky = _sky(WAVE)
    clean = nmf_zfind(WAVE, flux, ivar, sky_continuum=sky, **kw)
    pedestal = depth * 0.1 * sky  # 0.1: the spectra's continuum level
    moved = nmf_zfind(WAVE, flux - pedestal, ivar, sky_continuum=sky, **kw)
    good = [0, 2]
    for name in ("z", "z_refined", "candidate_z"):
        np.testing.assert_array_equal(moved[name][good], clean[name][good], err_msg=name)
    for name in ("chi2", "chi2_refined", "nmf_significance", "deltachi2", "coeff"):
        np.testing.assert_allclose(moved[name][good], clean[name][good], rtol=1e-6, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(moved["nuisance_coeff"][good, 0], clean["nuisance_coeff"][good, 0], atol=1e-4)
    assert np.all(moved["nuisance_coeff"][good, -1] - clean["nuisance_coeff"][good, -1] < 0) == (depth > 0)
    constant_only = nmf_zfind(WAVE, flux - pedestal, ivar, **kw)
    assert np.all(constant_only["chi2"][good] > clean["chi2"][good] + 100)


def test_the_sky_vector_follows_the_spectra_resampling_and_needs_nuisance_terms(problem):
    prepared, flux, ivar, shifts, _ = problem
    j0, n = observed_window(WAVE, GRID)
    v = sky_nuisance_vector(WAVE, _sky(WAVE), GRID, (j0, n))
    assert v.shape == (n,) and np.median(np.abs(v[v != 0])) == pytest.approx(1.0)
    outside = sky_nuisance_vector(WAVE, np.where(WAVE < 5000, np.nan, _sky(WAVE)), GRID, (j0, n))
    assert np.all(outside[: n // 4] == 0) and np.all(outside[-n // 4 :] != 0)
    with pytest.raises(ValueError, match="sky continuum"):
        sky_nuisance_vector(WAVE, np.zeros(WAVE.size), GRID, (j0, n))
    with pytest.raises(ValueError, match="nuisance_order"):
        nmf_zfind(WAVE, flux, ivar, prepared=prepared, grid=GRID, shifts=shifts, nuisance_order=-1,
                  sky_continuum=_sky(WAVE))
