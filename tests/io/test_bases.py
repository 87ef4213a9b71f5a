import numpy as np
import pytest
import zarr

from dzspec.engines.nmf.train import train_nmf
from dzspec.errors import StoreError
from dzspec.io.bases import array_sha256, load_basis, load_sky_continuum, save_basis, save_sky_continuum
from dzspec.kernels.restframe import PAPER_GRID, LogGrid


@pytest.fixture
def trained():
    rng = np.random.default_rng(2)
    x = rng.uniform(size=(30, 2)) @ rng.uniform(size=(2, 50)) + rng.normal(0, 0.01, (30, 50))
    v = np.ones_like(x)
    return train_nmf(x, v, 2, max_iter=100, seed=7), array_sha256(x, v)


def test_round_trip_keeps_basis_grid_and_provenance(tmp_path, trained):
    result, training = trained
    grid = LogGrid(3.5, 1e-4, 50)
    save_basis(tmp_path / "b.zarr", "toy", result, grid, training_sha256=training)
    basis = load_basis(tmp_path / "b.zarr", "toy")
    np.testing.assert_array_equal(basis.basis, result.basis)
    assert basis.grid == grid and basis.rank == 2
    assert basis.attrs["training_sha256"] == training and basis.attrs["seed"] == 7
    assert basis.attrs["iterations"] == result.iterations and basis.attrs["medium"] == "vacuum"
    basis.require_grid(grid)
    with pytest.raises(StoreError, match="was trained on"):
        basis.require_grid(PAPER_GRID)


def test_tampered_or_missing_bases_are_refused(tmp_path, trained):
    result, training = trained
    save_basis(tmp_path / "b.zarr", "toy", result, LogGrid(3.5, 1e-4, 50), training_sha256=training)
    with pytest.raises(StoreError, match="exists"):
        save_basis(tmp_path / "b.zarr", "toy", result, LogGrid(3.5, 1e-4, 50), training_sha256=training)
    zarr.open_group(str(tmp_path / "b.zarr"), mode="r+")["bases/toy/basis"][0, 0] = 123.0
    with pytest.raises(StoreError, match="do not match basis_sha256"):
        load_basis(tmp_path / "b.zarr", "toy")
    with pytest.raises(StoreError, match="no basis"):
        load_basis(tmp_path / "b.zarr", "other")
    with pytest.raises(ValueError, match="grid 60"):
        save_basis(tmp_path / "c.zarr", "x", result, LogGrid(3.5, 1e-4, 60), training_sha256=training)


def test_a_sky_continuum_is_stored_with_its_basis_and_checked_on_load(tmp_path, trained):
    result, training = trained
    path = tmp_path / "b.zarr"
    save_basis(path, "toy", result, LogGrid(3.5, 1e-4, 50), training_sha256=training)
    assert load_sky_continuum(path, "toy") is None
    wave, sky = np.linspace(4700.0, 9400.0, 40), np.linspace(1.0, 3.0, 40)
    sha = save_sky_continuum(path, "toy", wave, sky, source="test")
    got = load_sky_continuum(path, "toy", sha256=sha)
    np.testing.assert_array_equal(got[0], wave)
    np.testing.assert_array_equal(got[1], sky)
    assert load_basis(path, "toy").attrs["sky_continuum"] == {"sha256": sha, "source": "test"}
    with pytest.raises(StoreError, match="checksum"):
        load_sky_continuum(path, "toy", sha256="0" * 64)
    zarr.open_group(str(path), mode="r+")["bases/toy/sky_continuum"][3] = 9.0
    with pytest.raises(StoreError, match="checksum"):
        load_sky_continuum(path, "toy")
    with pytest.raises(ValueError, match="increasing"):
        save_sky_continuum(path, "toy", wave[::-1], sky, source="test")
    with pytest.raises(StoreError, match="no basis"):
        save_sky_continuum(path, "other", wave, sky, source="test")
