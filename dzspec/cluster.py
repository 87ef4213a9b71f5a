"""The one cluster factory: a LocalCluster fitted to the machine, or a connection to a running scheduler.

Every worker thread gets exactly one BLAS/OpenMP thread: the nanny sets ``OMP_NUM_THREADS`` and friends before
a worker process starts, and a worker plugin caps the thread pools of libraries already loaded (threadpoolctl),
because oversubscription makes small NNLS solves hundreds of times slower.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import dask
from distributed import Client, LocalCluster, WorkerPlugin

__all__ = ["make_client"]

log = logging.getLogger(__name__)

_ONE_THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
    "VECLIB_MAXIMUM_THREADS": "1",
}


class OneBlasThread(WorkerPlugin):
    """Limit BLAS/OpenMP pools to one thread in each worker process (what the environment cannot undo)."""

    name = "dzspec-one-blas-thread"

    def setup(self, worker: Any) -> None:
        from threadpoolctl import threadpool_limits

        os.environ.update(_ONE_THREAD_ENV)
        # Keep the limiter object alive on the worker: it is a context manager whose limits last as long as it.
        worker._dzspec_threadpool_limits = threadpool_limits(limits=1)


def default_worker_layout(threads_per_worker: int = 1, n_workers: int | None = None) -> tuple[int, int]:
    """(workers, threads per worker) for this machine: one single-threaded process per core by default.

    Examples
    --------
    >>> workers, threads = default_worker_layout()
    >>> workers >= 1 and threads == 1
    True
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads_per_worker = max(1, threads_per_worker)
    workers = n_workers or max(1, cores // threads_per_worker)
    return workers, threads_per_worker


def make_client(
    address: str | None = None,
    *,
    n_workers: int | None = None,
    threads_per_worker: int = 1,
    memory_limit: str | float = "auto",
    dashboard_address: str | None = ":0",
    processes: bool = True,
) -> Client:
    """A Dask client: a new LocalCluster (default) or a connection to ``address``.

    Parameters
    ----------
    address
        A scheduler address (``tcp://host:8786``) or scheduler file (``*.json``); None starts a LocalCluster.
    n_workers, threads_per_worker
        LocalCluster layout; by default one single-threaded worker process per available core.
    memory_limit
        Per worker (``"auto"`` shares the machine's memory among workers).
    dashboard_address
        Where the dashboard listens; ``":0"`` (default) picks a free port, so that several clusters on one
        machine never collide (None means the same).
    processes
        Worker processes (default) or threads in this process (for small tests).

    Returns
    -------
    distributed.Client
        Its ``dashboard_link`` is printed by the CLI.
    """
    if address:
        client = Client(scheduler_file=address) if address.endswith(".json") else Client(address)
    else:
        workers, threads = default_worker_layout(threads_per_worker, n_workers)
        with dask.config.set(
            {
                "distributed.nanny.pre-spawn-environ": {
                    **dask.config.get("distributed.nanny.pre-spawn-environ", {}),
                    **_ONE_THREAD_ENV,
                },
                "distributed.worker.memory.target": 0.60,
                "distributed.worker.memory.spill": 0.70,
                "distributed.worker.memory.pause": 0.80,
                "distributed.worker.memory.terminate": 0.95,
            }
        ):
            cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=threads,
                processes=processes,
                memory_limit=memory_limit,
                dashboard_address=dashboard_address or ":0",
            )
        client = Client(cluster)
    if processes or address:
        client.register_plugin(OneBlasThread())
    log.info("dask client ready: %s", client.dashboard_link)
    return client
