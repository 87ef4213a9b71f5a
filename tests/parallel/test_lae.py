"""MADGICS on the cluster: priors built by Dask equal the kernels run in one process; the scan through the block
runner equals the kernel, keeps every row and finds bright simulated LAEs."""

import math

import numpy as np
import pytest

from dzspec.engines.madgics.interlopers import INTERLOPER_BITS, interloper_tests, select_lae
from dzspec.engines.madgics.priors import (
    RescalePolynomial,
    align_windows,
    gram,
    lae_vectors_from_windows,
    sky_line_counts,
    sky_mask_from_counts,
    sky_power,
    sky_spectra_keep,
    sky_vectors_from_gram,
    to_lae_grid,
)
from dzspec.engines.madgics.scan import lae_line_flux, scan_lae, sky_component
from dzspec.errors import StoreError
from dzspec.io import store as zstore
from dzspec.io.noise import load_noise_calibration
from dzspec.io.priors import load_lae_prior
from dzspec.kernels.restframe import LogGrid
from dzspec.parallel.lae import run_lae
from dzspec.results_schema import LAEWarn
from dzspec.simulate import simulate
from tests.conftest import COARSE_LAE_GRID_ARGS, small_lae_prior
from tests.conftest import COARSE_N_SHIFTS as N_SHIFTS
from tests.conftest import DESI_GROUP as GROUP

# a coarser grid than U25's (4x the step) keeps the 8 720-pixel eigenproblem out of the unit tests
GRID = LogGrid(*COARSE_LAE_GRID_ARGS)


@pytest.fixture(scope="module")
def desi(tmp_path_factory, client):
    store = tmp_path_factory.mktemp("lae") / "desi.zarr"
    sky, lae, loaded, summary = small_lae_prior(client, store, seed=11, n=480, n_sky=20, chunk_rows=160,
                                                block_rows=50)
    return store, sky, lae, loaded, summary


def _one_process(store, sky, lae, n_sky):
    """The same prior from the kernels alone, in one process."""
    source = zstore.open_root(store)[f"spectra/{GROUP}"]
    wavelength = source["wavelength"][:]
    flux, ivar = to_lae_grid(wavelength, source["flux"].oindex[sky, :], source["ivar"].oindex[sky, :], GRID)
    keep = sky_spectra_keep(flux, ivar)
    power, count = sky_power(flux[keep], ivar[keep])
    y = RescalePolynomial.fit(GRID.wavelength(), power / np.maximum(count, 1), count > 0)(GRID.wavelength())
    flux, ivar = to_lae_grid(wavelength, source["flux"].oindex[sky[keep], :], source["ivar"].oindex[sky[keep], :],
                             GRID, y=y)
    mask = sky_mask_from_counts(sky_line_counts(flux, ivar), int(keep.sum()))
    vectors, _ = sky_vectors_from_gram(gram(flux, ivar), int(keep.sum()), mask, n_sky)
    flux, ivar = to_lae_grid(wavelength, source["flux"].oindex[lae, :], source["ivar"].oindex[lae, :], GRID, y=y)
    valid = (ivar > 0) & ~mask
    residual = np.where(valid, flux - sky_component(flux, ivar, vectors, mask), 0.0)
    variance = np.array([np.var(r[v], ddof=1) for r, v in zip(residual, valid, strict=True)])
    start = round((math.log10(4133.0) - GRID.start) / GRID.step)
    m = round((math.log10(4278.0) - GRID.start) / GRID.step) - start + 1
    z = source["z_true"].oindex[lae]
    data, covered = align_windows(residual, valid.astype(float), np.log10((1 + z) / 3.45) / GRID.step, start, m)
    kept = variance < np.quantile(variance, 0.75)
    lae_vectors, _ = lae_vectors_from_windows(data[kept].T @ data[kept], covered[kept].T @ covered[kept], 2)
    return y, mask, vectors, lae_vectors


def test_dask_priors_equal_the_kernels_in_one_process(desi):
    store, sky, lae, loaded, summary = desi
    y, mask, sky_vectors, lae_vectors = _one_process(store, sky, lae, 20)
    np.testing.assert_allclose(loaded.rescale_y, y, rtol=1e-10)
    np.testing.assert_array_equal(loaded.prior.sky_mask, mask)
    # eigenvectors up to sign: compare the covariances they rebuild
    np.testing.assert_allclose(loaded.prior.sky_vectors @ loaded.prior.sky_vectors.T, sky_vectors @ sky_vectors.T,
                               atol=1e-8 * np.abs(sky_vectors).max() ** 2)
    np.testing.assert_allclose(loaded.prior.lae_vectors @ loaded.prior.lae_vectors.T, lae_vectors @ lae_vectors.T,
                               atol=1e-8 * np.abs(lae_vectors).max() ** 2)
    assert summary["sky_kept"] <= sky.size and summary["lae_kept"] < summary["lae_usable"] <= lae.size
    # the stored prior is what was returned
    stored = load_lae_prior(store, "lae")
    np.testing.assert_array_equal(stored.prior.sky_vectors, loaded.prior.sky_vectors)
    assert stored.grid == GRID and stored.prior.window_start == loaded.prior.window_start


def test_lae_scan_through_the_runner(desi, client):
    store, _, _, loaded, _ = desi
    report = run_lae(store, store, client, group=GROUP, params={"n_shifts": N_SHIFTS}, block_rows=160,
                     progress=False)
    assert report.complete
    results = zstore.open_results(store, report.results).compute()
    spectra = zstore.open_spectra(store, GROUP)
    assert results.sizes["spectrum"] == spectra.sizes["spectrum"]  # every input row has an output row
    # 480 spectra: the store's own noise calibration was measured first and named in the run's parameters
    calibration = load_noise_calibration(store, f"spectra/{GROUP}")
    params = zstore.open_root(store)[report.results].attrs["params"]
    assert params["noise_sha256"] == calibration.sha256 and (calibration.scale > 1).any()
    # equal to the kernel on the same rows, with the calibrated variance
    rows = np.arange(40, 60)
    source = zstore.open_root(store)[f"spectra/{GROUP}"]
    native_ivar = source["ivar"].oindex[rows, :] / calibration.scale**2
    flux, ivar = to_lae_grid(source["wavelength"][:], source["flux"].oindex[rows, :], native_ivar, GRID,
                             y=loaded.rescale_y)
    direct = scan_lae(flux, ivar, loaded.prior, shifts=loaded.prior.coarse_shifts(2.0, N_SHIFTS))
    np.testing.assert_array_equal(results.z.values[rows], direct.z)
    np.testing.assert_array_equal(results.lae_dchi2.values[rows], direct.dchi2)
    line_flux = lae_line_flux(loaded.prior, direct.z, direct.lae_amplitude, np.sqrt(10.0**loaded.rescale_y),
                              GRID.wavelength() * np.log(10) * GRID.step)
    tests = interloper_tests(source["wavelength"][:], source["flux"].oindex[rows, :].astype(float),
                             native_ivar.astype(float), direct.z, line_flux)
    np.testing.assert_allclose(results.lae_line_flux.values[rows], line_flux, rtol=1e-6)
    np.testing.assert_allclose(results.lae_ew_rest.values[rows], tests.ew_rest, rtol=1e-6)
    np.testing.assert_allclose(results.lowz_score.values[rows], tests.lowz_score, rtol=1e-6)
    weak = np.where(direct.abs_dchi2_cal > 25.0, 0, int(LAEWarn.LOW_SIGNIFICANCE)).astype(np.uint32)
    np.testing.assert_array_equal(results.zwarn.values[rows], direct.warn.astype(np.uint32) | tests.warn() | weak)
    # bright LAEs are found (a coarse grid: 4x U25's pixel)
    names = spectra.sim_class.attrs["flag_meanings"].split()
    bright = np.isin(spectra.sim_class.values, [names.index("lae"), names.index("lae_double_peak")]) & (
        spectra.snr_lya.values > 7)
    assert bright.sum() >= 20
    error = np.abs(results.z.values[bright] - spectra.z_true.values[bright])
    assert np.mean(error < 0.005) > 0.85
    assert np.all(results.lae_dchi2.values[np.isfinite(results.lae_dchi2.values)] <= 0)
    # the interloper flags spare the LAEs found and reject most detected [O II] emitters and galaxies (on this
    # coarse grid; benchmarks/lae_acceptance.py measures it on U25's)
    detected = np.abs(results.lae_dchi2.values) > 25
    selected = select_lae(np.abs(results.lae_dchi2.values), results.zwarn.values)
    found = np.flatnonzero(bright)[error < 0.005]
    assert (results.zwarn.values[found] & INTERLOPER_BITS).astype(bool).mean() < 0.05
    # zwarn == 0 is the trust cut: the selected LAEs less those with a poorly measured redshift
    trusted = results.zwarn.values == 0
    assert trusted.sum() >= 20 and not (trusted & ~selected).any()
    assert (selected & ~trusted).sum() == ((results.zwarn.values[selected] & ~np.uint32(INTERLOPER_BITS)) != 0).sum()
    for name in ("oii_interloper", "galaxy"):
        members = (spectra.sim_class.values == names.index(name)) & detected
        assert members.sum() >= 20 and selected[members].mean() < 0.3, name


def test_a_modified_prior_is_refused(desi, tmp_path):
    store, *_ = desi
    group = zstore.open_root(store, mode="a")["priors/lae"]
    original = group["lae_vectors"][...]
    try:
        group["lae_vectors"][0, 0] = original[0, 0] + 1.0
        with pytest.raises(StoreError, match="prior_sha256"):
            load_lae_prior(store, "lae")
    finally:
        group["lae_vectors"][...] = original
    with pytest.raises(StoreError, match="no MADGICS prior"):
        load_lae_prior(store, "missing")


def test_cli_priors_then_lae_on_the_u25_grid(tmp_path, client, capsys):
    from dzspec.cli import main

    store = tmp_path / "d.zarr"
    simulate(store, "desi", 240, client, seed=12, chunk_rows=120, progress=False)
    common = ["--workers", "1", "--no-progress"]
    assert main(["priors", "--sky", str(store), "--sky-group", GROUP, "--sky-class", "sky_residual",
                 "--lae", str(store), "--lae-group", GROUP, "--lae-class", "lae", "lae_double_peak",
                 "--out", str(store), "--n-sky", "10", *common]) == 0
    out = capsys.readouterr().out
    assert '"window_pixels": 301' in out and "priors/lae" in out
    args = ["lae", str(store), "--prior", str(store), "--group", GROUP, "--calibration", "2.0", *common]
    assert main([*args, "--overwrite"]) == 0
    out = capsys.readouterr().out
    assert "2 blocks, 0 already done, 2 computed" in out and "LAE candidates (calibrated |dchi2| > 25" in out
    assert main([*args, "--resume"]) == 0
    assert "2 already done, 0 computed" in capsys.readouterr().out
    results = zstore.open_results(store, f"results/{GROUP}/madgics_lae").compute()
    np.testing.assert_allclose(results.lae_abs_dchi2_cal, np.abs(results.lae_dchi2) / 4)
    assert "EW_rest < 20.0" in results.zwarn.attrs["interloper_cuts"]
    assert results.sizes["spectrum"] == 240 and np.isfinite(results.z).all()
