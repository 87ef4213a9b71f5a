"""Exposure-time convergence of redshifts (U25 §4.3, Fig. 9; METHODS §2 "Exposure-time convergence"), as kernels.

For a target with individual exposures, U25 draw ``n`` exposures with replacement, coadd them per wavelength with
inverse-variance weights (``f = Σ iₑ fₑ / Σ iₑ``, ``ivar = Σ iₑ``), rescan, and repeat for 10 random sets per
``n = 1 … 15``. Per ``n``: ``sigma_z``, the spread of the redshifts of the sets, and the mean total exposure time
of the sets. A (target, n) pair is *converged* if ``sigma_z < 0.001``; Fig. 9 is the fraction converged per bin of
exposure time, among targets whose line flux is at least a threshold (cumulative in flux).

* :func:`subset_draws`: the draws of one target and ``n``, reproducible from ``(seed, key, n)`` alone, so results
  do not depend on how targets are cut into blocks, nor on which other ``n`` are run.
* :func:`subset_counts`, :func:`coadd_subsets`: a draw as per-exposure multiplicities, and the coadd as one matrix
  product with them (a repeated exposure counts twice, as a literal reading of U25's bootstrap).
* :func:`redshift_spread`: ``sigma_z``. Default the sample standard deviation (``ddof=1``), U25's estimator, on
  purpose not a robust one: convergence is about *catastrophic* disagreement between subsets (a sky line or a
  noise peak winning in 2 of 10 sets), which IQR/1.349 or the MAD ignore by design, calling such a target
  converged. ``"iqr"`` is offered for the Gaussian part of the scatter alone.
* :func:`target_convergence`: all of it for one target, with any redshift scan passed in as a callable.
* :func:`converged_counts` (summable over blocks of targets) and :func:`converged_fraction_grid`: the Fig. 9
  table.

No I/O, no dask: :mod:`dzspec.parallel.exposure_convergence` reads blocks of targets and calls these.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = [
    "SIGMA_Z_CONVERGED",
    "ConvergenceWarn",
    "TargetConvergence",
    "coadd_subsets",
    "converged_counts",
    "converged_fraction_grid",
    "redshift_spread",
    "subset_counts",
    "subset_draws",
    "target_convergence",
]

#: U25's convergence threshold on sigma_z.
SIGMA_Z_CONVERGED = 1e-3

Spread = Literal["std", "iqr"]


class ConvergenceWarn(enum.IntFlag):
    """Per-target flags of the convergence table."""

    NODATA = 1 << 0  #: no exposure of the target was found: every output NaN
    FEW_EXPOSURES = 1 << 1  #: fewer exposures than required: every output NaN
    SCAN_FAILED = 1 << 2  #: some subset coadd gave no redshift (sigma_z over the others; NaN if fewer than 2 remain)
    NO_LINE_FLUX = 1 << 3  #: the line flux is unknown: the target is left out of the Fig. 9 grid


def subset_draws(key: int, n: int, n_exposures: int, n_draws: int = 10, *, seed: int = 0) -> np.ndarray:
    """``n_draws`` sets of ``n`` exposure indices in ``[0, n_exposures)``, drawn with replacement.

    The generator is seeded by ``(seed, key, n)`` only: ``key`` identifies the target (its row in the output
    table), so a target's draws are the same whatever block it is computed in and whatever other ``n`` are run.

    Examples
    --------
    >>> d = subset_draws(7, 3, 12, 4, seed=1)
    >>> d.shape, bool(d.min() >= 0 and d.max() < 12)
    ((4, 3), True)
    >>> bool((subset_draws(7, 3, 12, 4, seed=1) == d).all()), bool((subset_draws(8, 3, 12, 4, seed=1) == d).all())
    (True, False)
    """
    if n < 1 or n_exposures < 1 or n_draws < 1:
        raise ValueError(f"need n, n_exposures, n_draws >= 1, got {n}, {n_exposures}, {n_draws}")
    if min(key, seed) < 0:
        raise ValueError(f"key and seed must be >= 0, got {key}, {seed}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(key), int(n)]))
    return rng.integers(0, n_exposures, size=(n_draws, n))


def subset_counts(draws: np.ndarray, n_exposures: int) -> np.ndarray:
    """How many times each exposure is in each draw: ``(n_draws, n_exposures)`` int64 from ``(n_draws, n)``.

    Examples
    --------
    >>> subset_counts(np.array([[0, 0, 2], [1, 2, 3]]), 4)
    array([[2, 0, 1, 0],
           [0, 1, 1, 1]])
    """
    draws = np.asarray(draws)
    counts = np.zeros((draws.shape[0], n_exposures), np.int64)
    np.add.at(counts, (np.arange(draws.shape[0])[:, None], draws), 1)
    return counts


def coadd_subsets(flux: np.ndarray, ivar: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse-variance weighted coadds of subsets of exposures, per wavelength.

    Parameters
    ----------
    flux, ivar
        ``(n_exposures, nwave)``; pixels with ``ivar <= 0`` or non-finite values carry no weight.
    counts
        ``(n_sets, n_exposures)`` multiplicities (:func:`subset_counts`; all ones = the full coadd).

    Returns
    -------
    ``(flux, ivar)``, float64 ``(n_sets, nwave)``: ``Σ cₑ iₑ fₑ / Σ cₑ iₑ`` and ``Σ cₑ iₑ``; flux 0 where ivar is 0.

    Examples
    --------
    >>> f = np.array([[1.0, 2.0], [3.0, np.nan]])
    >>> i = np.array([[1.0, 1.0], [3.0, 0.0]])
    >>> cf, ci = coadd_subsets(f, i, np.array([[1, 1], [0, 2]]))
    >>> cf.tolist(), ci.tolist()
    ([[2.5, 2.0], [3.0, 0.0]], [[4.0, 1.0], [6.0, 0.0]])
    """
    flux = np.asarray(flux, np.float64)
    ivar = np.asarray(ivar, np.float64)
    good = (ivar > 0) & np.isfinite(ivar) & np.isfinite(flux)
    weight = np.where(good, ivar, 0.0)
    counts = np.asarray(counts, np.float64)
    total = counts @ weight
    weighted = counts @ np.where(good, weight * np.where(good, flux, 0.0), 0.0)
    coadd = np.divide(weighted, total, out=np.zeros_like(total), where=total > 0)
    return coadd, total


def redshift_spread(z: np.ndarray, estimator: Spread = "std", *, axis: int = -1) -> np.ndarray:
    """sigma_z of redshifts along ``axis`` over the finite values; NaN where fewer than 2 are finite.

    ``"std"``: sample standard deviation (``ddof=1``; U25). ``"iqr"``: interquartile range / 1.349 (robust; ignores
    a minority of catastrophic draws, see the module notes).

    Examples
    --------
    >>> z = np.array([[3.0, 3.0, 3.0, 3.5], [2.0, 2.001, np.nan, np.nan], [1.0, np.nan, np.nan, np.nan]])
    >>> np.round(redshift_spread(z), 4).tolist()
    [0.25, 0.0007, nan]
    >>> redshift_spread(z, "iqr")[0] < 0.1
    np.True_
    """
    z = np.moveaxis(np.asarray(z, np.float64), axis, -1)
    finite = np.isfinite(z)
    count = finite.sum(axis=-1)
    out = np.full(z.shape[:-1], np.nan)
    enough = count >= 2
    if not enough.any():
        return out
    if estimator == "std":
        # about the smallest value first: identical redshifts then give exactly 0, not rounding noise
        d = z - np.min(np.where(finite, z, np.inf), axis=-1, keepdims=True)
        mean = np.where(finite, d, 0.0).sum(axis=-1) / np.maximum(count, 1)
        squares = np.where(finite, (d - mean[..., None]) ** 2, 0.0).sum(axis=-1)
        out[enough] = np.sqrt(squares[enough] / (count[enough] - 1))
    elif estimator == "iqr":
        q75, q25 = np.nanpercentile(np.where(enough[..., None], z, 0.0), [75, 25], axis=-1)
        out[enough] = (q75 - q25)[enough] / 1.349
    else:
        raise ValueError(f"estimator must be 'std' or 'iqr', not {estimator!r}")
    return out


@dataclass(frozen=True)
class TargetConvergence:
    """The convergence of one target (arrays over ``n_values``)."""

    z: np.ndarray  #: ``(n, n_draws)`` redshift of each subset coadd
    exptime: np.ndarray  #: ``(n, n_draws)`` total exposure time of each subset (s)
    sigma_z: np.ndarray  #: ``(n,)`` spread of ``z`` over the draws (:func:`redshift_spread`)
    exptime_mean: np.ndarray  #: ``(n,)`` mean total exposure time over the draws (s)
    n_valid: np.ndarray  #: ``(n,)`` draws with a finite redshift
    z_all: float  #: redshift of the coadd of every exposure once
    warn: int  #: :class:`ConvergenceWarn` bits


def target_convergence(flux: np.ndarray, ivar: np.ndarray, exptime: np.ndarray,
                       scan: Callable[[np.ndarray, np.ndarray], np.ndarray], *, key: int,
                       n_values: Sequence[int], n_draws: int = 10, seed: int = 0,
                       estimator: Spread = "std") -> TargetConvergence:
    """Bootstrap subsets of one target's exposures, coadd, scan, and measure sigma_z and the exposure time per ``n``.

    Parameters
    ----------
    flux, ivar
        ``(n_exposures, nwave)`` exposures on their native grid.
    exptime
        ``(n_exposures,)`` exposure times (s).
    scan
        Redshift of each row of a block of coadds: ``scan(flux, ivar) -> z`` (NaN where it fails). All the subset
        coadds of the target and the full coadd go to it in one call.
    key, seed
        Seed the draws (:func:`subset_draws`); ``key`` is the target's row.
    n_values
        Subset sizes (U25: 1 … 15).
    n_draws
        Sets per ``n`` (U25: 10).
    estimator
        sigma_z estimator (:func:`redshift_spread`).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> flux, ivar = rng.normal(size=(6, 50)), np.full((6, 50), 4.0)
    >>> flux[:, 20] += 3.0  # a line at pixel 20 in every exposure
    >>> peak = lambda f, i: np.argmax(f * np.sqrt(i), axis=1) / 1000  # a toy scan: z = pixel of the peak / 1000
    >>> r = target_convergence(flux, ivar, np.full(6, 900.0), peak, key=0, n_values=[1, 6], n_draws=5)
    >>> r.exptime_mean.tolist(), float(r.sigma_z[1]), r.z_all
    ([900.0, 5400.0], 0.0, 0.02)
    """
    flux = np.asarray(flux)
    m = flux.shape[0]
    n_values = [int(n) for n in n_values]
    exptime = np.asarray(exptime, np.float64)
    if m < 1 or exptime.shape != (m,):
        raise ValueError(f"need >= 1 exposure and one exptime each, got {m} exposures, exptime {exptime.shape}")
    counts = np.concatenate([subset_counts(subset_draws(key, n, m, n_draws, seed=seed), m) for n in n_values]
                            + [np.ones((1, m), np.int64)])
    z = np.asarray(scan(*coadd_subsets(flux, ivar, counts)), np.float64)
    if z.shape != (counts.shape[0],):
        raise ValueError(f"scan returned shape {z.shape} for {counts.shape[0]} coadds")
    z_sets = z[:-1].reshape(len(n_values), n_draws)
    times = (counts[:-1] @ exptime).reshape(len(n_values), n_draws)
    n_valid = np.isfinite(z_sets).sum(axis=1)
    warn = ConvergenceWarn(0) if n_valid.min(initial=n_draws) == n_draws and np.isfinite(z[-1]) else (
        ConvergenceWarn.SCAN_FAILED)
    return TargetConvergence(z_sets, times, redshift_spread(z_sets, estimator), times.mean(axis=1), n_valid,
                             float(z[-1]), int(warn))


def converged_counts(sigma_z: np.ndarray, exptime: np.ndarray, line_flux: np.ndarray,
                     exptime_edges: Sequence[float], flux_thresholds: Sequence[float], *,
                     tolerance: float = SIGMA_Z_CONVERGED) -> tuple[np.ndarray, np.ndarray]:
    """The counts behind the Fig. 9 table, summable over blocks of targets: per line-flux threshold and
    exposure-time bin, the number of (target, n) points with ``sigma_z < tolerance`` and the number of points, among
    those with mean exposure time in the bin and line flux ``>= threshold``.

    Parameters
    ----------
    sigma_z, exptime
        ``(n_targets, n)`` sigma_z and mean total exposure time of each target and subset size; points with a NaN
        in either are left out.
    line_flux
        ``(n_targets,)``; NaN leaves the target out.
    exptime_edges
        Increasing bin edges (s); a bin is ``[lo, hi)``, points outside every bin are left out.
    flux_thresholds
        Lower flux limits, one row each.

    Returns
    -------
    ``(converged, count)``, int64 ``(len(flux_thresholds), len(exptime_edges) - 1)``.

    Examples
    --------
    >>> sigma = np.array([[0.1, 0.0005], [0.01, 0.002]])
    >>> time = np.array([[1000.0, 3000.0], [1000.0, 3000.0]])
    >>> converged, count = converged_counts(sigma, time, np.array([5.0, 1.0]), [0, 2000, 4000], [0.0, 2.0])
    >>> converged.tolist(), count.tolist()
    ([[0, 1], [0, 1]], [[2, 2], [1, 1]])
    """
    sigma_z = np.asarray(sigma_z, np.float64)
    exptime = np.asarray(exptime, np.float64)
    line_flux = np.asarray(line_flux, np.float64)
    edges = np.asarray(exptime_edges, np.float64)
    if sigma_z.shape != exptime.shape or sigma_z.shape[:1] != line_flux.shape:
        raise ValueError(f"sigma_z {sigma_z.shape}, exptime {exptime.shape} and line_flux {line_flux.shape} differ")
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError("exptime_edges must be at least 2 increasing values")
    thresholds = np.atleast_1d(np.asarray(flux_thresholds, np.float64))
    use = np.isfinite(sigma_z) & np.isfinite(exptime) & np.isfinite(line_flux)[:, None]
    # bin index per point; outside [edges[0], edges[-1]) is dropped
    bins = np.searchsorted(edges, np.where(np.isfinite(exptime), exptime, -np.inf), side="right") - 1
    nbins = edges.size - 1
    use &= (bins >= 0) & (bins < nbins)
    bright = line_flux[None, :] >= thresholds[:, None]  # (threshold, target)
    good = sigma_z < tolerance
    count = np.zeros((thresholds.size, nbins), np.int64)
    converged = np.zeros((thresholds.size, nbins), np.int64)
    for t in range(thresholds.size):
        keep = use & bright[t][:, None]
        count[t] = np.bincount(bins[keep], minlength=nbins)
        converged[t] = np.bincount(bins[keep & good], minlength=nbins)
    return converged, count


def converged_fraction_grid(sigma_z: np.ndarray, exptime: np.ndarray, line_flux: np.ndarray,
                            exptime_edges: Sequence[float], flux_thresholds: Sequence[float], *,
                            tolerance: float = SIGMA_Z_CONVERGED) -> tuple[np.ndarray, np.ndarray]:
    """The Fig. 9 table: :func:`converged_counts` as ``(fraction, count)``, the fraction NaN where the count is 0.

    Examples
    --------
    >>> sigma = np.array([[0.1, 0.0005], [0.01, 0.002]])
    >>> time = np.array([[1000.0, 3000.0], [1000.0, 3000.0]])
    >>> fraction, count = converged_fraction_grid(sigma, time, np.array([5.0, 1.0]), [0, 2000, 4000], [0.0, 2.0])
    >>> fraction.tolist(), count.tolist()
    ([[0.0, 0.5], [0.0, 1.0]], [[2, 2], [1, 1]])
    """
    converged, count = converged_counts(sigma_z, exptime, line_flux, exptime_edges, flux_thresholds,
                                        tolerance=tolerance)
    return np.divide(converged, count, out=np.full(count.shape, np.nan), where=count > 0), count
