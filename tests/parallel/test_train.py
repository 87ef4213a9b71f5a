import numpy as np
import pytest
import zarr

from dzspec.engines.nmf.train import train_nmf
from dzspec.io.bases import load_basis, save_basis
from dzspec.kernels.restframe import LogGrid
from dzspec.parallel.train import load_training_block, select_training_rows, train_basis
from dzspec.testing import write_synthetic_store

pytestmark = pytest.mark.cluster
GRID = LogGrid.spanning(2300.0, 5300.0, 2e-4)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_synthetic_store(tmp_path_factory.mktemp("t") / "s.zarr", nspectrum=40, nwave=400, seed=4)


@pytest.mark.parametrize("method", ["nearly", "shift"])
def test_distributed_training_equals_the_single_process_kernel(store, client, method):
    group, rows = select_training_rows(store)
    assert rows.size == 40
    result, training = train_basis(store, client, 3, rows=rows, grid=GRID, method=method, max_iter=25, tol=1e-4,
                                   block_rows=16)
    # the distributed training keeps W in redshift order; the single-process kernel gets the same order
    z = zarr.open_group(store, mode="r")[group]["z_true"][:]
    order = np.argsort(z[rows], kind="stable")
    data = load_training_block(str(store.resolve()), group, rows[order], GRID)
    lo, hi = data["window"]
    x, v = np.zeros((rows.size, GRID.size)), np.zeros((rows.size, GRID.size))
    x[:, lo:hi], v[:, lo:hi] = data["x"], data["v"]
    local = train_nmf(x, v, 3, method=method, max_iter=25, tol=1e-4)
    assert result.iterations == local.iterations
    np.testing.assert_allclose(result.chi2_history, local.chi2_history, rtol=1e-9)
    np.testing.assert_allclose(result.basis, local.basis, rtol=1e-7, atol=1e-12 * np.abs(local.basis).max())
    np.testing.assert_array_equal(result.covered, local.covered)
    np.testing.assert_allclose(result.coefficients[order], local.coefficients, rtol=1e-7)
    assert result.basis.shape == (3, GRID.size) and (result.basis >= 0).all()
    assert len(training) == 64


def test_blocks_keep_only_their_rest_window(store):
    group, rows = select_training_rows(store)
    z = zarr.open_group(store, mode="r")[group]["z_true"][:]
    low_z = rows[np.argsort(z[rows])[:8]]
    block = load_training_block(str(store.resolve()), group, low_z, GRID)
    lo, hi = block["window"]
    assert block["x"].shape == (8, hi - lo) and hi - lo < GRID.size
    assert block["v"][:, 0].any() and block["v"][:, -1].any()  # the window is tight
    assert block["covered"].sum() == np.count_nonzero(block["v"].any(axis=0))


def test_trained_basis_saves_with_its_grid(store, client, tmp_path):
    result, training = train_basis(store, client, 2, grid=GRID, max_iter=20, block_rows=32)
    save_basis(tmp_path / "b.zarr", "toy", result, GRID, training_sha256=training)
    basis = load_basis(tmp_path / "b.zarr", "toy")
    assert basis.grid == GRID and basis.attrs["training_sha256"] == training
    np.testing.assert_array_equal(basis.basis, result.basis)


def test_cli_train_writes_a_basis_on_the_paper_grid(store, tmp_path, capsys):
    from dzspec.cli import main
    from dzspec.kernels.restframe import PAPER_GRID

    out = tmp_path / "basis.zarr"
    assert main(["train", str(store), "--out", str(out), "--rank", "2", "--max-iter", "5", "--workers", "1",
                 "--no-progress"]) == 0
    basis = load_basis(out, "nmf")
    assert basis.grid == PAPER_GRID and basis.rank == 2
    assert basis.attrs["training_spectra"] == 40
    assert "rank 2, 40 spectra" in capsys.readouterr().out


class _Killed(Exception):
    pass


def test_a_training_killed_after_a_rank_stage_resumes_to_the_uninterrupted_result(store, client, tmp_path,
                                                                                   monkeypatch):
    """Two runs are bit-identical (a remade model has the shipped checksum); a run stopped after rank stage 2 of 3
    and started again from its checkpoint ends bit for bit where an uninterrupted one does."""
    import dzspec.parallel.train as train

    kwargs = {"grid": GRID, "max_iter": 25, "tol": 1e-4, "block_rows": 16}
    reference, _ = train_basis(store, client, 3, **kwargs)
    again, _ = train_basis(store, client, 3, **kwargs)
    assert reference.basis.tobytes() == again.basis.tobytes()

    checkpoint = tmp_path / "train.npz"
    original = train.run_schedule

    def killed_after_stage_two(*args, checkpoint=None, **options):
        def save_then_die(stages, w, h):
            checkpoint(stages, w, h)
            if stages == 2:
                raise _Killed

        return original(*args, checkpoint=save_then_die, **options)

    monkeypatch.setattr(train, "run_schedule", killed_after_stage_two)
    with pytest.raises(_Killed):
        train_basis(store, client, 3, checkpoint=checkpoint, **kwargs)
    monkeypatch.setattr(train, "run_schedule", original)
    assert checkpoint.exists()
    resumed, _ = train_basis(store, client, 3, checkpoint=checkpoint, **kwargs)
    assert not checkpoint.exists()  # removed once the training is done
    assert resumed.basis.tobytes() == reference.basis.tobytes()
    assert resumed.coefficients.tobytes() == reference.coefficients.tobytes()
    assert resumed.iterations == reference.iterations and resumed.chi2_history == reference.chi2_history
    assert [b.tobytes() for b in resumed.rank_bases] == [b.tobytes() for b in reference.rank_bases]
