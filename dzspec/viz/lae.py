"""Figures of the MADGICS LAE engine: injection recovery (U25 Fig. 7), z-scores, purity and completeness (Fig. 5),
|dchi2| against the redshift error (Fig. 4)."""

from __future__ import annotations

from collections.abc import Mapping
from os import PathLike

import numpy as np

from dzspec.viz import pyplot

__all__ = ["plot_dchi2_vs_dz", "plot_purity_completeness", "plot_recovery"]


def plot_recovery(curves: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
                  zscores: Mapping[str, np.ndarray], path: str | PathLike[str]) -> None:
    """Left: fraction of injections recovered within 0.005 per SNR bin, one line per set (``(centres, fraction,
    count)``). Right: histograms of the calibrated z-scores of each set against a unit normal."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    for label, (centres, fraction, count) in curves.items():
        left.plot(centres, fraction, "o-", ms=3, label=f"{label} ({int(count.sum())})")
    left.axhline(0.5, color="0.7", lw=0.8)
    left.set(xlabel="injected SNR = eta / (sigma sqrt(A))", ylabel="fraction with |dz| < 0.005", ylim=(-0.02, 1.02),
             title="injection recovery")
    left.legend(fontsize=8, loc="lower right")
    bins = np.linspace(-5, 5, 51)
    for label, scores in zscores.items():
        right.hist(np.clip(scores, -5, 5), bins=bins, density=True, histtype="step", label=label)
    right.plot(bins, np.exp(-bins**2 / 2) / np.sqrt(2 * np.pi), "k--", lw=0.8, label="unit normal")
    right.set(xlabel="(z_fit - z_true) / zerr (calibrated)", ylabel="density", title="z-scores")
    right.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_purity_completeness(thresholds: np.ndarray, curves: dict[str, tuple[np.ndarray, np.ndarray]],
                             path: str | PathLike[str], *, marked: float = 25.0, title: str = "") -> None:
    """Purity (solid) and completeness (dashed) against the calibrated |dchi2| threshold, one colour per selection
    rule in ``curves`` (label -> (purity, completeness)), ``marked`` drawn."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 4), constrained_layout=True)
    for colour, (label, (purity, completeness)) in enumerate(curves.items()):
        ax.plot(thresholds, purity, color=f"C{colour}", label=f"purity, {label}")
        ax.plot(thresholds, completeness, color=f"C{colour}", ls="--", label=f"completeness, {label}")
    ax.axvline(marked, color="0.5", ls=":", lw=0.8)
    ax.set(xscale="log", xlabel="threshold on calibrated |dchi2|", ylim=(-0.02, 1.02), title=title)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_dchi2_vs_dz(dz: np.ndarray, abs_dchi2: np.ndarray, labels: np.ndarray, path: str | PathLike[str]) -> None:
    """Calibrated |dchi2| against z_fit - z_true, one colour per class label (U25 Fig. 4)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.4), constrained_layout=True)
    for label in np.unique(labels):
        members = labels == label
        ax.scatter(np.clip(dz[members], -2, 2), np.clip(abs_dchi2[members], 0.1, None), s=4, alpha=0.6, label=label)
    ax.axvspan(-0.005, 0.005, color="C2", alpha=0.15)
    ax.axhline(25, color="0.5", ls="--", lw=0.8)
    ax.set_xscale("symlog", linthresh=0.005)  # linear inside the |dz| < 0.005 band, logarithmic beyond
    ax.set(yscale="log", xlabel="z_fit - z_true (clipped at +-2; symlog)", ylabel="calibrated |dchi2|")
    ax.legend(fontsize=8, markerscale=3)
    fig.savefig(path, dpi=120)
    plt.close(fig)
