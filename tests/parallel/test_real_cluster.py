"""A real scheduler and real worker processes started as `dask scheduler` / `dask worker` subprocesses: the pipeline
runs by address, and a worker SIGKILLed mid-run does not change the results."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from dzspec.cluster import make_client
from dzspec.errors import StoreError
from dzspec.io import store as zstore
from dzspec.kernels.summary import SUMMARY, spectrum_summary
from dzspec.parallel.runner import run_kernel
from dzspec.testing import write_synthetic_store
from tests.conftest import DESI_GROUP as GROUP
from tests.conftest import slow_summary_kernel, small_lae_prior, wait_for_done_blocks, write_lae_pipeline

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]


SLOW = slow_summary_kernel()


def _start(args, env, log):
    return subprocess.Popen([sys.executable, "-m", *args], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


@pytest.fixture(scope="module")
def real_cluster(tmp_path_factory):
    """`dask scheduler` and two single-threaded `dask worker` processes without nannies (a killed worker stays
    dead), one BLAS thread each, sharing a scheduler file."""
    folder = tmp_path_factory.mktemp("real-cluster")
    scheduler_file = folder / "scheduler.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    log = (folder / "cluster.log").open("w")
    processes = [_start(["distributed.cli.dask_scheduler", "--scheduler-file", str(scheduler_file), "--port", "0",
                         "--dashboard-address", ":0"], env, log)]
    deadline = time.time() + 60
    while not scheduler_file.exists() and time.time() < deadline:
        time.sleep(0.1)
    for name in ("w1", "w2"):
        processes.append(_start(["distributed.cli.dask_worker", "--scheduler-file", str(scheduler_file),
                                 "--nthreads", "1", "--no-nanny", "--name", name], env, log))
    client = make_client(str(scheduler_file))
    client.wait_for_workers(2, timeout=60)
    yield folder, scheduler_file, client, processes
    client.close()
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    log.close()


def test_pipeline_runs_by_address(real_cluster, capsys):
    from dzspec.cli import main

    folder, scheduler_file, client, _ = real_cluster
    prior_store = folder / "prior.zarr"
    small_lae_prior(client, prior_store, seed=51)
    config = write_lae_pipeline(folder / "run.toml", f'kind = "address"\naddress = "{scheduler_file}"', 120, 52)
    assert main(["run", str(config), "--overwrite", "--no-progress"]) == 0
    assert "step 2/2: lae" in capsys.readouterr().out
    results = zstore.open_results(folder / "survey.zarr", f"results/{GROUP}/madgics_lae")
    assert results.sizes["spectrum"] == 120 and np.isfinite(results.z.values).sum() > 100
    workers = client.scheduler_info()["workers"].values()
    assert {w["name"] for w in workers} == {"w1", "w2"}  # the run used the cluster it was pointed at


def test_a_worker_killed_mid_run_leaves_the_results_identical(real_cluster, tmp_path):
    _, _, client, processes = real_cluster
    store = write_synthetic_store(tmp_path / "s.zarr", nspectrum=160, nwave=120, chunk_rows=8, seed=9)
    reference = run_kernel(store, SUMMARY, client, results="results/reference", progress=False)
    assert reference.complete
    killed = False

    def kill_when_running():
        nonlocal killed
        if wait_for_done_blocks(store, "results/killed", 2) >= 2:
            os.killpg(processes[2].pid, signal.SIGKILL)  # worker w2, mid-run
            killed = True

    watcher = threading.Thread(target=kill_when_running, daemon=True)
    watcher.start()
    report = run_kernel(store, SLOW, client, results="results/killed", progress=False, max_in_flight=2)
    watcher.join(timeout=5)
    assert killed and processes[2].wait(timeout=30) == -signal.SIGKILL
    assert report.complete and report.computed == 20, report.failed
    assert len(client.scheduler_info()["workers"]) == 1  # the run finished on the surviving worker
    ref = zstore.open_results(store, "results/reference").compute()
    got = zstore.open_results(store, "results/killed").compute()
    for name in ref.data_vars:
        assert ref[name].values.tobytes() == got[name].values.tobytes(), name


NOBODY = 65534
#: Runs a command as user nobody that may still read everything (CAP_DAC_READ_SEARCH): it can import dzspec from
#: anywhere and read the store, but not write a file it does not own.
READ_ONLY_USER = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                  "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="runs a worker as another user with setpriv, which needs root (as in CI)")
def test_an_output_location_the_workers_cannot_write_stops_the_run_with_a_clear_error(tmp_path):
    """Workers that can read the store but not write it, as on a cluster whose nodes mount the output read-only:
    the run stops at the first block with an error naming the location, marks nothing done, and completes with
    --resume once the workers may write."""
    shared = Path(tempfile.mkdtemp(prefix="dzspec-unwritable-"))  # readable by nobody, unlike pytest's tmp_path
    try:
        shared.chmod(0o755)
        scratch = shared / "worker-scratch"
        scratch.mkdir(mode=0o777)
        scratch.chmod(0o777)
        store = write_synthetic_store(shared / "s.zarr", nspectrum=80, nwave=60, chunk_rows=8, seed=13)
        scheduler_file = tmp_path / "scheduler.json"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HOME": str(scratch)}
        log = (tmp_path / "cluster.log").open("w")
        processes = [_start(["distributed.cli.dask_scheduler", "--scheduler-file", str(scheduler_file),
                             "--port", "0", "--dashboard-address", ":0"], env, log)]
        try:
            while not scheduler_file.exists():
                time.sleep(0.1)
            processes.append(subprocess.Popen(
                [*READ_ONLY_USER, sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file",
                 str(scheduler_file), "--nthreads", "1", "--no-nanny", "--local-directory", str(scratch)],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
            with make_client(str(scheduler_file)) as client:
                client.wait_for_workers(1, timeout=60)
                with pytest.raises(StoreError) as failure:
                    run_kernel(store, SUMMARY, client, results="results/summary", progress=False, retries=0)
                message = str(failure.value)
                assert "s.zarr/results/summary: block" in message and "failed writing the results" in message
                assert "Permission denied" in message and "0 of 10 blocks are done and kept" in message
                target = zstore.open_root(store)["results/summary"]
                assert not zstore.done_blocks(target).any() and (target["run_status"][:] == 0).all()

                subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", str(store)], check=True)  # permission fixed
                report = run_kernel(store, SUMMARY, client, results="results/summary", resume=True, progress=False)
                assert report.complete and report.computed == 10
        finally:
            for process in processes:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
            log.close()
        spectra = zstore.open_spectra(store).compute()
        expected = spectrum_summary(spectra.wavelength.values, spectra.flux.values, spectra.ivar.values)
        results = zstore.open_results(store, "results/summary").compute()
        for name, values in expected.items():
            np.testing.assert_array_equal(results[name].values, values, err_msg=name)
    finally:
        shutil.rmtree(shared, ignore_errors=True)
