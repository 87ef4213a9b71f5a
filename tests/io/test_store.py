import numpy as np
import pytest
import zarr

from dzspec.errors import SchemaError, StoreError
from dzspec.io import store as zstore
from dzspec.kernels.base import OutputSpec
from dzspec.schema import SCHEMA_VERSION
from dzspec.testing import MUSE_LIKE_WAVELENGTH, synthetic_arrays, write_synthetic_store


@pytest.fixture
def small_store(tmp_path):
    return write_synthetic_store(tmp_path / "s.zarr", nspectrum=37, nwave=64, chunk_rows=8, seed=3)


def test_chunk_rows_from_byte_budget():
    assert zstore.chunk_rows_for(7781) == 2048  # DESI merged grid: 64 MB chunks
    assert zstore.chunk_rows_for(3681) == 4096  # MUSE
    assert zstore.chunk_rows_for(3681, budget_bytes=16 * 2**20) == 1024
    for nwave in (10, 500, 3681, 7781, 53918):
        rows = zstore.chunk_rows_for(nwave)
        assert rows & (rows - 1) == 0  # power of two: smaller chunks divide larger ones
        assert rows * nwave * 4 <= zstore.DEFAULT_CHUNK_BYTES < 2 * rows * nwave * 4


def test_open_spectra_is_lazy_and_matches_the_generator(small_store):
    ds = zstore.open_spectra(small_store)
    assert ds.flux.chunks == ((8, 8, 8, 8, 5), (64,))  # chunked along spectrum only
    assert ds.wavelength.dtype == np.float64
    expected = synthetic_arrays(np.arange(37), MUSE_LIKE_WAVELENGTH[:64], seed=3)
    np.testing.assert_array_equal(ds.flux.values, expected["flux"])
    np.testing.assert_array_equal(ds.ivar.values, expected["ivar"])
    np.testing.assert_array_equal(ds.targetid.values, expected["targetid"])
    assert set(ds.coords) >= {"targetid", "source_row", "survey", "exptime", "z_true", "ingest_warn"}


def test_store_written_by_a_newer_schema_is_refused(small_store):
    zarr.open_group(str(small_store), mode="r+").attrs["dzspec_schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(SchemaError, match=f"schema version {SCHEMA_VERSION + 1}.*upgrade dzspec"):
        zstore.open_spectra(small_store)


def test_missing_and_foreign_stores_are_refused(tmp_path):
    with pytest.raises(StoreError, match="no such store"):
        zstore.open_root(tmp_path / "nothing.zarr")
    zarr.open_group(str(tmp_path / "foreign.zarr"), mode="w")
    with pytest.raises(StoreError, match="not a dzspec store"):
        zstore.open_root(tmp_path / "foreign.zarr")


def test_results_group_is_presized_with_block_chunks(small_store):
    root = zstore.open_root(small_store, mode="r+")
    plan = zstore.BlockPlan(37, 16)
    outputs = {"x": OutputSpec("float32"), "q": OutputSpec("int32", ("k",), (3,), fill=-1)}
    group = zstore.create_results_group(root, "results/t/x", plan, outputs, {"kernel": "t"}, np.arange(37))
    assert group["x"].chunks == (16,) and group["q"].chunks == (16, 3)
    assert group["block_done"].shape == (3,) and group["block_done"].chunks == (1,)
    assert not zstore.done_blocks(group).any()
    zstore.write_block(group, 16, {"x": np.ones(16, np.float32), "q": np.zeros((16, 3), np.int32)})
    zstore.mark_block_done(group, 1)
    ds = zstore.open_results(small_store, "results/t/x")
    assert np.isnan(ds.x.values[:16]).all() and (ds.x.values[16:32] == 1).all()
    assert (ds.q.values[:16] == -1).all()
    assert zstore.done_blocks(group).tolist() == [False, True, False]
    with pytest.raises(StoreError, match="block of shape"):
        zstore.write_block(group, 0, {"q": np.zeros((16, 2), np.int32)})


def test_resolve_spectra_group_names_the_choices(tmp_path):
    path = write_synthetic_store(tmp_path / "two.zarr", nspectrum=4, nwave=20)
    write_synthetic_store(path, nspectrum=4, nwave=24)
    root = zstore.open_root(path)
    with pytest.raises(StoreError, match="holds 2 spectra groups"):
        zstore.resolve_spectra_group(root, None)
    name = zstore.spectra_groups(root)[0]
    assert zstore.resolve_spectra_group(root, name.removeprefix("spectra/")) == name
    with pytest.raises(StoreError, match="no spectra group"):
        zstore.resolve_spectra_group(root, "nope")


def test_an_older_zfind_store_opens_with_its_trial_redshifts_as_a_coordinate():
    """Stores written before the ``redshift`` coordinate kept the trial redshifts in a ``trial_z`` attribute of the
    curve (``chi2_curve`` over ``trial`` before the results vocabulary)."""
    import xarray as xr

    from dzspec.io.store import upgrade_results

    old = xr.Dataset({"chi2_curve": (("spectrum", "trial"), np.ones((2, 3)), {"trial_z": [0.0, 0.5, 1.0]}),
                      "z": ("spectrum", np.array([0.5, 1.0]))})
    new = upgrade_results(old, "nmf_zfind")
    assert new.zchi2.dims == ("spectrum", "redshift")
    np.testing.assert_array_equal(new.redshift.values, [0.0, 0.5, 1.0])
