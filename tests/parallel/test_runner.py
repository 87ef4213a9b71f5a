import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from dzspec.errors import StoreError
from dzspec.io import store as zstore
from dzspec.kernels.base import KernelSpec, OutputSpec
from dzspec.kernels.summary import SUMMARY, spectrum_summary
from dzspec.parallel.runner import run_kernel
from dzspec.schema import RUN_STATUS
from dzspec.testing import write_synthetic_store
from tests.conftest import slow_summary_kernel, wait_for_done_blocks

pytestmark = pytest.mark.cluster

POISON = Path(os.environ.get("TMPDIR", "/tmp")) / f"dzspec-poison-{os.getpid()}"


def _poisoned_sum(wavelength, flux, targetid):
    """Sum of flux per spectrum; raises for the block holding targetid 10000020 while the poison file exists."""
    if POISON.exists() and (targetid == 10_000_020).any():
        raise RuntimeError("injected failure")
    return {"total": flux.astype(np.float64).sum(axis=1)}


POISONED = KernelSpec("poisoned", _poisoned_sum, ("flux", "targetid"), lambda p: {"total": OutputSpec("float64")})


@pytest.fixture
def store(tmp_path):
    return write_synthetic_store(tmp_path / "s.zarr", nspectrum=100, nwave=80, chunk_rows=8, seed=11)


def test_runner_equals_numpy_on_the_whole_array(store, client):
    report = run_kernel(store, SUMMARY, client, progress=False, block_rows=16)
    assert report.complete and report.computed == 7 and report.already_done == 0
    results = zstore.open_results(store, report.results).compute()
    spectra = zstore.open_spectra(store).compute()
    expected = spectrum_summary(spectra.wavelength.values, spectra.flux.values, spectra.ivar.values)
    for name, values in expected.items():
        np.testing.assert_array_equal(results[name].values, values, err_msg=name)
    np.testing.assert_array_equal(results.targetid.values, spectra.targetid.values)
    root = zstore.open_root(store)
    assert root[report.results].attrs["status"] == "complete"
    assert root[report.results]["ngood"].chunks == (16,)


def test_failed_block_stays_not_done_and_resume_recomputes_only_it(store, client):
    POISON.touch()
    try:
        first = run_kernel(store, POISONED, client, progress=False, retries=0)
    finally:
        POISON.unlink()
    assert list(first.failed) == [2]  # rows 16:24 hold targetid 10000020
    assert "block 2 (rows 16:24) failed in the kernel" in first.failed[2] and "injected failure" in first.failed[2]
    assert "[targetid 10000016..10000023]" in first.failed[2]
    assert not first.complete and first.computed == 12
    root = zstore.open_root(store)
    assert root[first.results].attrs["status"] == "incomplete"
    assert root[first.results].attrs["failed_blocks"] == {"2": first.failed[2]}
    assert zstore.done_blocks(root[first.results]).tolist().count(False) == 1
    status = zstore.open_results(store, first.results).run_status.values  # every row is there, the bad ones flagged
    assert status.size == 100 and (status[16:24] == RUN_STATUS.index("failed")).all()
    assert (np.delete(status, np.s_[16:24]) == RUN_STATUS.index("ok")).all()

    second = run_kernel(store, POISONED, client, progress=False, resume=True)
    assert second.complete and second.computed == 1 and second.already_done == 12
    assert root[first.results].attrs.asdict()["failed_blocks"] == {}
    assert (zstore.open_results(store, first.results).run_status.values == RUN_STATUS.index("ok")).all()
    total = zstore.open_results(store, second.results)["total"].values
    np.testing.assert_array_equal(total, zstore.open_spectra(store).flux.values.astype(np.float64).sum(axis=1))


def test_existing_results_need_resume_or_overwrite(store, client):
    run_kernel(store, SUMMARY, client, progress=False)
    with pytest.raises(StoreError, match="exists: pass resume"):
        run_kernel(store, SUMMARY, client, progress=False)
    with pytest.raises(StoreError, match="cannot resume: config_sha256 differs"):
        run_kernel(store, SUMMARY, client, progress=False, resume=True, params={"snr_window": (5000, 5050)})
    with pytest.raises(StoreError, match="cannot resume: plan"):
        run_kernel(store, SUMMARY, client, progress=False, resume=True, block_rows=16)
    again = run_kernel(store, SUMMARY, client, progress=False, overwrite=True, block_rows=16)
    assert again.computed == again.nblocks == 7
    with pytest.raises(ValueError, match="mutually exclusive"):
        run_kernel(store, SUMMARY, client, resume=True, overwrite=True)
    resumed = run_kernel(store, SUMMARY, client, progress=False, resume=True)  # no size asked: the stored plan
    assert resumed.nblocks == 7 and resumed.already_done == 7


def test_blocks_are_sized_by_compute_not_by_the_storage_chunk(tmp_path, client):
    """A store smaller than one chunk still gives every worker thread two blocks; the results' chunk is the block
    (no two writers share one), and a block size that is no multiple of the input chunk reads and writes right."""
    small = write_synthetic_store(tmp_path / "small.zarr", nspectrum=1000, nwave=40, chunk_rows=4096, seed=3)
    report = run_kernel(small, SUMMARY, client, progress=False)
    threads = sum(client.nthreads().values())
    assert report.complete and report.nblocks >= 2 * threads
    root = zstore.open_root(small)
    rows = root[report.results].attrs["plan"]["block_rows"]
    assert root[report.results]["ngood"].chunks == (rows,) and rows * report.nblocks >= 1000
    odd = run_kernel(small, SUMMARY, client, progress=False, block_rows=300, results="results/odd")
    assert odd.nblocks == 4
    np.testing.assert_array_equal(zstore.open_results(small, "results/odd").ngood.values,
                                  zstore.open_results(small, report.results).ngood.values)


KILL_SCRIPT = textwrap.dedent(
    """
    import sys
    from dzspec.cluster import make_client
    from dzspec.parallel.runner import run_kernel
    from tests.conftest import slow_summary_kernel

    SLOW = slow_summary_kernel(0.15)
    if __name__ == "__main__":
        store, results, resume = sys.argv[1], sys.argv[2], sys.argv[3] == "resume"
        with make_client(n_workers=2, dashboard_address=None) as client:
            report = run_kernel(store, SLOW, client, results=results, resume=resume, progress=False,
                                max_in_flight=2)
        print("COMPUTED", report.computed, "ALREADY", report.already_done, flush=True)
    """
)


def test_sigkill_of_the_client_then_resume_is_bit_identical(tmp_path):
    store = write_synthetic_store(tmp_path / "k.zarr", nspectrum=320, nwave=200, chunk_rows=8, seed=5)
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    reference = subprocess.run([sys.executable, str(script), str(store), "results/ref", "fresh"], env=env,
                               capture_output=True, text=True, timeout=300)
    assert reference.returncode == 0, reference.stderr[-3000:]
    assert "COMPUTED 40 ALREADY 0" in reference.stdout

    proc = subprocess.Popen([sys.executable, str(script), str(store), "results/killed", "fresh"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    root = zstore.open_root(store)
    wait_for_done_blocks(store, "results/killed", 15)
    proc.send_signal(signal.SIGKILL)  # the client (and the scheduler it hosts) dies at once
    proc.wait(timeout=30)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # then its orphaned workers, as when a node is lost
    done_at_kill = int(zstore.done_blocks(root["results/killed"]).sum())
    assert 15 <= done_at_kill < 40

    resumed = subprocess.run([sys.executable, str(script), str(store), "results/killed", "resume"], env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"COMPUTED {40 - done_at_kill} ALREADY {done_at_kill}" in resumed.stdout
    ref = zstore.open_results(store, "results/ref").compute()
    got = zstore.open_results(store, "results/killed").compute()
    for name in ref.data_vars:
        assert ref[name].values.tobytes() == got[name].values.tobytes(), name


def test_a_run_lock_held_by_a_live_or_remote_run_refuses_and_a_stale_one_is_taken_over(store, client):
    lock = Path(store) / "results/u/summary.lock"
    lock.parent.mkdir(parents=True)
    for holder in ({"host": socket.gethostname(), "pid": os.getpid()}, {"host": "elsewhere", "pid": 1}):
        lock.write_text(json.dumps(holder))
        with pytest.raises(StoreError, match="being written by another run"):
            run_kernel(store, SUMMARY, client, results="results/u/summary", progress=False)
        assert lock.exists() and "results/u/summary" not in zstore.open_root(store)  # nothing written
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid}))  # a killed run's lock
    assert run_kernel(store, SUMMARY, client, results="results/u/summary", progress=False).complete
    assert not lock.exists()


def test_two_runs_on_the_same_output_at_once_the_second_refuses(tmp_path, client):
    store = write_synthetic_store(tmp_path / "c.zarr", nspectrum=320, nwave=200, chunk_rows=8, seed=6)
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    first = subprocess.Popen([sys.executable, str(script), str(store), "results/busy", "fresh"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        root = zstore.open_root(store)
        deadline = time.time() + 120
        while time.time() < deadline and not (Path(store) / "results/busy.lock").exists():
            time.sleep(0.05)
        with pytest.raises(StoreError, match="being written by another run"):
            run_kernel(store, SUMMARY, client, results="results/busy", resume=True, progress=False)
        out, _ = first.communicate(timeout=240)
        assert "COMPUTED 40 ALREADY 0" in out  # the first run was not disturbed
        assert zstore.done_blocks(root["results/busy"]).all()
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)


def test_a_corrupted_input_chunk_fails_its_block_by_name_and_the_others_complete(store, client):
    group = zstore.resolve_spectra_group(zstore.open_root(store), None)
    (Path(store) / group / "flux" / "c" / "2" / "0").write_bytes(b"not a blosc frame" * 4)  # rows 16:24
    report = run_kernel(store, SUMMARY, client, progress=False, block_rows=8)
    assert not report.complete and list(report.failed) == [2]
    assert "block 2 (rows 16:24) failed reading the input" in report.failed[2]
    assert "decompression" in report.failed[2] and "[targetid 10000016..10000023]" in report.failed[2]
    target = zstore.open_root(store)[report.results]
    done = zstore.done_blocks(target)
    assert not done[2] and done[np.arange(done.size) != 2].all() and target.attrs["status"] == "incomplete"
    status = zstore.open_results(store, report.results).run_status.values
    assert status.tolist() == [1] * 16 + [2] * 8 + [1] * 76  # ok, failed (the corrupted chunk), ok


def test_results_are_identical_across_block_sizes_and_worker_counts(store, client):
    from dzspec.cluster import make_client

    run_kernel(store, SUMMARY, client, results="results/b8", progress=False, block_rows=8)
    run_kernel(store, SUMMARY, client, results="results/b32", progress=False, block_rows=32)
    with make_client(n_workers=1, processes=False, dashboard_address=None) as single:
        run_kernel(store, SUMMARY, single, results="results/one", progress=False, block_rows=16)
    reference = zstore.open_results(store, "results/b8").compute()
    for other in ("results/b32", "results/one"):
        got = zstore.open_results(store, other).compute()
        for name in reference.data_vars:
            if name != "block_done":  # one flag per block: its length follows the block size
                assert reference[name].values.tobytes() == got[name].values.tobytes(), (other, name)


@pytest.fixture
def small_filesystem(tmp_path):
    """A 4 MiB tmpfs: a real filesystem that a drill can fill (mounting needs root, as in CI; skipped otherwise)."""
    mount = tmp_path / "small-fs"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True,
                             text=True, check=False)
    if mounted.returncode:
        pytest.skip(f"cannot mount a small tmpfs: {mounted.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(path):
    """Write zeros into ``path`` until the filesystem refuses even one byte."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY)
    try:
        for size in (1 << 16, 1 << 12, 1):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError:
                    break
    finally:
        os.close(fd)


def test_a_full_disk_stops_the_run_by_name_keeps_only_written_blocks_and_resume_completes(small_filesystem, client):
    store = write_synthetic_store(small_filesystem / "s.zarr", nspectrum=160, nwave=80, chunk_rows=8, seed=12)
    assert run_kernel(store, SUMMARY, client, results="results/reference", progress=False).complete
    filler = small_filesystem / "filler"

    def fill_when_running():
        wait_for_done_blocks(store, "results/full", 3)
        _fill(filler)  # the disk fills up while blocks are in flight

    watcher = threading.Thread(target=fill_when_running, daemon=True)
    watcher.start()
    with pytest.raises(StoreError) as failure:
        run_kernel(store, slow_summary_kernel(), client, results="results/full", progress=False, max_in_flight=2)
    watcher.join(timeout=5)
    message = str(failure.value)
    assert "results/full: block" in message and "failed writing the results" in message
    assert "No space left on device" in message and "run again with --resume" in message

    target = zstore.open_root(store)["results/full"]  # the group's metadata survived the full disk
    done = zstore.done_blocks(target)
    assert 3 <= done.sum() < done.size - 2  # it stopped instead of failing every remaining block
    assert f"{int(done.sum())} of {done.size} blocks are done and kept" in message
    reference = zstore.open_results(store, "results/reference").compute()
    partial = zstore.open_results(store, "results/full").compute()
    for block in np.flatnonzero(done):  # no block marked done that was not completely written
        rows = slice(block * 8, block * 8 + 8)
        assert (partial.run_status.values[rows] == RUN_STATUS.index("ok")).all()
        for name in (n for n in reference.data_vars if reference[n].dims[0] == "spectrum"):
            assert reference[name].values[rows].tobytes() == partial[name].values[rows].tobytes(), (block, name)

    filler.unlink()  # space is freed: the resume computes exactly the blocks not done
    report = run_kernel(store, SUMMARY, client, results="results/full", resume=True, progress=False)
    assert report.complete and report.already_done == done.sum() and report.computed == done.size - done.sum()
    final = zstore.open_results(store, "results/full").compute()
    for name in reference.data_vars:
        assert reference[name].values.tobytes() == final[name].values.tobytes(), name
