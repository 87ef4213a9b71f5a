"""Exposure-time convergence on the cluster: equal to the kernels run in one process, independent of the block size,
one output row per input target (flagged where there is nothing to measure), resumable, and its grid equal to the
kernel's table of the stored rows."""


import numpy as np
import pytest
import xarray as xr

from dzspec.engines.madgics.exposure_convergence import ConvergenceWarn, converged_fraction_grid, target_convergence
from dzspec.engines.madgics.priors import to_lae_grid
from dzspec.engines.madgics.scan import scan_lae
from dzspec.errors import StoreError
from dzspec.io import store as zstore
from dzspec.io.priors import load_lae_prior
from dzspec.kernels.restframe import LogGrid
from dzspec.kernels.simulate.desi import DesiSimConfig
from dzspec.parallel.exposure_convergence import exposure_convergence, exposure_groups
from dzspec.simulate import simulate
from tests.conftest import COARSE_LAE_GRID_ARGS, small_lae_prior
from tests.conftest import COARSE_N_SHIFTS as N_SHIFTS
from tests.conftest import DESI_GROUP as GROUP

# the coarse grid of tests/parallel/test_lae.py (4x U25's step) keeps the prior and the scans quick
GRID = LogGrid(*COARSE_LAE_GRID_ARGS)
NEXP, N_MAX, N_DRAWS = 4, 4, 3


@pytest.fixture(scope="module")
def stores(tmp_path_factory, client):
    base = tmp_path_factory.mktemp("convergence")
    prior_store = base / "prior.zarr"
    small_lae_prior(client, prior_store, seed=31)
    store = base / "exposures.zarr"
    simulate(store, "desi", 10, client, seed=32, chunk_rows=8, progress=False,
             config=DesiSimConfig(nexp=NEXP, class_fractions=(1, 0, 0, 0, 0)))
    return store, prior_store


def _run(stores, client, **kwargs):
    store, prior_store = stores
    kwargs = {"n_max": N_MAX, "n_draws": N_DRAWS, "n_shifts": N_SHIFTS, "seed": 5, "progress": False, **kwargs}
    return exposure_convergence(store, prior_store, client, **kwargs)


@pytest.fixture(scope="module")
def targetids(stores):
    return zstore.open_root(stores[0])[f"spectra/{GROUP}"]["targetid"][:]


@pytest.fixture(scope="module")
def main_run(stores, client, targetids):
    # targets in a shuffled order, with an id that has no exposure at all
    targets = np.concatenate([targetids[::-1][:7], [123456789], targetids[::-1][7:]])
    return targets, _run(stores, client, targets=targets, block_targets=4)


def _one_process(store, prior_store, targets):
    """The same numbers from the kernels alone, reading the store directly."""
    root = zstore.open_root(store)
    exposures = root[exposure_groups(store)[0]]
    tid = exposures["targetid"][:]
    loaded = load_lae_prior(prior_store, "lae")
    wavelength = exposures["wavelength"][:]

    def scan(flux, ivar):
        f, i = to_lae_grid(wavelength, flux, ivar, GRID, y=loaded.rescale_y)
        return scan_lae(f, i, loaded.prior, shifts=loaded.prior.coarse_shifts(2.0, N_SHIFTS)).z

    out = {}
    for row, target in enumerate(targets):
        mine = np.flatnonzero(tid == target)
        if mine.size:
            out[row] = target_convergence(exposures["flux"].oindex[mine, :], exposures["ivar"].oindex[mine, :],
                                          exposures["exptime"].oindex[mine], scan, key=row,
                                          n_values=range(1, N_MAX + 1), n_draws=N_DRAWS, seed=5)
    return out


def test_dask_equals_numpy_and_keeps_every_target(stores, main_run):
    store, prior_store = stores
    targets, report = main_run
    assert report.complete and report.nblocks == 3 and report.computed == 3
    table = report.targets.compute()
    assert table.sizes["spectrum"] == targets.size  # one row per input target, in input order
    np.testing.assert_array_equal(table.targetid.values, targets)
    assert table.sigma_z.shape == (targets.size, N_MAX) and table.n.values.tolist() == [1, 2, 3, 4]
    reference = _one_process(store, prior_store, targets)
    assert sorted(reference) == [r for r in range(targets.size) if r != 7]
    for row, expected in reference.items():
        np.testing.assert_array_equal(table.z_draws.values[row], expected.z)
        np.testing.assert_array_equal(table.sigma_z.values[row], expected.sigma_z)
        np.testing.assert_array_equal(table.exptime_mean.values[row], expected.exptime_mean)
        assert table.z_all.values[row] == expected.z_all
        assert table.n_exposures.values[row] == NEXP
    # the missing target: a row of NaN, flagged
    assert table.convergence_warn.values[7] & ConvergenceWarn.NODATA and table.n_exposures.values[7] == 0
    assert np.isnan(table.sigma_z.values[7]).all() and np.isnan(table.z_all.values[7])
    # line flux joined from the coadds by targetid
    coadds = zstore.open_root(store)[f"spectra/{GROUP}"]
    flux = dict(zip(coadds["targetid"][:], coadds["flux_lya"][:], strict=True))
    np.testing.assert_allclose(np.delete(table.line_flux.values, 7), [flux[t] for t in np.delete(targets, 7)])
    # all-exposure coadds of simulated LAEs land near the truth, and time grows with n
    z_true = dict(zip(coadds["targetid"][:], coadds["z_true"][:], strict=True))
    found = np.abs(np.delete(table.z_all.values, 7) - [z_true[t] for t in np.delete(targets, 7)]) < 0.01
    assert found.mean() >= 0.5
    assert np.all(np.diff(np.delete(table.exptime_mean.values, 7, axis=0), axis=1) > 0)


def test_block_size_does_not_change_results(stores, client, main_run):
    targets, report = main_run
    other = _run(stores, client, targets=targets, block_targets=3, out="stats/other")
    assert other.nblocks == 4
    first, second = report.targets.compute(), other.targets.compute()
    for name in ("z_draws", "sigma_z", "exptime_mean", "z_all", "line_flux", "convergence_warn"):
        np.testing.assert_array_equal(first[name].values, second[name].values)


def test_grid_equals_the_kernel_on_the_stored_table(main_run, stores):
    _, report = main_run
    table = report.targets.compute()
    edges = [*report.grid.exptime_lo.values, report.grid.exptime_hi.values[-1]]
    fraction, count = converged_fraction_grid(table.sigma_z.values, table.exptime_mean.values,
                                              table.line_flux.values, edges, report.grid.flux_threshold.values)
    np.testing.assert_array_equal(report.grid["count"].values, count)
    np.testing.assert_array_equal(report.grid.converged_fraction.values, fraction)
    # threshold 0 counts every finite point inside the bins
    inside = np.isfinite(table.sigma_z.values) & (table.exptime_mean.values < report.grid.exptime_hi.values[-1])
    assert count[0].sum() == inside.sum() > 0
    # it is also in the store
    stored = zstore.open_results(stores[0], "stats/exposure_convergence/grid").compute()
    np.testing.assert_array_equal(stored["count"].values, count)
    assert report.grid.sigma_z_median.sizes["n"] == N_MAX


def test_resume_and_refusal(stores, client, main_run):
    targets, _ = main_run
    again = _run(stores, client, targets=targets, block_targets=4)
    assert again.already_done == 3 and again.computed == 0 and again.complete
    with pytest.raises(StoreError, match="other parameters"):
        _run(stores, client, targets=targets, block_targets=4, seed=6)


def test_too_few_exposures_are_flagged_rows(stores, client, targetids):
    report = _run(stores, client, targets=targetids[:2], min_exposures=NEXP + 1, out="stats/few")
    table = report.targets.compute()
    assert table.sizes["spectrum"] == 2 and report.complete
    assert np.all(table.convergence_warn.values & ConvergenceWarn.FEW_EXPOSURES)
    assert np.isnan(table.sigma_z.values).all() and (table.n_exposures.values == NEXP).all()
    assert (report.grid["count"].values == 0).all()


def test_cli_convergence(stores, client, tmp_path, capsys):
    from dzspec.cli import main

    store, prior_store = stores
    args = ["convergence", str(store), "--prior", str(prior_store), "--n-max", str(N_MAX), "--draws", str(N_DRAWS),
            "--n-shifts", str(N_SHIFTS), "--out", "stats/cli_convergence", "--figure", str(tmp_path / "fig9.png"),
            "--workers", "1", "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "10 targets in" in out and "0 failed" in out and "line flux >= 0:" in out
    assert (tmp_path / "fig9.png").read_bytes()[:4] == b"\x89PNG"
    grid = xr.open_zarr(store, group="stats/cli_convergence/grid", consolidated=False)
    assert int(grid["count"].sel(flux_threshold=0.0).sum()) == 10 * N_MAX  # every (target, n) in some time bin
    assert main(args) == 0 and "already done" in capsys.readouterr().out  # resumes
