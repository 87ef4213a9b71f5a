"""K-fold cross-validated choice of the NMF basis rank (B26 §3.5; METHODS §1.2 "Rank selection").

For each fold, a basis is trained on the other folds and every held-out spectrum is scanned; the good fraction and
the MAE with 5xMAD rejection (METHODS §3) on the held-out fold score each rank. Sequential training to the largest
rank passes through every smaller rank (:attr:`~dzspec.engines.nmf.train.NMFResult.rank_bases`), so each fold needs
one training, not one per rank; the rank-r basis is the state at the end of rank r's stage (the full-rank re-run
of the schedule is not applied to the snapshots). Trainings run one after the other, each spread over the cluster;
the scans of a fold's held-out spectra (one block reduction of :mod:`dzspec.parallel.core` per rank) start as soon
as its training ends and overlap the next training.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from distributed import Client

from dzspec.engines.cache import process_cache
from dzspec.engines.nmf.grams import PreparedBasis, lag_range, prepare_basis
from dzspec.engines.nmf.zfind import nmf_zfind
from dzspec.io import store as zstore
from dzspec.kernels.metrics import good_fraction, mae_with_rejection
from dzspec.kernels.restframe import PAPER_GRID, LogGrid, observed_window
from dzspec.kernels.trials import trial_redshifts
from dzspec.parallel.core import reduce_blocks
from dzspec.parallel.train import select_training_rows, train_basis

__all__ = ["choose_rank", "cross_validate_ranks", "fold_assignment"]

log = logging.getLogger(__name__)

def fold_assignment(n: int, folds: int, seed: int = 0) -> np.ndarray:
    """Fold index (0..folds-1) of each of ``n`` rows: a seeded permutation cut into near-equal folds.

    Examples
    --------
    >>> np.bincount(fold_assignment(11, 5)).tolist()
    [3, 2, 2, 2, 2]
    """
    if not 2 <= folds <= n:
        raise ValueError(f"need 2 <= folds <= number of spectra, got {folds} folds for {n} spectra")
    fold = np.empty(n, dtype=np.int64)
    fold[np.random.default_rng(seed).permutation(n)] = np.arange(n) % folds
    return fold


class _Named:
    """A basis keyed by its token (the SHA-256 of its values), so that the process cache can hold it without hashing
    the array at every task. Worker processes outlive one selection: a token of fold and rank alone would hand a
    later selection (another store, another grid) the basis of an earlier one."""

    def __init__(self, token: str, basis: np.ndarray):
        self.token, self.basis = token, basis

    def __hash__(self) -> int:
        return hash(self.token)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Named) and other.token == self.token


def _concatenate(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.concatenate([a, b])


@process_cache(maxsize=2)
def _prepared(named: _Named, n_obs: int, lags: tuple[int, int]) -> PreparedBasis:
    return prepare_basis(named.basis, n_obs, lags=lags)


def _scan_rows(block: int, start: int, stop: int, store: str, group: str, rows: np.ndarray, basis: np.ndarray,
               token: str, grid: LogGrid, scan: dict[str, Any]) -> np.ndarray:
    """Best-trial redshifts of ``rows[start:stop]`` of a spectra group with one basis (a worker keeps the last two
    prepared); a partial of a concatenating block reduction."""
    rows = rows[start:stop]
    source = zstore.open_root(store)[group]
    wavelength = source["wavelength"][:]
    j0, n_obs = observed_window(wavelength, grid)
    shifts = grid.shift_of(trial_redshifts(scan["z_min"], scan["z_max"], scan["dz"]))
    out = nmf_zfind(wavelength, source["flux"].oindex[rows, :], source["ivar"].oindex[rows, :],
                    prepared=_prepared(_Named(token, basis), n_obs, lag_range(j0, shifts)), grid=grid, shifts=shifts,
                    weighting=scan["weighting"])
    return out["z"]


def choose_rank(gf_mean: np.ndarray, gf_std: np.ndarray, ranks: Sequence[int], folds: int) -> int:
    """The smallest rank whose mean GF is within one standard error (std/sqrt(folds)) of the best mean GF.

    B26 saw GF rise up to k = 10 and plateau while MAE grows with rank; the one-standard-error rule picks the start
    of the plateau rather than a noise-level maximum.

    Examples
    --------
    >>> choose_rank(np.array([0.80, 0.90, 0.905, 0.91]), np.array([0.02, 0.02, 0.02, 0.02]), [6, 7, 8, 9], 4)
    7
    """
    gf_mean = np.asarray(gf_mean, dtype=np.float64)
    best = int(np.nanargmax(gf_mean))
    threshold = gf_mean[best] - np.asarray(gf_std, dtype=np.float64)[best] / np.sqrt(folds)
    return int(list(ranks)[int(np.flatnonzero(gf_mean >= threshold)[0])])


def cross_validate_ranks(
    store: str | PathLike[str],
    client: Client,
    *,
    ranks: Sequence[int] = tuple(range(6, 14)),
    folds: int = 5,
    group: str | None = None,
    rows: np.ndarray | None = None,
    seed: int = 0,
    grid: LogGrid = PAPER_GRID,
    z_name: str = "z_true",
    train: dict[str, Any] | None = None,
    z_min: float = 0.0,
    z_max: float = 6.7,
    dz: float = 0.0005,
    weighting: str = "weighted",
    scan_rows: int = 64,
    on_fold: Callable[[int, Any], None] | None = None,
) -> xr.Dataset:
    """Cross-validated GF and MAE of every rank in ``ranks`` (B26 §3.5) on the spectra of a store with known z.

    Parameters
    ----------
    store, client
        Spectra store and Dask client.
    ranks, folds, seed
        Ranks to compare (B26: 6-13), number of folds (B26: 5) and the seed of the fold assignment.
    group, rows, z_name
        Spectra group and the rows to use (default :func:`~dzspec.parallel.train.select_training_rows`: finite
        ``z_name``, some data).
    grid, train
        Rest grid and keyword arguments of :func:`~dzspec.parallel.train.train_basis` (``max_iter``, ``tol``,
        ``method``, ``seed``, ``block_rows``).
    z_min, z_max, dz, weighting
        Trial grid and NNLS weighting of the held-out scans.
    scan_rows
        Held-out spectra per scan task.
    on_fold
        Called as ``on_fold(fold, nmf_result)`` after each training (progress, saving bases).

    Returns
    -------
    xarray.Dataset
        ``gf``, ``mae``, ``n_good``, ``n_test``, ``n_kept`` over ``(rank, fold)``; ``gf_mean``, ``gf_std``,
        ``mae_mean``, ``mae_std`` (std with ddof=1) over ``rank``; ``z_pred`` over ``(rank, spectrum)`` and
        ``z_true``, ``fold``, ``row`` over ``spectrum``; attrs ``chosen_rank`` (:func:`choose_rank`) and the settings.
    """
    store = str(Path(store).resolve())
    if rows is None:
        group, rows = select_training_rows(store, group, z_name=z_name)
    else:
        group = zstore.resolve_spectra_group(zstore.open_root(store), group)
    rows = np.asarray(rows, dtype=np.int64)
    ranks = [int(r) for r in ranks]
    if min(ranks) < 1:
        raise ValueError(f"ranks must be >= 1, got {ranks}")
    fold = fold_assignment(rows.size, folds, seed)
    z_true = zstore.open_root(store)[group][z_name].oindex[rows].astype(np.float64)
    scan = {"z_min": z_min, "z_max": z_max, "dz": dz, "weighting": weighting}
    z_pred = np.full((len(ranks), rows.size), np.nan)
    # Each (fold, rank) scan is a block reduction of the core (z concatenated in row order), run by a background
    # thread so that a fold's scans overlap the next fold's training on the same cluster.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dzspec-cv-scans") as scans:
        pending: list[tuple[int, np.ndarray, Future[np.ndarray]]] = []
        for f in range(folds):
            result, _ = train_basis(store, client, max(ranks), group=group, rows=rows[fold != f], grid=grid,
                                    z_name=z_name, **(train or {}))
            log.info("fold %d/%d trained: %s iterations", f + 1, folds, result.iterations)
            if on_fold is not None:
                on_fold(f, result)
            held = np.flatnonzero(fold == f)
            bounds = zstore.BlockPlan(held.size, scan_rows).blocks
            for rank in ranks:
                token = hashlib.sha256(np.ascontiguousarray(result.rank_bases[rank - 1]).tobytes()).hexdigest()
                basis = client.scatter(result.rank_bases[rank - 1], broadcast=True, hash=False)
                pending.append((rank, held, scans.submit(
                    reduce_blocks, client, _scan_rows, bounds, args=(store, group, rows[held], basis, token, grid,
                                                                     scan),
                    combine=_concatenate, split_every=64, name=f"fold {f + 1} rank {rank}", progress=False)))
        for rank, held, job in pending:
            z_pred[ranks.index(rank), held] = job.result()
    shape = (len(ranks), folds)
    table = {name: np.full(shape, np.nan) for name in ("gf", "mae")}
    counts = {name: np.zeros(shape, dtype=np.int64) for name in ("n_good", "n_test", "n_kept")}
    for i in range(len(ranks)):
        for f in range(folds):
            held = fold == f
            table["gf"][i, f], counts["n_good"][i, f], counts["n_test"][i, f] = good_fraction(z_pred[i, held],
                                                                                               z_true[held])
            table["mae"][i, f], counts["n_kept"][i, f] = mae_with_rejection(z_pred[i, held], z_true[held])
    ds = xr.Dataset(
        {**{k: (("rank", "fold"), v) for k, v in {**table, **counts}.items()},
         "z_pred": (("rank", "spectrum"), z_pred), "z_true": ("spectrum", z_true), "fold": ("spectrum", fold),
         "row": ("spectrum", rows)},
        coords={"rank": ranks},
    )
    ds["gf_mean"], ds["gf_std"] = ds.gf.mean("fold"), ds.gf.std("fold", ddof=1)
    ds["mae_mean"], ds["mae_std"] = ds.mae.mean("fold"), ds.mae.std("fold", ddof=1)
    ds.attrs.update({
        "chosen_rank": choose_rank(ds.gf_mean.values, ds.gf_std.values, ranks, folds),
        "rule": "smallest rank with mean GF >= best mean GF - std/sqrt(folds) of the best rank",
        "folds": folds, "fold_seed": seed, "store": store, "group": group, "grid": str(grid.as_attrs()),
        "train": str(train or {}), "trial_grid": f"{z_min}..{z_max} step {dz}", "weighting": weighting,
        "gf_definition": "|z_pred - z_true| < 0.005 (1 + z_true)",
        "mae_definition": "mean |dz|/(1+z) after rejecting values > 5 MAD (B26 Eq. 11)",
    })
    return ds
