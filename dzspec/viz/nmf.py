"""Figures of the NMF redshift engine: rank selection (B26 Fig. 4), zp versus zt, chi2(z) curves."""

from __future__ import annotations

from os import PathLike

import numpy as np
import xarray as xr

from dzspec.kernels.metrics import relative_error
from dzspec.viz import pyplot

__all__ = ["plot_chi2_curves", "plot_rank_selection", "plot_zp_zt"]


def plot_rank_selection(ds: xr.Dataset, path: str | PathLike[str]) -> None:
    """GF and MAE (mean and standard deviation over the folds) against the rank, the chosen rank marked.

    ``ds`` is :func:`dzspec.parallel.rank_selection.cross_validate_ranks`'s result.
    """
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), constrained_layout=True)
    ranks = ds["rank"].values
    for ax, name, label in ((axes[0], "gf", "good fraction"), (axes[1], "mae", "MAE (5 MAD rejection)")):
        ax.errorbar(ranks, ds[f"{name}_mean"], yerr=ds[f"{name}_std"], fmt="o-", capsize=3, color="k")
        for fold in range(ds.sizes["fold"]):
            ax.plot(ranks, ds[name].isel(fold=fold), ".", color="0.6", ms=4)
        ax.axvline(ds.attrs["chosen_rank"], color="C3", ls="--", label=f"chosen k = {ds.attrs['chosen_rank']}")
        ax.set_xlabel("rank k")
        ax.set_ylabel(label)
    axes[0].legend(loc="lower right")
    fig.suptitle(f"{ds.attrs['folds']}-fold cross-validation, {ds.sizes['spectrum']} spectra (grey: folds)")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_zp_zt(z_pred: np.ndarray, z_true: np.ndarray, path: str | PathLike[str], *,
               color: np.ndarray | None = None, color_label: str = "", title: str = "") -> None:
    """Predicted against true redshift with the GF tolerance band and the [OII]/Lya confusion loci."""
    plt = pyplot()
    z_pred, z_true = np.asarray(z_pred, float), np.asarray(z_true, float)
    fig, ax = plt.subplots(figsize=(5.6, 5.2), constrained_layout=True)
    zt = np.linspace(0, 7, 200)
    ax.fill_between(zt, zt - 0.005 * (1 + zt), zt + 0.005 * (1 + zt), color="C2", alpha=0.3, lw=0)
    for ratio, label in ((3728.5 / 1215.67, "[OII] as Lya"), (1215.67 / 3728.5, "Lya as [OII]")):
        ax.plot(zt, (1 + zt) * ratio - 1, ":", color="0.5", lw=1)
        ax.annotate(label, ((2.0 if ratio > 1 else 5.5), (3.0 * ratio - 1 if ratio > 1 else 6.5 * ratio - 1)),
                    color="0.4", fontsize=8)
    good = relative_error(z_pred, z_true) < 0.005
    scatter = ax.scatter(z_true, z_pred, s=4, c=color if color is not None else np.where(good, 0, 1),
                         cmap="viridis" if color is not None else "coolwarm", lw=0)
    if color is not None:
        fig.colorbar(scatter, ax=ax, label=color_label)
    ax.set(xlim=(0, 7), ylim=(0, 7), xlabel="z true", ylabel="z predicted", title=title)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_chi2_curves(z_trials: np.ndarray, curves: np.ndarray, labels: list[str], path: str | PathLike[str], *,
                     z_true: np.ndarray | None = None) -> None:
    """chi2(z) curves, one panel each, with the best trial and (optionally) the true redshift marked."""
    plt = pyplot()
    n = len(curves)
    fig, axes = plt.subplots(n, 1, figsize=(8, 1.9 * n), sharex=True, constrained_layout=True, squeeze=False)
    for i, (ax, curve) in enumerate(zip(axes[:, 0], curves, strict=True)):
        ax.plot(z_trials, curve, lw=0.6, color="k")
        ax.axvline(z_trials[int(np.nanargmin(curve))], color="C3", lw=1, label="best")
        if z_true is not None and np.isfinite(z_true[i]):
            ax.axvline(z_true[i], color="C2", ls="--", lw=1, label="true")
        ax.axhline(np.nanpercentile(curve, 25), color="C0", ls=":", lw=1, label="Q1")
        ax.set_ylabel("chi2")
        ax.set_title(labels[i], fontsize=9, loc="left")
    axes[0, 0].legend(loc="upper right", fontsize=8, ncols=3)
    axes[-1, 0].set_xlabel("trial z")
    fig.savefig(path, dpi=120)
    plt.close(fig)
