import numpy as np
import pytest

from dzspec.engines.madgics.injection import (
    calibration_factor,
    injection_snr,
    lae_template,
    matched_filter_snr,
    place_profile,
    recovery_by_snr,
    zscore_sigma,
)
from dzspec.engines.madgics.scan import LAEPrior, scan_lae
from dzspec.kernels.metrics import purity_completeness, robust_sigma

TEMPLATE = lae_template(np.exp(-0.5 * ((np.arange(30) - 12) / np.where(np.arange(30) < 12, 1.5, 3.0)) ** 2)[None],
                        np.ones((1, 30)))


def test_template_is_normalised_and_placed_exactly_at_integer_shifts():
    assert TEMPLATE.sum() == pytest.approx(1.0)
    profile = place_profile(TEMPLATE, 100, 37.0, 400)
    np.testing.assert_allclose(profile[137:167], TEMPLATE, atol=1e-15)
    assert np.abs(profile[:137]).max() < 1e-15 and np.abs(profile[167:]).max() < 1e-15
    half = place_profile(TEMPLATE, 100, 37.5, 400)
    assert half.sum() == pytest.approx(1.0, abs=1e-3)  # flux conserved by the sub-pixel move
    assert np.argmax(half) in (149, 150)


def test_white_noise_injections_are_calibrated_with_a_matching_prior():
    # the prior is the template itself with a large amplitude variance: sqrt|dchi2| -> SNR (s ~ 1) and the
    # curvature errors are right (robust sigma of the z-scores ~ 1), the two checks of U25 §4.2.3. At SNR 15 the
    # error (~0.2 px here) dominates the 0.1-px quantisation of the fine scan; at SNR 40 it would not (ratio ~1.24).
    rng = np.random.default_rng(0)
    n, sigma, count = 900, 0.3, 400
    prior = LAEPrior(np.zeros((n, 1)), 30.0 * TEMPLATE[:, None], window_start=100)
    shift = rng.uniform(50, 600, count)
    for level, tolerance in ((40.0, None), (15.0, 0.12)):
        snr = np.full(count, level)
        eta = snr * sigma / np.sqrt(np.sum(TEMPLATE**2))
        flux = rng.normal(0, sigma, (count, n)) + eta[:, None] * np.array(
            [place_profile(TEMPLATE, 100, s, n) for s in shift])
        result = scan_lae(flux, np.full((count, n), sigma**-2), prior, shifts=np.arange(0, 700))
        np.testing.assert_allclose(injection_snr(eta, sigma, np.sum(TEMPLATE**2)), snr)
        assert calibration_factor(np.abs(result.dchi2), snr) == pytest.approx(1.0, abs=0.05)
        if tolerance:
            assert zscore_sigma(result.z, prior.redshift_of(shift), result.zerr) == pytest.approx(1.0, abs=tolerance)


def test_recovery_bins_and_robust_sigma():
    centres, fraction, count = recovery_by_snr(np.array([0.5, 0.7, 3.2, 30.0]), np.array([True, False, True, True]))
    assert centres[0] == 0.5 and count[:4].tolist() == [2, 0, 0, 1] and fraction[0] == 0.5
    assert np.isnan(fraction[1]) and count.sum() == 3  # SNR 30 is beyond the last bin
    assert robust_sigma(np.random.default_rng(1).normal(0, 2.0, 20000)) == pytest.approx(2.0, rel=0.03)


def test_purity_and_completeness_follow_the_definitions():
    score = np.array([5.0, 30.0, 50.0, 60.0, np.nan])
    correct = np.array([True, True, False, True, False])
    purity, completeness = purity_completeness(score, correct, np.array([0.0, 25.0, 55.0, 100.0]))
    np.testing.assert_allclose(purity, [3 / 4, 2 / 3, 1.0, np.nan])
    np.testing.assert_allclose(completeness, [1.0, 2 / 3, 1 / 3, 0.0])


def test_matched_filter_snr_is_eq16_for_white_noise_and_uses_the_ivar_otherwise():
    profile = place_profile(TEMPLATE, 10, 3.3, 100)
    assert matched_filter_snr(7.0, profile, np.full(100, 1 / 0.3**2)) == pytest.approx(
        float(injection_snr(7.0, 0.3, np.sum(profile**2))))
    ivar = np.full((2, 100), 4.0)
    ivar[1, :] = 0.0  # no data: no signal
    np.testing.assert_allclose(matched_filter_snr(1.0, profile, ivar), [2 * np.sqrt(np.sum(profile**2)), 0.0])
