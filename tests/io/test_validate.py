import numpy as np
import pytest
import zarr

from dzspec.io import store as zstore
from dzspec.io.validate import validate_store
from dzspec.kernels.base import OutputSpec
from dzspec.schema import SCHEMA_VERSION
from dzspec.testing import write_synthetic_store


@pytest.fixture
def store(tmp_path):
    return write_synthetic_store(tmp_path / "s.zarr", nspectrum=30, nwave=40, chunk_rows=8, seed=1)


def _group(store):
    root = zarr.open_group(str(store), mode="r+")
    return root[zstore.spectra_groups(root)[0]]


def _messages(store):
    return [str(p) for p in validate_store(store)]


def test_valid_store_has_no_problems(store):
    assert validate_store(store) == []


def test_bad_values_are_reported_with_their_rows(store):
    group = _group(store)
    ivar = group["ivar"][:]
    ivar[13, 5] = -1.0
    group["ivar"][:] = ivar
    flux = group["flux"][:]
    flux[21, 2] = np.nan
    group["flux"][:] = flux
    mask = group["mask"][:]
    mask[13, 5] = 0
    group["mask"][:] = mask
    messages = _messages(store)
    assert any("ivar rows 13: ivar negative or not finite" in m for m in messages), messages
    assert any("flux rows 21: flux not finite where ivar > 0" in m for m in messages), messages


def test_missing_nodata_bit_and_unflagged_empty_and_duplicates(store):
    group = _group(store)
    ivar = group["ivar"][:]
    ivar[4] = 0
    group["ivar"][:] = ivar
    targetid = group["targetid"][:]
    targetid[7] = targetid[6]
    group["targetid"][:] = targetid
    messages = _messages(store)
    assert any("mask rows 4: ivar == 0 without the NODATA mask bit" in m for m in messages), messages
    assert any("ingest_warn rows 4: spectra without data not flagged EMPTY" in m for m in messages), messages
    assert any("targetid rows 6, 7: duplicated but not flagged" in m for m in messages), messages


def test_structure_problems(store):
    group = _group(store)
    group["targetid"].resize((29,))
    group.attrs["manifest"] = [{**group.attrs["manifest"][0], "status": "pending"}]
    messages = [str(p) for p in validate_store(store, check_values=False)]
    assert any("targetid: 29 rows but flux has 30" in m for m in messages), messages
    assert any("is pending (interrupted ingest)" in m for m in messages), messages


def test_newer_schema_and_unfinished_results(store):
    root = zstore.open_root(store, mode="r+")
    plan = zstore.BlockPlan(30, 8)
    zstore.create_results_group(root, "results/g/k", plan, {"x": OutputSpec("float32")}, {}, np.arange(30))
    zstore.mark_block_done(root["results/g/k"], 0, (0, 8))
    zstore.mark_rows_failed(root["results/g/k"], (8, 16))
    root["results/g/k"].attrs["failed_blocks"] = {"1": "block 1 (rows 8:16) failed reading the input: boom"}
    messages = _messages(store)
    assert any("3 of 4 blocks unfinished (first: 1)" in m for m in messages)
    assert any("run_status rows 8, 9, 10, 11, 12 ... (8 in all): 8 spectra in failed blocks (first: block 1 "
               "(rows 8:16) failed reading the input: boom)" in m for m in messages), messages
    zarr.open_group(str(store), mode="r+").attrs["dzspec_schema_version"] = SCHEMA_VERSION + 5
    assert "upgrade dzspec" in _messages(store)[0]
