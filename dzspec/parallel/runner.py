"""The block runner: apply a kernel to a spectra store block by block on a Dask cluster, resumably.

Production path (futures over blocks):

1. plan: ``nspectrum`` rows in blocks of ``block_rows`` (a multiple of the store's chunk, so reads are whole
   chunks); the results group is pre-sized with output chunks equal to the block, so writes are whole chunks;
2. keep at most ``max_in_flight`` block tasks submitted, topping up from :func:`distributed.as_completed`;
3. each task reads its rows, runs the pure kernel, writes every output, then sets ``block_done[block]`` last;
4. ``resume=True`` re-plans, checks the configuration hash, the input identity and the plan, and submits only
   blocks whose flag is still False. A crash anywhere costs at most the blocks that were in flight.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping
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


class BlockFailed(RuntimeError):
    """A block task failed; the message names the store, the block and its rows."""


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
        for block, error in sorted(self.failed.items())[:10]:
            text += f"\n  block {block}: {error}"
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
    try:
        root = zstore.open_root(store, mode="r+")
        source = root[spectra]
        wavelength = source["wavelength"][:]
        arrays = zstore.read_rows(source, start, stop, kernel.inputs)
        outputs = kernel.func(wavelength, **arrays, **params)
        expected = kernel.output_specs(params)
        if set(outputs) != set(expected):
            raise ValueError(f"kernel returned {sorted(outputs)}, declared {sorted(expected)}")
        target = root[results]
        zstore.write_block(target, start, outputs)
        zstore.mark_block_done(target, block)
    except Exception as exc:
        where = f"{store}/{results}: block {block} (rows {start}:{stop})"
        raise BlockFailed(f"{where}: {type(exc).__name__}: {exc}") from exc
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
        Dask retries per block for transient errors; a block still failing stays not-done and is reported.
    progress
        Show a progress bar.

    Returns
    -------
    RunReport
        Blocks computed, already done and failed, and the peak worker RSS.
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
    _prepare_results(root, store, spectra, results, kernel, params, plan, resume, overwrite)
    target = root[results]
    done = zstore.done_blocks(target)
    pending = [int(b) for b in range(plan.nblocks) if not done[b]]
    report = RunReport(results, plan.nblocks, plan.nblocks - len(pending), 0)
    log.info("%s: %d blocks of %d spectra; %d already done, computing %d",
             results, plan.nblocks, block_rows, report.already_done, len(pending))

    tasks = (
        (f"block-{block}", (store, spectra, results, kernel, params, block, *plan.bounds(block)))
        for block in pending
    )
    for label, outcome, error in map_bounded(
        client, _block_task, tasks, max_in_flight=max_in_flight, retries=retries, desc=kernel.name,
        total=plan.nblocks, initial=report.already_done, progress=progress,
    ):
        if error is None:
            report.computed += 1
            report.peak_worker_rss_bytes = max(report.peak_worker_rss_bytes, outcome[1])
        else:
            block = int(label.removeprefix("block-"))
            report.failed[block] = f"{type(error).__name__}: {error}"
            log.error("block %d failed: %s", block, error)

    report.seconds = time.perf_counter() - t0
    all_done = bool(zstore.done_blocks(target).all())
    target.attrs["status"] = "complete" if all_done else "incomplete"
    return report
