import numpy as np
import pytest
import zarr

from dzspec.errors import StoreError
from dzspec.io.bases import array_sha256, load_basis, save_basis
from dzspec.kernels.nmf_train import train_nmf
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
