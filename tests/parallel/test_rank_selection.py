import numpy as np
import pytest
import zarr

from dzspec.engines.nmf.grams import prepare_basis
from dzspec.engines.nmf.train import train_nmf
from dzspec.engines.nmf.zfind import nmf_zfind
from dzspec.kernels.restframe import LogGrid, observed_window
from dzspec.parallel.rank_selection import choose_rank, cross_validate_ranks, fold_assignment
from dzspec.parallel.train import load_training_block, select_training_rows
from dzspec.testing import write_synthetic_store

pytestmark = pytest.mark.cluster
GRID = LogGrid.spanning(2300.0, 5300.0, 2e-4)
SCAN = {"z_min": 0.0, "z_max": 1.0, "dz": 0.002}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_synthetic_store(tmp_path_factory.mktemp("cv") / "s.zarr", nspectrum=45, nwave=400, seed=5)


def test_folds_partition_the_rows():
    fold = fold_assignment(103, 5, seed=2)
    assert np.bincount(fold).tolist() == [21, 21, 21, 20, 20]
    assert not np.array_equal(fold, fold_assignment(103, 5, seed=3))
    with pytest.raises(ValueError, match="folds"):
        fold_assignment(3, 5)


def test_one_standard_error_rule_picks_the_start_of_the_plateau():
    assert choose_rank([0.5, 0.8, 0.81, 0.79], [0.1, 0.1, 0.02, 0.1], [6, 7, 8, 9], 5) == 8
    assert choose_rank([0.5, 0.8, 0.81, 0.79], [0.1, 0.1, 0.1, 0.1], [6, 7, 8, 9], 5) == 7


def test_cross_validation_equals_training_and_scanning_each_fold_locally(store, client):
    train = {"max_iter": 15, "tol": 1e-4, "block_rows": 8}
    ds = cross_validate_ranks(store, client, ranks=[2, 3], folds=3, grid=GRID, train=train, scan_rows=7, **SCAN)
    assert ds.gf.shape == (2, 3) and ds.attrs["chosen_rank"] in (2, 3)
    assert int(ds.n_test.sum("fold")[0]) == 45 and np.isfinite(ds.z_pred).all()
    np.testing.assert_allclose(ds.gf_mean, ds.gf.mean("fold"))
    # fold 1, rank 2 by hand: train on the other folds (in redshift order, as the cluster does), scan the held-out
    group, rows = select_training_rows(store)
    source = zarr.open_group(store, mode="r")[group]
    z = source["z_true"][:]
    train_rows = rows[ds.fold.values != 1]
    train_rows = train_rows[np.argsort(z[train_rows], kind="stable")]
    block = load_training_block(str(store.resolve()), group, train_rows, GRID)
    lo, hi = block["window"]
    x, v = np.zeros((train_rows.size, GRID.size)), np.zeros((train_rows.size, GRID.size))
    x[:, lo:hi], v[:, lo:hi] = block["x"], block["v"]
    local = train_nmf(x, v, 3, max_iter=15, tol=1e-4)
    held = rows[ds.fold.values == 1]
    wavelength = source["wavelength"][:]
    prepared = prepare_basis(local.rank_bases[1], observed_window(wavelength, GRID)[1])
    trials = np.arange(0.0, 1.0 + 1e-9, 0.002)
    out = nmf_zfind(wavelength, source["flux"].oindex[held, :], source["ivar"].oindex[held, :], prepared=prepared,
                    grid=GRID, shifts=GRID.shift_of(trials))
    np.testing.assert_array_equal(ds.z_pred.sel(rank=2).values[ds.fold.values == 1], out["z"])


def test_cli_select_rank_writes_table_and_figure(store, tmp_path, capsys):
    from dzspec.cli import main

    out = tmp_path / "cv"
    assert main(["select-rank", str(store), "--out", str(out), "--ranks", "1-2", "--folds", "2", "--grid", "paper",
                 "--max-iter", "3", "--workers", "1", "--no-progress"]) == 0
    assert (out / "rank_selection.png").stat().st_size > 10_000
    table = (out / "rank_selection.csv").read_text().splitlines()
    assert table[0].startswith("rank,gf_mean") and len(table) == 3
    assert "chosen rank" in capsys.readouterr().out
