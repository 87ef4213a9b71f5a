"""DESI-like simulator: grid, determinism, line positions, coadd of exposures, class signatures, and noise / sky
residuals compared with real DESI coadds (skipped without ../shared/data)."""

import subprocess
import sys

import numpy as np
import pytest
from scipy.ndimage import binary_dilation, percentile_filter

from dzspec.errors import BadSpectrumWarning
from dzspec.kernels.simulate.common import EMISSION_LINES
from dzspec.kernels.simulate.desi import (
    CAMERAS,
    DESI_GRID_NAME,
    DESI_SIM_CLASSES,
    DESI_SURVEY_CODE,
    DesiIngredients,
    DesiSimConfig,
    desi_wavelength,
    simulate_desi_block,
)
from dzspec.kernels.simulate.sky import sky_on_grid
from tests.conftest import shared_file

FASTSPEC = "desi_fastspecfit/coadd-4-80613-thru20210324.fits"
SPECIAL = "desi_fastspecfit/coadd-special-dark-27247.fits"
EVEREST = "desi_quasarnp_everest/coadd-0-80605-first25fibers.fits"
DARK_SKY = "sky/eboss-spec-sky.dat"  # the DESI model dark sky
UVES_SKY = "sky/sky-uves.fits"  # the observed UVES atlas
#: Total exposure assumed for the everest SV1 coadd (it has no FIBERMAP): what the simulator calibration used.
EVEREST_EXPTIME = 10_500.0
LAE, LAE2, OII, GAL, SKY = (DESI_SIM_CLASSES.index(c) for c in DESI_SIM_CLASSES)
# High S/N, no sky-subtraction residuals: for measuring the noiseless model through the noise.
CLEAN = {"exptime_mean": 1e6, "exptime_limits": (1e5, 1e7), "sky_line_residual": 0.0,
         "sky_line_residual_fiber": 0.0, "sky_shift_rms": 0.0, "sky_continuum_residual": 0.0}
CAMERA_RANGES = {"b": (3600.0, 5750.0), "r": (5850.0, 7500.0), "z": (7650.0, 9824.0)}


@pytest.fixture(scope="module")
def dark_sky():
    from dzspec.io.desi_ingredients import load_desi_ingredients

    return load_desi_ingredients(shared_file(DARK_SKY))


@pytest.fixture(scope="module")
def everest_blanks():
    from dzspec.io.registry import read_spectra

    with pytest.warns(BadSpectrumWarning, match="no pixel with ivar"):  # fibre 11 is empty
        ds = read_spectra(shared_file(EVEREST))
    wave, flux, ivar = ds.wavelength.values, ds.flux.values, ds.ivar.values
    arms = ((3600.0, 5800.0), (5800.0, 7600.0), (7600.0, 9824.0))
    blank = [i for i in range(flux.shape[0]) if ivar[i].max() > 0
             and all(abs(np.median(flux[i][(wave >= lo) & (wave < hi)])) < 0.15 for lo, hi in arms)]
    assert 6 <= len(blank) <= 12  # the README: about 9 blank or very faint fibres
    return wave, flux[blank], ivar[blank]


def _windows(wave, values, lo, hi, step=100.0):
    starts = np.arange(lo, hi - 50, step)
    return np.array([np.median(values[..., (wave >= a) & (wave < min(a + step, hi))]) for a in starts])


# --- grid and contract ---------------------------------------------------------------------------------------------


def test_grid_constants_match_the_reader_and_schema():
    from dzspec.io import desi as desi_io
    from dzspec.schema import SURVEYS, SpecMask, code_of

    wave = desi_wavelength()
    assert wave.size == desi_io.DESI_NWAVE and DESI_GRID_NAME == desi_io.DESI_GRID_NAME
    assert np.array_equal(wave, desi_io.DESI_LATTICE_START + np.arange(desi_io.DESI_NWAVE) * desi_io.DESI_LATTICE_STEP)
    assert code_of("desi", SURVEYS) == DESI_SURVEY_CODE
    block = simulate_desi_block(np.arange(2), 0, DesiSimConfig(nexp=1))
    overlap = (block.mask[0] & np.uint32(SpecMask.CAMERA_OVERLAP)) > 0
    assert overlap.sum() == 51 + 126  # b/r and r/z overlaps
    assert block.attrs["grid_name"] == DESI_GRID_NAME


def test_grid_is_bitwise_the_real_reader_grid():
    from dzspec.io.registry import read_spectra
    from dzspec.schema import SpecMask

    ds = read_spectra(shared_file(FASTSPEC))
    assert ds.attrs["grid_name"] == DESI_GRID_NAME
    assert ds.wavelength.values.tobytes() == desi_wavelength().tobytes()
    block = simulate_desi_block(np.arange(1), 0, DesiSimConfig(nexp=1))
    bit = np.uint32(SpecMask.CAMERA_OVERLAP)
    np.testing.assert_array_equal(block.mask[0] & bit, ds.mask.values[0] & bit)


def test_kernel_imports_no_dask_xarray_or_zarr():
    code = ("import sys, dzspec.kernels.simulate.desi\n"
            "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in {'dask', 'xarray', 'zarr'})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_config_is_validated():
    with pytest.raises(ValueError, match="class_fractions"):
        DesiSimConfig(class_fractions=(1.0, 0.0))
    with pytest.raises(ValueError, match="lae_z_range"):
        DesiSimConfig(lae_z_range=(4.0, 2.0))
    with pytest.raises(ValueError, match="nexp"):
        DesiSimConfig(nexp=0)
    assert hash(DesiSimConfig()) == hash(DesiSimConfig())


def test_block_shapes_dtypes_and_truth():
    nexp = 3
    block = simulate_desi_block(np.arange(10, 30), 5, DesiSimConfig(nexp=nexp))
    assert block.flux.shape == block.ivar.shape == (20, 7781) and block.flux.dtype == np.float32
    assert block.exposures.flux.shape == (60, 7781) and block.exposures.ivar.dtype == np.float32
    t = block.truth
    assert t["z_true"].dtype == np.float64 and t["sim_class"].dtype == np.int8 and t["nexp"].dtype == np.int16
    assert t["exptime"].dtype == np.float32 and np.all(t["nexp"] == nexp)
    for name in ("flux_lya", "lae_fwhm_kms", "lae_skew", "lae_blue_fraction", "lya_ew_rest", "flux_oii",
                 "snr_lines", "lae_eta", "lae_sigma", "lae_snr"):
        assert t[name].shape == (20,)
    e = block.exposures.truth
    np.testing.assert_array_equal(e["target_row"], np.repeat(np.arange(10, 30), nexp))
    np.testing.assert_array_equal(e["expid"], np.tile(np.arange(nexp), 20))
    np.testing.assert_allclose(e["exptime"].reshape(20, nexp).sum(axis=1), t["exptime"], rtol=1e-5)
    assert np.all(np.isfinite(block.flux)) and np.all(block.ivar > 0)


def test_determinism_across_block_splits():
    config = DesiSimConfig(nexp=2)
    rows = np.arange(100, 112)
    whole = simulate_desi_block(rows, 7, config)
    parts = [simulate_desi_block(r, 7, config) for r in (rows[:5], rows[5:9], rows[9:])]
    backwards = simulate_desi_block(rows[::-1], 7, config)
    np.testing.assert_array_equal(whole.flux, np.concatenate([p.flux for p in parts]))
    np.testing.assert_array_equal(whole.ivar, np.concatenate([p.ivar for p in parts]))
    np.testing.assert_array_equal(whole.exposures.flux, np.concatenate([p.exposures.flux for p in parts]))
    np.testing.assert_array_equal(whole.flux, backwards.flux[::-1])
    for name, values in whole.truth.items():
        np.testing.assert_array_equal(values, np.concatenate([p.truth[name] for p in parts]), err_msg=name)
    other_seed = simulate_desi_block(rows, 8, config)
    assert not np.array_equal(whole.flux, other_seed.flux)


def test_coadd_is_the_inverse_variance_coadd_of_the_exposures():
    nexp = 4
    block = simulate_desi_block(np.arange(15), 3, DesiSimConfig(nexp=nexp))
    flux_e = block.exposures.flux.reshape(15, nexp, -1).astype(np.float64)
    ivar_e = block.exposures.ivar.reshape(15, nexp, -1).astype(np.float64)
    ivar = ivar_e.sum(axis=1)
    flux = (ivar_e * flux_e).sum(axis=1) / ivar
    np.testing.assert_allclose(block.ivar, ivar, rtol=2e-6)  # ivar adds up across exposures
    sigma = 1 / np.sqrt(ivar)
    assert np.max(np.abs(block.flux - flux) / (np.abs(flux) + sigma)) < 1e-5
    # Every exposure has its own noise, and a single exposure is noisier than the coadd.
    assert not np.allclose(flux_e[:, 0], flux_e[:, 1])
    assert np.all(ivar_e.max(axis=1) < ivar)


# --- physics: lines where z says, class signatures -----------------------------------------------------------------


def test_lyman_alpha_lands_where_z_says():
    # z >= 2.1: the first 60 A of the b camera are too noisy to centre a line to a pixel even in 4e6 s.
    config = DesiSimConfig(class_fractions=(1, 1, 0, 0, 0), lae_z_range=(2.1, 4.0), lae_ew_range=(1e5, 1e5),
                           lae_flux_range=(20.0, 30.0), lae_uv_line_ratio_max=(0.0, 0.0, 0.0), **CLEAN)
    block = simulate_desi_block(np.arange(30), 11, config)
    wave, t = desi_wavelength(), block.truth
    for i in range(30):
        center = EMISSION_LINES["lya"] * (1 + t["z_true"][i])
        width = t["lae_fwhm_kms"][i] / 299792.458 * center / np.sqrt(2 * np.log(2))  # sigma_red + sigma_blue
        red, blue = 0.5 * (1 + t["lae_skew"][i]) * width, 0.5 * (1 - t["lae_skew"][i]) * width
        frac = t["lae_blue_fraction"][i]
        sep = 0.0 if frac == 0 else t["lae_peak_sep_kms"][i] / 299792.458 * center
        sel = (wave > center - sep - 5 * blue - 5) & (wave < center + 6 * red + 5)
        profile = block.flux[i][sel].astype(float)
        expected = (1 - frac) * (center + np.sqrt(2 / np.pi) * (red - blue)) + frac * (center - sep)
        centroid = (profile * wave[sel]).sum() / profile.sum()
        assert abs(centroid - expected) < 0.8, i  # within one 0.8 A pixel
        assert profile.sum() * 0.8 == pytest.approx(t["flux_lya"][i], rel=0.02)
        if frac == 0:  # the red peak is at z (pixel-integrated and LSF-convolved: within 2 px)
            assert abs(wave[sel][np.argmax(profile)] - center) <= 1.6
            # Red-skewed (a steep blue edge, an extended red wing): more than half the flux is redward of the peak.
            cumulative = np.interp(center, wave[sel] + 0.4, np.cumsum(profile)) / profile.sum()
            assert cumulative < 0.5 - 0.25 * t["lae_skew"][i]


def test_nebular_lines_land_where_z_says():
    config = DesiSimConfig(class_fractions=(0, 0, 1, 1, 0), galaxy_passive_fraction=0.0,
                           galaxy_oii_ew_range=(40.0, 60.0), oii_ew_range=(80.0, 100.0), **CLEAN)
    block = simulate_desi_block(np.arange(40), 2, config)
    wave, t = desi_wavelength(), block.truth
    checked = 0
    for i in range(40):
        z = t["z_true"][i]
        r = t["oii_ratio"][i]
        oii = (EMISSION_LINES["oii_3726"] + r * EMISSION_LINES["oii_3729"]) / (1 + r) * (1 + z)
        lines = {"oii": (oii, 8.0), "oiii_5007": (EMISSION_LINES["oiii_5007"] * (1 + z), 5.0),
                 "halpha": (EMISSION_LINES["halpha"] * (1 + z), 5.0)}
        for name, (center, half) in lines.items():
            if not 3650 < center < 9750:
                continue
            sel = np.abs(wave - center) < half
            side = (np.abs(wave - center) > 30) & (np.abs(wave - center) < 60)
            profile = block.flux[i][sel] - np.median(block.flux[i][side])
            if profile.sum() * 0.8 < 2.0:  # too faint to centre to a pixel
                continue
            centroid = (profile * wave[sel]).sum() / profile.sum()
            assert abs(centroid - center) < 0.8, (i, name)
            checked += 1
    assert checked > 40


def test_class_signatures():
    block = simulate_desi_block(np.arange(120), 4, DesiSimConfig(nexp=2))
    t, cls = block.truth, block.truth["sim_class"]
    assert set(np.unique(cls)) == set(range(len(DESI_SIM_CLASSES)))
    lae = (cls == LAE) | (cls == LAE2)
    assert np.all((t["z_true"][lae] > 2) & (t["z_true"][lae] < 4)) and np.all(t["flux_lya"][lae] > 0)
    assert np.all(t["lae_skew"][lae] > 0) and np.all((t["lae_fwhm_kms"][lae] >= 150) & (t["lae_fwhm_kms"][lae] <= 400))
    assert np.all(t["lae_blue_fraction"][cls == LAE] == 0) and np.all(t["lae_blue_fraction"][cls == LAE2] > 0.1)
    assert np.all(t["z_sys"][lae] < t["z_true"][lae])  # the red peak is redshifted from systemic
    np.testing.assert_allclose(t["lae_snr"][lae], t["lae_eta"][lae] / (t["lae_sigma"][lae]
                                                                       * np.sqrt(t["lae_area_pix"][lae])), rtol=1e-5)
    sky = cls == SKY
    for name in ("z_true", "flux_lya", "flux_oii", "snr_lines", "mag_r"):
        assert np.all(np.isnan(t[name][sky])), name
    oii_obs = 3728.5 * (1 + t["z_true"][cls == OII])
    assert np.all((oii_obs > 4100) & (oii_obs < 6100)) and np.all(t["flux_oii"][cls == OII] > 0)
    gal = cls == GAL
    assert np.all((t["z_true"][gal] > 0) & (t["z_true"][gal] < 1.6)) and np.all(np.isfinite(t["mag_r"][gal]))
    assert np.all(np.isnan(t["lae_skew"][~lae]))
    targets = ~sky
    assert np.all(t["snr_lines"][targets] >= 0) and np.all(np.isfinite(t["snr_lines"][targets]))


def test_sky_fibres_have_no_line_and_oii_interlopers_a_doublet():
    config = DesiSimConfig(class_fractions=(0, 0, 1, 0, 1), oii_flux_range=(20.0, 30.0), **CLEAN)
    block = simulate_desi_block(np.arange(40), 9, config)
    wave, t = desi_wavelength(), block.truth
    chi = block.flux * np.sqrt(block.ivar)
    for i in np.flatnonzero(t["sim_class"] == SKY):
        assert np.abs(chi[i]).max() < 6.5 and abs(chi[i].mean()) < 0.1  # noise only
    for i in np.flatnonzero(t["sim_class"] == OII):
        z, r = t["z_true"][i], t["oii_ratio"][i]
        blue, red = EMISSION_LINES["oii_3726"] * (1 + z), EMISSION_LINES["oii_3729"] * (1 + z)
        sel = (wave > blue - 12) & (wave < red + 12)
        side = (np.abs(wave - 0.5 * (blue + red)) > 30) & (np.abs(wave - 0.5 * (blue + red)) < 60)
        profile = block.flux[i][sel] - np.median(block.flux[i][side])
        assert profile.sum() * 0.8 == pytest.approx(t["flux_oii"][i], rel=0.05)
        # A doublet: the second moment exceeds that of one line by the doublet spread r (red - blue)^2 / (1 + r)^2.
        mean = (profile * wave[sel]).sum() / profile.sum()
        var = (profile * (wave[sel] - mean) ** 2).sum() / profile.sum()
        assert abs(mean - (blue + r * red) / (1 + r)) < 0.8
        assert var > r * (red - blue) ** 2 / (1 + r) ** 2


# --- noise and sky residuals against real DESI ---------------------------------------------------------------------


# The DESI model dark sky has a continuum deficit at 8540-8620 A that real DESI fibres do not show (their ivar is
# flat there), which costs the z camera some correlation: 0.87 against 0.96 with the observed UVES atlas.
@pytest.mark.parametrize(("sky_file", "min_corr_z"), [(UVES_SKY, 0.9), (DARK_SKY, 0.85)])
def test_ivar_shape_and_level_match_real_blank_fibres(everest_blanks, sky_file, min_corr_z):
    from dzspec.io.desi_ingredients import load_desi_ingredients
    from dzspec.io.registry import read_spectra

    wave, _, real_ivar = everest_blanks
    config = DesiSimConfig(class_fractions=(0, 0, 0, 0, 1), nexp=10, exptime_mean=EVEREST_EXPTIME / 10)
    sim = simulate_desi_block(np.arange(24), 0, config, load_desi_ingredients(shared_file(sky_file)))
    sim_per_s = np.median(sim.ivar / sim.truth["exptime"][:, None], axis=0)
    special = read_spectra(shared_file(SPECIAL))
    special_per_s = special.ivar.values[0] / float(special.exptime[0])
    real_per_s = np.median(real_ivar, axis=0) / EVEREST_EXPTIME
    for cam, (lo, hi) in CAMERA_RANGES.items():
        s, r, sd = (_windows(wave, v, lo, hi) for v in (sim_per_s, real_per_s, special_per_s))
        min_corr = min_corr_z if cam == "z" else 0.9
        assert np.corrcoef(s, r)[0, 1] > min_corr, cam
        assert np.corrcoef(s, sd)[0, 1] > min_corr, cam
        assert 1 / 1.5 < np.median(s / r) < 1.5, cam
        assert 1 / 1.5 < np.median(s / sd) < 1.5, cam  # special/dark: COADD_EXPTIME 23916 s in 20 exposures


def test_residual_over_sigma_matches_real_blank_fibres(dark_sky, everest_blanks):
    wave, real_flux, real_ivar = everest_blanks
    seen = sky_on_grid(dark_sky.sky, wave, np.full(wave.size, 1.7))
    cont = percentile_filter(seen, 10, size=151)
    line = seen - cont
    inside = (wave > 3650) & (wave < 9800)
    off = inside & ~binary_dilation(line > 0.05 * cont, iterations=3)
    on = inside & (line > 3 * cont)

    def stats(flux, ivar):
        chi = (flux - np.median(flux, axis=1, keepdims=True)) * np.sqrt(ivar)
        return float(np.std(chi[:, off])), float(np.std(chi[:, on]))

    real_off, real_on = stats(real_flux, real_ivar)
    config = DesiSimConfig(class_fractions=(0, 0, 0, 0, 1), nexp=10, exptime_mean=EVEREST_EXPTIME / 10)
    sim = simulate_desi_block(np.arange(24), 1, config, dark_sky)
    sim_off, sim_on = stats(sim.flux, sim.ivar)
    assert real_on > real_off + 0.2  # real DESI: excess residuals on the strong sky lines (~1.45 vs ~1.08)
    assert 0.95 < sim_off < 1.2 and abs(sim_off - real_off) < 0.1
    assert sim_on > sim_off + 0.2 and abs(sim_on - real_on) < 0.2
    # Residuals are line-dependent: the excess varies from line to line across fibres.
    chi = sim.flux * np.sqrt(sim.ivar)
    assert np.std(np.std(chi[:, on], axis=0)) > 0.2


def test_ingredients_and_templates(shared_data):
    from dzspec.io.desi_ingredients import load_desi_ingredients

    ingredients = load_desi_ingredients(shared_data / DARK_SKY, shared_data / "sps" / "bc03_miles_subset.npz")
    assert isinstance(ingredients, DesiIngredients) and ingredients.templates.flux.shape[0] == 32
    block = simulate_desi_block(np.arange(20), 0, DesiSimConfig(class_fractions=(0, 0, 1, 1, 0)), ingredients)
    assert np.all(np.isfinite(block.flux)) and np.all(np.isfinite(block.truth["mag_r"]))
    assert np.all((block.truth["mag_r"] > 17) & (block.truth["mag_r"] < 27))


def test_gallery_draws(shared_data, tmp_path):
    from dzspec.viz.gallery_desi import desi_gallery

    out = desi_gallery(tmp_path / "desi.png", shared_data, seed=0)
    assert out.exists() and out.stat().st_size > 50_000


def test_cameras_tile_the_grid():
    covered = np.zeros(7781, int)
    for start, n in CAMERAS.values():
        covered[start : start + n] += 1
    assert covered.min() == 1 and (covered == 2).sum() == 51 + 126
