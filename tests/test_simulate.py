"""dzspec.simulate end to end: the real MUSE and DESI simulators through the block runner into a store."""

import numpy as np
import pytest

from dzspec.io import store as zstore
from dzspec.io.validate import validate_store
from dzspec.kernels.simulate.desi import DESI_GRID_NAME, DesiSimConfig, simulate_desi_block
from dzspec.kernels.simulate.muse import MUSE_GRID_NAME, MuseSimConfig, simulate_muse_block
from dzspec.simulate import simulate

pytestmark = pytest.mark.cluster


def test_muse_survey_in_a_store_equals_the_kernel_and_carries_its_truth(tmp_path, client):
    store = tmp_path / "muse.zarr"
    report = simulate(store, "muse", 300, client, seed=5, chunk_rows=128, progress=False)
    assert report.complete and report.nblocks == 3
    ds = zstore.open_spectra(store, f"spectra/{MUSE_GRID_NAME}").compute()
    direct = simulate_muse_block(np.arange(300), 5, MuseSimConfig(), None)
    np.testing.assert_array_equal(ds.flux.values, direct.flux)
    np.testing.assert_array_equal(ds.wavelength.values, direct.wavelength)
    for name in ("z_true", "z2_true", "sim_class", "snr_cont", "mag_f775w"):
        np.testing.assert_array_equal(ds[name].values, direct.truth[name], err_msg=name)
    assert "false_source" in ds.sim_class.attrs["flag_meanings"]
    assert "NEGATIVE_MEDIAN" in ds.sim_flags.attrs["flag_meanings"]
    assert (ds.survey.values == 2).all() and ds.attrs["manifest"][0]["status"] == "done"
    assert [p for p in validate_store(store) if p.severity == "error"] == []


def test_desi_survey_with_exposures(tmp_path, client):
    store = tmp_path / "desi.zarr"
    config = DesiSimConfig()
    report = simulate(store, "desi", 40, client, seed=3, chunk_rows=16, progress=False)
    assert report.complete and report.exposures_group is not None
    coadds = zstore.open_spectra(store, f"spectra/{DESI_GRID_NAME}").compute()
    exposures = zstore.open_spectra(store, report.exposures_group).compute()
    direct = simulate_desi_block(np.arange(40), 3, config, None)
    np.testing.assert_array_equal(coadds.flux.values, direct.flux)
    nexp = config.nexp
    assert exposures.sizes["spectrum"] == 40 * nexp
    np.testing.assert_array_equal(exposures.flux.values, direct.exposures.flux)
    np.testing.assert_allclose(coadds.ivar.values, exposures.ivar.values.reshape(40, nexp, -1).sum(axis=1),
                               rtol=1e-5)
    assert [p for p in validate_store(store) if p.severity == "error"] == []
