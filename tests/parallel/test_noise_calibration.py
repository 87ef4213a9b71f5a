from pathlib import Path

import numpy as np
import pytest

from dzspec.io import store as zstore
from dzspec.io.noise import calibration_path, load_noise_calibration
from dzspec.kernels.noise_calibration import calibration_from_histogram, residual_histogram
from dzspec.parallel.noise_calibration import calibrate_noise, resolve_noise_calibration
from dzspec.testing import write_synthetic_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_synthetic_store(tmp_path_factory.mktemp("noise") / "s.zarr", nspectrum=320, nwave=300,
                                 chunk_rows=64)


def test_dask_reduction_equals_numpy_and_is_stored(store, client):
    calibration = calibrate_noise(store)
    ds = zstore.open_spectra(store)
    counts = residual_histogram(ds.flux.values, ds.ivar.values)  # all rows in memory: the NumPy reference
    np.testing.assert_array_equal(calibration.scale, calibration_from_histogram(counts))
    np.testing.assert_array_equal(calibration.n_residuals, counts.sum(axis=1))
    spectra = zstore.resolve_spectra_group(zstore.open_root(store), None)
    again = load_noise_calibration(store, spectra)
    assert again.sha256 == calibration.sha256 and again.attrs["n_spectra"] == 320
    with pytest.raises(Exception, match="exists"):
        calibrate_noise(store)


def test_auto_reuses_a_current_calibration_and_off_means_none(store, client):
    spectra = zstore.resolve_spectra_group(zstore.open_root(store), None)
    first = resolve_noise_calibration(store, spectra, "auto")
    assert first is not None and resolve_noise_calibration(store, spectra, "auto").sha256 == first.sha256
    assert resolve_noise_calibration(store, spectra, "off") is None
    with pytest.raises(Exception, match="no noise calibration"):
        resolve_noise_calibration(store, spectra, "missing")


def test_auto_skips_a_group_too_small_to_measure(tmp_path, client):
    small = write_synthetic_store(tmp_path / "small.zarr", nspectrum=40, nwave=100)
    spectra = zstore.resolve_spectra_group(zstore.open_root(small), None)
    assert resolve_noise_calibration(small, spectra, "auto") is None
    assert "calibration" not in zstore.open_root(small)


def test_auto_falls_back_to_the_instrument_default_of_the_basis_store_for_the_same_grid(store, tmp_path, client):
    """A handful of spectra: the basis store's calibration of the same grid (the shipped models carry one)."""
    import shutil

    spectra = zstore.resolve_spectra_group(zstore.open_root(store), None)
    survey = calibrate_noise(store, overwrite=True)
    basis_store = tmp_path / "basis.zarr"
    zstore.open_root(basis_store, mode="a")
    shutil.copytree(Path(store) / calibration_path(spectra), basis_store / calibration_path(spectra))
    small = write_synthetic_store(tmp_path / "few.zarr", nspectrum=40, nwave=300)  # the same grid
    assert zstore.resolve_spectra_group(zstore.open_root(small), None) == spectra
    default = resolve_noise_calibration(small, spectra, "auto", fallback=basis_store)
    assert default.sha256 == survey.sha256 and default.path == str(basis_store.resolve())
    other = write_synthetic_store(tmp_path / "other.zarr", nspectrum=40, nwave=90)  # another grid: none
    other_spectra = zstore.resolve_spectra_group(zstore.open_root(other), None)
    assert resolve_noise_calibration(other, other_spectra, "auto", fallback=basis_store) is None
