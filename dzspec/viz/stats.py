"""Figures of the survey statistics tables of :mod:`dzspec.parallel.stats`."""

from __future__ import annotations

from collections.abc import Mapping
from os import PathLike

import numpy as np
import xarray as xr

from dzspec.viz import pyplot

__all__ = ["plot_class_histograms", "plot_good_fraction", "plot_threshold", "plot_zp_zt_density"]


def _bin_labels(table: xr.Dataset) -> list[str]:
    def fmt(value: float) -> str:
        return "inf" if np.isinf(value) else f"{value:g}"

    return [f"{fmt(lo)}-{fmt(hi)}" for lo, hi in zip(table.bin_lo.values, table.bin_hi.values, strict=True)]


def plot_good_fraction(tables: Mapping[str, xr.Dataset], path: str | PathLike[str], *, xlabel: str = "",
                       title: str = "") -> None:
    """GF per bin with its shaded 68 % Wilson interval, one line per table (e.g. per survey depth), and the number
    of spectra per bin under it. The tables must share their bins."""
    plt = pyplot()
    fig, (ax, count_ax) = plt.subplots(2, 1, figsize=(6.4, 4.8), sharex=True, height_ratios=(3, 1),
                                       constrained_layout=True)
    first = next(iter(tables.values()))
    x = np.arange(first.sizes["bin"])
    for colour, (label, table) in enumerate(tables.items()):
        ax.plot(x, table.gf, "o-", color=f"C{colour}", label=label)
        ax.fill_between(x, table.gf_lo, table.gf_hi, color=f"C{colour}", alpha=0.25, lw=0)
        count_ax.bar(x + 0.8 * (colour / len(tables) - 0.5 + 0.5 / len(tables)), table.n, width=0.8 / len(tables),
                     color=f"C{colour}")
    ax.set(ylabel="good fraction", ylim=(-0.02, 1.02), title=title)
    ax.legend(fontsize=8)
    count_ax.set(ylabel="spectra", xlabel=xlabel or str(first.attrs.get("by", "")))
    count_ax.set_xticks(x, _bin_labels(first), rotation=30, fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_class_histograms(table: xr.Dataset, path: str | PathLike[str], *, marked: float | None = None,
                          xlabel: str = "", density: bool = True) -> None:
    """Per-class distributions of a score (B26 Fig. 10: log10 dchi2 per confidence class), ``marked`` drawn."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    edges = np.append(table.bin_lo.values, table.bin_hi.values[-1])
    names = table.attrs.get("flag_meanings", "").split() or [str(c) for c in table["class"].values]
    for code, name in zip(table["class"].values, names, strict=True):
        counts = table["count"].sel({"class": code}).values.astype(float)
        if counts.sum() == 0:
            continue
        values = counts / (counts.sum() * np.diff(edges)) if density else counts
        ax.stairs(values, edges, label=f"{name} ({int(counts.sum())})")
    if marked is not None:
        ax.axvline(marked, color="0.4", ls="--", lw=0.8)
    ax.set(xlabel=xlabel or str(table.attrs.get("quantity", "")), ylabel="density" if density else "spectra")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_threshold(table: xr.Dataset, path: str | PathLike[str], *, xlabel: str = "threshold",
                   log_x: bool = False) -> None:
    """Purity and completeness against the threshold (left) and the ROC with its AUC and the point nearest to
    (0, 1) (right)."""
    plt = pyplot()
    fig, (ax, roc) = plt.subplots(1, 2, figsize=(9.6, 4), constrained_layout=True)
    thresholds = table.threshold.values
    ax.plot(thresholds, table.purity, label="purity")
    ax.plot(thresholds, table.completeness, label="completeness")
    if "marked" in table.attrs:
        ax.axvline(table.attrs["marked"], color="0.4", ls="--", lw=0.8)
    ax.set(xlabel=xlabel, ylim=(-0.02, 1.02), xscale="log" if log_x else "linear")
    ax.legend(fontsize=8)
    roc.plot(np.r_[0, table.fpr.values[::-1], 1], np.r_[0, table.completeness.values[::-1], 1], ".-", ms=3)
    roc.plot([0, 1], [0, 1], color="0.7", lw=0.8)
    roc.plot(table.attrs["best_fpr"], table.attrs["best_tpr"], "o", color="C3",
             label=f"nearest (0,1): t = {table.attrs['best_threshold']:g}")
    roc.set(xlabel="false positive rate", ylabel="true positive rate (completeness)", xlim=(0, 1), ylim=(0, 1.01),
            title=f"AUC = {table.attrs['auc']:.3f}", aspect="equal")
    roc.legend(fontsize=8, loc="lower right")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_zp_zt_density(table: xr.Dataset, path: str | PathLike[str], *, tol: float = 0.005, title: str = "") -> None:
    """Predicted against true redshift as a density (log counts), with the GF band and the [O II]/Lya confusion
    loci (the scatter of :func:`dzspec.viz.nmf.plot_zp_zt` for surveys of any size)."""
    from matplotlib.colors import LogNorm

    plt = pyplot()
    edges = table.edges.values
    counts = table["count"].values.T.astype(float)  # rows: z_pred
    fig, ax = plt.subplots(figsize=(5.8, 5.2), constrained_layout=True)
    mesh = ax.pcolormesh(edges, edges, np.where(counts > 0, counts, np.nan), norm=LogNorm(vmin=1), cmap="viridis")
    fig.colorbar(mesh, ax=ax, label="spectra per cell")
    zt = np.linspace(edges[0], edges[-1], 200)
    ax.plot(zt, zt + tol * (1 + zt), color="C3", lw=0.5)
    ax.plot(zt, zt - tol * (1 + zt), color="C3", lw=0.5)
    for ratio in (3728.5 / 1215.67, 1215.67 / 3728.5):
        ax.plot(zt, (1 + zt) * ratio - 1, ":", color="0.5", lw=1)
    ax.set(xlim=(edges[0], edges[-1]), ylim=(edges[0], edges[-1]), xlabel="z true", ylabel="z predicted",
           title=f"{title} ({int(counts.sum())} spectra)" if title else f"{int(counts.sum())} spectra")
    fig.savefig(path, dpi=130)
    plt.close(fig)
