"""dzspec.zfind / dzspec.lae in process: the shipped models find simulated redshifts, and the store path agrees."""

import numpy as np
import pytest

import dzspec
from dzspec.results_schema import FIELDS, LAEWarn, ZWarn

#: Simulated MUSE rows of seed 3: bright lines at z = 1.007, 4.318 and 0.115, and row 6 (z = 3.03, S/N of its
#: lines 3.9) whose scan finds no trustworthy redshift.
MUSE_ROWS, MUSE_SEED = np.array([0, 2, 4, 6]), 3


@pytest.fixture(scope="module")
def muse():
    from dzspec.kernels.simulate.muse import simulate_muse_block

    return simulate_muse_block(MUSE_ROWS, MUSE_SEED)


@pytest.fixture(scope="module")
def spectrum(muse):
    specutils_bridge = pytest.importorskip("dzspec.io.specutils_bridge")
    pytest.importorskip("specutils")
    import astropy.units as u
    from astropy.nddata import InverseVariance

    meta = {"targetid": 1000 + MUSE_ROWS, "z_true": muse.truth["z_true"]}
    return specutils_bridge.spectrum_class()(
        flux=muse.flux * specutils_bridge.flux_unit(), spectral_axis=muse.wavelength * u.AA,
        uncertainty=InverseVariance(muse.ivar), meta=meta)


@pytest.fixture(scope="module")
def muse_results(spectrum):
    return dzspec.zfind(spectrum)


def test_zfind_finds_the_simulated_redshifts_with_the_shipped_basis(muse, muse_results):
    res, z_true = muse_results, muse.truth["z_true"]
    assert res.attrs["model"] == "muse" and res.attrs["grid_name"] == "muse-air2vac-4750-1.25-3681"
    assert res.attrs["noise_calibration"]["source"] == "instrument default"
    assert res.sizes["spectrum"] == MUSE_ROWS.size and res.targetid.values.tolist() == (1000 + MUSE_ROWS).tolist()
    bright = slice(0, 3)
    assert (np.abs(res.z.values[bright] - z_true[bright]) < 0.002 * (1 + z_true[bright])).all()
    assert (np.abs(res.z.values[bright] - res.z_refined.values[bright]) < 0.0005 * (1 + z_true[bright])).all()
    assert abs(res.z.values[3] - z_true[3]) > 0.1 and res.zwarn.values[3] & ZWarn.LOW_CONFIDENCE
    assert np.isfinite(res.confidence.values).all() and np.isfinite(res.zerr.values[bright]).all()
    # the results vocabulary: names, dtypes and attributes as a store's results group has them
    for name in ("z", "zwarn", "znote", "confidence", "deltachi2", "candidate_z"):
        assert {k: v for k, v in FIELDS[name].attrs().items() if k != "description"}.items() <= \
            res[name].attrs.items(), name
    assert res.zwarn.dtype == np.uint32 and res.coeff.shape == (MUSE_ROWS.size, 10)


def test_arrays_and_specutils_input_give_the_same_spectra(muse, spectrum):
    from dzspec.inprocess import spectra_dataset

    arrays = spectra_dataset((muse.wavelength, muse.flux, muse.ivar))
    converted = spectra_dataset(spectrum)
    assert arrays.attrs["grid_name"] == converted.attrs["grid_name"]
    for name in ("wavelength", "flux", "ivar", "mask"):
        np.testing.assert_array_equal(arrays[name].values, converted[name].values, err_msg=name)


@pytest.mark.cluster
def test_store_less_zfind_equals_dzspec_zfind_on_a_store(tmp_path, spectrum, muse_results):
    from distributed import Client, LocalCluster

    from dzspec.models import default_model_for_store
    from dzspec.parallel.zfind import run_zfind

    store = tmp_path / "s.zarr"
    dzspec.from_specutils(spectrum, store)
    model = default_model_for_store("basis", store)  # what the CLI picks without --basis
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        report = run_zfind(store, model.path, client, basis_name=model.group, progress=False)
    stored = dzspec.open_results(store, report.results).compute()
    assert stored.attrs["params"]["noise_sha256"] == muse_results.attrs["noise_calibration"]["scale_sha256"]
    assert set(muse_results.data_vars) == set(stored.data_vars) - {"run_status", "block_done"}
    for name in muse_results.data_vars:  # every output, to the last bit
        np.testing.assert_array_equal(muse_results[name].values, stored[name].values, err_msg=name)
        assert muse_results[name].attrs == stored[name].attrs, name
    assert muse_results.attrs["redshift_spikes"] == stored.attrs["redshift_spikes"]


def test_lae_on_simulated_desi_spectra():
    from dzspec.kernels.simulate.desi import DESI_SIM_CLASSES, simulate_desi_block

    sim = simulate_desi_block(np.array([3, 4]), seed=5)  # a double-peaked LAE at z = 3.465 and an [O II] interloper
    assert [DESI_SIM_CLASSES[c] for c in sim.truth["sim_class"]] == ["lae_double_peak", "oii_interloper"]
    res = dzspec.lae((sim.wavelength, sim.flux, sim.ivar))
    assert res.attrs["model"] == "desi_lae" and res.attrs["noise_calibration"]["source"] == "instrument default"
    assert abs(res.z.values[0] - sim.truth["z_true"][0]) < 0.002 and res.zwarn.values[0] == 0
    assert res.zwarn.values[1] != 0  # not a trusted LAE
    assert res.zwarn.attrs["flag_meanings"].split()[0] == LAEWarn.NODATA.name
    off = dzspec.lae((sim.wavelength, sim.flux, sim.ivar), noise_calibration="off")
    assert off.attrs["noise_calibration"] == {"source": "off"} and abs(off.z.values[0] - res.z.values[0]) < 0.002


def test_inputs_that_cannot_be_scanned_in_process():
    wave = np.linspace(5000.0, 6000.0, 50)
    with pytest.raises(ValueError, match="noise_calibration"):
        dzspec.zfind((wave, np.ones((1, 50)), np.ones((1, 50))), noise_calibration="noise", model="muse")
    with pytest.raises(FileNotFoundError, match="no such model store"):
        dzspec.zfind((wave, np.ones((1, 50)), np.ones((1, 50))), model="/nonexistent/basis.zarr")
    specutils = pytest.importorskip("specutils")
    import astropy.units as u
    from astropy.nddata import InverseVariance

    from dzspec.io.specutils_bridge import flux_unit, spectrum_class

    two = specutils.SpectrumList([
        spectrum_class()(flux=np.ones(50) * flux_unit(), spectral_axis=(wave + shift) * u.AA,
                         uncertainty=InverseVariance(np.ones(50))) for shift in (0.0, 0.5)])
    with pytest.raises(ValueError, match="2 wavelength grids"):
        dzspec.zfind(two, medium="vacuum")
