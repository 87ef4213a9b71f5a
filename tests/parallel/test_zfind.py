"""dzspec zfind: an NMF basis scanned over a store through the block runner."""

import shutil
import warnings

import numpy as np
import pytest

from dzspec.engines.nmf.grams import prepare_basis
from dzspec.engines.nmf.train import NMFResult
from dzspec.engines.nmf.zfind import ZNote, ZWarn, nmf_zfind
from dzspec.errors import BadSpectrumWarning
from dzspec.io import store as zstore
from dzspec.io.bases import load_basis, save_basis, save_sky_continuum
from dzspec.kernels.restframe import LogGrid, observed_window
from dzspec.parallel.confidence import calibrate_confidence
from dzspec.parallel.zfind import finalize_zfind, run_zfind
from dzspec.schema import make_spectra_dataset

pytestmark = pytest.mark.cluster

WAVE = 4750.0 + 1.25 * np.arange(800)  # 4750-5749 A
GRID = LogGrid.spanning(4700.0 / 1.6, 5800.0, 1e-4)
LINES = ((3727.4, 2.0), (4862.7, 3.0), (5008.2, 4.0), (4102.9, 1.5), (3934.8, 2.5))


def _components(wave_rest):
    """Three non-negative rest-frame components (f_lambda): continuum, emission lines, a second continuum."""
    lines = sum(np.exp(-0.5 * ((wave_rest - c) / s) ** 2) for c, s in LINES)
    return np.vstack([np.ones_like(wave_rest), lines, (wave_rest / 4000.0) ** 2])


def _spectra(z_true, rng):
    omega = np.array([1.0, 6.0, 0.5])
    flux = np.vstack([omega @ _components(WAVE / (1 + z)) / (1 + z) for z in z_true])
    sigma = 0.02
    return flux + rng.normal(0, sigma, flux.shape), np.full(flux.shape, 1 / sigma**2)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("zfind")
    rest = GRID.wavelength()
    basis = _components(rest) * np.log(10) * rest  # flux per unit log lambda
    fit = NMFResult(basis, np.zeros((1, 3)), np.ones(GRID.size, bool))
    save_basis(tmp / "basis.zarr", "toy", fit, GRID, training_sha256="analytic")
    rng = np.random.default_rng(0)
    z_true = rng.uniform(0.05, 0.45, 30)
    flux, ivar = _spectra(z_true, rng)
    ivar[7] = 0.0  # a spectrum without data
    flux[8] -= 3.0  # sky over-subtraction: negative median
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadSpectrumWarning)
        ds = make_spectra_dataset(WAVE, flux, ivar, source_file="<test>", reader="test",
                                  coords={"targetid": np.arange(30), "z_true": z_true})
    root = zstore.open_root(tmp / "s.zarr", mode="a")
    group = zstore.create_spectra_group(root, ds, chunk_rows=8)
    zstore.resize_spectra_group(group, 30)
    zstore.write_rows(group, ds, 0)
    zstore.set_manifest(group, [{"sha256": "t", "path": "<test>", "reader": "test", "row_start": 0, "nrows": 30,
                                 "status": "done"}])
    return tmp, z_true, flux, ivar


PARAMS = {"z_max": 0.5, "dz": 0.0005}


def test_zfind_through_the_runner_equals_the_kernel_and_finds_z(setup, client):
    tmp, z_true, flux, ivar = setup
    report = run_zfind(tmp / "s.zarr", tmp / "basis.zarr", client, basis_name="toy", params=PARAMS, progress=False)
    assert report.complete and report.nblocks == 5  # 30 spectra, 2 threads: 7 rows a block (chunks hold 8)
    results = zstore.open_results(tmp / "s.zarr", report.results).compute()

    basis = np.log(10) * GRID.wavelength() * _components(GRID.wavelength())
    prepared = prepare_basis(basis, observed_window(WAVE, GRID)[1])
    shifts = GRID.shift_of(np.arange(1001) * 0.0005)
    direct = nmf_zfind(WAVE, flux.astype(np.float32), ivar.astype(np.float32), prepared=prepared, grid=GRID,
                       shifts=shifts)
    # Blocks of 8 vs one block of 30: batched FFTs round differently in the last bits (4e-13 relative seen).
    for name, values in direct.items():
        if name in ("z", "npixels", "zwarn", "znote", "candidate_z"):
            np.testing.assert_array_equal(results[name].values, values, err_msg=name)
        else:
            rtol = 1e-9 if values.dtype == np.float64 else 1e-6  # float32: one rounding of a 4e-13 difference
            np.testing.assert_allclose(results[name].values, values, rtol=rtol, err_msg=name)

    good = np.setdiff1d(np.arange(30), [7])
    assert (np.abs(results.z.values[good] - z_true[good]) < 0.0005 * (1 + z_true[good])).all()
    assert np.isnan(results.z.values[7]) and results.zwarn.values[7] & ZWarn.NODATA
    assert results.znote.values[8] & ZNote.NEGATIVE_MEDIAN_FLUX and not results.znote.values[good[good != 8]].any()
    assert (results.nmf_robustness.values[good[good != 8]] > 3).all()
    assert results.coeff.shape == (30, 3) and results.candidate_z.shape == (30, 5)
    assert "LOW_ROBUSTNESS" in results.zwarn.attrs["flag_meanings"]


def test_zfind_resume_and_changed_parameters(setup, client):
    tmp, *_ = setup
    first = run_zfind(tmp / "s.zarr", tmp / "basis.zarr", client, basis_name="toy", params=PARAMS,
                      results="results/zf", progress=False)
    again = run_zfind(tmp / "s.zarr", tmp / "basis.zarr", client, basis_name="toy", params=PARAMS,
                      results="results/zf", resume=True, progress=False)
    assert first.computed == 5 and again.computed == 0 and again.already_done == 5
    with pytest.raises(Exception, match="config_sha256 differs"):
        run_zfind(tmp / "s.zarr", tmp / "basis.zarr", client, basis_name="toy", params={**PARAMS, "dz": 0.001},
                  results="results/zf", resume=True, progress=False)


def test_cli_zfind(setup, capsys):
    from dzspec.cli import main

    tmp, *_ = setup
    args = ["zfind", str(tmp / "s.zarr"), "--basis", str(tmp / "basis.zarr"), "--name", "toy", "--z-max", "0.5",
            "--workers", "1", "--no-progress"]
    assert main([*args, "--overwrite"]) == 0
    assert "4 blocks, 0 already done, 4 computed" in capsys.readouterr().out
    assert main([*args, "--resume"]) == 0
    assert "4 already done, 0 computed" in capsys.readouterr().out


def test_zfind_stores_refined_z_and_decimated_chi2_curve(setup, client):
    tmp, z_true, *_ = setup
    report = run_zfind(tmp / "s.zarr", tmp / "basis.zarr", client, basis_name="toy",
                       params={**PARAMS, "store_chi2": True, "chi2_decimate": 4}, results="results/zf_curve",
                       progress=False)
    assert report.complete
    results = zstore.open_results(tmp / "s.zarr", report.results).compute()
    curve = results.zchi2
    assert curve.dims == ("spectrum", "redshift") and curve.shape == (30, 251) and curve.dtype == np.float32
    assert curve.attrs["decimate"] == 4 and curve.redshift.size == 251  # trial redshifts: a real coordinate
    assert curve.redshift.values[:2].tolist() == [0.0, 0.002] and "trial_z" not in curve.attrs
    # the minimum of every group survives decimation, so the curve's minimum is the best trial's chi2
    np.testing.assert_array_equal(curve.values.min(axis=1), results.chi2.values.astype(np.float32))
    good = np.setdiff1d(np.arange(30), [7])
    assert np.isnan(results.z_refined.values[7]) and np.all(np.isnan(curve.values[7]))
    assert np.all(np.isfinite(results.z_refined.values[good]))
    assert np.all(results.chi2_refined.values[good] <= results.chi2.values[good])
    # within one trial step of the best trial (steps are dz plus at most one basis pixel on the quantised grid)
    step = 0.0005 + np.log(10) * GRID.step * (1 + results.z.values[good])
    assert np.all(np.abs(results.z_refined.values[good] - results.z.values[good]) <= step)
    # and sub-pixel: closer to the truth than the quantised trial, on average
    assert (np.mean(np.abs(results.z_refined.values[good] - z_true[good]))
            < 0.5 * np.mean(np.abs(results.z.values[good] - z_true[good])))
    root = zstore.open_root(tmp / "s.zarr", mode="r")
    stored = root[report.results]["zchi2"]
    assert stored.chunks == (7, 251) and stored.compressors  # chunked along spectrum (the block), compressed


def test_redshift_spikes_are_flagged_once_and_cleared_when_gone(setup, client):
    tmp, *_ = setup
    report = run_zfind(tmp / "s.zarr", tmp / "basis.zarr", client, basis_name="toy", params=PARAMS,
                       results="results/spikes", progress=False)
    root = zstore.open_root(tmp / "s.zarr", mode="a")
    group = root[report.results]
    assert group.attrs["redshift_spikes"]["z"] == []  # 30 spectra spread over 0.05-0.45: no spike
    honest = {name: group[name][...] for name in ("z", "zwarn", "deltachi2")}
    # 15 weak fits drawn to one trial, the way a sky residual draws faint spectra
    group["z"][:15] = 0.3
    group["zwarn"][:15] = honest["zwarn"][:15] | np.uint32(ZWarn.LOW_ROBUSTNESS)
    group["deltachi2"][:15] = np.r_[np.full(14, 3.0), 1e4]  # one of them decisive
    summary = finalize_zfind(tmp / "s.zarr", report.results)
    zwarn = group["zwarn"][...]
    assert summary["z"] == [0.3] and summary["flagged"] == 14
    assert (zwarn[:14] & ZWarn.Z_SPIKE).all() and not (zwarn[14:] & ZWarn.Z_SPIKE).any()
    assert finalize_zfind(tmp / "s.zarr", report.results) == summary  # deterministic, no double flags
    np.testing.assert_array_equal(group["zwarn"][...], zwarn)
    for name, values in honest.items():
        group[name][...] = values
    assert finalize_zfind(tmp / "s.zarr", report.results)["flagged"] == 0
    np.testing.assert_array_equal(group["zwarn"][...], honest["zwarn"])


def test_confidence_model_is_learned_stored_with_the_basis_and_fills_confidence(setup, client, tmp_path):
    tmp, z_true, *_ = setup
    basis_store = tmp_path / "basis.zarr"
    shutil.copytree(tmp / "basis.zarr", basis_store)  # the module's basis stays without a model
    report = run_zfind(tmp / "s.zarr", basis_store, client, basis_name="toy", params=PARAMS,
                       results="results/conf", progress=False)
    root = zstore.open_root(tmp / "s.zarr", mode="a")
    spectra = root[root[report.results].attrs["input_group"]]
    wrong = np.arange(0, 30, 3)
    try:  # a third of the truth made wrong, so that there is something to learn
        spectra["z_true"][wrong] = z_true[wrong] + 0.2
        summary = calibrate_confidence(tmp / "s.zarr", report.results, basis_store, basis_name="toy",
                                       purity=0.9, seed=1)
    finally:
        spectra["z_true"][...] = z_true
    assert summary["fit_spectra"] + summary["calibration_spectra"] == 29  # row 7 has no data
    assert 0.0 <= summary["threshold"] <= 1.0
    stored = load_basis(basis_store, "toy").attrs["confidence"]
    assert stored["sha256"] == summary["confidence_sha256"] and stored["threshold"] == summary["threshold"]
    with pytest.raises(Exception, match="config_sha256 differs"):  # a new model is a new configuration
        run_zfind(tmp / "s.zarr", basis_store, client, basis_name="toy", params=PARAMS, results="results/conf",
                  resume=True, progress=False)
    again = run_zfind(tmp / "s.zarr", basis_store, client, basis_name="toy", params=PARAMS, results="results/conf",
                      overwrite=True, progress=False)
    results = zstore.open_results(tmp / "s.zarr", again.results).compute()
    confidence = results.confidence.values
    assert np.isnan(confidence[7]) and np.isfinite(np.delete(confidence, 7)).all()
    low = (results.zwarn.values & ZWarn.LOW_CONFIDENCE) != 0
    np.testing.assert_array_equal(low[np.arange(30) != 7], confidence[np.arange(30) != 7] < summary["threshold"])
    # the confidence decides on robustness: a LOW_ROBUSTNESS the scan set becomes a znote, never stays in zwarn
    group = root[again.results]
    weak = np.arange(30) % 4 == 0
    group["zwarn"][...] = group["zwarn"][...] | np.where(weak, np.uint32(ZWarn.LOW_ROBUSTNESS), np.uint32(0))
    finalize_zfind(tmp / "s.zarr", again.results)
    assert not (group["zwarn"][...] & ZWarn.LOW_ROBUSTNESS).any()
    np.testing.assert_array_equal((group["znote"][...] & ZNote.LOW_ROBUSTNESS) != 0, weak)
    before = {name: group[name][...] for name in ("zwarn", "znote")}
    finalize_zfind(tmp / "s.zarr", again.results)  # a rerun moves nothing twice
    for name, values in before.items():
        np.testing.assert_array_equal(root[again.results][name][...], values)


def test_a_basis_scan_range_is_the_default_trial_range_and_params_override_it(setup, client):
    """A basis made for one redshift range (the shipped DESI galaxy basis: 0-1.7) is scanned over it by default."""
    tmp, *_ = setup
    basis = load_basis(tmp / "basis.zarr", "toy")
    fit = NMFResult(basis.basis, np.zeros((1, 3)), np.ones(GRID.size, bool))
    save_basis(tmp / "basis.zarr", "ranged", fit, GRID, training_sha256="analytic", overwrite=True,
               extra_attrs={"scan_z_range": [0.1, 0.3]})
    ranged = run_zfind(tmp / "s.zarr", tmp / "basis.zarr", client, basis_name="ranged", params={"z_max": None},
                       results="results/ranged", progress=False)
    chosen = run_zfind(tmp / "s.zarr", tmp / "basis.zarr", client, basis_name="ranged", params={"z_max": 0.5},
                       results="results/chosen", progress=False)
    root = zstore.open_root(tmp / "s.zarr")
    params = root[ranged.results].attrs["params"]
    assert (params["z_min"], params["z_max"]) == (0.1, 0.3)
    z = root[ranged.results]["z"][...]
    assert np.nanmin(z) >= 0.1 - 1e-9 and np.nanmax(z) <= 0.3 + 1e-9
    assert (root[chosen.results].attrs["params"]["z_min"], root[chosen.results].attrs["params"]["z_max"]) == (0.1, 0.5)


def test_a_basis_sky_continuum_is_fitted_by_default_as_the_kernel_does(setup, client):
    """A basis that carries a sky continuum: zfind fits it as the last nuisance term (same outputs as the kernel
    given the continuum interpolated onto the store's grid), its checksum enters the run's configuration, and
    ``sky_nuisance="off"`` scans without it."""
    tmp, _, flux, ivar = setup
    store = tmp / "sky_basis.zarr"
    shutil.copytree(tmp / "basis.zarr", store, dirs_exist_ok=True)
    sky_wave = np.linspace(4500.0, 6000.0, 301)
    sky = 1.0 + 0.8 * np.sin((sky_wave - 4500.0) / 90.0) ** 2
    sha = save_sky_continuum(store, "toy", sky_wave, sky, source="test")
    report = run_zfind(tmp / "s.zarr", store, client, basis_name="toy", params=PARAMS, results="results/zsky",
                       progress=False)
    results = zstore.open_results(tmp / "s.zarr", report.results).compute()
    assert results.attrs["params"]["sky_sha256"] == sha and results.nuisance_coeff.shape == (30, 2)
    basis = np.log(10) * GRID.wavelength() * _components(GRID.wavelength())
    direct = nmf_zfind(WAVE, flux.astype(np.float32), ivar.astype(np.float32),
                       prepared=prepare_basis(basis, observed_window(WAVE, GRID)[1]), grid=GRID,
                       shifts=GRID.shift_of(np.arange(1001) * 0.0005), sky_continuum=np.interp(WAVE, sky_wave, sky))
    for name in ("z", "candidate_z", "zwarn"):
        np.testing.assert_array_equal(results[name].values, direct[name], err_msg=name)
    np.testing.assert_allclose(results.nuisance_coeff.values, direct["nuisance_coeff"], rtol=1e-5, atol=1e-6)
    off = run_zfind(tmp / "s.zarr", store, client, basis_name="toy", params=PARAMS, results="results/znosky",
                    sky_nuisance="off", progress=False)
    plain = zstore.open_results(tmp / "s.zarr", off.results)
    assert plain.attrs["params"]["sky_sha256"] == "" and plain.nuisance_coeff.shape == (30, 1)
    with pytest.raises(ValueError, match="sky_nuisance"):
        run_zfind(tmp / "s.zarr", store, client, basis_name="toy", params=PARAMS, sky_nuisance="on")


def test_zerr_is_calibrated_stored_with_the_basis_and_applied_by_later_scans(setup, client):
    """calibrate_zerr fits the scale (and floor) on a scanned store with known z, stores it with the basis; a
    later zfind with that basis reports the calibrated zerr, whose pulls then have unit width."""
    from dzspec.parallel.confidence import calibrate_zerr

    tmp, _, _, _ = setup
    store = tmp / "zerr_basis.zarr"
    shutil.copytree(tmp / "basis.zarr", store, dirs_exist_ok=True)
    first = run_zfind(tmp / "s.zarr", store, client, basis_name="toy", params=PARAMS, results="results/zerr0",
                      progress=False)
    raw = zstore.open_results(tmp / "s.zarr", first.results).compute()
    assert raw.zerr.attrs["zerr_scale"] == [1.0] and np.isfinite(raw.zerr.values).sum() >= 25
    report = calibrate_zerr(tmp / "s.zarr", first.results, store, basis_name="toy", snr="z_true", edges=(),
                            z_edges=(), min_count=10)
    assert load_basis(store, "toy").attrs["zerr_calibration"]["zerr_scale"] == report["zerr_scale"]
    assert abs(report["pull_widths"][0] - 1) < 0.05
    second = run_zfind(tmp / "s.zarr", store, client, basis_name="toy", params=PARAMS, results="results/zerr1",
                       progress=False)
    calibrated = zstore.open_results(tmp / "s.zarr", second.results).compute()
    assert calibrated.attrs["params"]["zerr_scale"] == report["zerr_scale"]
    expected = np.hypot(report["zerr_scale"][0] * raw.zerr.values,
                        report["zerr_floor"][0] * (1 + raw.z_refined.values))
    np.testing.assert_allclose(calibrated.zerr.values, expected, rtol=1e-12)
    check = calibrate_zerr(tmp / "s.zarr", second.results, snr="z_true", edges=(), z_edges=(), min_count=10,
                           save=False)
    np.testing.assert_allclose(check["pull_widths"], report["pull_widths"], rtol=1e-9)
