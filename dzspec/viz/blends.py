"""Figures of NMF blend detection: the ROC over the threshold sweep (B26 Fig. 13) and one detection (Fig. 12)."""

from __future__ import annotations

from os import PathLike

import numpy as np

from dzspec.engines.nmf.blends import ROC_THRESHOLDS, BlendResult
from dzspec.kernels.survey_stats import auc as sweep_auc
from dzspec.kernels.survey_stats import nearest_to_corner, rank_auc, roc_curve
from dzspec.viz import pyplot

__all__ = ["plot_blend_example", "plot_roc"]


def plot_roc(score: np.ndarray, positive: np.ndarray, path: str | PathLike[str], *,
             thresholds: np.ndarray = ROC_THRESHOLDS, title: str = "") -> dict[str, float]:
    """Left: TPR against FPR over the threshold sweep (blue), the full ROC of the score (grey), the threshold
    nearest (0, 1) (green) and the AUC. Right: the score of blends and of other spectra, the sweep shaded.

    Returns the numbers drawn: ``auc`` (Mann-Whitney, full ROC), ``auc_sweep``, ``threshold``, ``tpr``, ``fpr``.
    """
    score = np.asarray(score, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    tpr, fpr = roc_curve(score, positive, thresholds)
    auc, auc_sweep = rank_auc(score, positive), sweep_auc(fpr, tpr, closed=False)
    best = nearest_to_corner(fpr, tpr)
    t_best, tpr_best, fpr_best = float(thresholds[best]), float(tpr[best]), float(fpr[best])
    finite = np.nan_to_num(score, nan=-np.inf)
    levels = np.unique(finite[np.isfinite(finite)])
    tpr_all, fpr_all = roc_curve(score, positive, np.r_[-np.inf, levels])

    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2), constrained_layout=True)
    left.plot(np.r_[fpr_all, 0.0], np.r_[tpr_all, 0.0], color="0.6", lw=0.8, label="all thresholds")
    left.plot(fpr, tpr, "o-", color="C0", ms=2.5, label=f"sweep {thresholds[0]:g}-{thresholds[-1]:g}")
    left.plot([0, 1], [0, 1], ":", color="0.7", lw=0.8)
    left.plot([fpr_best], [tpr_best], "o", color="C2", ms=8,
              label=f"t = {t_best:.3f}: TPR {tpr_best:.2f}, FPR {fpr_best:.2f}")
    left.text(0.55, 0.12, f"AUC = {auc:.3f}\n(sweep only: {auc_sweep:.3f})", transform=left.transAxes)
    left.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(-0.02, 1.02), ylim=(-0.02, 1.02),
             title=title or f"blend detection ROC ({int(positive.sum())} blends, {int((~positive).sum())} others)")
    left.title.set_fontsize(10)
    left.legend(fontsize=8, loc="lower right", bbox_to_anchor=(1.0, 0.25))
    floor = 1e-4
    bins = np.logspace(np.log10(floor), 0, 41)
    for members, label, colour in ((positive, "blends", "C3"), (~positive, "not blends", "C0")):
        right.hist(np.clip(np.nan_to_num(score[members], nan=floor), floor, 1.0), bins=bins, histtype="step",
                   color=colour, label=f"{label} ({int(members.sum())})")
    right.axvspan(thresholds[0], thresholds[-1], color="0.9", zorder=-1)
    right.axvline(t_best, color="C2", ls="--", lw=1)
    right.set(xscale="log", xlabel=f"blend score (clipped at {floor:g})", ylabel="spectra",
              title="best significance of a kept chi2_2 minimum (grey: sweep)")
    right.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return {"auc": auc, "auc_sweep": auc_sweep, "threshold": t_best, "tpr": tpr_best, "fpr": fpr_best}


def plot_blend_example(result: BlendResult, z_trials: np.ndarray, path: str | PathLike[str], *, z1: float,
                       title: str = "") -> None:
    """One spectrum (flux per unit log lambda on the basis grid) with its first model at ``z1`` and the
    reconstruction at ``z2``, and the rescan chi2_2(z) with ``z1`` and ``z2`` marked."""
    plt = pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6.5), constrained_layout=True)
    good = result.weights > 0
    flux = np.where(good, result.flux, np.nan)
    top.plot(result.wave, flux, color="C0", lw=0.5, label="spectrum")
    top.plot(result.wave, result.model1, color="C1", lw=0.8, label=f"first model at z1 = {z1:.4f}")
    if result.model2 is not None:
        top.plot(result.wave, result.model2, "k--", lw=0.7, label=f"reconstruction at z2 = {result.z2:.4f}")
    top.set(xlabel="observed vacuum wavelength [Å]", ylabel="flux per unit log10 λ", title=title)
    lo, hi = np.nanpercentile(flux, [0.5, 99.9])
    top.set_ylim(lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo))
    top.legend(fontsize=8)
    bottom.plot(z_trials, result.chi2_2, color="k", lw=0.6)
    bottom.axvline(z1, color="C1", ls=":", label="z1")
    if np.isfinite(result.z2):
        bottom.axvline(result.z2, color="C3", ls="--", label=f"z2 (score {result.score:.4f})")
    bottom.set(xlabel="trial redshift", ylabel="chi2_2 (augmented basis)")
    bottom.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)
