import numpy as np
import pytest

from dzspec.io import store as zstore
from dzspec.io.validate import validate_store
from dzspec.parallel.generate import generate_to_store
from dzspec.simulate import SimulatorSpec
from dzspec.testing import ToyConfig, toy_simulate_block, write_synthetic_store

pytestmark = pytest.mark.cluster

TOY = SimulatorSpec("simulated", "dzspec.testing", "toy_simulate_block", "ToyConfig", "TOY_GRID_NAME", "TOY_CLASSES",
                    "dzspec.testing", "load_toy_ingredients")


def _spectra(store):
    return zstore.open_spectra(store, "spectra/toy-4750-1.25-64").compute()


def test_same_seed_same_spectra_whatever_the_chunking(tmp_path, client):
    a = generate_to_store(tmp_path / "a.zarr", TOY, 50, client, seed=7, chunk_rows=8, progress=False)
    b = generate_to_store(tmp_path / "b.zarr", TOY, 50, client, seed=7, chunk_rows=32, progress=False)
    assert a.complete and b.complete and a.nblocks == 7 and b.nblocks == 2
    sa, sb = _spectra(tmp_path / "a.zarr"), _spectra(tmp_path / "b.zarr")
    for name in ("flux", "ivar", "mask", "z_true", "sim_class", "targetid"):
        np.testing.assert_array_equal(sa[name].values, sb[name].values, err_msg=name)
    direct = toy_simulate_block(np.arange(50), 7, ToyConfig(), None)
    np.testing.assert_array_equal(sa.flux.values, direct.flux)
    assert sa.sim_class.attrs["flag_meanings"] == "line noise"
    assert validate_store(tmp_path / "a.zarr") == []
    other = generate_to_store(tmp_path / "c.zarr", TOY, 50, client, seed=8, chunk_rows=8, progress=False)
    assert other.complete
    assert not np.array_equal(_spectra(tmp_path / "c.zarr").flux.values, sa.flux.values)


def test_rerun_does_nothing_and_an_interrupted_run_resumes(tmp_path, client):
    store = tmp_path / "s.zarr"
    first = generate_to_store(store, TOY, 40, client, seed=1, chunk_rows=8, progress=False)
    flux = _spectra(store).flux.values
    again = generate_to_store(store, TOY, 40, client, seed=1, chunk_rows=8, progress=False)
    assert again.computed == 0 and again.already_done == first.nblocks == 5
    root = zstore.open_root(store, mode="r+")
    flags = root[f"progress/{first.run}"]["block_done"]
    flags[1] = False  # as if killed while block 1 was being written
    flags[3] = False
    resumed = generate_to_store(store, TOY, 40, client, seed=1, chunk_rows=8, progress=False)
    assert resumed.computed == 2 and resumed.already_done == 3
    np.testing.assert_array_equal(_spectra(store).flux.values, flux)
    assert _spectra(store).sizes["spectrum"] == 40


def test_one_exposure_per_target_is_the_coadd_and_gets_no_exposures_group(tmp_path, client):
    report = generate_to_store(tmp_path / "s.zarr", TOY, 12, client, seed=3, config=ToyConfig(nexp=1),
                               chunk_rows=8, progress=False)
    assert report.complete and report.exposures_group is None
    assert zstore.spectra_groups(zstore.open_root(tmp_path / "s.zarr")) == ["spectra/toy-4750-1.25-64"]
    direct = toy_simulate_block(np.arange(12), 3, ToyConfig(nexp=1), None)
    np.testing.assert_array_equal(_spectra(tmp_path / "s.zarr").flux.values, direct.flux)
    good = direct.ivar > 0  # what the group would repeat: the same measurements
    np.testing.assert_allclose(direct.exposures.ivar, direct.ivar, rtol=1e-6)
    np.testing.assert_allclose(direct.exposures.flux[good], direct.flux[good], rtol=1e-6)


def test_runs_append_after_existing_rows_and_exposures_align(tmp_path, client):
    store = tmp_path / "s.zarr"
    generate_to_store(store, TOY, 13, client, seed=1, chunk_rows=8, progress=False)  # ends mid-chunk
    report = generate_to_store(store, TOY, 21, client, seed=2, config=ToyConfig(nexp=3), chunk_rows=8,
                               progress=False)
    assert report.complete and report.exposures_group is not None
    spectra = _spectra(store)
    assert spectra.sizes["spectrum"] == 34
    direct = toy_simulate_block(np.arange(21), 2, ToyConfig(nexp=3), None)
    np.testing.assert_array_equal(spectra.flux.values[13:], direct.flux)
    exposures = zstore.open_spectra(store, report.exposures_group).compute()
    assert exposures.sizes["spectrum"] == 63
    np.testing.assert_array_equal(exposures.flux.values, direct.exposures.flux)
    rows = spectra.exposure_row0.values[13:]
    np.testing.assert_array_equal(rows, np.arange(21) * 3)
    # The coadd is the inverse-variance mean of the target's exposures.
    f, w = exposures.flux.values.reshape(21, 3, -1), exposures.ivar.values.reshape(21, 3, -1)
    np.testing.assert_allclose(spectra.ivar.values[13:], w.sum(axis=1), rtol=1e-6)
    coadd = (f * w).sum(axis=1) / np.where(w.sum(axis=1) > 0, w.sum(axis=1), 1)
    np.testing.assert_allclose(spectra.flux.values[13:], coadd, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.repeat(spectra.targetid.values[13:], 3), exposures.targetid.values)
    problems = validate_store(store)
    assert [p.severity for p in problems] == ["warning"]  # exposures share their target's id, flagged
    assert "63 spectra share a targetid" in str(problems[0])


def test_synthetic_and_simulated_stores_share_nothing_by_accident(tmp_path, client):
    store = write_synthetic_store(tmp_path / "s.zarr", nspectrum=5, nwave=64)
    report = generate_to_store(store, TOY, 5, client, seed=1, progress=False)
    assert report.complete
    assert len(zstore.spectra_groups(zstore.open_root(store))) == 2  # different grids stay apart
