"""ZERR: the refined chi2 parabola's width is the scatter of z_refined when the model is right, and the calibration
recovers a known scale and floor."""

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dzspec.engines.nmf.grams import prepare_basis
from dzspec.engines.nmf.scan import scan_block
from dzspec.engines.nmf.zerr import apply_zerr_calibration, fit_zerr_calibration, pull_widths

X = np.arange(3000.0)
BASIS = np.stack([np.exp(-0.5 * ((X - 1500) / 4.0) ** 2), np.full(3000, 0.05)])
DELTA, J0, N_OBS = 1e-4, 1200, 800


def test_raw_zerr_is_the_scatter_of_the_refined_redshift_under_a_right_model():
    rng = np.random.default_rng(0)
    true_shift, noise = -100.3, 0.1  # between pixels, and between the even trial shifts
    observed = J0 + np.arange(N_OBS) - true_shift
    clean = 3 * np.exp(-0.5 * ((observed - 1500) / 4.0) ** 2) + 0.05
    flux = clean + rng.normal(0, noise, (150, N_OBS))
    result = scan_block(prepare_basis(BASIS, N_OBS), flux, np.full_like(flux, noise**-2), np.arange(-200, 0, 2),
                        DELTA, J0)
    z_true = 10 ** (true_shift * DELTA) - 1
    assert np.isfinite(result.zerr).all()
    widths, _ = pull_widths(result.z_refined, np.full(150, z_true), result.zerr, np.zeros(150, int), 1)
    assert 0.8 < widths[0] < 1.25
    # the width of a line of S/N ~ 60 is a fraction of a pixel, and grows with the noise
    pixels = np.median(result.zerr) / (np.log(10) * DELTA * (1 + z_true))
    assert 0.03 < pixels < 0.15


def test_no_refinement_no_zerr():
    flux = np.ones((1, N_OBS))
    result = scan_block(prepare_basis(BASIS, N_OBS), flux, np.ones_like(flux), np.arange(-200, 0, 2), DELTA, J0,
                        refine=False)
    assert result.zerr is None


@settings(max_examples=4, deadline=None)
@given(scale=st.floats(0.5, 4.0), floor=st.sampled_from([0.0, 3e-5, 1e-4]), seed=st.integers(0, 100))
@example(scale=1.5, floor=1e-4, seed=20)  # the floor grid's 26 % steps left widths of 0.88 and 1.13 before refining
def test_the_calibration_recovers_pull_widths_of_one(scale, floor, seed):
    rng = np.random.default_rng(seed)
    sigma = 10 ** rng.uniform(-5, -3, 3000)
    z_true = rng.uniform(0, 6, 3000)
    z = z_true + rng.normal(0, apply_zerr_calibration(sigma, z_true, scale, floor))
    cal = fit_zerr_calibration(z, z_true, sigma, 1e-2 / sigma, edges=(30.0, 100.0, 300.0), z_edges=())
    assert np.all(np.abs(np.array(cal.widths) - 1) < 0.12), cal
    if floor == 0.0:  # with a floor, scale and floor trade off in the bins both matter in: only widths are defined
        assert abs(cal.scale[0] / scale - 1) < 0.15


def test_redshift_ranges_are_calibrated_apart():
    """Two populations whose raw widths are off by different factors (optical lines, Lya): one scale each, and the
    pulls of both come to unit width, which one common scale cannot do."""
    rng = np.random.default_rng(3)
    sigma = 10 ** rng.uniform(-5, -4, 4000)
    z_true = np.where(np.arange(4000) < 2000, 0.8, 4.0)
    factor = np.where(z_true < 2, 1.5, 4.0)
    z = z_true + rng.normal(0, factor * sigma)
    cal = fit_zerr_calibration(z, z_true, sigma, 1e-2 / sigma, edges=(300.0,), z_edges=(2.0,))
    np.testing.assert_allclose(cal.scale, [1.5, 4.0], rtol=0.1)
    zerr = apply_zerr_calibration(sigma, z, cal.scale, cal.floor, cal.z_edges)
    for population in (z_true < 2, z_true > 2):
        width, _ = pull_widths(z[population], z_true[population], zerr[population], np.zeros(2000, int), 1)
        assert abs(width[0] - 1) < 0.1
