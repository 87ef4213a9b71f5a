"""The block runner: apply a kernel to a spectra store block by block on a Dask cluster, resumably.

A kernel run is one block-map stage of :mod:`dzspec.parallel.core`:

1. plan: ``nspectrum`` rows in blocks sized by compute (:func:`~dzspec.parallel.core.plan_rows`: at least two
   blocks per worker thread for a small store, at most one storage chunk for a big one); the results group is
   pre-sized with output chunks equal to the block, so no two tasks ever write one chunk;
2. each task reads its rows, runs the pure kernel, writes every output and its rows' ``run_status`` (ok), then
   sets ``block_done[block]`` last;
3. a block still failing after its retries (an unreadable chunk, a kernel error, a lost worker) stays not-done:
   its rows get ``run_status`` failed and the error, naming rows and targetids, goes to the report and to the
   group's ``failed_blocks`` attribute; the other blocks go on. An output location that cannot be written (full,
   over quota, read-only) instead stops the run: nothing more is submitted, the blocks in flight finish, and a
   :class:`~dzspec.errors.StoreError` says how many blocks are done;
4. ``resume=True`` reuses the stored plan, checks the run's :class:`~dzspec.parallel.core.Provenance`
   (configuration hash, input identity) and submits only blocks whose flag is still False. A crash anywhere costs
   at most the blocks that were in flight.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any

from distributed import Client

from dzspec.errors import StoreError
from dzspec.io import store as zstore
from dzspec.kernels.base import KernelSpec
from dzspec.parallel.core import (
    Provenance,
    RunReport,
    StageStopped,
    map_blocks,
    peak_rss_bytes,
    plan_rows,
    worker_threads,
)

__all__ = ["BlockFailed", "RunReport", "config_sha256", "provenance", "run_kernel"]

log = logging.getLogger(__name__)


#: errno values that make an output location unusable for every block (full, over quota, read-only, forbidden):
#: the run stops submitting at the first one instead of failing every remaining block the same way.
_UNWRITABLE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})


class BlockFailed(RuntimeError):
    """A block task failed; the message names the store, the block, its rows and the stage (reading the input,
    the kernel, writing the results). ``unwritable`` is true when writing failed because the output location is
    full, read-only or forbidden."""

    def __init__(self, message: str, unwritable: bool = False):
        super().__init__(message, unwritable)  # both in args, so the exception pickles back from a worker
        self.unwritable = unwritable

    def __str__(self) -> str:
        return str(self.args[0])


def provenance(kernel: KernelSpec, params: Mapping[str, Any], input_id: str = "") -> Provenance:
    """The provenance of a kernel run: its name, version and every parameter (defaults filled in)."""
    return Provenance(kernel.name, kernel.version, {**kernel.defaults, **params}, input_id)


def config_sha256(kernel: KernelSpec, params: Mapping[str, Any]) -> str:
    """Hash of what determines a run's outputs: kernel name, version and parameters.

    Examples
    --------
    >>> from dzspec.kernels.summary import SUMMARY
    >>> config_sha256(SUMMARY, {}) == config_sha256(SUMMARY, {"snr_window": None})
    True
    """
    return provenance(kernel, params).sha256


def _block_task(block: int, start: int, stop: int, store: str, spectra: str, results: str, kernel: KernelSpec,
                params: dict[str, Any]) -> int:
    """Worker side: read rows, run the kernel, write outputs, then the done flag. Returns the peak RSS."""
    stage = "reading the input"
    try:
        root = zstore.open_root(store, mode="r+")
        source = root[spectra]
        wavelength = source["wavelength"][:]
        arrays = zstore.read_rows(source, start, stop, kernel.inputs)
        stage = "in the kernel"
        outputs = kernel.func(wavelength, **arrays, **params)
        expected = kernel.output_specs(params)
        if set(outputs) != set(expected):
            raise ValueError(f"kernel returned {sorted(outputs)}, declared {sorted(expected)}")
        stage = "writing the results"
        target = root[results]
        zstore.write_block(target, start, outputs)
        zstore.mark_block_done(target, block, (start, stop))
    except Exception as exc:
        unwritable = stage == "writing the results" and getattr(exc, "errno", None) in _UNWRITABLE
        raise BlockFailed(f"{store}/{results}: block {block} (rows {start}:{stop}) failed {stage}: "
                          f"{type(exc).__name__}: {exc}", unwritable) from exc
    return peak_rss_bytes()


def _prepare_results(root: Any, store: str, spectra: str, results: str, kernel: KernelSpec,
                     run: Provenance, plan: zstore.BlockPlan, resume: bool, overwrite: bool,
                     sized_by_compute: bool) -> zstore.BlockPlan:
    """Create the results group, or check the one a resume continues; the plan the run follows (a resume keeps
    the stored one unless a block size was asked for and differs)."""
    if results in root:
        existing = root[results].attrs
        if not (resume or overwrite):
            raise StoreError(f"{store}/{results} exists: pass resume (--resume) to continue it or overwrite "
                             "(--overwrite) to start again")
        if resume:
            run.check(existing, f"{store}/{results}")
            if "run_status" not in root[results]:
                raise StoreError(f"{store}/{results}: cannot resume: written by an older dzspec (no run_status); "
                                 "use --overwrite")
            stored = dict(existing.get("plan", {}))
            if stored.get("nspectrum") != plan.nspectrum or (plan.block_rows != stored.get("block_rows")
                                                             and not sized_by_compute):
                raise StoreError(f"{store}/{results}: cannot resume: plan {stored} differs from "
                                 f"{plan.as_dict()}; rerun with the same block size or --overwrite")
            return zstore.BlockPlan(int(stored["nspectrum"]), int(stored["block_rows"]))
    attrs = {**run.attrs(), "input_group": spectra}
    zstore.create_results_group(root, results, plan, kernel.output_specs(run.params), attrs,
                                root[spectra]["targetid"][:])
    return plan


def run_kernel(
    store: str | PathLike[str],
    kernel: KernelSpec,
    client: Client,
    *,
    params: Mapping[str, Any] | None = None,
    group: str | None = None,
    results: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    block_rows: int | None = None,
    max_in_flight: int | None = None,
    retries: int = 2,
    progress: bool | None = True,
) -> RunReport:
    """Run ``kernel`` over every spectrum of a spectra group, writing ``results/<grid>/<kernel>``.

    Parameters
    ----------
    store
        The Zarr store.
    kernel
        The kernel (see :class:`dzspec.kernels.base.KernelSpec`).
    client
        A Dask client (see :func:`dzspec.cluster.make_client`).
    params
        Keyword parameters of the kernel; they enter the configuration hash.
    group
        Spectra group (``<grid>`` or ``spectra/<grid>``); default the store's only one.
    results
        Results group path; default ``results/<grid>/<kernel name>``.
    resume, overwrite
        What to do with an existing results group: continue its unfinished blocks, or start again. Neither,
        with an existing group, is an error; both at once too.
    block_rows
        Spectra per task (the results' chunk); default sized by compute: at least two blocks per worker thread,
        at most one storage chunk (:func:`dzspec.parallel.core.plan_rows`). A resume keeps the stored plan.
    max_in_flight
        Tasks submitted at once (default: twice the cluster's threads), which bounds scheduler and worker memory.
    retries
        Dask retries per block for transient errors; a block still failing stays not-done, its rows are flagged
        (``run_status`` failed) and it is reported.
    progress
        Show a progress bar (None: only on an interactive terminal).

    Returns
    -------
    RunReport
        Blocks computed, already done and failed, and the peak worker RSS.

    Raises
    ------
    StoreError
        The output location cannot be written (the run lock, the results group, or a block's results: disk full,
        quota, read-only, permission); blocks already done are kept for ``resume``.
    """
    if resume and overwrite:
        raise ValueError("resume and overwrite are mutually exclusive")
    params = {**kernel.defaults, **(params or {})}  # the kernel sees, and the hash covers, every parameter
    store = str(Path(store).resolve())  # workers may run in another directory
    t0 = time.perf_counter()
    log.info("building plan for %s", store)
    root = zstore.open_root(store, mode="r+")
    spectra = zstore.resolve_spectra_group(root, group)
    source = root[spectra]
    nspectrum = int(source["flux"].shape[0])
    rows = block_rows or plan_rows(nspectrum, worker_threads(client), int(source.attrs["chunk_rows"]))
    plan = zstore.BlockPlan(nspectrum, rows)
    results = results or f"results/{spectra.removeprefix('spectra/')}/{kernel.name}"
    run = provenance(kernel, params, zstore.input_id(source))
    with zstore.run_lock(store, results):  # a second run on the same output refuses instead of interleaving
        try:
            plan = _prepare_results(root, store, spectra, results, kernel, run, plan, resume, overwrite,
                                    sized_by_compute=not block_rows)
        except OSError as exc:
            raise StoreError(f"{store}/{results}: cannot create the results group: {exc}") from exc
        return _run_blocks(client, root, store, spectra, results, kernel, params, plan, max_in_flight, retries,
                           progress, t0)


def _run_blocks(client: Client, root: Any, store: str, spectra: str, results: str, kernel: KernelSpec,
                params: dict[str, Any], plan: zstore.BlockPlan, max_in_flight: int | None, retries: int,
                progress: bool | None, t0: float) -> RunReport:
    target = root[results]
    bounds = plan.blocks
    done = zstore.done_blocks(target)
    log.info("%s: %d blocks of %d spectra; %d already done", results, plan.nblocks, plan.block_rows,
             int(done.sum()))
    where = f"{store}/{results}"
    try:
        report = stopped = map_blocks(
            client, _block_task, bounds, args=(store, spectra, results, kernel, params), done=done,
            name=kernel.name, describe=lambda block, error: _describe_failure(error, target, where, block,
                                                                             bounds[block]),
            on_failure=lambda block, _: _try_writing(zstore.mark_rows_failed, target, bounds[block]),
            max_in_flight=max_in_flight, retries=retries, progress=progress)
    except StageStopped as exc:  # the output location cannot be written: record what is known, then say so
        report, stopped = exc.report, exc
    report.results = results
    report.seconds = time.perf_counter() - t0
    ndone = int(zstore.done_blocks(target).sum())
    _try_writing(target.attrs.update, {"status": "complete" if ndone == plan.nblocks else "incomplete",
                                       "failed_blocks": {str(b): text for b, text in
                                                         sorted(report.failed.items())[:100]}})
    if stopped is not report:
        raise stopped
    return report


def _describe_failure(error: BaseException, target: Any, where: str, block: int, rows: tuple[int, int]) -> str:
    """What failed, with the block's rows and targetids (a worker lost mid-task raises no BlockFailed)."""
    text = str(error) if isinstance(error, BlockFailed) else (
        f"{where}: block {block} (rows {rows[0]}:{rows[1]}): {type(error).__name__}: {error}")
    try:
        targetid = target["targetid"][rows[0]:rows[1]]
        text += f" [targetid {targetid[0]}..{targetid[-1]}]"
    except Exception:  # the failure may be the store itself; the rows still name the spectra
        pass
    return text


def _try_writing(write: Any, *args: Any) -> None:
    """Bookkeeping writes of the driver; a full or read-only output location must not hide the run's own error."""
    try:
        write(*args)
    except OSError as exc:
        log.error("could not record the run's state: %s", exc)
