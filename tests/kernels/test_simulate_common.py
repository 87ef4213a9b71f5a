import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dzspec.kernels.simulate.common import (
    add_gaussian_lines,
    gaussian_smooth_variable,
    igm_transmission_madau,
    lya_profile,
    row_rng,
)
from dzspec.kernels.simulate.sky import builtin_sky, sky_on_grid

WAVE = 4750.0 + 1.25 * np.arange(400)


@settings(max_examples=50, deadline=None)
@given(center=st.floats(4800.0, 5200.0), flux=st.floats(-50.0, 50.0), sigma=st.floats(0.1, 8.0))
def test_lines_conserve_flux_and_land_at_their_center(center, flux, sigma):
    spectrum = add_gaussian_lines(WAVE, np.zeros_like(WAVE), np.array([center]), np.array([flux]), np.array([sigma]))
    assert np.isclose(spectrum.sum() * 1.25, flux, rtol=1e-9, atol=1e-9)
    if abs(flux) > 1e-6:
        centroid = (spectrum * WAVE).sum() / spectrum.sum()
        assert abs(centroid - center) < 0.05 * sigma + 0.625  # pixel-centre quantisation: half a pixel


@settings(max_examples=30, deadline=None)
@given(sigma_red=st.floats(0.5, 5.0), ratio=st.floats(0.2, 1.0), blue=st.floats(0.0, 0.4))
def test_lya_profile_is_normalised_and_red_skewed(sigma_red, ratio, blue):
    wave = np.arange(4000.0, 4200.0, 0.05)
    profile = lya_profile(wave, 4100.0, 3.0, sigma_red, sigma_red * ratio, blue, 4 * sigma_red)
    assert np.isclose(np.trapezoid(profile, wave), 3.0, rtol=1e-4)
    red = profile[wave >= 4100.0]
    assert wave[wave >= 4100.0][np.argmax(red)] < 4100.0 + 0.1  # the red peak sits at the centre


def test_igm_blanketing_grows_with_redshift_and_spares_the_red_side():
    wave = np.arange(3000.0, 9000.0, 1.0)
    for z in (2.0, 3.0, 4.5, 6.0):
        t = igm_transmission_madau(wave, z)
        assert np.all((t >= 0) & (t <= 1))
        assert np.all(t[wave > 1216.0 * (1 + z)] == 1.0)
    blue_side = lambda z: igm_transmission_madau(np.array([1100.0 * (1 + z)]), z)[0]  # noqa: E731
    assert blue_side(2.0) > blue_side(3.5) > blue_side(5.5)


def test_variable_smoothing_conserves_flux():
    spectrum = np.zeros(400)
    spectrum[[50, 200, 350]] = [1.0, 2.0, 3.0]
    fwhm = np.linspace(2.0, 4.0, 400)
    out = gaussian_smooth_variable(WAVE, spectrum, fwhm)
    assert np.isclose(out.sum(), 6.0)
    assert out[200] < 2.0 and out[199] > 0


def test_row_generators_are_independent_of_each_other():
    a = [row_rng(3, 2, r).normal() for r in range(5)]
    b = [row_rng(3, 2, r).normal() for r in (4, 3, 2, 1, 0)][::-1]
    assert a == b
    assert len(set(a)) == 5


def test_builtin_sky_matches_the_dark_sky_model_in_integrated_lines(shared_data):
    from dzspec.io.ingredients import load_sky_spectrum

    real = load_sky_spectrum(shared_data / "sky" / "eboss-spec-sky.dat")
    model = builtin_sky()
    wave = np.arange(4800.0, 9800.0, 1.0)
    seen_real = sky_on_grid(real, wave, np.full(wave.size, 3.0))
    seen_model = sky_on_grid(model, wave, np.full(wave.size, 3.0))
    for lo, hi in ((5000, 5500), (7700, 8100), (8700, 9100), (9300, 9800)):
        window = (wave > lo) & (wave < hi)
        ratio = seen_model[window].sum() / seen_real[window].sum()
        assert 0.6 < ratio < 1.5, (lo, hi, ratio)
    oi = np.argmin(abs(wave - 5578.9))
    assert seen_model[oi] > 10 * np.median(seen_model) and seen_real[oi] > 10 * np.median(seen_real)
