"""nmf_zfind options: sub-pixel refinement and the (decimated) chi2 curve."""

import numpy as np
import pytest

from dzspec.kernels.nmf_scan import prepare_basis
from dzspec.kernels.restframe import LogGrid, observed_window
from dzspec.kernels.zfind import decimate_min, nmf_zfind

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
