"""LAE / low-z interloper tests: the line and continuum fits are unbiased with honest errors, and on simulated DESI
spectra (no scan: the truth gives the line) the flags fire on [O II] emitters and galaxies, not on LAEs."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dzspec.engines.madgics.interlopers import (
    INTERLOPER_BITS,
    LOWZ_HYPOTHESES,
    clipped_continuum,
    interloper_tests,
    line_amplitudes,
    select_lae,
)
from dzspec.engines.madgics.scan import LAEWarn
from dzspec.kernels.simulate.common import EMISSION_LINES
from dzspec.kernels.simulate.desi import DESI_SIM_CLASSES, DesiSimConfig, desi_wavelength, simulate_desi_block

WAVE = np.arange(4000.0, 6000.0, 0.8)


def _gaussian(centre, flux, sigma):
    return flux * np.exp(-0.5 * ((WAVE - centre) / sigma) ** 2) / (np.sqrt(2 * np.pi) * sigma)


@settings(max_examples=40, deadline=None)
@given(centre=st.floats(4100.0, 5900.0), sigma=st.floats(0.8, 6.0), flux=st.floats(-50.0, 50.0),
       level=st.floats(-2.0, 5.0), slope=st.floats(-1e-3, 1e-3))
def test_a_noiseless_line_on_a_sloped_continuum_is_measured_exactly(centre, sigma, flux, level, slope):
    spectrum = level + slope * (WAVE - centre) + _gaussian(centre, flux, sigma)
    amplitude, error = line_amplitudes(WAVE, spectrum[None], np.ones((1, WAVE.size)), np.array([centre]),
                                       np.array([sigma]))
    np.testing.assert_allclose(amplitude, flux, atol=1e-8 * max(1.0, abs(flux)))
    assert error[0] > 0


def test_line_errors_match_the_scatter_and_follow_excess_noise():
    rng = np.random.default_rng(3)
    n, sigma_pix = 3000, 0.2
    centres = rng.uniform(4200.0, 5800.0, n)
    truth = rng.uniform(0.0, 10.0, n)
    clean = 1.0 + np.stack([_gaussian(c, f, 2.0) for c, f in zip(centres, truth, strict=True)])
    ivar = np.full(clean.shape, sigma_pix**-2)
    amplitude, error = line_amplitudes(WAVE, clean + rng.normal(0, sigma_pix, clean.shape), ivar, centres,
                                       np.full(n, 2.0))
    pulls = (amplitude - truth) / error
    assert abs(np.mean(pulls)) < 0.06 and abs(np.std(pulls) - 1.0) < 0.05
    # noise twice what ivar claims: the local reduced chi-square inflates the error to match
    amplitude, error = line_amplitudes(WAVE, clean + rng.normal(0, 2 * sigma_pix, clean.shape), ivar, centres,
                                       np.full(n, 2.0))
    assert abs(np.std((amplitude - truth) / error) - 1.0) < 0.06


def test_lines_off_the_grid_or_without_data_are_nan():
    flux, ivar = np.ones((3, WAVE.size)), np.ones((3, WAVE.size))
    ivar[2, (WAVE > 4900) & (WAVE < 5100)] = 0.0
    amplitude, error = line_amplitudes(WAVE, flux, ivar, np.array([3000.0, np.nan, 5000.0]), np.full(3, 2.0))
    assert np.isnan(amplitude).all() and np.isnan(error).all()


def test_clipped_continuum_drops_outliers_and_reports_nan_without_data():
    rng = np.random.default_rng(4)
    flux = 0.3 + rng.normal(0, 1.0, (2000, WAVE.size))
    flux[:, ::97] += 50.0  # sky-line residuals
    lo, hi = np.full(2000, 4500.0), np.full(2000, 5500.0)
    level, error = clipped_continuum(WAVE, flux, np.ones_like(flux), lo, hi)
    assert abs(np.mean(level) - 0.3) < 3 * np.std(level) / np.sqrt(2000)
    assert abs(np.std(level) / np.median(error) - 1.0) < 0.05
    level, error = clipped_continuum(WAVE, flux[:1], np.ones_like(flux[:1]), np.array([7000.0]), np.array([8000.0]))
    assert np.isnan(level[0]) and np.isnan(error[0])


def _simulated(classes, count, seed=21):
    """Simulated DESI coadds of the given classes, their Lya reading of the true line and its flux."""
    fractions = tuple(1.0 if name in classes else 0.0 for name in DESI_SIM_CLASSES)
    block = simulate_desi_block(np.arange(count), seed, DesiSimConfig(class_fractions=fractions))
    truth = block.truth
    is_lae = np.isin(truth["sim_class"], [DESI_SIM_CLASSES.index("lae"), DESI_SIM_CLASSES.index("lae_double_peak")])
    oii = 0.5 * (EMISSION_LINES["oii_3726"] + EMISSION_LINES["oii_3729"])
    z_lya = np.where(is_lae, truth["z_true"], oii * (1 + truth["z_true"]) / EMISSION_LINES["lya"] - 1)
    line_flux = np.where(is_lae, truth["flux_lya"], truth["flux_oii"])
    return block, z_lya, line_flux


def test_simulated_lae_are_spared_and_oii_emitters_caught():
    wave = desi_wavelength()
    block, z_lya, line_flux = _simulated(("lae", "lae_double_peak"), 150)
    tests = interloper_tests(wave, block.flux.astype(float), block.ivar.astype(float), z_lya, line_flux)
    assert (tests.low_ew() | tests.lowz_lines()).mean() < 0.05
    assert np.nanmedian(tests.lowz_score) < 3  # companion chi-square at noise level (a few lines of one dof each)
    # the line check spares clear lines (below S/N ~7, strong blue peaks of double-peaked LAEs inside the fit
    # window can pull a 200 km/s Gaussian under 2)
    detectable = block.truth["snr_lya"] > 7
    assert detectable.sum() > 50 and tests.no_line()[detectable].mean() < 0.03
    block, z_lya, line_flux = _simulated(("oii_interloper",), 150)
    tests = interloper_tests(wave, block.flux.astype(float), block.ivar.astype(float), z_lya, line_flux)
    bright = block.truth["snr_lines"] > 10
    assert bright.sum() > 50 and (tests.warn()[bright] != 0).mean() > 0.9
    caught = tests.lowz_lines()
    assert np.all(np.array(LOWZ_HYPOTHESES)[tests.hypothesis[caught]] == "oii")  # the right low-z reading


def test_galaxy_continua_give_low_equivalent_widths():
    block, z_lya, _ = _simulated(("galaxy",), 80)
    # whatever line the scan might pick in the Lya window, a 19.5-23 mag continuum makes its EW small
    z_lya = np.random.default_rng(5).uniform(2.0, 3.9, z_lya.size)
    tests = interloper_tests(desi_wavelength(), block.flux.astype(float), block.ivar.astype(float), z_lya,
                             np.full(z_lya.size, 10.0))
    assert tests.low_ew().mean() > 0.9


def test_warn_bits_and_selection():
    wave = desi_wavelength()
    block, z_lya, line_flux = _simulated(("oii_interloper",), 40)
    tests = interloper_tests(wave, block.flux.astype(float), block.ivar.astype(float), z_lya, line_flux)
    warn = tests.warn()
    np.testing.assert_array_equal((warn & LAEWarn.LOW_EW) != 0, tests.low_ew())
    np.testing.assert_array_equal((warn & LAEWarn.LOWZ_LINES) != 0, tests.lowz_lines())
    score = np.full(warn.size, 100.0)
    np.testing.assert_array_equal(select_lae(score, warn), (warn & INTERLOPER_BITS) == 0)
    assert not select_lae(np.array([np.nan]), np.array([0])).any()


def test_a_continuum_step_is_not_a_line():
    """A bright continuum that jumps at the 'line' (a camera junction) has no Gaussian on the pixels."""
    wave = np.arange(3600.0, 9800.0, 0.8)
    rng = np.random.default_rng(8)
    step = np.where(wave < 5893.0, 2.0, 2.6) + rng.normal(0, 0.05, (20, wave.size))
    line = step + 15.0 * np.exp(-0.5 * ((wave - 5893.0) / 3.0) ** 2) / (3.0 * np.sqrt(2 * np.pi))
    z = np.full(20, 5893.0 / 1215.67 - 1)
    tests = interloper_tests(wave, np.vstack([step, line]), np.full((40, wave.size), 400.0), np.r_[z, z],
                             np.full(40, 30.0))
    assert tests.no_line()[:20].all() and not tests.no_line()[20:].any()
    assert ((tests.warn()[:20] & LAEWarn.NO_LINE) != 0).all()
