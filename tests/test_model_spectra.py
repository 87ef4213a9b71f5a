"""Model spectra and rescans of stored results: the rebuilt NMF fit is the one whose chi2 the scan stored, the
rescan's curves give back the stored minima, and MADGICS components add up to the fit."""

import shutil

import numpy as np
import pytest

from dzspec.engines.nmf.model_spectra import nmf_model_log
from dzspec.errors import StoreError
from dzspec.io import store as zstore
from dzspec.io.bases import load_basis, save_sky_continuum
from dzspec.kernels.restframe import to_log_grid
from dzspec.model_spectra import model_spectra, rescan, select_rows
from dzspec.parallel.lae import run_lae
from dzspec.parallel.zfind import run_zfind
from tests.conftest import COARSE_N_SHIFTS, DESI_GROUP, small_lae_prior
from tests.parallel.test_zfind import PARAMS, WAVE, _components
from tests.parallel.test_zfind import setup as zfind_setup  # noqa: F401  (the module fixture)

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def nmf_results(zfind_setup, client):  # noqa: F811
    tmp, z_true, flux, ivar = zfind_setup
    basis_store = tmp / "sky_basis_models.zarr"
    shutil.copytree(tmp / "basis.zarr", basis_store, dirs_exist_ok=True)
    sky_wave = np.linspace(4500.0, 6000.0, 301)
    save_sky_continuum(basis_store, "toy", sky_wave, 1.0 + 0.8 * np.sin((sky_wave - 4500.0) / 90.0) ** 2,
                       source="test")
    report = run_zfind(tmp / "s.zarr", basis_store, client, basis_name="toy", params=PARAMS, progress=False)
    return tmp / "s.zarr", report.results, basis_store, z_true, flux, ivar


def test_the_nmf_model_is_the_fit_whose_chi2_the_scan_stored(nmf_results):
    store, results, basis_store, z_true, flux, ivar = nmf_results
    stored = zstore.open_results(store, results).compute()
    basis = load_basis(basis_store, "toy")
    sky_wave, sky = zstore.open_root(basis_store)["bases/toy/sky_wavelength"][:], \
        zstore.open_root(basis_store)["bases/toy/sky_continuum"][:]
    rows = np.flatnonzero(np.isfinite(stored.z.values))
    galaxy, nuisance, window = nmf_model_log(WAVE, basis.basis, basis.grid, stored.z.values[rows],
                                             stored.coeff.values[rows], stored.nuisance_coeff.values[rows],
                                             sky_continuum=np.interp(WAVE, sky_wave, sky))
    f, w = to_log_grid(WAVE, flux[rows].astype(np.float32), ivar[rows].astype(np.float32), basis.grid, window=window)
    chi2 = np.sum(w * (f - galaxy - nuisance) ** 2, axis=1)
    np.testing.assert_allclose(chi2, stored.chi2.values[rows], rtol=1e-4)

    models = model_spectra(store, results, rows=rows)
    assert models.model.dims == ("spectrum", "wavelength") and models.sizes["wavelength"] == WAVE.size
    np.testing.assert_array_equal(models.row.values, rows)
    # on the native pixels the model follows the noiseless spectrum (interpolation aside) where z is right
    right = np.abs(stored.z.values[rows] - z_true[rows]) < 0.005 * (1 + z_true[rows])
    assert right.sum() >= 20
    truth = np.vstack([np.array([1.0, 6.0, 0.5]) @ _components(WAVE / (1 + z)) / (1 + z) for z in z_true[rows]])
    inner = slice(5, -5)
    residual = (models.model.values - truth)[right][:, inner]
    assert np.median(np.abs(residual)) < 0.02  # the noise sigma


def test_rows_are_chosen_explicitly_or_by_an_expression(nmf_results):
    store, results, *_ = nmf_results
    stored = zstore.open_results(store, results).compute()
    with pytest.raises(ValueError, match="opt-in"):
        select_rows(store, results)
    np.testing.assert_array_equal(select_rows(store, results, "all"), np.arange(30))
    np.testing.assert_array_equal(select_rows(store, results, slice(2, 5)), [2, 3, 4])
    np.testing.assert_array_equal(select_rows(store, results, where="zwarn == 0"),
                                  np.flatnonzero(stored.zwarn.values == 0))
    np.testing.assert_array_equal(select_rows(store, results, [1, 2, 3], where="z > 0.2"),
                                  [r for r in (1, 2, 3) if stored.z.values[r] > 0.2])
    with pytest.raises(IndexError):
        select_rows(store, results, [30])
    with pytest.raises(StoreError, match="no results group"):
        model_spectra(store, "results/none", rows=[0])


def test_rescan_gives_the_whole_chi2_curve_with_the_stored_minimum(nmf_results):
    store, results, *_ = nmf_results
    stored = zstore.open_results(store, results).compute()
    out = rescan(store, results, [0, 7, 8, 12])
    assert out.zchi2.dims == ("spectrum", "redshift") and out.sizes["redshift"] == 1001
    assert out.zchi2.attrs["quantity"] == "chi2"
    best = out.redshift.values[np.nanargmin(out.zchi2.values[[0, 2, 3]], axis=1)]
    np.testing.assert_allclose(best, stored.z.values[[0, 8, 12]], atol=1e-9)
    np.testing.assert_allclose(np.nanmin(out.zchi2.values[[0, 2, 3]], axis=1), stored.chi2.values[[0, 8, 12]],
                               rtol=1e-6)  # the curve is float32, as zfind stores it
    assert np.isnan(out.model.values[1]).all()  # row 7 has no data: no model
    np.testing.assert_array_equal(out.flux.values, zstore.open_spectra(store).flux.values[[0, 7, 8, 12]])
    # row 8's sky over-subtraction (-3) is in the nuisance part, and the whole model follows the spectrum down
    assert np.nanmedian(out.model_nuisance.values[2]) < -1.0
    assert abs(np.nanmedian(out.model.values[2]) - np.median(out.flux.values[2])) < 0.05


def test_madgics_components_add_up_and_the_rescan_keeps_the_stored_minimum(client, tmp_path):
    store = tmp_path / "lae.zarr"
    _, lae, _, _ = small_lae_prior(client, store, seed=11, n=160, n_sky=8)
    report = run_lae(store, store, client, params={"n_shifts": COARSE_N_SHIFTS}, group=DESI_GROUP, progress=False)
    stored = zstore.open_results(store, report.results).compute()
    rows = np.asarray(lae[:3])
    out = rescan(store, report.results, rows, group=DESI_GROUP)
    assert out.zchi2.attrs["quantity"] == "dchi2" and out.sizes["redshift"] == COARSE_N_SHIFTS
    np.testing.assert_allclose(np.nanmin(out.zchi2.values, axis=1), stored.candidate_lae_dchi2.values[rows, 0],
                               rtol=1e-6, atol=1e-6)
    # the LAE component peaks at the Lya wavelength of the fitted z, and holds the line flux the scan reported
    # (lae_line_flux sums the component on the prior's rescaled log grid; here it is integrated on the native one)
    peak = out.wavelength.values[np.nanargmax(out.model_lae.values, axis=1)]
    np.testing.assert_allclose(peak, 1215.67 * (1 + stored.z.values[rows]), atol=6.0)
    integral = np.trapezoid(np.nan_to_num(out.model_lae.values), out.wavelength.values, axis=1)
    np.testing.assert_allclose(integral, stored.lae_line_flux.values[rows], rtol=0.05)


def test_export_writes_the_models_of_the_chosen_rows(nmf_results, tmp_path):
    from astropy.table import Table

    from dzspec.cli import main

    store, results, *_ = nmf_results
    out = tmp_path / "z.fits"
    assert main(["export", str(store), "-o", str(out), "--results", results, "--model-spectra", "0:5",
                 "--model-where", "zwarn == 0"]) == 0
    models = Table.read(out, hdu="MODELS")
    expected = model_spectra(store, results, slice(0, 5), where="zwarn == 0")
    np.testing.assert_array_equal(models["ROW"], expected.row.values)
    np.testing.assert_array_equal(models["MODEL"], expected.model.values)
    assert models["MODEL"].shape[1] == WAVE.size and "MODEL_NUISANCE" in models.colnames
    np.testing.assert_array_equal(Table.read(out, hdu="MODEL_WAVELENGTH")["WAVELENGTH"], WAVE)
    assert len(Table.read(out, hdu="REDSHIFTS")) == 30  # every row in the redshift table, whatever the models
    parquet = tmp_path / "z.parquet"
    assert main(["export", str(store), "-o", str(parquet), "--results", results, "--model-spectra", "2,3"]) == 0
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "z-models.parquet").column("ROW").to_pylist() == [2, 3]


def test_an_empty_selection_gives_no_models_and_an_empty_table(nmf_results, tmp_path):
    from astropy.table import Table

    from dzspec.cli import main

    store, results, *_ = nmf_results
    models = model_spectra(store, results, where="z > 99")
    assert models.sizes["spectrum"] == 0 and models.model.shape == (0, WAVE.size)
    out = tmp_path / "z.fits"
    assert main(["export", str(store), "-o", str(out), "--model-where", "z > 99"]) == 0
    assert len(Table.read(out, hdu="MODELS")) == 0 and len(Table.read(out, hdu="REDSHIFTS")) == 30


def test_results_from_before_a_parameter_existed_still_rescan(nmf_results):
    """A run of an older kernel version lacks today's parameters (the ZERR calibration): the rescan fills them from
    today's defaults rather than failing."""
    store, results, *_ = nmf_results
    group = zstore.open_root(store, mode="r+")[results]
    params = dict(group.attrs["params"])
    try:
        group.attrs["params"] = {k: v for k, v in params.items() if not k.startswith("zerr_")}
        out = rescan(store, results, [0, 1])
    finally:
        group.attrs["params"] = params
    stored = zstore.open_results(store, results).compute()
    best = out.redshift.values[np.nanargmin(out.zchi2.values, axis=1)]
    np.testing.assert_allclose(best, stored.z.values[:2], atol=1e-9)


def test_lazy_models_equal_the_eager_ones_and_compute_only_what_is_asked(nmf_results, monkeypatch):
    import dzspec.model_spectra as ms

    store, results, *_ = nmf_results
    eager = model_spectra(store, results, "all")
    calls = []
    models_of = ms._models_of
    monkeypatch.setattr(ms, "_models_of", lambda *a: calls.append(a[2].tolist()) or models_of(*a))
    lazy = model_spectra(store, results, "all", lazy=True, block_rows=8)
    assert lazy.model.chunks[0] == (8, 8, 8, 6) and calls == []  # nothing computed yet
    # in this thread (a cluster's workers would get a copy of `calls`)
    np.testing.assert_array_equal(lazy.model[9:11].compute(scheduler="synchronous"), eager.model.values[9:11])
    assert calls == [list(range(8, 16))]  # one chunk computed
    np.testing.assert_array_equal(lazy.model_nuisance.values, eager.model_nuisance.values)
    np.testing.assert_array_equal(lazy.z.values, eager.z.values)
