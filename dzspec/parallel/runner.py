"""The block runner: apply a kernel to a spectra store block by block on a Dask cluster, resumably.

Production path (futures over blocks):

1. plan: ``nspectrum`` rows in blocks of ``block_rows`` (a multiple of the store's chunk, so reads are whole
   chunks); the results group is pre-sized with output chunks equal to the block, so writes are whole chunks;
2. keep at most ``max_in_flight`` block tasks submitted, topping up from :func:`distributed.as_completed`;
3. each task reads its rows, runs the pure kernel, writes every output and its rows' ``run_status`` (ok), then
   sets ``block_done[block]`` last;
4. a block still failing after its retries (an unreadable chunk, a kernel error, a lost worker) stays not-done:
   its rows get ``run_status`` failed and the error, naming rows and targetids, goes to the report and to the
   group's ``failed_blocks`` attribute; the other blocks go on. An output location that cannot be written (full,
   over quota, read-only) instead stops the run: nothing more is submitted, the blocks in flight finish, and a
   :class:`~dzspec.errors.StoreError` says how many blocks are done;
5. ``resume=True`` re-plans, checks the configuration hash, the input identity and the plan, and submits only
   blocks whose flag is still False. A crash anywhere costs at most the blocks that were in flight.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

from distributed import Client

from dzspec.errors import StoreError
from dzspec.io import store as zstore
from dzspec.kernels.base import KernelSpec
from dzspec.parallel.bounded import map_bounded, peak_rss_bytes

__all__ = ["BlockFailed", "RunReport", "config_sha256", "run_kernel"]

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


@dataclass
class RunReport:
    """What a run did."""

    results: str
    nblocks: int
    already_done: int
    computed: int
    failed: dict[int, str] = field(default_factory=dict)
    peak_worker_rss_bytes: int = 0
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return not self.failed and self.already_done + self.computed == self.nblocks

    def summary(self) -> str:
        text = (
            f"{self.results}: {self.nblocks} blocks, {self.already_done} already done, {self.computed} computed, "
            f"{len(self.failed)} failed in {self.seconds:.1f} s; peak worker RSS "
            f"{self.peak_worker_rss_bytes / 2**20:.0f} MiB"
        )
        for _, error in sorted(self.failed.items())[:10]:
            text += f"\n  {error}"  # names the block, its rows and targetids
        return text


def config_sha256(kernel: KernelSpec, params: Mapping[str, Any]) -> str:
    """Hash of what determines a run's outputs: kernel name, version and parameters.

    Examples
    --------
    >>> from dzspec.kernels.summary import SUMMARY
    >>> config_sha256(SUMMARY, {}) == config_sha256(SUMMARY, {"snr_window": None})
    True
    """
    payload = {"kernel": kernel.name, "version": kernel.version, "params": {**kernel.defaults, **params}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _block_task(
    store: str, spectra: str, results: str, kernel: KernelSpec, params: dict[str, Any], block: int, start: int,
    stop: int,
) -> tuple[int, int]:
    """Worker side: read rows, run the kernel, write outputs, then the done flag. Returns (block, peak RSS)."""
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
    return block, peak_rss_bytes()


def _prepare_results(
    root: Any, store: str, spectra: str, results: str, kernel: KernelSpec, params: Mapping[str, Any],
    plan: zstore.BlockPlan, resume: bool, overwrite: bool,
) -> None:
    attrs = {
        "kernel": kernel.name,
        "kernel_version": kernel.version,
        "params": {**kernel.defaults, **params},
        "config_sha256": config_sha256(kernel, params),
        "input_group": spectra,
        "input_id": zstore.input_id(root[spectra]),
    }
    if results in root:
        existing = root[results].attrs
        if not (resume or overwrite):
            raise StoreError(f"{store}/{results} exists: pass resume (--resume) to continue it or overwrite "
                             "(--overwrite) to start again")
        if resume:
            for key in ("config_sha256", "input_id"):
                if existing.get(key) != attrs[key]:
                    raise StoreError(
                        f"{store}/{results}: cannot resume: {key} differs (store {existing.get(key)!r}, "
                        f"now {attrs[key]!r}); the kernel, its parameters or the input changed: use --overwrite"
                    )
            if "run_status" not in root[results]:
                raise StoreError(f"{store}/{results}: cannot resume: written by an older dzspec (no run_status); "
                                 "use --overwrite")
            if dict(existing.get("plan", {})) != plan.as_dict():
                raise StoreError(f"{store}/{results}: cannot resume: plan {existing.get('plan')} differs from "
                                 f"{plan.as_dict()}; rerun with the same block size or --overwrite")
            return
    zstore.create_results_group(root, results, plan, kernel.output_specs(params), attrs,
                                root[spectra]["targetid"][:])


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
    progress: bool = True,
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
        Spectra per task; a multiple of the store's chunk (default: one chunk).
    max_in_flight
        Tasks submitted at once (default: twice the cluster's threads), which bounds scheduler and worker memory.
    retries
        Dask retries per block for transient errors; a block still failing stays not-done, its rows are flagged
        (``run_status`` failed) and it is reported.
    progress
        Show a progress bar.

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
    chunk_rows = int(source.attrs["chunk_rows"])
    block_rows = block_rows or chunk_rows
    if block_rows % chunk_rows and block_rows < nspectrum:
        raise ValueError(f"block_rows {block_rows} must be a multiple of the store's chunk of {chunk_rows} rows")
    plan = zstore.BlockPlan(nspectrum, block_rows)
    results = results or f"results/{spectra.removeprefix('spectra/')}/{kernel.name}"
    with zstore.run_lock(store, results):  # a second run on the same output refuses instead of interleaving
        return _run_blocks(client, root, store, spectra, results, kernel, params, plan, resume, overwrite,
                           block_rows, max_in_flight, retries, progress, t0)


def _run_blocks(client: Client, root: Any, store: str, spectra: str, results: str, kernel: KernelSpec,
                params: dict[str, Any], plan: zstore.BlockPlan, resume: bool, overwrite: bool, block_rows: int,
                max_in_flight: int | None, retries: int, progress: bool, t0: float) -> RunReport:
    try:
        _prepare_results(root, store, spectra, results, kernel, params, plan, resume, overwrite)
    except OSError as exc:
        raise StoreError(f"{store}/{results}: cannot create the results group: {exc}") from exc
    target = root[results]
    done = zstore.done_blocks(target)
    pending = [int(b) for b in range(plan.nblocks) if not done[b]]
    report = RunReport(results, plan.nblocks, plan.nblocks - len(pending), 0)
    log.info("%s: %d blocks of %d spectra; %d already done, computing %d",
             results, plan.nblocks, block_rows, report.already_done, len(pending))
    unwritable = ""

    def tasks() -> Iterator[tuple[str, tuple[Any, ...]]]:
        for block in pending:
            if unwritable:  # the output location is full or read-only: submit nothing more, let the rest finish
                return
            yield f"block-{block}", (store, spectra, results, kernel, params, block, *plan.bounds(block))

    for label, outcome, error in map_bounded(
        client, _block_task, tasks(), max_in_flight=max_in_flight, retries=retries, desc=kernel.name,
        total=plan.nblocks, initial=report.already_done, progress=progress,
    ):
        if error is None:
            report.computed += 1
            report.peak_worker_rss_bytes = max(report.peak_worker_rss_bytes, outcome[1])
            continue
        block = int(label.removeprefix("block-"))
        rows = plan.bounds(block)
        report.failed[block] = _describe_failure(error, target, f"{store}/{results}", block, rows)
        log.error("%s", report.failed[block])
        if getattr(error, "unwritable", False):
            unwritable = unwritable or report.failed[block]
        else:
            _try_writing(zstore.mark_rows_failed, target, rows)

    report.seconds = time.perf_counter() - t0
    ndone = int(zstore.done_blocks(target).sum())
    failed_blocks = {str(b): text for b, text in sorted(report.failed.items())[:100]}
    _try_writing(target.attrs.update, {"status": "complete" if ndone == plan.nblocks else "incomplete",
                                       "failed_blocks": failed_blocks})
    if unwritable:
        raise StoreError(
            f"{unwritable}\nThe output location cannot be written, so the run stopped: {ndone} of {plan.nblocks} "
            f"blocks are done and kept, {plan.nblocks - ndone} are not. Free space (or fix permissions) and run "
            "again with --resume."
        )
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
