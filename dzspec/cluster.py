"""The one cluster factory: a LocalCluster fitted to the machine, a connection to a running scheduler, a batch
system (dask-jobqueue) or a Dask Gateway cluster.

Every worker thread gets exactly one BLAS/OpenMP thread: the nanny sets ``OMP_NUM_THREADS`` and friends before
a worker process starts, and a worker plugin caps the thread pools of libraries already loaded (threadpoolctl),
because oversubscription makes small NNLS solves hundreds of times slower. The same plugin lets glibc's malloc keep
multi-MB NumPy temporaries on the heap (:func:`tune_malloc`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from typing import Any

import dask
import dask.system
from distributed import Client, WorkerPlugin

__all__ = [
    "JOBQUEUE_CLASSES",
    "WorkerTuning",
    "client_from_config",
    "gateway_client",
    "jobqueue_cluster",
    "make_client",
    "tune_malloc",
]

log = logging.getLogger(__name__)

_ONE_THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
    "VECLIB_MAXIMUM_THREADS": "1",
}


#: glibc ``mallopt`` parameters: temporaries up to 32 MiB are served from the heap, whose free top is returned to
#: the OS above 64 MiB.
_MALLOC_OPTIONS = {"M_TRIM_THRESHOLD": (-1, 64 * 2**20), "M_MMAP_THRESHOLD": (-3, 32 * 2**20)}


def tune_malloc() -> bool:
    """Let glibc's malloc reuse heap memory for NumPy temporaries of up to 32 MiB in this process.

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which also freezes glibc's mmap threshold at
    128 KiB: every multi-MB temporary becomes a fresh ``mmap`` whose pages the kernel zeroes again, and the MADGICS
    scan ran 2.3 times slower in a worker (8.1 s per 512-spectrum block against 3.5 s in a plain process), and
    scaled worse across workers because page zeroing shares the memory bandwidth. Returns False where the C library
    has no ``mallopt`` (macOS) or refuses it; nothing changes there.
    """
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(parameter, value) == 1 for parameter, value in _MALLOC_OPTIONS.values())


class WorkerTuning(WorkerPlugin):
    """Per worker process: BLAS/OpenMP pools of one thread (what the environment cannot undo) and
    :func:`tune_malloc`."""

    name = "dzspec-worker-tuning"

    def setup(self, worker: Any) -> None:
        from threadpoolctl import threadpool_limits

        os.environ.update(_ONE_THREAD_ENV)
        # Keep the limiter object alive on the worker: it is a context manager whose limits last as long as it.
        worker._dzspec_threadpool_limits = threadpool_limits(limits=1)
        tune_malloc()


def default_worker_layout(threads_per_worker: int = 1, n_workers: int | None = None) -> tuple[int, int]:
    """(workers, threads per worker) for this machine: one single-threaded process per core by default.

    The cores are those this process may use (:func:`dask.system.cpu_count`): the CPU affinity mask and a cgroup CPU
    quota (a container's or a batch job's ``--cpus``) count, not the host's cores.

    Examples
    --------
    >>> workers, threads = default_worker_layout()
    >>> workers >= 1 and threads == 1
    True
    """
    cores = dask.system.cpu_count()
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
            # The client starts the cluster itself, so that closing the client (``with make_client() as c``)
            # also stops its workers; Client(LocalCluster(...)) would leave them running in a long process.
            client = Client(
                n_workers=workers,
                threads_per_worker=threads,
                processes=processes,
                memory_limit=memory_limit,
                dashboard_address=dashboard_address or ":0",
            )
    if processes or address:
        client.register_plugin(WorkerTuning())
    log.info("dask client ready: %s", client.dashboard_link)
    return client


#: dask-jobqueue cluster class of each batch system.
JOBQUEUE_CLASSES = {"slurm": "SLURMCluster", "pbs": "PBSCluster"}


def jobqueue_cluster(kind: str, jobqueue: dict[str, Any] | None = None) -> Any:
    """A dask-jobqueue cluster for ``kind`` (``"slurm"`` or ``"pbs"``) with the config's ``[cluster.jobqueue]``
    options; every job script exports one BLAS/OpenMP thread before its workers start. Nothing is submitted until
    the cluster is scaled, so ``jobqueue_cluster(...).job_script()`` shows the script a run would submit."""
    if kind not in JOBQUEUE_CLASSES:
        raise ValueError(f"no batch system {kind!r}; dzspec knows {', '.join(JOBQUEUE_CLASSES)}")
    try:
        import dask_jobqueue
    except ImportError:
        raise ImportError(f"cluster.kind = {kind!r} needs dask-jobqueue: pip install 'dzspec[hpc]'") from None
    options = dict(jobqueue or {})
    prologue = [f"export {name}={value}" for name, value in _ONE_THREAD_ENV.items()]
    options["job_script_prologue"] = prologue + list(options.get("job_script_prologue", []))
    return getattr(dask_jobqueue, JOBQUEUE_CLASSES[kind])(**options)


class _OwningClient(Client):
    """A client that closes the cluster object it was made for when it closes, as ``Client()`` closes the
    LocalCluster it started (``Client(cluster)`` alone leaves it: a batch cluster's jobs would run on to their
    walltime, in a long process its workers would stay up)."""

    def close(self, *args: Any, **kwargs: Any) -> Any:
        cluster = self.cluster
        try:
            return super().close(*args, **kwargs)
        finally:
            if cluster is not None:
                self._close_cluster(cluster)

    @staticmethod
    def _close_cluster(cluster: Any) -> None:
        cluster.close()


class _GatewayClient(_OwningClient):
    """An :class:`_OwningClient` of a Dask Gateway cluster: one made with ``shutdown_on_close=True`` is shut down
    when the client closes, not when the interpreter exits; one it only connected to is disconnected."""

    @staticmethod
    def _close_cluster(cluster: Any) -> None:
        _close_gateway_cluster(cluster)


def _close_gateway_cluster(cluster: Any) -> None:
    """``cluster.close()``, once for all: dask-gateway 2026.3 closes the cluster's Gateway again in ``__del__``,
    which raises with distributed 2026 once its loop has stopped ("Accessing the loop property while the loop is
    not running"), printed as an ignored exception."""
    cluster.close()
    vars(cluster.gateway).pop("_loop_runner", None)  # Gateway.__del__ does nothing without it


def gateway_client(cluster: dict[str, Any]) -> Client:
    """A client on a Dask Gateway cluster: a new one (shut down when the client closes) or an existing one.

    Parameters
    ----------
    cluster
        The config's ``[cluster]`` section. ``address``, ``proxy_address`` and ``auth`` (``"basic"``,
        ``"kerberos"``, ``"jupyterhub"``) locate the gateway; missing ones come from dask's ``gateway.*`` config,
        which a JupyterHub with Dask Gateway sets. ``cluster_name`` connects to a running cluster instead of
        starting one with the ``[cluster.gateway]`` options (those the gateway offers: ``Gateway().cluster_options()``).
        ``workers`` scales to a fixed count (default 1 for a new cluster; an existing one is left as it is), or
        ``adapt = {minimum, maximum}`` lets the gateway scale with the load.

    Returns
    -------
    distributed.Client
        With one BLAS/OpenMP thread per worker thread (:class:`WorkerTuning`). Closing it shuts down a cluster
        this call started and only disconnects from one named by ``cluster_name``.

    Raises
    ------
    ImportError
        Without dask-gateway (``pip install 'dzspec[gateway]'``).
    """
    try:
        from dask_gateway import GatewayCluster
    except ImportError:
        raise ImportError("cluster.kind = 'gateway' needs dask-gateway: pip install 'dzspec[gateway]'") from None
    where = {key: cluster[key] for key in ("address", "proxy_address", "auth") if key in cluster}
    if "cluster_name" in cluster:
        remote = GatewayCluster.from_name(cluster["cluster_name"], shutdown_on_close=False, **where)
    else:
        remote = GatewayCluster(**where, shutdown_on_close=True, **cluster.get("gateway", {}))
    try:
        if "adapt" in cluster:
            remote.adapt(**cluster["adapt"])
        elif "workers" in cluster or "cluster_name" not in cluster:
            remote.scale(cluster.get("workers", 1))
        client = _GatewayClient(remote)
    except BaseException:
        _close_gateway_cluster(remote)
        raise
    client.register_plugin(WorkerTuning())
    log.info("dask client ready: %s (gateway cluster %s)", client.dashboard_link, remote.name)
    return client


def client_from_config(cluster: dict[str, Any] | None = None) -> Client:
    """The client a pipeline config's ``[cluster]`` section asks for (see :mod:`dzspec.parallel.pipeline`):
    ``kind`` local (``workers``, ``threads_per_worker``), address (``address``: a scheduler or its JSON file), env
    (``DASK_SCHEDULER_ADDRESS``, as the Dask operator sets it), slurm / pbs (``[cluster.jobqueue]`` options,
    ``workers`` = jobs to start) or gateway (a Dask Gateway cluster: :func:`gateway_client`); ``mpi`` is started by
    ``python -m dzspec.parallel.mpi``. Switching targets changes only the config."""
    cluster = dict(cluster or {})
    kind = cluster.get("kind", "local")
    if kind == "local":
        return make_client(n_workers=cluster.get("workers"), threads_per_worker=cluster.get("threads_per_worker", 1))
    if kind == "address":
        return make_client(cluster["address"])
    if kind == "env":  # a scheduler someone else started: the Dask operator's DaskJob
        address = os.environ.get("DASK_SCHEDULER_ADDRESS") or dask.config.get("scheduler-address", None)
        if not address:
            raise ValueError("cluster.kind = 'env' needs DASK_SCHEDULER_ADDRESS (or dask's scheduler-address)")
        return make_client(address)
    if kind == "gateway":
        return gateway_client(cluster)
    if kind == "mpi":
        raise ValueError("cluster.kind = 'mpi' runs under srun/mpirun: python -m dzspec.parallel.mpi CONFIG")
    batch = jobqueue_cluster(kind, cluster.get("jobqueue"))
    batch.scale(jobs=cluster.get("workers", 1))
    client = _OwningClient(batch)  # closing the client cancels the jobs
    client.register_plugin(WorkerTuning())
    log.info("dask client ready: %s (%s jobs requested)", client.dashboard_link, cluster.get("workers", 1))
    return client
