import numpy as np
import pytest

from dzspec.io import store as zstore
from dzspec.io.noise import copy_noise_calibration, load_noise_calibration, save_noise_calibration
from dzspec.kernels.noise_calibration import calibration_from_histogram, resample_calibration, residual_histogram
from dzspec.parallel.noise_calibration import calibrate_noise, resolve_noise_calibration
from dzspec.testing import synthetic_dataset, write_synthetic_store


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
    spectra = zstore.resolve_spectra_group(zstore.open_root(store), None)
    survey = calibrate_noise(store, overwrite=True)
    basis_store = tmp_path / "basis.zarr"
    zstore.open_root(basis_store, mode="a")
    copy_noise_calibration(store, spectra, basis_store)
    small = write_synthetic_store(tmp_path / "few.zarr", nspectrum=40, nwave=300)  # the same grid
    assert zstore.resolve_spectra_group(zstore.open_root(small), None) == spectra
    default = resolve_noise_calibration(small, spectra, "auto", fallback=basis_store)
    assert default.sha256 == survey.sha256 and default.path == str(basis_store.resolve())
    other = write_synthetic_store(tmp_path / "other.zarr", nspectrum=40, nwave=90)  # another grid: none
    other_spectra = zstore.resolve_spectra_group(zstore.open_root(other), None)
    assert resolve_noise_calibration(other, other_spectra, "auto", fallback=basis_store) is None


def _named_store(path, name, start, step, nspectrum=40, nwave=300):
    """A store whose one group is on ``start + step * i`` and is called ``spectra/<name>`` (an instrument's grid)."""
    wavelength = start + step * np.arange(nwave)
    dataset = synthetic_dataset(np.arange(nspectrum), wavelength)
    dataset.attrs["grid_name"] = name
    group = zstore.create_spectra_group(zstore.open_root(path, mode="a"), dataset)
    zstore.resize_spectra_group(group, nspectrum)
    zstore.write_rows(group, dataset.assign_coords(source_row=("spectrum", np.arange(nspectrum))), 0)
    return path, group.path, wavelength


def test_the_instrument_default_is_carried_to_another_grid_of_the_same_instrument(tmp_path, client):
    """A real MUSE file rarely starts where the default's grid does (the A478 cube at 4749.89 A, an MXDF spectrum
    at 4700 A): the default is resampled to its grid, stored beside it and named in the scan's parameters."""
    survey, survey_group, survey_wave = _named_store(tmp_path / "survey.zarr", "muse-air2vac-4750-1.25-300", 4750.0,
                                                     1.25)
    scale = 1.0 + 2.0 * np.exp(-0.5 * ((survey_wave - 4900.0) / 4.0) ** 2)  # a sky line
    save_noise_calibration(survey, survey_group, scale, np.full(300, 500))
    basis_store = tmp_path / "basis.zarr"
    zstore.open_root(basis_store, mode="a")
    copy_noise_calibration(survey, survey_group, basis_store)

    shifted, group, wave = _named_store(tmp_path / "shifted.zarr", "muse-air2vac-4740-1.25-300", 4740.0, 1.25)
    default = resolve_noise_calibration(shifted, group, "auto", fallback=basis_store)
    np.testing.assert_array_equal(default.scale, resample_calibration(survey_wave, scale, wave))
    assert default.path == str(shifted.resolve()) and default.scale.max() > 2.9  # the line kept its height
    assert default.attrs["resampled_from"]["scale_sha256"] == load_noise_calibration(basis_store,
                                                                                     survey_group).sha256
    assert default.scale[wave < 4750.0].tolist() == [1.0] * 8  # beyond the default's range
    assert resolve_noise_calibration(shifted, group, "auto", fallback=basis_store).sha256 == default.sha256
    # another instrument, or another pixel step, gets none
    for name, start, step in (("desi-brz-4740-1.25-300", 4740.0, 1.25), ("muse-air2vac-4740-2.5-300", 4740.0, 2.5)):
        other, other_group, _ = _named_store(tmp_path / f"{name}.zarr", name, start, step)
        assert resolve_noise_calibration(other, other_group, "auto", fallback=basis_store) is None, name
