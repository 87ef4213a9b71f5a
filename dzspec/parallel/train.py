"""Train an NMF basis from a spectra store on a Dask cluster, in memory bounded by the block size.

The training matrix never exists in one place. Each worker loads blocks of spectra (rows with a known
redshift), puts them on the rest-frame grid and keeps them. One iteration then costs one round trip:

* every block updates its own coefficients (rows are independent) and returns its additive share of the basis
  update, ``W_b^T V_b X_b`` and ``W_b^T V_b (W_b H)``, over the block's window only;
* the driver sums the shares and updates the basis ``H`` (k x l), which is broadcast for the next iteration;
* a second pass returns each block's ``sum V (X - W H)^2`` and pixel count for the stop rule.

The schedule (initial draws, sequential rank growth, stop rule) is :func:`dzspec.engines.nmf.train.run_schedule`,
the same code as the single-process :func:`~dzspec.engines.nmf.train.train_nmf`, so both give the same basis up to
the order of floating-point sums.

Windows (METHODS §1.2, "Cost at MUSE scale"): a MUSE spectrum covers ~13 300 of the 53 918 rest pixels. The rows are
sorted by redshift before they are cut into blocks, and each block keeps only the union of its rows' rest windows,
outside which ``V = 0`` and ``X = 0`` make every term exactly zero: the same iterates for a fraction of the work.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import numpy as np
from distributed import Client
from tqdm.auto import tqdm

from dzspec.engines.nmf.train import NMFResult, basis_half_step, basis_terms, coefficient_half_step, run_schedule
from dzspec.io import store as zstore
from dzspec.kernels.restframe import PAPER_GRID, LogGrid, to_log_grid
from dzspec.parallel.core import PerBlock, persist_blocks, progress_enabled, reduce_blocks
from dzspec.schema import IngestWarn

__all__ = ["load_training_block", "select_training_rows", "train_and_save", "train_basis", "training_checkpoint"]

log = logging.getLogger(__name__)


def select_training_rows(store: str | PathLike[str], group: str | None = None, *, z_name: str = "z_true",
                         max_spectra: int | None = None, seed: int = 0) -> tuple[str, np.ndarray]:
    """The spectra group and the sorted rows with a finite ``z_name`` and some data (a random subset of at most
    ``max_spectra`` rows, drawn with ``seed``)."""
    root = zstore.open_root(store)
    group = zstore.resolve_spectra_group(root, group)
    source = root[group]
    if z_name not in source:
        raise ValueError(f"{store}/{group} has no {z_name!r} coordinate to de-redshift the training spectra")
    z = source[z_name][:]
    usable = np.isfinite(z) & (z > -1)
    if "ingest_warn" in source:
        usable &= (source["ingest_warn"][:] & IngestWarn.EMPTY) == 0
    rows = np.flatnonzero(usable)
    if max_spectra is not None and rows.size > max_spectra:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_spectra, replace=False))
    return group, rows


def load_training_block(store: str, group: str, rows: np.ndarray, grid: LogGrid, z_name: str = "z_true",
                        normalise: bool = True) -> dict[str, np.ndarray]:
    """Rows of a spectra group on the rest-frame grid: ``x`` (flux per log lambda, 0 where missing), ``v``
    (inverse variance), ``vx``; with ``normalise`` each spectrum is divided by its weighted RMS so that the data
    are O(1) whatever the flux unit (the reference codes' absolute floors assume that).

    Only the block's rest window ``(lo, hi)`` (the union of its rows' coverage, key ``window``) is kept: ``x`` and
    ``v`` are ``(nrows, hi - lo)``, and are zero outside it anyway; ``covered`` is on the whole grid."""
    source = zstore.open_root(store)[group]
    wavelength = source["wavelength"][:]
    flux = source["flux"].oindex[rows, :]
    ivar = source["ivar"].oindex[rows, :]
    z = source[z_name].oindex[rows]
    x, v = to_log_grid(wavelength, flux, ivar, grid, z)
    columns = np.flatnonzero(v.any(axis=0))
    lo, hi = (int(columns[0]), int(columns[-1]) + 1) if columns.size else (0, 0)
    x, v = x[:, lo:hi], v[:, lo:hi]
    if normalise:
        weight = v.sum(axis=1)
        rms = np.sqrt((v * x * x).sum(axis=1) / np.where(weight > 0, weight, 1.0))  # inverse-variance weighted
        scale = np.where(np.isfinite(rms) & (rms > 0), rms, 1.0)
        x = x / scale[:, None]
        v = v * (scale**2)[:, None]
    covered = np.zeros(grid.size, dtype=bool)
    covered[lo:hi] = (v > 0).any(axis=0)
    return {"x": x, "v": v, "window": (lo, hi), "covered": covered, "min": float(np.min(x)) if x.size else 0.0}


#: Blocks combined per node of the reduction tree: sums over up to this many blocks are added in block order, as a
#: single process would (the MUSE training's 22 blocks: bit-identical to a sequential sum).
SPLIT_EVERY = 64


def _load_block(block: int, start: int, stop: int, store: str, group: str, rows: np.ndarray, grid: LogGrid,
                z_name: str, normalise: bool) -> dict[str, np.ndarray]:
    return load_training_block(store, group, rows[start:stop], grid, z_name, normalise)


def _block_summary(block: int, start: int, stop: int, data: dict[str, np.ndarray]) -> dict[str, Any]:
    return {"covered": data["covered"], "min": data["min"]}


def _merge_summaries(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {"covered": a["covered"] | b["covered"], "min": min(a["min"], b["min"])}


def _with_offset(block: int, start: int, stop: int, data: dict[str, np.ndarray], y0: float) -> dict[str, np.ndarray]:
    return {**data, "vx": data["v"] * (data["x"] + y0)}


def _block_iteration(block: int, start: int, stop: int, data: dict[str, np.ndarray], w: np.ndarray, h: np.ndarray,
                     y0: float | None) -> dict[str, Any]:
    """The block's coefficient half-step and its additive share of the basis update, over its rest window."""
    lo, hi = data["window"]
    w = coefficient_half_step(data["vx"], data["v"], w, h[:, lo:hi], y0)
    numerator, denominator = basis_terms(data["vx"], data["v"], w, h[:, lo:hi], y0)
    return {"w": w, "window": (lo, hi), "numerator": numerator, "denominator": denominator}


def _merge_iterations(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two consecutive blocks' shares: coefficients stacked in row order, basis terms added on their joint window."""
    (alo, ahi), (blo, bhi) = a["window"], b["window"]
    lo, hi = min(alo, blo), max(ahi, bhi)
    merged: dict[str, Any] = {"w": np.vstack([a["w"], b["w"]]), "window": (lo, hi)}
    for name in ("numerator", "denominator"):
        total = np.zeros((a[name].shape[0], hi - lo))
        total[:, alo - lo : ahi - lo] += a[name]
        total[:, blo - lo : bhi - lo] += b[name]
        merged[name] = total
    return merged


def _on_grid(terms: dict[str, Any], name: str, shape: tuple[int, int]) -> np.ndarray:
    lo, hi = terms["window"]
    total = np.zeros(shape)
    total[:, lo:hi] += terms[name]
    return total


def _block_chi2(block: int, start: int, stop: int, data: dict[str, np.ndarray], w: np.ndarray,
                h: np.ndarray) -> tuple[float, int]:
    lo, hi = data["window"]
    resid = data["x"] - w @ h[:, lo:hi]
    return float(np.sum(data["v"] * resid * resid)), int(np.count_nonzero(data["v"]))


def _add_pairs(a: tuple[float, int], b: tuple[float, int]) -> tuple[float, int]:
    return a[0] + b[0], a[1] + b[1]


def training_id(store: str, group: str, rows: np.ndarray, grid: LogGrid, normalise: bool) -> str:
    """SHA-256 naming the training set without materialising it: the input's identity, rows, grid, scaling."""
    root = zstore.open_root(store)
    payload = json.dumps({"input": zstore.input_id(root[group]), "group": group,
                          "rows": hashlib.sha256(np.asarray(rows, np.int64).tobytes()).hexdigest(),
                          "grid": grid.as_attrs(), "normalise": normalise}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def train_basis(
    store: str | PathLike[str],
    client: Client,
    rank: int,
    *,
    group: str | None = None,
    rows: np.ndarray | None = None,
    grid: LogGrid = PAPER_GRID,
    method: Literal["nearly", "shift"] = "nearly",
    schedule: Literal["sequential", "fixed"] = "sequential",
    max_iter: int = 1300,
    tol: float = 1e-3,
    seed: int = 100921,
    block_rows: int = 256,
    normalise: bool = True,
    z_name: str = "z_true",
    checkpoint: str | PathLike[str] | None = None,
    progress: bool | None = None,
) -> tuple[NMFResult, str]:
    """Train a rank-``rank`` basis on the spectra of a store with known redshifts; returns it and its training id.

    Parameters
    ----------
    store, client
        The spectra store and a Dask client.
    rank
        Basis size k.
    group, rows
        Spectra group and training rows (default: :func:`select_training_rows`).
    grid
        Rest-frame grid (default B26's 53 918-pixel grid); stored with the basis by :func:`dzspec.io.bases.save_basis`.
    method, schedule, max_iter, tol, seed
        As :func:`dzspec.engines.nmf.train.train_nmf`.
    block_rows
        Spectra per worker-resident block: memory per block is about ``2 * block_rows * grid.size * 8`` bytes
        (220 MB at the default on the paper grid).
    normalise
        Divide each spectrum by its weighted RMS (see :func:`load_training_block`).
    checkpoint
        A file (``.npz``) written after each completed rank stage of the sequential schedule. When it exists and
        belongs to this training (same rows, grid and settings) the training resumes after its last stage and ends
        exactly as an uninterrupted one would; it is removed once the training is done. Progress (iteration,
        chi2, its relative decrease against ``tol``, time per iteration) is logged every 30 s and at each stage.
    progress
        Show a progress bar (iteration, chi2, time left); None: only on an interactive terminal.
    """
    store = str(Path(store).resolve())
    if rows is None:
        group, rows = select_training_rows(store, group, z_name=z_name)
    else:
        group = zstore.resolve_spectra_group(zstore.open_root(store), group)
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        raise ValueError(f"{store}/{group}: no training spectra with a known {z_name}")
    bounds = zstore.BlockPlan(rows.size, block_rows).blocks
    log.info("training rank %d on %d spectra of %s in %d blocks", rank, rows.size, group, len(bounds))
    # sorted by redshift, a block's rows share most of their rest window; W is kept in this order
    order = np.argsort(zstore.open_root(store)[group][z_name].oindex[rows], kind="stable")
    blocks = persist_blocks(client, _load_block, bounds, args=(store, group, rows[order], grid, z_name, normalise))
    summary = reduce_blocks(client, _block_summary, bounds, args=(blocks,), combine=_merge_summaries,
                            split_every=SPLIT_EVERY, name="training data", progress=False)
    covered = summary["covered"]
    shift = method == "shift"
    y0 = max(0.0, -summary["min"]) if shift else 0.0
    blocks = persist_blocks(client, _with_offset, bounds, args=(blocks, y0))

    def iterate(w: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        h_future = client.scatter(h, broadcast=True, hash=False)
        w_blocks = PerBlock(w[start:stop] for start, stop in bounds)
        terms = reduce_blocks(client, _block_iteration, bounds,
                              args=(blocks, w_blocks, h_future, y0 if shift else None), combine=_merge_iterations,
                              split_every=SPLIT_EVERY, name="training iteration", progress=False)
        w = terms["w"]
        h = basis_half_step(h, _on_grid(terms, "numerator", h.shape), _on_grid(terms, "denominator", h.shape),
                            shift=shift)
        h_future = client.scatter(h, broadcast=True, hash=False)
        w_blocks = PerBlock(w[start:stop] for start, stop in bounds)
        chi2, count = reduce_blocks(client, _block_chi2, bounds, args=(blocks, w_blocks, h_future),
                                    combine=_add_pairs, split_every=SPLIT_EVERY, name="training chi2", progress=False)
        return w, h, chi2 / max(1, count)

    result = NMFResult(np.zeros((0, grid.size)), np.zeros((rows.size, 0)), covered, method=method, seed=seed,
                       offset=y0)
    identity = training_id(store, group, rows, grid, normalise)
    settings = json.dumps({"training": identity, "rank": rank, "method": method, "schedule": schedule,
                           "max_iter": max_iter, "tol": tol, "seed": seed, "block_rows": block_rows}, sort_keys=True)
    saver, resume = (None, None) if checkpoint is None else _checkpointing(Path(checkpoint), settings, result)
    shown = _ProgressLog(iterate, rank, tol, progress=progress)
    try:
        w, h = run_schedule(rows.size, grid.size, rank, shown, result, schedule=schedule, max_iter=max_iter, tol=tol,
                            seed=seed, init=None, checkpoint=saver, resume=resume)
    finally:
        shown.close()
    if checkpoint is not None:
        Path(checkpoint).unlink(missing_ok=True)
    h[:, ~covered] = 0.0
    for snapshot in result.rank_bases:
        snapshot[:, ~covered] = 0.0
    coefficients = np.empty_like(w)
    coefficients[order] = w  # back to the order of ``rows``
    result.basis, result.coefficients = h, coefficients
    return result, identity


class _ProgressLog:
    """``iterate`` that shows where the training is: a progress bar (iteration, rank stage, chi2, its relative
    decrease against ``tol``, time left) and a log line every 30 s and when a rank's stage ends.

    Time left is the stages still to run times the mean duration of the finished ones (unknown during the first).
    """

    def __init__(self, iterate: Any, rank: int, tol: float, every_s: float = 30.0,
                 progress: bool | None = None) -> None:
        self.iterate, self.rank, self.tol, self.every_s = iterate, rank, tol, every_s
        self.stage_rank, self.count, self.previous = 0, 0, np.inf
        self.started = self.last = time.monotonic()
        self.stage_seconds: list[float] = []
        self.bar = tqdm(desc=f"train rank {rank}", unit="it", disable=not progress_enabled(progress))

    def time_left(self, now: float) -> str:
        if not self.stage_seconds:
            return "?"
        mean = float(np.mean(self.stage_seconds))
        left = max(0.0, mean - (now - self.started)) + mean * max(0, self.rank - self.stage_rank)
        return f"{left / 60:.1f} min"

    def __call__(self, w: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        if h.shape[0] != self.stage_rank or self.count == 0:
            self.stage_rank, self.count, self.previous = h.shape[0], 0, np.inf
            self.started = time.monotonic()
        w, h, chi2 = self.iterate(w, h)
        self.count += 1
        now = time.monotonic()
        decrease = (self.previous - chi2) / self.previous if np.isfinite(self.previous) and self.previous > 0 else 1.0
        self.previous = chi2
        self.bar.update(1)
        self.bar.set_postfix_str(f"stage {self.stage_rank}/{self.rank} iteration {self.count} chi2/pixel {chi2:.5g} "
                                 f"decrease {decrease:.1e} (stops at {self.tol:.0e}) left ~{self.time_left(now)}")
        if now - self.last >= self.every_s or decrease <= self.tol:
            per = (now - self.started) / self.count
            log.info("training rank %d/%d: iteration %d, chi2/pixel %.6g, relative decrease %.2e (stops at %.0e), "
                     "%.2f s per iteration, about %s left", self.stage_rank, self.rank, self.count, chi2, decrease,
                     self.tol, per, self.time_left(now))
            self.last = now
        if decrease <= self.tol:
            self.stage_seconds.append(now - self.started)
            self.count = 0  # the stage ends here; the next call starts the next one (or the final re-run)
        return w, h, chi2

    def close(self) -> None:
        self.bar.close()


def _checkpointing(path: Path, settings: str, result: NMFResult
                   ) -> tuple[Any, tuple[int, np.ndarray, np.ndarray] | None]:
    """The checkpoint writer of a training and, when ``path`` holds one of the same training, what to resume."""
    resume = None
    if path.exists():
        with np.load(path) as saved:
            if str(saved["settings"]) == settings:
                stages = int(saved["stages"])
                result.chi2_history.extend(saved["chi2_history"].tolist())
                result.iterations.extend(saved["iterations"].tolist())
                bounds = np.cumsum(np.arange(stages + 1))  # stage r's basis has r rows
                result.rank_bases.extend(saved["rank_bases"][bounds[r - 1] : bounds[r]].copy()
                                         for r in range(1, stages + 1))
                resume = (stages, saved["w"].copy(), saved["h"].copy())
                log.info("training: resuming from %s after rank stage %d (%d iterations done)", path, stages,
                         len(result.chi2_history))
            else:
                log.warning("training: %s belongs to another training; starting afresh", path)

    def save(stages: int, w: np.ndarray, h: np.ndarray) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial.npz")
        np.savez(partial, settings=np.array(settings), stages=np.array(stages), w=w, h=h,
                 chi2_history=np.asarray(result.chi2_history), iterations=np.asarray(result.iterations),
                 rank_bases=np.concatenate(result.rank_bases))
        partial.replace(path)  # a kill while writing leaves the previous checkpoint whole

    return save, resume



def train_and_save(store: str | PathLike[str], out: str | PathLike[str], name: str, client: Client, rank: int, *,
                   group: str | None = None, grid: LogGrid = PAPER_GRID, max_spectra: int | None = None,
                   seed: int = 100921, overwrite: bool = False, attrs: dict[str, Any] | None = None,
                   **options: Any) -> tuple[str, NMFResult, int]:
    """What ``dzspec train`` does: pick the training rows (:func:`select_training_rows`), train
    (:func:`train_basis`, ``options`` as its keywords) and save ``out``/bases/``name`` with the training store's
    provenance and ``attrs`` (e.g. ``scan_z_range``, the trial range zfind defaults to with this basis); returns
    the group path, the result and the number of training spectra.

    The training checkpoints after each rank stage to ``<out>.<name>-training.npz`` beside the output store: the
    same call after a kill resumes from there (:func:`training_checkpoint`).
    """
    from dzspec.io.bases import save_basis

    group, rows = select_training_rows(store, group, max_spectra=max_spectra, seed=seed)
    options.setdefault("checkpoint", training_checkpoint(out, name))
    result, training = train_basis(store, client, rank, group=group, rows=rows, grid=grid, seed=seed, **options)
    path = save_basis(out, name, result, grid, training_sha256=training, overwrite=overwrite,
                      extra_attrs={"training_store": str(store), "training_group": group,
                                   "training_spectra": int(rows.size), **(attrs or {})})
    return path, result, int(rows.size)


def training_checkpoint(out: str | PathLike[str], name: str) -> Path:
    """Where ``dzspec train --out OUT --name NAME`` keeps its checkpoint: ``OUT.NAME-training.npz`` beside ``OUT``.

    Examples
    --------
    >>> training_checkpoint("runs/bases.zarr", "nmf").name
    'bases.zarr.nmf-training.npz'
    """
    out = Path(out)
    return out.with_name(f"{out.name}.{name}-training.npz")
