"""Survey statistics as mergeable partial sums: GF and MAE by bins, threshold sweeps (purity, completeness, ROC),
per-class histograms.

Every ``*_partial`` function maps one block of per-spectrum columns to an array of counts or sums whose sum over
blocks is the statistic of the whole survey, so :mod:`dzspec.parallel.stats` can tree-reduce them over a result store
of any size; the ``*_from_partials`` functions turn the totals into the published quantities (METHODS §3.1-3.6).
On a single in-memory array the two steps give the same numbers as :mod:`dzspec.kernels.metrics`.

The median and MAD of B26's MAE rejection are not sums: they are read from per-bin histograms of the relative error
on a fine logarithmic grid (:data:`ERROR_EDGES`, 0.5 % steps), which places the 5 x MAD cut to 0.5 %; the mean
error of the kept spectra is then an exact sum.
"""

from __future__ import annotations

import numpy as np

from dzspec.kernels.metrics import wilson_interval

__all__ = [
    "ERROR_EDGES",
    "auc",
    "bin_index",
    "class_histogram_partial",
    "error_histogram_partial",
    "gf_from_partials",
    "gf_partial",
    "histogram_quantile",
    "kept_error_partial",
    "nearest_to_corner",
    "rank_auc",
    "roc_curve",
    "threshold_from_partials",
    "threshold_partial",
]

#: Relative-error histogram edges for the median/MAD of the MAE rejection: 0 then log-spaced from 1e-9 to 10.
ERROR_EDGES = np.concatenate([[0.0], np.logspace(-9, 1, 4601)])


def bin_index(values: np.ndarray, edges: np.ndarray | None) -> np.ndarray:
    """Bin of each value in ``edges`` (``len(edges) - 1`` bins, the last one closed); -1 outside or NaN. ``edges``
    None puts everything finite or not into bin 0 (the whole survey).

    Examples
    --------
    >>> bin_index(np.array([0.5, 1.0, 2.0, 3.0, np.nan]), np.array([0.0, 1.0, 2.0])).tolist()
    [0, 1, 1, -1, -1]
    """
    values = np.asarray(values, dtype=np.float64)
    if edges is None:
        return np.zeros(values.shape, dtype=np.int64)
    edges = np.asarray(edges, dtype=np.float64)
    index = np.searchsorted(edges, values, side="right") - 1
    index[values == edges[-1]] = edges.size - 2
    index[~np.isfinite(values) | (values < edges[0]) | (values > edges[-1])] = -1
    return index


def _good(z_pred: np.ndarray, z_true: np.ndarray, tol: float, form: str) -> tuple[np.ndarray, np.ndarray]:
    known = np.isfinite(np.asarray(z_true, dtype=np.float64))
    scale = 1.0 + np.asarray(z_true, dtype=np.float64) if form == "relative" else 1.0
    with np.errstate(invalid="ignore"):
        good = known & (np.abs(np.asarray(z_pred, dtype=np.float64) - z_true) < tol * scale)
    return known, good


def gf_partial(z_pred: np.ndarray, z_true: np.ndarray, index: np.ndarray, nbins: int, tol: float = 0.005,
               form: str = "relative") -> np.ndarray:
    """``(nbins, 2)`` counts ``[n, n_good]`` per bin (good as in :func:`~dzspec.kernels.metrics.good_fraction`:
    NaN predictions are not good, NaN truths not counted)."""
    known, good = _good(z_pred, z_true, tol, form)
    inside = known & (index >= 0)
    out = np.zeros((nbins, 2), dtype=np.int64)
    out[:, 0] = np.bincount(index[inside], minlength=nbins)[:nbins]
    out[:, 1] = np.bincount(index[inside & good], minlength=nbins)[:nbins]
    return out


def error_histogram_partial(values: np.ndarray, index: np.ndarray, nbins: int, edges: np.ndarray = ERROR_EDGES
                            ) -> np.ndarray:
    """``(nbins, len(edges) - 1)`` histogram of non-negative ``values`` (relative errors) per bin; values beyond
    the last edge go to the last column, NaN nowhere."""
    values = np.asarray(values, dtype=np.float64)
    inside = np.isfinite(values) & (index >= 0)
    column = np.clip(np.searchsorted(edges, values[inside], side="right") - 1, 0, edges.size - 2)
    flat = np.bincount(index[inside] * (edges.size - 1) + column, minlength=nbins * (edges.size - 1))
    return flat.reshape(nbins, edges.size - 1)


def histogram_quantile(histogram: np.ndarray, edges: np.ndarray, q: float) -> np.ndarray:
    """The ``q`` quantile of each row of a histogram, interpolated linearly inside its bin; NaN for empty rows.

    Examples
    --------
    >>> float(histogram_quantile(np.array([[1, 1, 2]]), np.array([0.0, 1.0, 2.0, 3.0]), 0.5)[0])
    2.0
    """
    histogram = np.atleast_2d(histogram).astype(np.float64)
    total = histogram.sum(axis=1)
    cumulative = np.cumsum(histogram, axis=1)
    out = np.full(histogram.shape[0], np.nan)
    for row in np.flatnonzero(total > 0):
        target = q * total[row]
        column = int(np.searchsorted(cumulative[row], target, side="left"))
        before = cumulative[row, column - 1] if column > 0 else 0.0
        fraction = (target - before) / histogram[row, column] if histogram[row, column] > 0 else 0.0
        out[row] = edges[column] + fraction * (edges[column + 1] - edges[column])
    return out


def kept_error_partial(values: np.ndarray, index: np.ndarray, upper: np.ndarray, nbins: int) -> np.ndarray:
    """``(nbins, 2)`` ``[sum, count]`` of the values at or below their bin's ``upper`` (the MAE rejection cut)."""
    values = np.asarray(values, dtype=np.float64)
    inside = np.isfinite(values) & (index >= 0)
    kept = inside.copy()
    kept[inside] = values[inside] <= np.asarray(upper, dtype=np.float64)[index[inside]]
    out = np.zeros((nbins, 2))
    out[:, 0] = np.bincount(index[kept], weights=values[kept], minlength=nbins)[:nbins]
    out[:, 1] = np.bincount(index[kept], minlength=nbins)[:nbins]
    return out


def gf_from_partials(counts: np.ndarray, z_c: float = 1.0) -> dict[str, np.ndarray]:
    """GF, its Wilson interval (``z_c = 1``: 68 %) from the summed :func:`gf_partial` counts.

    Examples
    --------
    >>> table = gf_from_partials(np.array([[10, 9], [0, 0]]))
    >>> [round(float(table[key][0]), 4) for key in ("gf", "gf_lo", "gf_hi")], bool(np.isnan(table["gf"][1]))
    ([0.9, 0.7661, 0.9611], True)
    """
    n, good = counts[:, 0], counts[:, 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        gf = np.where(n > 0, good / np.maximum(n, 1), np.nan)
    centre, half = wilson_interval(good, n, z_c)
    return {"n": n, "n_good": good, "gf": gf, "gf_lo": centre - half, "gf_hi": centre + half}


def threshold_partial(score: np.ndarray, positive: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """``(len(thresholds), 4)`` counts ``[selected and positive, selected and negative, positive, negative]``;
    selected means ``score > threshold`` (a NaN score is never selected)."""
    score = np.nan_to_num(np.asarray(score, dtype=np.float64), nan=-np.inf)
    positive = np.asarray(positive, dtype=bool)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    # counting through sorted scores keeps this O((n + t) log n) rather than n x t
    pos_sorted, neg_sorted = np.sort(score[positive]), np.sort(score[~positive])
    out = np.empty((thresholds.size, 4), dtype=np.int64)
    out[:, 0] = pos_sorted.size - np.searchsorted(pos_sorted, thresholds, side="right")
    out[:, 1] = neg_sorted.size - np.searchsorted(neg_sorted, thresholds, side="right")
    out[:, 2], out[:, 3] = pos_sorted.size, neg_sorted.size
    return out


def threshold_from_partials(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Purity, completeness (= TPR) and FPR per threshold from the summed :func:`threshold_partial` counts (METHODS
    §3.5-3.7); NaN where a denominator is 0.

    Examples
    --------
    >>> table = threshold_from_partials(threshold_partial(np.array([30.0, 20.0, 40.0]), np.array([1, 1, 0]), [25.0]))
    >>> table["purity"].tolist(), table["completeness"].tolist(), table["fpr"].tolist()
    ([0.5], [0.5], [1.0])
    """
    sel_pos, sel_neg, pos, neg = (counts[:, i].astype(np.float64) for i in range(4))
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"n_selected": counts[:, 0] + counts[:, 1], "n_selected_positive": counts[:, 0],
                "purity": np.where(sel_pos + sel_neg > 0, sel_pos / (sel_pos + sel_neg), np.nan),
                "completeness": np.where(pos > 0, sel_pos / pos, np.nan),
                "fpr": np.where(neg > 0, sel_neg / neg, np.nan)}


def auc(fpr: np.ndarray, tpr: np.ndarray, *, closed: bool = True) -> float:
    """Area under the ROC curve through the sweep's points (trapezoids; METHODS §3.7), closed at (0, 0) and (1, 1)
    unless ``closed`` is False (the sweep's own span only).

    Examples
    --------
    >>> auc(np.array([0.0, 0.5]), np.array([0.5, 1.0])), auc(np.array([0.0, 0.5]), np.array([0.5, 1.0]), closed=False)
    (0.875, 0.375)
    """
    fpr, tpr = np.asarray(fpr, dtype=np.float64), np.asarray(tpr, dtype=np.float64)
    finite = np.isfinite(fpr) & np.isfinite(tpr)
    ends = ([0.0], [1.0]) if closed else ([], [])
    x = np.concatenate([ends[0], fpr[finite], ends[1]])
    y = np.concatenate([ends[0], tpr[finite], ends[1]])
    order = np.lexsort((y, x))
    return float(np.trapezoid(y[order], x[order]))


def rank_auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the full ROC of a score, exactly: the Mann-Whitney probability that a positive outscores a
    negative (ties count one half; NaN scores rank lowest). Needs the scores in memory, unlike the sweeps.

    Examples
    --------
    >>> rank_auc(np.array([0.9, 0.4, 0.4, 0.1]), np.array([True, True, False, False]))
    0.875
    """
    from scipy.stats import rankdata

    score = np.nan_to_num(np.asarray(score, dtype=np.float64), nan=-np.inf)
    positive = np.asarray(positive, dtype=bool)
    npos, nneg = int(positive.sum()), int((~positive).sum())
    if npos == 0 or nneg == 0:
        return float("nan")
    return float((rankdata(score)[positive].sum() - npos * (npos + 1) / 2.0) / (npos * nneg))


def roc_curve(score: np.ndarray, positive: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TPR and FPR of ``score > t`` for each threshold, from one block's :func:`threshold_partial`.

    Examples
    --------
    >>> tpr, fpr = roc_curve(np.array([0.02, 0.004, 0.03, 0.001]), np.array([True, True, False, False]),
    ...                      np.array([0.003, 0.01, 0.05]))
    >>> tpr.tolist(), fpr.tolist()
    ([1.0, 0.5, 0.0], [0.5, 0.5, 0.0])
    """
    table = threshold_from_partials(threshold_partial(score, positive, thresholds))
    return table["completeness"], table["fpr"]


def nearest_to_corner(fpr: np.ndarray, tpr: np.ndarray) -> int:
    """Index of the sweep point nearest to (FPR, TPR) = (0, 1), ``argmin sqrt(FPR² + (1 - TPR)²)``."""
    distance = np.hypot(np.asarray(fpr, dtype=np.float64), 1.0 - np.asarray(tpr, dtype=np.float64))
    return int(np.nanargmin(distance))


def class_histogram_partial(values: np.ndarray, classes: np.ndarray, nclasses: int, edges: np.ndarray) -> np.ndarray:
    """``(nclasses, len(edges) - 1)`` histogram of ``values`` per integer class (out-of-range values and classes
    are not counted)."""
    classes = np.asarray(classes, dtype=np.int64)
    column = bin_index(values, edges)
    inside = (column >= 0) & (classes >= 0) & (classes < nclasses)
    flat = np.bincount(classes[inside] * (edges.size - 1) + column[inside], minlength=nclasses * (edges.size - 1))
    return flat.reshape(nclasses, edges.size - 1)

