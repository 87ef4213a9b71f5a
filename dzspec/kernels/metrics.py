"""Redshift evaluation metrics with their exact published definitions (METHODS 3.1-3.4).

Pure NumPy; the survey-scale reductions (binned, lazy, over result stores) build on these.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = ["good_fraction", "mae_with_rejection", "relative_error", "robust_sigma", "wilson_interval"]

_IQR_TO_SIGMA = 1.34896  # IQR of a unit normal (U25 print 3.4896: a typo, METHODS §3.8)


def relative_error(z_pred: np.ndarray, z_true: np.ndarray) -> np.ndarray:
    """``|z_pred - z_true| / (1 + z_true)`` (NaN where either is NaN).

    Examples
    --------
    >>> round(float(relative_error(np.array([1.01]), np.array([1.0]))[0]), 12)
    0.005
    """
    z_pred, z_true = np.asarray(z_pred, dtype=np.float64), np.asarray(z_true, dtype=np.float64)
    return np.abs(z_pred - z_true) / (1.0 + z_true)


def good_fraction(z_pred: np.ndarray, z_true: np.ndarray, tol: float = 0.005,
                  form: Literal["relative", "absolute"] = "relative") -> tuple[float, int, int]:
    """Good fraction ``(GF, n_good, n_total)``: good if ``|dz| < tol (1 + z_true)`` (B26, default) or
    ``|dz| < tol`` (``form="absolute"``, U25). A NaN prediction counts as not good; NaN truths are excluded.

    Examples
    --------
    >>> good_fraction(np.array([1.0, 2.0, np.nan, 0.5]), np.array([1.001, 2.1, 1.0, np.nan]))
    (0.3333333333333333, 1, 3)
    """
    z_pred, z_true = np.asarray(z_pred, dtype=np.float64), np.asarray(z_true, dtype=np.float64)
    known = np.isfinite(z_true)
    scale = (1.0 + z_true[known]) if form == "relative" else 1.0
    good = np.abs(z_pred[known] - z_true[known]) < tol * scale  # NaN predictions compare False
    n_total = int(known.sum())
    return (float(good.sum() / n_total) if n_total else float("nan")), int(good.sum()), n_total


def mae_with_rejection(z_pred: np.ndarray, z_true: np.ndarray, nmad: float = 5.0,
                       rule: Literal["literal", "centred"] = "literal") -> tuple[float, int]:
    """B26 Eq. 11: mean relative error after rejecting outliers, and the number kept.

    ``MAD = median(|dz - median dz|)`` with ``dz = |z_pred - z_true|/(1 + z_true)``; ``"literal"`` (default) rejects
    ``dz > nmad * MAD``, ``"centred"`` rejects ``|dz - median dz| > nmad * MAD``.

    Examples
    --------
    >>> mae, kept = mae_with_rejection(np.array([1.0, 1.0, 1.0, 3.0]), np.array([1.001, 0.999, 1.002, 1.0]))
    >>> round(mae, 6), kept
    (0.000666, 3)
    """
    dz = relative_error(z_pred, z_true)
    dz = dz[np.isfinite(dz)]
    if dz.size == 0:
        return float("nan"), 0
    median = np.median(dz)
    mad = np.median(np.abs(dz - median))
    keep = dz <= nmad * mad if rule == "literal" else np.abs(dz - median) <= nmad * mad
    return float(dz[keep].mean()) if keep.any() else float("nan"), int(keep.sum())


def wilson_interval(k: np.ndarray | int, n: np.ndarray | int, z_c: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval (centre, half-width) of a proportion ``k/n``; ``z_c = 1`` gives 68 %.

    Examples
    --------
    >>> centre, half = wilson_interval(9, 10)
    >>> round(float(centre), 4), round(float(half), 4)
    (0.8636, 0.0975)
    """
    k, n = np.asarray(k, dtype=np.float64), np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        denominator = 1.0 + z_c**2 / n
        centre = (p + z_c**2 / (2 * n)) / denominator
        half = z_c / denominator * np.sqrt(p * (1 - p) / n + z_c**2 / (4 * n**2))
    return centre, half


def purity_completeness(score: np.ndarray, correct: np.ndarray, thresholds: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
    """U25 Fig. 5 (METHODS §3.6) over a sweep of thresholds t on a detection score (e.g. the calibrated |dchi2|):
    purity(t) = N(correct and score > t) / N(score > t), completeness(t) = N(correct and score > t) / N(correct).
    ``correct`` is False for every object that is not a correctly measured LAE (interlopers, empty fibres), so they
    lower the purity. NaN where a denominator is 0.

    Examples
    --------
    >>> purity, completeness = purity_completeness(np.array([30.0, 20.0, 40.0]), np.array([True, True, False]),
    ...                                            np.array([25.0]))
    >>> purity.tolist(), completeness.tolist()
    ([0.5], [0.5])
    """
    score = np.nan_to_num(np.asarray(score, dtype=np.float64), nan=-np.inf)
    correct = np.asarray(correct, dtype=bool)
    selected = score[None, :] > np.asarray(thresholds, dtype=np.float64)[:, None]
    both = (selected & correct[None, :]).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        purity = np.where(selected.sum(axis=1) > 0, both / selected.sum(axis=1), np.nan)
        completeness = np.where(correct.sum() > 0, both / max(int(correct.sum()), 1), np.nan)
    return purity, completeness


def robust_sigma(values: np.ndarray) -> float:
    """IQR / 1.34896 of the finite values: the standard deviation of a normal sample, unmoved by outliers (the
    z-score width of the MADGICS calibration, the NMF pull widths of the ZERR calibration).

    Examples
    --------
    >>> round(robust_sigma(np.array([-1.0, 0.0, 1.0, np.nan])), 6)
    0.741312
    """
    q75, q25 = np.nanpercentile(values, [75, 25])
    return float((q75 - q25) / _IQR_TO_SIGMA)
