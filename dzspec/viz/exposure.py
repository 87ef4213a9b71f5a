"""Figures of the exposure-time convergence (U25 §4.3): the Fig. 9 grid and sigma_z against exposure time."""

from __future__ import annotations

import itertools
import warnings
from os import PathLike

import numpy as np

from dzspec.viz import pyplot

__all__ = ["plot_exposure_convergence"]


def plot_exposure_convergence(fraction: np.ndarray, count: np.ndarray, exptime_edges: np.ndarray,
                              flux_thresholds: np.ndarray, path: str | PathLike[str], *,
                              sigma_z: np.ndarray | None = None, exptime: np.ndarray | None = None,
                              line_flux: np.ndarray | None = None, tolerance: float = 1e-3,
                              flux_unit: str = "1e-17 erg/s/cm2", title: str = "") -> None:
    """Left (U25 Fig. 9): the fraction of (target, n) with ``sigma_z < tolerance`` per exposure-time bin (columns,
    hours) among targets with line flux ``>= threshold`` (rows), each cell labelled with its fraction and count.
    Right, when ``sigma_z`` and ``exptime`` (``(n_targets, n)``) are given: each target's sigma_z against its mean
    total exposure time over n (coloured by log line flux) with the median over targets per n, and the threshold.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "grid.png"
    >>> plot_exposure_convergence(np.array([[0.2, 0.9]]), np.array([[10, 10]]), np.array([0.0, 1800, 3600]),
    ...                           np.array([0.0]), path)
    >>> path.read_bytes()[:4] == b"\\x89PNG"
    True
    """
    plt = pyplot()
    fraction, count = np.asarray(fraction, float), np.asarray(count)
    hours = np.asarray(exptime_edges, float) / 3600.0
    panels = 2 if sigma_z is not None and exptime is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.8 * panels, 4.4), constrained_layout=True, squeeze=False)
    ax = axes[0, 0]
    image = ax.imshow(np.ma.masked_invalid(fraction), origin="lower", cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for (row, col), value in np.ndenumerate(fraction):
        if count[row, col] > 0:
            ax.text(col, row, f"{value:.2f}\n{int(count[row, col])}", ha="center", va="center", fontsize=6.5,
                    color="w" if value < 0.6 else "k")
    ax.set_xticks(np.arange(hours.size - 1), [f"{a:g}-{b:g}" for a, b in itertools.pairwise(hours)],
                  rotation=45, fontsize=7)
    ax.set_yticks(np.arange(len(flux_thresholds)), [f">= {t:g}" for t in flux_thresholds], fontsize=7)
    ax.set(xlabel="mean total exposure time (h)", ylabel=f"line flux ({flux_unit})",
           title=title or f"fraction converged (sigma_z < {tolerance:g})")
    fig.colorbar(image, ax=ax, label="cumulative fraction converged")
    if panels == 2:
        ax = axes[0, 1]
        sigma, time = np.asarray(sigma_z, float), np.asarray(exptime, float) / 3600.0
        floor = tolerance / 100  # sigma_z = 0 (every draw on the same fine step) drawn at the bottom
        shown = np.clip(sigma, floor, None)
        flux = np.full(sigma.shape[0], np.nan) if line_flux is None else np.asarray(line_flux, float)
        logflux = np.log10(np.clip(flux, 1e-3, None))
        colours = plt.get_cmap("plasma")
        finite = np.isfinite(logflux)
        lo, hi = (logflux[finite].min(), logflux[finite].max() + 1e-9) if finite.any() else (0.0, 1.0)
        for i in range(sigma.shape[0]):
            colour = colours((logflux[i] - lo) / (hi - lo)) if np.isfinite(logflux[i]) else "0.6"
            ax.plot(time[i], shown[i], "-", color=colour, lw=0.6, alpha=0.5)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns (n without any target)
            median_t, median_s = np.nanmedian(time, axis=0), np.nanmedian(shown, axis=0)
        ax.plot(median_t, median_s, "ko-", ms=3, lw=1.5, label="median over targets")
        ax.axhline(tolerance, color="C3", ls="--", lw=1, label=f"sigma_z = {tolerance:g}")
        ax.set(yscale="log", xlabel="mean total exposure time (h)",
               ylabel=f"sigma_z over draws (clipped at {floor:g})", title="sigma_z per n")
        if finite.any():
            mappable = plt.cm.ScalarMappable(cmap=colours, norm=plt.Normalize(lo, hi))
            fig.colorbar(mappable, ax=ax, label=f"log10 line flux ({flux_unit})")
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)
