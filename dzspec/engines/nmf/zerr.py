"""Calibrating ZERR: the width of the chi2 parabola at the refined minimum, scaled so that pulls have unit width.

The raw width ``sigma`` of the chi-square parabola (``Δχ² = 1``) is the redshift error only if the noise model is
exact and the parabola is the curve's true shape. Neither holds: the variances are calibrated, not perfect, and the
3-point parabola on integer pixels misplaces the vertex by a fraction of a pixel whatever the S/N, which dominates
at high S/N. And what the redshift means differs with the features that set it: below z ~ 1.5 the optical lines
and breaks, in the redshift desert the rest-UV absorption lines (velocity offsets of the ISM), above z ~ 2.9 the
Lyman-alpha line (its radiative-transfer offset). :func:`fit_zerr_calibration` therefore fits, in each such range of
the measured redshift, ``zerr = sqrt((scale sigma)^2 + (floor (1 + z))^2)`` on right redshifts of a simulated set,
choosing ``scale`` and ``floor`` so that the robust width of the pulls ``(z - z_true) / zerr`` (IQR / 1.349) is as
close to 1 as possible in every S/N bin at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.optimize

from dzspec.kernels.metrics import robust_sigma

__all__ = ["ZerrCalibration", "apply_zerr_calibration", "fit_zerr_calibration", "pull_widths"]



def apply_zerr_calibration(sigma: np.ndarray, z: np.ndarray, scale: float | Sequence[float],
                           floor: float | Sequence[float], z_edges: Sequence[float] = ()) -> np.ndarray:
    """``sqrt((scale sigma)^2 + (floor (1 + z))^2)``: what :func:`dzspec.engines.nmf.zfind.nmf_zfind` reports as
    zerr, with one ``scale`` and ``floor`` per range of ``z`` between ``z_edges``.

    Examples
    --------
    >>> float(apply_zerr_calibration(np.array([3e-4]), np.array([1.0]), 1.0, 2e-4)[0])
    0.0005
    >>> apply_zerr_calibration(np.array([1e-4, 1e-4]), np.array([1.0, 3.0]), [1.0, 2.0], [0.0, 0.0], [1.5]).tolist()
    [0.0001, 0.0002]
    """
    z = np.asarray(z, np.float64)
    regime = np.searchsorted(np.asarray(z_edges, np.float64), z, side="right")
    scale = np.broadcast_to(np.asarray(scale, np.float64), (len(z_edges) + 1,))[regime]
    floor = np.broadcast_to(np.asarray(floor, np.float64), (len(z_edges) + 1,))[regime]
    return np.hypot(scale * np.asarray(sigma, np.float64), floor * (1.0 + z))


def pull_widths(z: np.ndarray, z_true: np.ndarray, zerr: np.ndarray, bin_index: np.ndarray, nbins: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Robust width (IQR / 1.349) of ``(z - z_true) / zerr`` in each bin, and the count per bin (NaN width below 2).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> zerr = np.full(4000, 1e-4)
    >>> widths, counts = pull_widths(rng.normal(0, 2e-4, 4000), np.zeros(4000), zerr, np.arange(4000) % 2, 2)
    >>> bool(np.allclose(widths, 2.0, atol=0.15)), counts.tolist()
    (True, [2000, 2000])
    """
    pulls = (np.asarray(z, np.float64) - np.asarray(z_true, np.float64)) / np.asarray(zerr, np.float64)
    widths, counts = np.full(nbins, np.nan), np.zeros(nbins, np.int64)
    for b in range(nbins):
        values = pulls[(bin_index == b) & np.isfinite(pulls)]
        counts[b] = values.size
        if values.size >= 2:
            widths[b] = robust_sigma(values)
    return widths, counts


@dataclass(frozen=True)
class ZerrCalibration:
    """A fitted calibration: in each range of z between ``z_edges``, ``zerr = sqrt((scale sigma)^2 + (floor
    (1 + z))^2)``; with the pull widths per S/N bin (over all z) before (raw ``sigma``) and after, and the spectra per
    bin."""

    scale: tuple[float, ...]
    floor: tuple[float, ...]
    z_edges: tuple[float, ...]
    edges: tuple[float, ...]
    raw_widths: tuple[float, ...]
    widths: tuple[float, ...]
    counts: tuple[int, ...]

    def as_attrs(self) -> dict[str, object]:
        """The form stored with a basis (``zerr_calibration``) and read by ``zfind``."""
        return {"zerr_scale": list(self.scale), "zerr_floor": list(self.floor), "zerr_z_edges": list(self.z_edges),
                "snr_edges": list(self.edges), "raw_pull_widths": list(self.raw_widths),
                "pull_widths": list(self.widths), "counts": list(self.counts)}


def _fit_one(z: np.ndarray, z_true: np.ndarray, sigma: np.ndarray, bins: np.ndarray, nbins: int,
             min_count: int) -> tuple[float, float]:
    """``(scale, floor)`` minimising the largest ``|log width|`` over the S/N bins of ``min_count`` or more."""
    _, counts = pull_widths(z, z_true, sigma, bins, nbins)
    used = counts >= min_count
    if not used.any():  # too few to see S/N bins: one bin
        bins, nbins, used = np.zeros_like(bins), 1, np.array([True])

    def cost(log_scale: float, floor: float) -> float:
        widths, _ = pull_widths(z, z_true, apply_zerr_calibration(sigma, z, np.exp(log_scale), floor), bins, nbins)
        return float(np.max(np.abs(np.log(widths[used]))))

    def best_scale(floor: float) -> tuple[float, float]:
        # at a fixed floor every bin's width falls as the scale grows: one bounded 1-d search
        fit = scipy.optimize.minimize_scalar(cost, bounds=(np.log(0.05), np.log(50.0)), args=(floor,),
                                             method="bounded", options={"xatol": 1e-3})
        return float(fit.fun), float(np.exp(fit.x))

    error = np.abs(z - z_true) / (1.0 + z_true)
    grid = np.geomspace(1e-3, 10.0, 41) * np.median(error)
    best = (*best_scale(0.0), 0.0)
    for floor in grid:
        fun, scale = best_scale(float(floor))
        if fun < best[0]:
            best = (fun, scale, float(floor))
    if best[2] > 0:  # the grid's steps are 26 % apart: refine the floor between the neighbours of the best one
        step = grid[1] / grid[0]
        fit = scipy.optimize.minimize_scalar(lambda log_floor: best_scale(float(np.exp(log_floor)))[0],
                                             bounds=(np.log(best[2] / step), np.log(best[2] * step)),
                                             method="bounded", options={"xatol": 1e-3})
        if fit.fun < best[0]:
            floor = float(np.exp(fit.x))
            best = (float(fit.fun), best_scale(floor)[1], floor)
    return best[1], best[2]


def fit_zerr_calibration(z: np.ndarray, z_true: np.ndarray, sigma: np.ndarray, snr: np.ndarray, *,
                         edges: Sequence[float] = (5.0, 13.0, 30.0), z_edges: Sequence[float] = (1.5, 2.9),
                         min_count: int = 30) -> ZerrCalibration:
    """In each range of ``z`` between ``z_edges``, the ``scale`` and ``floor`` that bring the pull width closest to 1
    in every S/N bin of that range (the largest ``|log width|`` over its bins is minimised).

    Parameters
    ----------
    z, z_true, sigma
        Refined redshifts of *right* redshifts only, their truths, and the raw parabola widths.
    snr
        The S/N each spectrum is binned by (e.g. the simulator's ``snr_lines``).
    edges
        Inner bin edges of ``snr``; bins with fewer than ``min_count`` spectra do not constrain the fit (a z range
        with no such bin is fitted as one bin).
    z_edges
        Inner edges of the redshift ranges calibrated apart (by the measured ``z``, which the scan knows).

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> sigma = 10 ** rng.uniform(-5, -3, 6000)
    >>> snr = 1e-2 / sigma                             # S/N bins follow sigma
    >>> z = rng.normal(0, np.hypot(1.5 * sigma, 2e-5))  # raw widths 1.5 times too small, and a floor of 2e-5
    >>> cal = fit_zerr_calibration(z, np.zeros(6000), sigma, snr, edges=(30.0, 100.0, 300.0), z_edges=())
    >>> round(cal.scale[0], 1), round(cal.floor[0] * 1e5, 0), bool(np.all(np.abs(np.array(cal.widths) - 1) < 0.1))
    (1.5, 2.0, True)
    """
    z, z_true, sigma, snr = (np.asarray(a, np.float64) for a in (z, z_true, sigma, snr))
    usable = np.isfinite(z) & np.isfinite(z_true) & np.isfinite(sigma) & (sigma > 0) & np.isfinite(snr)
    z, z_true, sigma, snr = z[usable], z_true[usable], sigma[usable], snr[usable]
    nbins = len(edges) + 1
    bins = np.searchsorted(np.asarray(edges, np.float64), snr, side="right")
    regimes = np.searchsorted(np.asarray(z_edges, np.float64), z, side="right")
    scales, floors = [], []
    for regime in range(len(z_edges) + 1):
        inside = regimes == regime
        if inside.sum() < min_count:
            raise ValueError(f"{int(inside.sum())} right redshifts in z range {regime} of {list(z_edges)}: fewer than "
                             f"{min_count}, too few to calibrate ZERR there")
        scale, floor = _fit_one(z[inside], z_true[inside], sigma[inside], bins[inside], nbins, min_count)
        scales.append(scale)
        floors.append(floor)
    raw, counts = pull_widths(z, z_true, sigma, bins, nbins)
    widths, _ = pull_widths(z, z_true, apply_zerr_calibration(sigma, z, scales, floors, z_edges), bins, nbins)
    return ZerrCalibration(tuple(scales), tuple(floors), tuple(float(e) for e in z_edges),
                           tuple(float(e) for e in edges), tuple(raw.tolist()), tuple(widths.tolist()),
                           tuple(int(c) for c in counts))
