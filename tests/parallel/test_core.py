"""The execution core: block-map and block-reduce stages, compute-sized plans, provenance."""

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from dzspec.errors import StoreError
from dzspec.parallel.core import Checkpoint, Provenance, map_blocks, plan_rows, reduce_blocks

pytestmark = pytest.mark.cluster

VALUES = np.random.default_rng(4).normal(size=(103, 5)) * 10.0 ** np.arange(-6, 9, 3)


def _partial_sum(block, start, stop):
    return VALUES[start:stop].sum(axis=0)


def _stats(block, start, stop):
    rows = VALUES[start:stop]
    return {"n": np.array(rows.shape[0]), "sum": rows.sum(axis=0), "sq": (rows**2).sum(axis=0)}


def _add(a, b):
    return {key: a[key] + b[key] for key in a}


def _bounds(n, rows):
    return [(s, min(s + rows, n)) for s in range(0, n, rows)]


@given(n=st.integers(1, 60), threads=st.integers(1, 200), chunk=st.integers(1, 5000))
def test_plan_rows_gives_every_thread_two_blocks_of_a_small_store_and_never_exceeds_a_chunk(n, threads, chunk):
    rows = plan_rows(n * 50, threads, chunk)
    nblocks = -(-n * 50 // rows)
    assert 1 <= rows <= chunk
    assert nblocks >= min(2 * threads, n * 50)


def test_a_1000_spectrum_store_gives_two_blocks_per_worker_thread():
    for threads in (1, 2, 8, 100):
        rows = plan_rows(1000, threads, 4096)
        assert -(-1000 // rows) >= 2 * threads


def test_reduce_equals_numpy_is_bit_identical_for_a_plan_and_close_across_plans(client):
    expected = VALUES.sum(axis=0)
    results = {}
    for rows, split_every in ((7, 2), (7, 2), (7, 8), (50, 3), (103, 8)):
        results[rows, split_every] = reduce_blocks(client, _partial_sum, _bounds(103, rows),
                                                   split_every=split_every, progress=False, max_in_flight=3)
        np.testing.assert_allclose(results[rows, split_every], expected, rtol=1e-12, atol=0)
    again = reduce_blocks(client, _partial_sum, _bounds(103, 7), split_every=2, progress=False, max_in_flight=1)
    assert again.tobytes() == results[7, 2].tobytes()  # the tree, not the completion order, sets the sums


def test_reduce_of_mappings_with_a_checkpoint_resumes_from_saved_partials(client, tmp_path):
    store = str(tmp_path / "s.zarr")
    zarr.open_group(store, mode="w")
    checkpoint = Checkpoint(store, "checkpoints/test/stats", "v1")
    saved = checkpoint.prepare()
    assert saved == set()
    for block, (start, stop) in enumerate(_bounds(103, 10)[:4]):  # as if an earlier run stopped after 4 blocks
        checkpoint.save(block, {**_stats(block, start, stop), "n": np.array(-1000)})  # marked: not recomputed
    total = reduce_blocks(client, _stats, _bounds(103, 10), combine=_add, checkpoint=checkpoint, progress=False)
    assert int(total["n"]) == 103 - 4 * 10 - 4 * 1000  # four partials came from the checkpoint
    np.testing.assert_allclose(total["sum"], VALUES.sum(axis=0), rtol=1e-12)
    assert "checkpoints" not in zarr.open_group(store, mode="r")  # removed once the reduction is complete
    other = Checkpoint(store, "checkpoints/test/stats", "v2")
    other.prepare()
    assert other.prepare() == set()  # another reduction's partials are never reused


def _fails_on_block_3(block, start, stop):
    if block == 3:
        raise ValueError("bad block")
    return np.ones(1)


def test_a_failing_partial_raises_naming_the_block(client):
    with pytest.raises(RuntimeError, match=r"block 3 \(rows 3:4\) failed: ValueError: bad block"):
        reduce_blocks(client, _fails_on_block_3, _bounds(6, 1), progress=False, retries=0)


class Unwritable(OSError):
    unwritable = True


def _map_task(block, start, stop, fail):
    if block in fail:
        raise (Unwritable("disk full") if fail[block] == "full" else ValueError("bad input"))
    return 1000 + block


def test_map_skips_done_blocks_reports_failures_and_stops_when_the_output_is_unwritable(client):
    failed = []
    report = map_blocks(client, _map_task, _bounds(10, 2), args=({2: "bad"},), done=[True, False, False, True, False],
                        on_failure=lambda block, error: failed.append(block), retries=0, progress=False)
    assert (report.already_done, report.computed, sorted(report.failed)) == (2, 2, [2]) and failed == [2]
    assert report.peak_worker_rss_bytes == 1004 and not report.complete
    assert "block 2 (rows 4:6): ValueError: bad input" in report.summary()
    with pytest.raises(StoreError, match="cannot be written, so the run stopped") as info:
        map_blocks(client, _map_task, _bounds(40, 1), args=({0: "full"},), retries=0, progress=False,
                   max_in_flight=1)
    # the one task topped up as block 0 failed may finish; nothing more is submitted
    assert info.value.report.computed <= 1 and list(info.value.report.failed) == [0]


@settings(max_examples=25, deadline=None)
@given(params=st.dictionaries(st.sampled_from("abc"), st.integers() | st.none()))
def test_provenance_hash_covers_the_computation_and_not_the_input(params):
    one = Provenance("k", "1", params, input_id="x")
    assert one.sha256 == Provenance("k", "1", dict(params), input_id="y").sha256
    assert one.sha256 != Provenance("k", "2", params).sha256
    with pytest.raises(StoreError, match="input_id differs"):
        one.check({"config_sha256": one.sha256, "input_id": "y"}, "where")
