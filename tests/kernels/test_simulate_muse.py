"""The MUSE-like simulator: determinism, line positions, noise and sky residuals against real MUSE data, class
signatures and truth columns."""

import itertools
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.ndimage import median_filter

from dzspec.kernels.simulate.common import EMISSION_LINES, ab_magnitude
from dzspec.kernels.simulate.muse import (
    MUSE_CLASSES,
    MUSE_GRID_NAME,
    MUSE_SURVEY_CODE,
    MUSE_TRUTH_COLUMNS,
    MuseIngredients,
    MuseSimConfig,
    MuseSimFlags,
    muse_wavelength,
    simulate_muse_block,
)
from tests.conftest import shared_file

PASSIVE, SF, DESERT, LAE, FALSE, BLEND = range(6)
CLEAN = {"distorted_fraction": 0.0, "negative_median_fraction": 0.0, "ao_fraction": 0.0}


def fixed_depth(hours: float, **kwargs) -> MuseSimConfig:
    return MuseSimConfig(depth_hours=(hours,), depth_weights=(1.0,), depth_scatter_dex=0.0,
                         depth_range=(1e-3, 1e12), **kwargs)


@pytest.fixture(scope="module")
def default_block():
    return simulate_muse_block(np.arange(800), seed=11)


@pytest.fixture(scope="module")
def uves_ingredients():
    from dzspec.io.muse_ingredients import load_muse_ingredients

    return load_muse_ingredients(sky_path=shared_file("sky/sky-uves.fits"))


def sigma_of(ivar: np.ndarray) -> np.ndarray:
    ivar = np.asarray(ivar, np.float64)
    return np.where(ivar > 0, 1.0 / np.sqrt(np.where(ivar > 0, ivar, 1.0)), np.nan)


def window_medians(wave: np.ndarray, values: np.ndarray, step: float = 200.0) -> np.ndarray:
    starts = np.arange(4750.0, 9350.0, step)
    return np.array([np.nanmedian(values[(wave >= a) & (wave < a + step)]) for a in starts
                     if ((wave >= a) & (wave < a + step)).sum() > 20])


# ---------------------------------------------------------------------------------------------------------------
# Grid, contract, layering
# ---------------------------------------------------------------------------------------------------------------


def test_grid_is_the_readers_grid_bitwise():
    from astropy.io import fits

    from dzspec.io.muse import muse_wavelength as reader_wavelength
    from dzspec.schema import SURVEYS, code_of

    header = fits.Header({"NAXIS1": 3681, "CRVAL1": 4750.0, "CRPIX1": 1.0, "CDELT1": 1.25, "CTYPE1": "AWAV",
                          "CUNIT1": "Angstrom"})
    wave, info = reader_wavelength(header)
    assert np.array_equal(wave, muse_wavelength())
    assert info["grid_name"] == MUSE_GRID_NAME
    assert code_of("muse", SURVEYS) == MUSE_SURVEY_CODE


def test_grid_matches_a_real_muse_file():
    from dzspec.io.registry import read_spectra

    ds = read_spectra(shared_file("muse_udf_format/mosaic_01102.fits"))
    assert ds.attrs["grid_name"] == MUSE_GRID_NAME
    assert np.array_equal(ds.wavelength.values, simulate_muse_block(np.arange(1), 0).wavelength)


def test_block_contract(default_block):
    block = default_block
    n = 800
    assert block.flux.shape == block.ivar.shape == (n, 3681)
    assert block.flux.dtype == block.ivar.dtype == np.float32
    assert np.isfinite(block.flux).all() and (block.ivar > 0).all()
    assert set(block.truth) == set(MUSE_TRUTH_COLUMNS)
    for name, dtype in MUSE_TRUTH_COLUMNS.items():
        assert block.truth[name].dtype == np.dtype(dtype), name
        assert block.truth[name].shape == (n,)
    assert np.allclose(block.truth["exptime"], block.truth["depth_hours"] * 3600.0)
    assert block.attrs["grid_name"] == MUSE_GRID_NAME


def test_kernel_imports_no_dask_xarray_or_zarr():
    code = ("import sys, dzspec.kernels.simulate.muse\n"
            "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in "
            "{'dask', 'distributed', 'xarray', 'zarr', 'astropy'})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# ---------------------------------------------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------------------------------------------


def test_identical_whatever_the_block_split():
    whole = simulate_muse_block(np.arange(100), seed=7)
    parts = [simulate_muse_block(np.arange(0, 50), seed=7), simulate_muse_block(np.arange(50, 100), seed=7)]
    assert np.array_equal(whole.flux, np.concatenate([p.flux for p in parts]))
    assert np.array_equal(whole.ivar, np.concatenate([p.ivar for p in parts]))
    for name, values in whole.truth.items():
        joined = np.concatenate([p.truth[name] for p in parts])
        assert np.array_equal(values, joined, equal_nan=values.dtype.kind == "f"), name
    other = simulate_muse_block(np.arange(100), seed=8)
    assert not np.array_equal(other.flux, whole.flux)


@settings(max_examples=8, deadline=None)
@given(rows=st.lists(st.integers(0, 10**9), min_size=1, max_size=6, unique=True), seed=st.integers(0, 2**31))
def test_a_spectrum_depends_only_on_seed_and_row(rows, seed):
    rows = np.array(rows)
    block = simulate_muse_block(rows, seed)
    for i in (0, rows.size - 1):
        alone = simulate_muse_block(rows[i : i + 1], seed)
        assert np.array_equal(alone.flux[0], block.flux[i])
        assert np.array_equal(alone.truth["z_true"], block.truth["z_true"][i : i + 1], equal_nan=True)


# ---------------------------------------------------------------------------------------------------------------
# Physics: line positions, classes, truth
# ---------------------------------------------------------------------------------------------------------------


def test_emission_lines_land_where_z_says():
    # Effectively noiseless (1e8 h): each strong line's flux-weighted centroid within 1 pixel of rest (1+z).
    config = fixed_depth(1e8, class_fractions=(0.0, 0.6, 0.0, 0.4, 0.0, 0.0), **CLEAN)
    block = simulate_muse_block(np.arange(240), 3, config)
    wave, t = block.wavelength, block.truth
    checked = 0
    for i in range(240):
        z, flux = t["z_true"][i], block.flux[i].astype(np.float64)
        if t["sim_class"][i] == LAE:
            lam = EMISSION_LINES["lya"] * (1 + z)
            near = np.abs(wave - lam) < 8.0
            peak = wave[near][np.argmax(flux[near])]
            # z_true is the red peak (MUSE catalogue convention); pixel integration of the red-skewed profile can
            # make the next pixel the brightest, and the flux rises steeply just blueward of the peak.
            assert -1.25 <= peak - lam <= 2.5, (i, z, peak, lam)
            blue = (wave > lam - 4.0) & (wave < lam - 2.0)
            assert flux[blue].max() < 0.8 * flux[near].max(), (i, z)
            checked += 1
            continue
        for name, key in (("hbeta", "flux_hbeta"), ("oiii_5007", "flux_oiii_5007"), ("halpha", "flux_halpha"),
                          ("oii", "flux_oii")):
            rest = 3728.5 if name == "oii" else EMISSION_LINES[name]
            lam = rest * (1 + z)
            if not (wave[0] + 60 < lam < wave[-1] - 60) or not t[key][i] > 0:
                continue
            side = (np.abs(wave - lam) > 40) & (np.abs(wave - lam) < 90)
            net = flux - np.median(flux[side])
            near = np.abs(wave - lam) < (8.0 if name == "oii" else 6.0)
            if net[near].sum() * 1.25 < 0.5 * t[key][i]:
                continue  # dominated by absorption under the line: no clean centroid
            centroid = (wave[near] * net[near]).sum() / net[near].sum()
            if name == "oii":  # the doublet centroid lies between its two components
                lo, hi = EMISSION_LINES["oii_3726"] * (1 + z), EMISSION_LINES["oii_3729"] * (1 + z)
                assert lo - 1.25 <= centroid <= hi + 1.25, (i, z, centroid, lo, hi)
            else:
                assert abs(centroid - lam) <= 1.25, (i, name, z, centroid, lam)
            checked += 1
    assert checked > 150


def test_every_class_has_its_signature(default_block):
    t, flux = default_block.truth, default_block.flux
    cls, z, z2, flags = t["sim_class"], t["z_true"], t["z2_true"], t["sim_flags"]
    assert set(np.unique(cls)) == set(range(len(MUSE_CLASSES)))
    # Blends: two different redshifts, both in the truth; no other class has z2.
    blend = cls == BLEND
    assert np.isfinite(z2[blend]).all() and np.isnan(z2[~blend]).all()
    assert (np.abs(z2[blend] - z[blend]) >= 0.05 * (1 + z[blend]) - 1e-9).all()
    assert (t["sim_class1"][blend] >= 0).all() and (t["sim_class2"][blend] >= 0).all()
    # False sources: no redshift, no lines, no continuum.
    false = cls == FALSE
    assert np.isnan(z[false]).all() and np.isnan(t["mag_f775w"][false]).all()
    assert (t["snr_lines"][false] == 0).all() and (t["snr_cont"][false] == 0).all()
    for key in ("flux_lya", "flux_oii", "flux_hbeta", "flux_halpha", "flux_ciii", "flux_mgii"):
        assert np.isnan(t[key][false]).all()
    assert np.isfinite(z[~false]).all()
    # Redshift ranges.
    assert ((z[cls == LAE] > 2.9) & (z[cls == LAE] < 6.7)).all() and (t["flux_lya"][cls == LAE] > 0).all()
    assert ((z[cls == DESERT] >= 1.5) & (z[cls == DESERT] <= 2.9)).all()
    assert ((z[cls == SF] > 0) & (z[cls == SF] <= 1.5)).all()
    assert ((z[cls == PASSIVE] > 0) & (z[cls == PASSIVE] <= 1.4)).all()
    assert (t["flux_oii"][(cls == SF) & (z > 0.3) & (z < 1.45)] > 0).all()
    # Hard cases.
    negative = (flags & MuseSimFlags.NEGATIVE_MEDIAN) > 0
    assert 0 < negative.sum() < 0.15 * flags.size
    assert (np.median(flux[negative], axis=1) < 0).all()
    assert ((flags & MuseSimFlags.DISTORTED_CONTINUUM) > 0).sum() > 20
    ao = (flags & MuseSimFlags.AO_NOTCH) > 0
    notch = (muse_wavelength() > 5803.0) & (muse_wavelength() < 5967.0)
    assert ao.any() and (flux[ao][:, notch] == 0).all() and (default_block.ivar[ao][:, notch] > 0).all()
    lae_bump = (flags & MuseSimFlags.LYA_BLUE_BUMP) > 0
    assert lae_bump.any() and np.isin(cls[lae_bump], (LAE, BLEND)).all()


def test_depths_and_truth_values_are_sane(default_block):
    t = default_block.truth
    depth = t["depth_hours"]
    assert depth.min() >= 1.0 and depth.max() <= 141.0 and (depth > 100).any() and (depth < 2).any()
    galaxy = t["sim_class"] != FALSE
    for key in ("snr_lines", "snr_cont"):
        assert np.isfinite(t[key]).all() and (t[key][galaxy] >= -5).all()
    assert (t["snr_lines"] >= 0).all()
    mag = t["mag_f775w"][galaxy]
    assert np.isfinite(mag).mean() > 0.95 and np.nanmin(mag) > 18 and np.nanmax(mag) < 36
    strong_lines = (t["sim_class"] == SF) & (t["flux_oii"] > 2.0)
    assert (t["snr_lines"][strong_lines] > 5).all()


def test_deeper_means_higher_snr_for_the_same_source():
    config = dict(flux_depth_exponent=0.0, **CLEAN)
    shallow = simulate_muse_block(np.arange(200), 5, fixed_depth(10.0, **config))
    deep = simulate_muse_block(np.arange(200), 5, fixed_depth(100.0, **config))
    t1, t2 = shallow.truth, deep.truth
    assert np.array_equal(t1["z_true"], t2["z_true"], equal_nan=True)
    assert np.array_equal(t1["mag_f775w"], t2["mag_f775w"], equal_nan=True)  # same sources
    has = t1["snr_cont"] > 0.05
    ratio = t2["snr_cont"][has] / t1["snr_cont"][has]
    assert (ratio > 1).all() and 2.4 < np.median(ratio) < np.sqrt(10) + 0.05
    lines = t1["snr_lines"] > 10
    assert (t2["snr_lines"][lines] > t1["snr_lines"][lines]).all()


def test_f775w_magnitude_is_that_of_the_spectrum():
    block = simulate_muse_block(np.arange(200), 9, fixed_depth(1e6, flux_depth_exponent=0.0, **CLEAN))
    from dzspec.kernels.simulate.muse import _F775W_TABLE

    measured = ab_magnitude(block.wavelength, block.flux.astype(np.float64), _F775W_TABLE[:, 0],
                            _F775W_TABLE[:, 1])
    truth = block.truth["mag_f775w"]
    use = np.isfinite(truth) & (truth < 27)
    assert use.sum() > 50
    assert np.allclose(measured[use], truth[use], atol=0.05)


def test_config_validation():
    with pytest.raises(ValueError, match="class_fractions"):
        MuseSimConfig(class_fractions=(1.0, 0.0))
    with pytest.raises(ValueError, match="distorted_fraction"):
        MuseSimConfig(distorted_fraction=1.5)
    with pytest.raises(ValueError, match="sky_residual_pattern"):
        simulate_muse_block(np.arange(2), 0, ingredients=MuseIngredients(sky_residual_pattern=np.zeros(10)))


# ---------------------------------------------------------------------------------------------------------------
# Noise and sky residuals against real MUSE data
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "hours"), [("mosaic_01102.fits", 10.0), ("DR2_001032.fits", 141.0)])
@pytest.mark.parametrize("sky", ["uves", "builtin"])
def test_sigma_matches_real_stat(name, hours, sky, request):
    from dzspec.io.registry import read_spectra

    ds = read_spectra(shared_file(f"muse_udf_format/{name}"))
    ingredients = request.getfixturevalue("uves_ingredients") if sky == "uves" else None
    block = simulate_muse_block(np.arange(3), 0, fixed_depth(hours, **CLEAN), ingredients)
    wave = block.wavelength
    real = np.interp(wave, ds.wavelength.values, sigma_of(ds.ivar.values[0]))
    simulated = window_medians(wave, sigma_of(block.ivar[0]))
    real = window_medians(wave, real)
    assert np.corrcoef(simulated, real)[0, 1] > (0.9 if sky == "uves" else 0.85)
    assert 0.8 < np.median(simulated / real) < 1.25
    assert np.all(np.abs(simulated / real - 1) < 0.25)


def test_sky_residuals_have_the_excess_of_real_blank_sky():
    from dzspec.io.registry import read_spectra

    cube = read_spectra(shared_file("muse_mpdaf_cubes/minicube_A478.fits.gz"))
    flux, ivar = cube.flux.values.astype(np.float64), cube.ivar.values.astype(np.float64)
    level = np.nanmedian(np.where(ivar > 0, flux, np.nan), axis=1)
    faint = level <= np.nanpercentile(level, 30)
    real_ratio = flux[faint] * np.sqrt(ivar[faint])
    config = MuseSimConfig(class_fractions=(0, 0, 0, 0, 1, 0), **CLEAN)
    block = simulate_muse_block(np.arange(300), 2, config)
    sim_ratio = block.flux * np.sqrt(block.ivar)
    stats = {}
    for band in ((5000.0, 5500.0), (8340.0, 8400.0)):
        real_band = (cube.wavelength.values > band[0]) & (cube.wavelength.values < band[1])
        sim_band = (block.wavelength > band[0]) & (block.wavelength < band[1])
        stats[band] = (np.nanstd(real_ratio[:, real_band]), np.std(sim_ratio[:, sim_band]))
    (real_blue, sim_blue), (real_oh, sim_oh) = stats.values()
    assert 0.95 < sim_blue < 1.08 and abs(sim_blue - real_blue) < 0.08
    assert 1.1 < sim_oh < 1.4 and abs(sim_oh - real_oh) < 0.15
    # Residual/sigma does not grow with depth (the residuals scale as the noise).
    deep = simulate_muse_block(np.arange(100), 2, fixed_depth(141.0, class_fractions=(0, 0, 0, 0, 1, 0), **CLEAN))
    oh = (deep.wavelength > 8340) & (deep.wavelength < 8400)
    assert 1.05 < np.std(deep.flux[:, oh] * np.sqrt(deep.ivar[:, oh])) < 1.5


def test_noise_is_white_enough_and_correlated_like_muse():
    block = simulate_muse_block(np.arange(100), 4, fixed_depth(10.0, class_fractions=(0, 0, 0, 0, 1, 0), **CLEAN))
    wave = block.wavelength
    use = (wave > 5000) & (wave < 5500)
    r = (block.flux * np.sqrt(block.ivar))[:, use].astype(np.float64)
    r -= median_filter(r, size=(1, 31), mode="nearest")
    lag1 = np.mean([np.corrcoef(x[:-1], x[1:])[0, 1] for x in r])
    assert 0.08 < lag1 < 0.2


def test_real_blank_sky_pattern_ingredient():
    from dzspec.io.muse_ingredients import blank_sky_residual_library, load_muse_ingredients

    ingredients = load_muse_ingredients(
        sky_path=shared_file("sky/sky-uves.fits"),
        filter_path=shared_file("filters/mpdaf_filter_list.fits"),
        catalog_path=shared_file("muse_udf_format/catalogs/udf10_c041_e030_withz.fits.gz"),
        residual_cube_path=shared_file("muse_mpdaf_cubes/minicube_A478.fits.gz"),
    )
    library = ingredients.sky_residual_pattern
    assert library.ndim == 2 and 4 <= library.shape[0] <= 16 and library.shape[1] == 3681  # tiles of 4 x 4
    # The chequerboard halves share no tile and together make the whole library; tiles differ.
    cube = shared_file("muse_mpdaf_cubes/minicube_A478.fits.gz")
    even, odd = (blank_sky_residual_library(cube, tiles=4, part=part) for part in ("even", "odd"))
    assert even.shape[0] + odd.shape[0] == library.shape[0]
    assert not any(np.allclose(e, o) for e in even for o in odd)
    assert np.corrcoef(even[0], odd[0])[0, 1] > 0.2  # the same sky lines, not the same pixels' noise
    # A478's Halpha + [N II] nebula at z = 0.086 fills the faint spaxels (3-6 sigma): it is no sky residual
    wave = muse_wavelength()
    nebula, oh = (wave > 7110) & (wave < 7160), (wave > 8760) & (wave < 8800)
    assert not library[:, nebula].any() and np.abs(library[:, oh]).max() > 1.0
    block = simulate_muse_block(np.arange(200), 1, MuseSimConfig(**CLEAN), ingredients)
    t = block.truth
    assert ((t["sim_flags"] & MuseSimFlags.REAL_SKY_RESIDUALS) > 0).all()
    false = t["sim_class"] == FALSE
    ratio = block.flux[false] * np.sqrt(block.ivar[false])
    oh = (block.wavelength > 8340) & (block.wavelength < 8400)
    assert 1.05 < np.std(ratio[:, oh]) < 1.5
    # The real F775W curve and the built-in one agree.
    builtin = simulate_muse_block(np.arange(200), 1, MuseSimConfig(**CLEAN), MuseIngredients(
        sky=ingredients.sky, catalog=ingredients.catalog))
    both = np.isfinite(t["mag_f775w"]) & np.isfinite(builtin.truth["mag_f775w"])
    assert np.allclose(t["mag_f775w"][both], builtin.truth["mag_f775w"][both], atol=0.05)


def test_gallery_draws_without_real_data(tmp_path):
    from dzspec.viz.gallery_muse import muse_gallery

    out = muse_gallery(tmp_path / "muse.png", None, seed=0)
    assert out.exists() and out.stat().st_size > 50_000


# ---------------------------------------------------------------------------------------------------------------
# The vectorised re-implementations agree with the shared physics of common.py
# ---------------------------------------------------------------------------------------------------------------


def test_vectorised_igm_equals_madau():
    from dzspec.kernels.simulate.common import igm_transmission_madau
    from dzspec.kernels.simulate.muse import _igm_transmission

    wave = muse_wavelength()
    z = np.array([2.95, 3.7, 5.1, 6.6])
    block = _igm_transmission(wave[None, :], z[:, None])
    for i, zi in enumerate(z):
        assert np.allclose(block[i], igm_transmission_madau(wave, zi), rtol=1e-10, atol=1e-12)


def test_pixel_integrated_lya_equals_the_common_profile():
    from dzspec.kernels.simulate.common import lya_profile
    from dzspec.kernels.simulate.muse import _instrument, _LineSink

    inst = _instrument(MuseSimConfig(), None)
    sink = _LineSink(inst, 1)
    center, flux, s_red, s_blue, blue, sep = 6001.3, 2.0, 2.4, 0.9, 0.2, 7.5
    sink.lya(np.array([0]), np.array([0]), np.array([center]), np.array([flux]), np.array([s_red]),
             np.array([s_blue]), np.array([blue]), np.array([sep]))
    model = sink.model()[0]
    fine = np.arange(5950.0, 6050.0, 0.005)
    profile = lya_profile(fine, center, flux, s_red, s_blue, blue, sep)
    edges = inst.edges
    expected = np.array([profile[(fine >= a) & (fine < b)].mean() for a, b in itertools.pairwise(edges)
                         if 5960 < a < 6040])
    got = model[(edges[:-1] > 5960) & (edges[:-1] < 6040)]
    assert np.allclose(got, expected, atol=2e-3 * expected.max())
    assert np.isclose(model.sum() * 1.25, flux, rtol=2e-3)


@pytest.fixture(scope="module")
def ssp_ingredients():
    from dzspec.io.muse_ingredients import load_muse_ingredients

    return load_muse_ingredients(ssp_path=shared_file("sps/bc03_miles_subset.npz"))


def test_stellar_population_continua(ssp_ingredients):
    """With a BC03 grid the continua are stellar populations: old passive galaxies have a strong 4000 A break
    and their own Ca H&K, young LAE continua are blue; the rows do not depend on the block split and keep
    their other draws (class, z, depth) from the analytic run."""
    config = MuseSimConfig(class_fractions=(0.5, 0.0, 0.0, 0.5, 0.0, 0.0), **CLEAN)
    block = simulate_muse_block(np.arange(120), 5, config, ssp_ingredients)
    analytic = simulate_muse_block(np.arange(120), 5, config)
    assert block.attrs["continua"] == "sps" and analytic.attrs["continua"] == "analytic"
    for name in ("z_true", "sim_class", "depth_hours"):
        np.testing.assert_array_equal(block.truth[name], analytic.truth[name])
    assert not np.array_equal(block.flux, analytic.flux)
    again = simulate_muse_block(np.arange(100, 120), 5, config, ssp_ingredients)
    np.testing.assert_array_equal(again.flux, block.flux[100:])

    # Noiseless continua straight from the kernel's mixture: the break D4000 of passive galaxies at z < 0.6.
    from dzspec.kernels.simulate import muse

    lib = muse._ssp_library(ssp_ingredients)
    c = np.array([PASSIVE, LAE])
    idx, w = muse._ssp_mixture(lib, c, np.array([0.3, 4.0]), *np.full((4, 2), 0.5))
    assert np.allclose(w.sum(axis=1), 1.0)
    rest = np.linspace(3000.0, 5000.0, 2001)[None, :].repeat(2, axis=0)
    spec = muse._ssp_continuum(lib, idx, w, rest)
    blue, red = (rest[0] > 3850) & (rest[0] < 3950), (rest[0] > 4000) & (rest[0] < 4100)
    d4000 = spec[:, red].mean(axis=1) / spec[:, blue].mean(axis=1)
    assert d4000[0] > 1.4 and d4000[1] < 1.2
    hk = (rest[0] > 3925) & (rest[0] < 3945)
    assert spec[0, hk].min() < 0.8 * np.median(spec[0, blue])  # Ca K from the populations themselves
    # The old burst of a z = 4 galaxy is younger than the universe then.
    ages = np.exp(lib.ln_age[idx % lib.ln_age.size])
    assert ages[1, :2].max() <= 1.6


def test_missing_stellar_population_grid_is_a_clear_error(tmp_path):
    from dzspec.errors import InputError
    from dzspec.io.muse_ingredients import load_muse_ingredients

    with pytest.raises(InputError, match="stellar-population grid not found"):
        load_muse_ingredients(ssp_path=tmp_path / "missing.npz")
    np.savez(tmp_path / "bad.npz", wave_aa=np.arange(3.0))
    with pytest.raises(InputError, match="needs arrays"):
        load_muse_ingredients(ssp_path=tmp_path / "bad.npz")
