"""A per-spectrum confidence that an NMF redshift is right, learned from the scan's own outputs (METHODS §5.7).

Right and wrong redshifts differ in what the scan already measures: how deep the best minimum is (B26's
significance), how far below the next one (R, Redrock's DELTACHI2), how good the fit is, how much of it the
nuisance terms carry, whether the redshift sits on a store's spike. :func:`scan_features` turns a results table into
those features, :func:`fit_confidence` fits an L2-regularised logistic regression on simulated spectra with known
redshifts (plain NumPy/SciPy, so the model is a handful of numbers stored with the basis it belongs to, never a
pickle), and :func:`threshold_for_purity` picks the confidence below which ``zwarn`` gets LOW_CONFIDENCE, on a
calibration set disjoint from the fit, for a target purity of the spectra left with ``zwarn == 0``.

Examples
--------
>>> rng = np.random.default_rng(0)
>>> x = rng.normal(size=(400, 2)); right = (x[:, 0] + 0.3 * rng.normal(size=400)) > 0
>>> model = fit_confidence(x, right, ["a", "b"])
>>> bool(model.predict(np.array([[2.0, 0.0]]))[0] > 0.9), bool(model.predict(np.array([[-2.0, 0.0]]))[0] < 0.1)
(True, True)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.optimize
import scipy.special

__all__ = ["FEATURES", "FEATURE_INPUTS", "ConfidenceModel", "fit_confidence", "scan_features", "threshold_for_purity"]

#: The features of :func:`scan_features`, in order.
FEATURES: tuple[str, ...] = (
    "log10_significance", "asinh_robustness", "asinh_deltachi2", "log10_reduced_chi2", "second_significance",
    "asinh_pedestal", "coverage", "on_spike", "log1p_z",
)

#: The results columns :func:`scan_features` reads (besides ``zwarn``; ``nuisance_coeff`` only when present).
FEATURE_INPUTS: tuple[str, ...] = ("z", "chi2", "npixels", "nmf_significance", "nmf_robustness", "deltachi2",
                                   "candidate_significance", "nuisance_coeff")


def scan_features(results: Mapping[str, np.ndarray], *, spike_bit: int, npixels_max: int) -> np.ndarray:
    """``(nspec, len(FEATURES))`` float64 features of NMF results (``dzspec zfind``'s columns), NaN-free.

    ``results`` needs ``z``, ``chi2``, ``npixels``, ``nmf_significance``, ``nmf_robustness``, ``deltachi2``,
    ``candidate_significance``, ``zwarn`` and, when present, ``nuisance_coeff``; ``spike_bit`` is ZWarn.Z_SPIKE
    and ``npixels_max`` the scanned window's length. Undefined values (no second minimum, no data) become the
    least confident value of their feature.
    """
    n = np.asarray(results["z"]).shape[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        significance = np.asarray(results["nmf_significance"], np.float64)
        log_sig = np.log10(np.clip(significance, 1e-6, 1.0))
        robustness = np.arcsinh(np.asarray(results["nmf_robustness"], np.float64))
        deltachi2 = np.arcsinh(np.asarray(results["deltachi2"], np.float64) / 10.0)
        npixels = np.asarray(results["npixels"], np.float64)
        reduced = np.log10(np.asarray(results["chi2"], np.float64) / np.maximum(npixels, 1.0))
        candidates = np.asarray(results["candidate_significance"], np.float64)
        second = candidates[:, 1] if candidates.shape[1] > 1 else np.zeros(n)
        nuisance = results.get("nuisance_coeff")
        pedestal = np.zeros(n) if nuisance is None or np.shape(nuisance)[1] == 0 else \
            np.arcsinh(np.asarray(nuisance, np.float64)[:, 0])
        spike = (np.asarray(results["zwarn"]).astype(np.int64) & int(spike_bit)) != 0
        log_z = np.log1p(np.asarray(results["z"], np.float64))
    x = np.column_stack([log_sig, robustness, deltachi2, reduced, second, pedestal, npixels / max(npixels_max, 1),
                         spike.astype(np.float64), log_z])
    worst = np.array([-6.0, 0.0, 0.0, 3.0, 1.0, 0.0, 0.0, 1.0, 0.0])  # where a value is undefined
    return np.where(np.isfinite(x), x, worst)


@dataclass(frozen=True)
class ConfidenceModel:
    """A logistic regression on standardised features; ``threshold`` is the LOW_CONFIDENCE cut."""

    features: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    threshold: float = 0.5

    def predict(self, x: np.ndarray) -> np.ndarray:
        """P(right) for each row of ``x`` (float64)."""
        z = ((np.asarray(x, np.float64) - self.mean) / self.scale) @ self.coef + self.intercept
        return scipy.special.expit(z)

    def as_attrs(self) -> dict[str, Any]:
        """Plain JSON numbers, stored with the basis."""
        return {"features": list(self.features), "mean": self.mean.tolist(), "scale": self.scale.tolist(),
                "coef": self.coef.tolist(), "intercept": float(self.intercept), "threshold": float(self.threshold)}

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> ConfidenceModel:
        """The model :meth:`as_attrs` stored; refuses one made for other features."""
        if tuple(attrs["features"]) != FEATURES:
            raise ValueError(f"confidence model uses features {attrs['features']}, this dzspec computes {FEATURES}")
        return cls(tuple(attrs["features"]), np.asarray(attrs["mean"], np.float64),
                   np.asarray(attrs["scale"], np.float64), np.asarray(attrs["coef"], np.float64),
                   float(attrs["intercept"]), float(attrs["threshold"]))


def fit_confidence(x: np.ndarray, right: np.ndarray, features: Sequence[str] = FEATURES, *,
                   l2: float = 1e-2) -> ConfidenceModel:
    """Fit P(right | x) by L2-regularised logistic regression (L-BFGS on the exact gradient; deterministic)."""
    x = np.asarray(x, np.float64)
    y = np.asarray(right, np.float64)
    if x.shape[0] != y.shape[0] or x.shape[0] < 10 or y.min() == y.max():
        raise ValueError("a confidence model needs >= 10 spectra, both right and wrong ones")
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    xs = (x - mean) / scale
    n, k = xs.shape

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        z = xs @ theta[:k] + theta[k]
        value = np.sum(np.logaddexp(0.0, z) - y * z) / n + 0.5 * l2 * theta[:k] @ theta[:k]
        residual = (scipy.special.expit(z) - y) / n
        return value, np.r_[xs.T @ residual + l2 * theta[:k], residual.sum()]

    fit = scipy.optimize.minimize(loss, np.zeros(k + 1), jac=True, method="L-BFGS-B",
                                  options={"maxiter": 1000, "gtol": 1e-10})
    return ConfidenceModel(tuple(features), mean, scale, fit.x[:k], float(fit.x[k]))


def threshold_for_purity(confidence: np.ndarray, right: np.ndarray, purity: float = 0.995) -> dict[str, float]:
    """The lowest confidence cut whose kept set (confidence >= cut) is at least ``purity`` right.

    Returns ``threshold``, the kept fraction (``completeness`` of all spectra, and of the right ones) and the
    achieved purity; ``threshold`` 1.0 (nothing kept) when no cut reaches the purity.

    Examples
    --------
    >>> c = np.array([0.9, 0.8, 0.7, 0.6, 0.5]); r = np.array([True, True, True, False, True])
    >>> threshold_for_purity(c, r, 0.99)["threshold"]
    0.7
    """
    confidence = np.asarray(confidence, np.float64)
    right = np.asarray(right, bool)
    order = np.argsort(-confidence, kind="stable")
    ranked_right = right[order]
    kept = np.arange(1, order.size + 1)
    running = np.cumsum(ranked_right) / kept
    # a cut can only sit between distinct confidences: take the last position of each run of ties
    last = np.r_[confidence[order][1:] != confidence[order][:-1], True]
    ok = np.flatnonzero(last & (running >= purity))
    if ok.size == 0:
        return {"threshold": 1.0, "kept_fraction": 0.0, "completeness_of_right": 0.0, "purity": float("nan")}
    i = int(ok[-1])
    return {"threshold": float(confidence[order][i]), "kept_fraction": float(kept[i] / order.size),
            "completeness_of_right": float(np.sum(ranked_right[: i + 1]) / max(right.sum(), 1)),
            "purity": float(running[i])}
