"""Blend detection kernels (B26 §4.4): first model, rescan, confusion rule, decision, ROC."""

import numpy as np
import pytest
import scipy.optimize
from hypothesis import given, settings
from hypothesis import strategies as st

from dzspec.engines.nmf.blends import (
    CONFUSION_LINES,
    blend_scan,
    confusion_redshifts,
    detect_blend,
    detect_blends,
    fit_first_model,
    select_blend,
)
from dzspec.engines.nmf.grams import prepare_basis
from dzspec.engines.nmf.scan import scan_block
from dzspec.kernels.restframe import LogGrid, observed_window

C = 299_792.458
GRID = LogGrid.spanning(2500.0, 9000.0, 2.5e-5)
J0 = observed_window(np.array([4750.0, 9000.0]), GRID)[0]
N_OBS = observed_window(np.array([4750.0, 9000.0]), GRID)[1]
X_OBS = GRID.start + GRID.step * np.arange(J0, J0 + N_OBS)
SHIFTS = GRID.shift_of(np.arange(0.0, 1.2, 0.0005))
Z_TRIALS = GRID.redshift_of(SHIFTS)
SIGMA_V = 100.0  # km/s, intrinsic; no instrument LSF in these tests
BASIS_LINES = ({3727.09: 1.0, 3729.88: 1.3}, {4862.68: 1.0}, {4960.30: 1.0, 5008.24: 3.0})


def _gauss(x, rest, z, sigma_kms=SIGMA_V):
    sig = sigma_kms / C / np.log(10)
    return np.exp(-0.5 * ((x - np.log10(rest * (1 + z))) / sig) ** 2)


def _basis():
    """Rank 5, per unit log lambda: flat continuum, [OII], H-beta, [OIII], a red slope."""
    x = GRID.loglam()
    rows = [np.ones_like(x)] + [sum(a * _gauss(x, lam, 0.0) for lam, a in group.items()) for group in BASIS_LINES]
    rows.append((10**x / 5000.0) ** 2)
    return np.vstack(rows)


BASIS = _basis()
PREPARED = prepare_basis(BASIS, N_OBS)


def _galaxy(z, scale=1.0, extra=None):
    """A galaxy the basis describes (continuum + its lines) plus ``extra`` lines {rest: peak} it misses."""
    x = X_OBS
    flux = 1.0 + 0.3 * (10**x / (5000.0 * (1 + z))) ** 2
    for group, amp in zip(BASIS_LINES, (4.0, 3.0, 5.0), strict=True):
        flux = flux + amp * sum(a * _gauss(x, lam, z) for lam, a in group.items())
    for lam, peak in (extra or {}).items():
        flux = flux + peak * _gauss(x, lam, z)
    return scale * flux


def _noisy(flux, seed, sigma=0.25):
    rng = np.random.default_rng(seed)
    return flux + rng.normal(0, sigma, flux.shape), np.full(flux.shape, 1 / sigma**2)


def _first_z(flux, weights):
    r = scan_block(PREPARED, flux[None], weights[None], SHIFTS, GRID.step, J0)
    return float(r.z_refined[0])


def _detect(flux, weights, **options):
    z1 = _first_z(flux, weights)
    options.setdefault("lsf_fwhm", None)
    return z1, detect_blend(flux, weights, z1, prepared=PREPARED, grid=GRID, j0=J0, shifts=SHIFTS,
                            wave_range=(4750.0, 9000.0), **options)


MISSED = {5877.25: 4.0, 6302.05: 3.0, 5201.71: 3.0, 6564.61: 6.0, 6718.29: 2.0, 6732.67: 1.5}


def test_two_galaxies_are_flagged_with_the_right_z2():
    flux, w = _noisy(_galaxy(0.30) + _galaxy(0.60, scale=0.4), seed=1)
    z1, r = _detect(flux, w)
    assert abs(z1 - 0.30) < 0.001
    assert r.score > 0.011 and abs(r.z2 - 0.60) < 0.002
    # the reconstruction at z2: its basis part is the second galaxy's lines; its continuum went into the first
    # model's free continuum (B26 note the same of pyPlatefit's)
    lines2 = _galaxy(0.60, scale=0.4) - 0.4 * (1.0 + 0.3 * (10**X_OBS / (5000.0 * 1.6)) ** 2)
    assert np.sqrt(np.mean((r.component2 - lines2) ** 2)) < 0.1 * np.sqrt(np.mean(lines2**2))
    assert r.coeff2[0] > 0.9  # the first model stays in at about its full weight
    assert r.chi2_z2 < r.first.chi2


def test_one_galaxy_with_lines_the_basis_misses_is_not_flagged():
    flux, w = _noisy(_galaxy(0.30, extra=MISSED), seed=2)
    z1, r = _detect(flux, w)
    assert abs(z1 - 0.30) < 0.001
    assert r.score < 0.011
    # the same spectrum with the basis alone as the first model (no line fit): the missed lines fake a blend
    _, without = _detect(flux, w, lines={})
    assert without.score > 0.011 > r.score


def test_a_single_galaxy_is_not_flagged_and_the_first_model_fits():
    flux, w = _noisy(_galaxy(0.45), seed=3)
    _, r = _detect(flux, w)
    assert r.score < 0.011
    assert r.first.chi2 / N_OBS < 1.05  # the first model reaches the noise
    assert r.first.sigma_kms == SIGMA_V


def test_first_model_recovers_lines_and_is_exact_on_noise_free_data():
    z = float(GRID.redshift_of(GRID.shift_of(0.3)))  # on the grid, so that the basis shift is exact
    h = BASIS[:, J0 - GRID.shift_of(z): J0 - GRID.shift_of(z) + N_OBS]
    flux = 2.0 * h[0] + 1.5 * h[3] + 5.0 * _gauss(X_OBS, 6564.61, z)
    fit = fit_first_model(flux, np.ones(N_OBS), h, X_OBS, z,
                          lines={"halpha": 6564.61, "hbeta": 4862.68}, lsf_fwhm=None, offset_grid_kms=(0.0,),
                          absorption={})
    # the red-slope row lies within 1e-4 of the continuum's span, which limits the coefficients' conditioning
    np.testing.assert_allclose(fit.amplitudes, [5.0, 0.0], rtol=1e-4, atol=1e-6)
    assert fit.chi2 < 1e-6


def test_first_model_fits_absorption_lines_with_a_positive_depth():
    z = 0.3
    flux = 2.0 - 0.8 * _gauss(X_OBS, 3934.78, z, 200.0) - 0.5 * _gauss(X_OBS, 3969.59, z, 200.0)
    kw = {"lines": {"hbeta": 4862.68}, "lsf_fwhm": None, "offset_grid_kms": (0.0,), "absorption_offsets_kms": (0.0,)}
    fit = fit_first_model(flux, np.ones(N_OBS), np.zeros((0, N_OBS)), X_OBS, z,
                          absorption={"cak": 3934.78, "cah": 3969.59}, **kw)
    np.testing.assert_allclose(fit.amplitudes, [0.0, 0.8, 0.5], atol=1e-6)
    assert fit.chi2 < 1e-8
    without = fit_first_model(flux, np.ones(N_OBS), np.zeros((0, N_OBS)), X_OBS, z, absorption={}, **kw)
    assert without.chi2 > 1.0


def test_confusion_redshifts_by_hand():
    zc = confusion_redshifts(0.5, (4700.0, 9356.0))
    observed = {name: lam * 1.5 for name, lam in CONFUSION_LINES.items() if 4700 <= lam * 1.5 <= 9356}
    assert "oii" in observed and "lya" not in observed and "halpha" not in observed
    expected = {lam / rest - 1 for lam in observed.values() for rest in CONFUSION_LINES.values()}
    expected = sorted(z for z in expected if 0 <= z <= 6.7)
    np.testing.assert_allclose(zc, np.unique(expected), rtol=0, atol=1e-12)
    assert np.any(np.isclose(zc, 0.5))  # a line with itself
    assert np.any(np.isclose(zc, 3727.42 * 1.5 / 1215.67 - 1))  # [OII] of z1 read as Lya
    assert confusion_redshifts(0.5, (4700.0, 9356.0), z_max=1.0).max() <= 1.0


def test_confusion_rule_drops_only_minima_near_a_confusion_redshift():
    chi2 = np.full(400, 100.0)
    chi2[100], chi2[250], chi2[330] = 60.0, 90.0, 95.0  # three dips
    z = np.linspace(0.0, 3.99, 400)  # step 0.01
    assert select_blend(chi2, z, np.array([])) == (pytest.approx(0.4), 100, 3)
    score, i, kept = select_blend(chi2, z, np.array([1.005]))  # z[100] = 1.00 is within 0.01
    assert (i, kept) == (250, 2) and score == pytest.approx(0.1)
    assert select_blend(chi2, z, np.array([1.005]), tolerance=0.001)[1] == 100
    score, i, kept = select_blend(chi2, z, np.array([1.0, 2.5, 3.3]))
    assert (score, i, kept) == (0.0, -1, 0)
    assert np.isnan(select_blend(np.full(10, np.nan), z[:10], np.array([]))[0])


def test_a_blend_whose_line_lands_on_a_z1_line_is_dropped_by_the_rule():
    # a second galaxy whose [OIII] 5007 falls on H-alpha of z1 = 0.3: z2 = 6564.61 * 1.3 / 5008.24 - 1
    z2 = 6562.82 * 1.3 / 5006.84 - 1
    flux, w = _noisy(_galaxy(0.30) + _galaxy(z2, scale=0.4), seed=4)
    _, r = _detect(flux, w, tolerance=0.01)
    assert not abs(r.z2 - z2) < 0.01
    _, kept = _detect(flux, w, tolerance=0.0)
    assert abs(kept.z2 - z2) < 0.002


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), k=st.integers(1, 3))
def test_blend_scan_equals_per_lag_tall_nnls(seed, k):
    rng = np.random.default_rng(seed)
    n_rest, n_obs = 40, 12
    h = rng.random((k, n_rest)) * (rng.random((k, n_rest)) < 0.7)
    f = rng.normal(1.0, 1.0, n_obs)
    w = rng.random(n_obs) * (rng.random(n_obs) < 0.9)
    fixed = np.abs(rng.normal(0.5, 1.0, n_obs))
    lags = np.arange(-n_obs + 1, n_rest)
    chi2, omega = blend_scan(prepare_basis(h, n_obs), f, w, fixed, lags)
    padded = np.zeros((k, n_obs + n_rest + n_obs))
    padded[:, n_obs: n_obs + n_rest] = h
    sw = np.sqrt(w)
    for i, s in enumerate(lags):
        a = np.vstack([fixed, padded[:, n_obs + s: n_obs + s + n_obs]])
        om, _ = scipy.optimize.nnls(sw[:, None] * a.T, sw * f)
        ref = np.sum(w * (f - om @ a) ** 2)
        assert chi2[i] == pytest.approx(ref, rel=1e-8, abs=1e-9)
        assert np.all(omega[i] >= 0)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), k=st.integers(0, 3), degree=st.integers(-1, 3), m=st.integers(0, 3),
       masked=st.booleans())
def test_first_model_equals_bounded_least_squares(seed, k, degree, m, masked):
    """At one width and offset, the fit is the exact bounded least squares: basis and lines >= 0, continuum free."""
    rng = np.random.default_rng(seed)
    n = 400
    x = np.log10(5000.0) + 2e-5 * np.arange(n)
    h = rng.random((k, n)) + np.linspace(0, 1, n) ** rng.integers(1, 4, (k, 1))  # smooth-ish rows
    w = rng.random(n) + 0.1
    if masked:
        w[rng.random(n) < 0.3] = 0.0
    rest = {f"l{i}": float(10 ** rng.uniform(x[20], x[-20]) / 1.2) for i in range(m)}
    f = rng.normal(size=n) + 3.0 * (k > 0) * h[:1].sum(axis=0)
    fit = fit_first_model(f, w, h, x, 0.2, lines=rest, sigma_grid_kms=(50.0,), offset_grid_kms=(0.0,),
                          lsf_fwhm=None, continuum_degree=degree, absorption={})
    sig = 50.0 / C / np.log(10)
    centres = np.log10(np.array(list(rest.values())) * 1.2)
    lines = np.exp(-0.5 * ((x[None, :] - centres[:, None]) / sig) ** 2)
    lines[np.abs(x[None, :] - centres[:, None]) > 6 * sig] = 0.0  # the profiles are cut at 6 sigma
    poly = np.polynomial.legendre.legvander(np.linspace(-1, 1, n), degree).T if degree >= 0 else np.zeros((0, n))
    a = np.vstack([h, poly, lines])
    sw = np.sqrt(w)
    if a.shape[0]:
        lower = np.r_[np.zeros(k), np.full(poly.shape[0], -np.inf), np.zeros(m)]
        ref = scipy.optimize.lsq_linear(sw[:, None] * a.T, sw * f, bounds=(lower, np.inf), method="bvls", tol=1e-14)
        ref_chi2 = float(np.sum(w * (f - ref.x @ a) ** 2))
    else:
        ref_chi2 = float(np.sum(w * f * f))
    assert fit.chi2 == pytest.approx(ref_chi2, rel=1e-9, abs=1e-9)
    assert np.all(fit.coeff >= 0) and np.all(fit.amplitudes >= 0)
    # (the kernel's cut is at the pixel just beyond 6 sigma: its model differs from these profiles by < 1e-7)
    np.testing.assert_allclose(fit.model, fit.coeff @ h + fit.continuum @ poly + fit.amplitudes @ lines, atol=1e-6)


def test_detect_blends_block_keeps_every_row():
    wave = 10 ** X_OBS  # the block kernel starts from a linear-wavelength grid; here the log pixels themselves
    flux = np.vstack([_noisy(_galaxy(0.30) + _galaxy(0.60, scale=0.4), 5)[0], _noisy(_galaxy(0.30), 6)[0],
                      np.zeros(N_OBS)])
    ivar = np.full(flux.shape, 16.0)
    ivar[2] = 0.0
    out = detect_blends(wave, flux, ivar, np.array([0.30, 0.30, 0.30]), prepared=PREPARED, grid=GRID,
                        shifts=SHIFTS, lsf_fwhm=None)
    assert all(v.shape[0] == 3 for v in out.values())
    assert out["blend_flag"].tolist() == [True, False, False]
    assert abs(out["blend_z"][0] - 0.60) < 0.002
    assert np.isnan(out["blend_score"][2]) and np.isnan(out["fit_coeff"][2]).all()
    # basis, emission lines, Lya components, absorption lines at two velocities, Legendre
    assert out["fit_coeff"].shape[1] == PREPARED.k + 39 + 4 + 2 * 27 + 7


# ---------------------------------------------------------------------------------------------------------------------
# ROC
# ---------------------------------------------------------------------------------------------------------------------


def test_an_asymmetric_lya_with_a_blue_peak_is_not_flagged():
    """A bright LAE whose line is not one Gaussian: the Lya components absorb it; without them its blue peak,
    500 km/s off, fakes a blend just outside the confusion window."""
    grid = LogGrid.spanning(1000.0, 9000.0, 2.5e-5)
    j0, n = observed_window(np.array([4750.0, 9000.0]), grid)
    x = grid.start + grid.step * np.arange(j0, j0 + n)
    lya = np.exp(-0.5 * ((grid.loglam() - np.log10(1215.67)) / (150 / C / np.log(10))) ** 2)
    prepared = prepare_basis(np.vstack([np.ones(grid.size), lya]), n)
    shifts = grid.shift_of(np.arange(0.0, 6.0, 0.0005))
    v = (x - np.log10(1215.67 * 4.9)) * np.log(10) * C  # km/s from the red peak at z = 3.9
    profile = np.where(v < 0, np.exp(-0.5 * (v / 80) ** 2), np.exp(-0.5 * (v / 260) ** 2))
    profile += 0.25 * np.exp(-0.5 * ((v + 500) / 90) ** 2)
    flux = 0.2 + 40.0 * profile + np.random.default_rng(0).normal(0, 1, n)
    w = np.ones(n)
    z1 = float(scan_block(prepared, flux[None], w[None], shifts, grid.step, j0).z_refined[0])
    assert abs(z1 - 3.9) < 0.003
    kw = {"prepared": prepared, "grid": grid, "j0": j0, "shifts": shifts, "wave_range": (4750.0, 9000.0),
          "lsf_fwhm": None}
    assert detect_blend(flux, w, z1, **kw).score < 0.011 < detect_blend(flux, w, z1, components={}, **kw).score
