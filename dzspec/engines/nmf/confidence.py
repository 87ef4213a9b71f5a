"""A per-spectrum confidence that an NMF redshift is right, learned from the scan's own outputs (METHODS §5.7).

Right and wrong redshifts differ in what the scan already measures: how deep the best minimum is (B26's
significance, and the χ² it gains over a typical trial), how far below the next one (R, Redrock's DELTACHI2, also
in units of the fit's own reduced χ² so that a bright real spectrum whose model is merely imperfect is not read as
uncertain), whether the runner-up sits at a known line confusion (Lya read as [O II], [O III] as Halpha ...), how good
the fit is, how much of it the nuisance terms carry, whether the redshift sits on a store's spike.
:func:`scan_features` turns a results table into those features; :func:`fit_confidence` fits gradient-boosted
trees (scikit-learn's ``GradientBoostingClassifier``, deterministic) on simulated spectra with known redshifts and
exports them as plain arrays, so the model is a few hundred small trees stored with the basis it belongs to (never
a pickle) and :meth:`ConfidenceModel.predict` needs NumPy only. Trees do not extrapolate: a feature beyond the
training range (a real galaxy brighter than any simulated one) is read as the largest value the training saw,
where a linear model would push it to 0 or 1. :func:`threshold_for_purity` picks the confidence below which
``zwarn`` gets LOW_CONFIDENCE, on a calibration set disjoint from the fit, for a target purity of the spectra left
with ``zwarn == 0``.

Examples
--------
>>> rng = np.random.default_rng(0)
>>> x = rng.normal(size=(400, 2)); right = (x[:, 0] + 0.3 * rng.normal(size=400)) > 0
>>> model = fit_confidence(x, right, ["a", "b"])
>>> p = model.predict(np.array([[2.0, 0.0], [-2.0, 0.0]]))
>>> bool(p[0] > 0.9), bool(p[1] < 0.1)
(True, True)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.special

__all__ = ["FEATURES", "FEATURE_INPUTS", "LINE_PAIR_RATIOS", "ConfidenceModel", "fit_confidence", "scan_features",
           "threshold_for_purity"]

#: The features of :func:`scan_features`, in order.
FEATURES: tuple[str, ...] = (
    "log10_significance", "asinh_robustness", "asinh_deltachi2", "log10_reduced_chi2", "second_significance",
    "asinh_pedestal", "coverage", "on_spike", "log1p_z", "asinh_gain", "deltachi2_fraction",
    "asinh_scaled_deltachi2", "asinh_confusion_deltachi2",
)

#: The results columns :func:`scan_features` reads (besides ``zwarn``; ``nuisance_coeff`` only when present).
FEATURE_INPUTS: tuple[str, ...] = ("z", "chi2", "npixels", "nmf_significance", "nmf_robustness", "deltachi2",
                                   "candidate_z", "candidate_chi2", "candidate_significance", "nuisance_coeff")

#: Strong rest-frame lines (vacuum, Angstrom) whose mutual confusion puts a wrong redshift at a fixed ratio of 1 + z.
_CONFUSED_LINES = (1215.67, 1549.06, 1908.73, 2799.12, 3728.48, 4862.68, 5008.24, 6564.61)
#: Every ratio of two of them: (1 + z_alternative) / (1 + z) of a line confusion.
LINE_PAIR_RATIOS: np.ndarray = np.unique([a / b for a in _CONFUSED_LINES for b in _CONFUSED_LINES if a != b])
_CONFUSION_TOLERANCE = 0.003  # relative, in 1 + z: a few trial steps at any redshift, far below a line spacing
_NO_CONFUSION = 30.0  # asinh(Δχ²/10) of "no confusable alternative": beyond any Δχ² a scan gives


def scan_features(results: Mapping[str, np.ndarray], *, spike_bit: int, npixels_max: int) -> np.ndarray:
    """``(nspec, len(FEATURES))`` float64 features of NMF results (``dzspec zfind``'s columns), NaN-free.

    ``results`` needs ``z``, ``chi2``, ``npixels``, ``nmf_significance``, ``nmf_robustness``, ``deltachi2``,
    ``candidate_z``, ``candidate_chi2``, ``candidate_significance``, ``zwarn`` and, when present,
    ``nuisance_coeff``; ``spike_bit`` is ZWarn.Z_SPIKE and ``npixels_max`` the scanned window's length. Undefined
    values (no second minimum, no data) become the least confident value of their feature.

    Beyond B26's and Redrock's own numbers: ``asinh_gain`` is the χ² the best trial gains over the first quartile
    of the trials (``chi2 * significance / (1 - significance)``, how strongly the spectrum is detected at all),
    ``deltachi2_fraction`` the part of that gain that DELTACHI2 keeps against the runner-up,
    ``asinh_scaled_deltachi2`` DELTACHI2 divided by the reduced χ² when that exceeds 1 (a bright spectrum that the
    basis fits imperfectly has large χ² differences everywhere), and ``asinh_confusion_deltachi2`` the scaled χ²
    of the closest candidate at a line-confusion ratio of 1 + z (:data:`LINE_PAIR_RATIOS`) above the best.

    Examples
    --------
    >>> cols = {"z": np.array([3.0]), "chi2": np.array([3600.0]), "npixels": np.array([3600]),
    ...         "nmf_significance": np.array([0.1]), "nmf_robustness": np.array([2.0]),
    ...         "deltachi2": np.array([20.0]), "candidate_z": np.array([[3.0, 0.3043]]),
    ...         "candidate_chi2": np.array([[3600.0, 3620.0]]), "candidate_significance": np.array([[0.1, 0.09]]),
    ...         "zwarn": np.array([0], np.uint32)}
    >>> x = scan_features(cols, spike_bit=1 << 15, npixels_max=3681)
    >>> round(float(x[0, FEATURES.index("asinh_confusion_deltachi2")]), 3)  # Lya at 3 or [O II] at 0.304
    1.444
    """
    n = np.asarray(results["z"]).shape[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.asarray(results["z"], np.float64)
        chi2 = np.asarray(results["chi2"], np.float64)
        significance = np.asarray(results["nmf_significance"], np.float64)
        log_sig = np.log10(np.clip(significance, 1e-6, 1.0))
        robustness = np.arcsinh(np.asarray(results["nmf_robustness"], np.float64))
        deltachi2 = np.asarray(results["deltachi2"], np.float64)
        npixels = np.asarray(results["npixels"], np.float64)
        reduced = chi2 / np.maximum(npixels, 1.0)
        candidates = np.asarray(results["candidate_significance"], np.float64)
        second = candidates[:, 1] if candidates.shape[1] > 1 else np.zeros(n)
        nuisance = results.get("nuisance_coeff")
        pedestal = np.zeros(n) if nuisance is None or np.shape(nuisance)[1] == 0 else \
            np.arcsinh(np.asarray(nuisance, np.float64)[:, 0])
        spike = (np.asarray(results["zwarn"]).astype(np.int64) & int(spike_bit)) != 0
        gain = chi2 * significance / (1.0 - significance)
        scale = np.maximum(reduced, 1.0)
        confusion = _confusion_deltachi2(z, chi2, np.asarray(results["candidate_z"], np.float64),
                                         np.asarray(results["candidate_chi2"], np.float64)) / scale
    x = np.column_stack([log_sig, robustness, np.arcsinh(deltachi2 / 10.0), np.log10(reduced), second, pedestal,
                         npixels / max(npixels_max, 1), spike.astype(np.float64), np.log1p(z),
                         np.arcsinh(gain / 10.0), deltachi2 / gain, np.arcsinh(deltachi2 / scale / 10.0),
                         np.arcsinh(confusion / 10.0)])
    # where a value is undefined
    worst = np.array([-6.0, 0.0, 0.0, 3.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    return np.where(np.isfinite(x), x, worst)


def _confusion_deltachi2(z: np.ndarray, chi2: np.ndarray, candidate_z: np.ndarray,
                         candidate_chi2: np.ndarray) -> np.ndarray:
    """χ² above the best of the lowest other candidate at a line-pair ratio of 1 + z (``sinh(_NO_CONFUSION)*10``
    when none is)."""
    out = np.full(z.shape, np.sinh(_NO_CONFUSION) * 10.0)
    for c in range(1, candidate_z.shape[1]):
        ratio = (1.0 + candidate_z[:, c]) / (1.0 + z)
        nearest = np.abs(ratio[:, None] / LINE_PAIR_RATIOS - 1.0).min(axis=1, initial=np.inf)
        confused = nearest < _CONFUSION_TOLERANCE
        out = np.where(confused, np.fmin(out, candidate_chi2[:, c] - chi2), out)
    return out


@dataclass(frozen=True)
class ConfidenceModel:
    """Gradient-boosted regression trees on the log-odds that a redshift is right, as plain arrays.

    ``P(right) = expit(init + learning_rate * sum over trees of the leaf value reached)``. The trees' nodes are
    concatenated: ``roots`` holds each tree's first node, ``left``/``right`` the children (-1 at a leaf),
    ``feature`` and ``split`` the test ``x[feature] <= split`` (made, as scikit-learn does, on float32 features),
    ``value`` the leaf values. ``threshold`` is the LOW_CONFIDENCE cut.
    """

    features: tuple[str, ...]
    init: float
    learning_rate: float
    roots: np.ndarray
    feature: np.ndarray
    split: np.ndarray
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray
    depth: int
    threshold: float = 0.5
    kind: str = "gradient_boosted_trees"

    def predict(self, x: np.ndarray, *, rows_per_pass: int = 4096) -> np.ndarray:
        """P(right) for each row of ``x`` (float64); ``rows_per_pass`` bounds the memory (rows x trees indices)."""
        x = np.asarray(x, np.float64).astype(np.float32).astype(np.float64)
        out = np.empty(x.shape[0])
        # a leaf is its own child, so that every row takes ``depth`` steps down every tree
        nodes = np.arange(self.left.size, dtype=np.int32)
        left, right = np.where(self.left < 0, nodes, self.left), np.where(self.right < 0, nodes, self.right)
        feature = np.maximum(self.feature, 0)
        for start in range(0, x.shape[0], rows_per_pass):
            rows = x[start: start + rows_per_pass]
            flat, row_start = rows.ravel(), (np.arange(rows.shape[0]) * rows.shape[1])[:, None]
            node = np.broadcast_to(self.roots, (rows.shape[0], self.roots.size))
            for _ in range(self.depth):
                node = np.where(flat[row_start + feature[node]] <= self.split[node], left[node], right[node])
            out[start: start + rows_per_pass] = scipy.special.expit(
                self.init + self.learning_rate * self.value[node].sum(axis=1))
        return out

    def as_attrs(self) -> dict[str, Any]:
        """Plain JSON numbers, stored with the basis."""
        return {"kind": self.kind, "features": list(self.features), "init": float(self.init),
                "learning_rate": float(self.learning_rate), "depth": int(self.depth),
                "threshold": float(self.threshold),
                **{name: getattr(self, name).tolist() for name in ("roots", "feature", "split", "left", "right",
                                                                   "value")}}

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> ConfidenceModel:
        """The model :meth:`as_attrs` stored; refuses one of another kind or made for other features."""
        if attrs.get("kind") != "gradient_boosted_trees" or tuple(attrs["features"]) != FEATURES:
            raise ValueError(f"the stored confidence model ({attrs.get('kind', 'logistic regression')}, features "
                             f"{list(attrs['features'])}) is not the one this dzspec computes (gradient-boosted trees, "
                             f"features {list(FEATURES)}): refit it with dzspec calibrate-confidence")
        ints = {name: np.asarray(attrs[name], np.int32) for name in ("roots", "feature", "left", "right")}
        return cls(tuple(attrs["features"]), float(attrs["init"]), float(attrs["learning_rate"]),
                   split=np.asarray(attrs["split"], np.float64), value=np.asarray(attrs["value"], np.float64),
                   depth=int(attrs["depth"]), threshold=float(attrs["threshold"]), **ints)


def fit_confidence(x: np.ndarray, right: np.ndarray, features: Sequence[str] = FEATURES, *, n_trees: int = 300,
                   max_depth: int = 3, learning_rate: float = 0.05, min_samples_leaf: int = 20,
                   seed: int = 0) -> ConfidenceModel:
    """Fit P(right | x) by gradient-boosted trees (scikit-learn, log-loss, no subsampling: deterministic) and
    export them (:class:`ConfidenceModel`); the export is checked against scikit-learn's own prediction."""
    from sklearn.ensemble import GradientBoostingClassifier  # fitting only: predicting needs NumPy alone

    x = np.asarray(x, np.float64)
    y = np.asarray(right, bool)
    if x.shape[0] != y.shape[0] or x.shape[0] < 10 or y.min() == y.max():
        raise ValueError("a confidence model needs >= 10 spectra, both right and wrong ones")
    booster = GradientBoostingClassifier(loss="log_loss", n_estimators=n_trees, max_depth=max_depth,
                                         learning_rate=learning_rate, min_samples_leaf=min_samples_leaf,
                                         subsample=1.0, random_state=seed)
    booster.fit(x, y)
    trees = [estimator.tree_ for estimator in booster.estimators_[:, 0]]
    sizes = np.array([tree.node_count for tree in trees])
    offsets = np.r_[0, np.cumsum(sizes)[:-1]]
    shift = np.repeat(offsets, sizes)

    def children(name: str) -> np.ndarray:
        raw = np.concatenate([getattr(tree, name) for tree in trees])
        return np.where(raw < 0, -1, raw + shift).astype(np.int32)

    model = ConfidenceModel(
        tuple(features), init=float(scipy.special.logit(y.mean())), learning_rate=float(learning_rate),
        roots=offsets.astype(np.int32), feature=np.concatenate([tree.feature for tree in trees]).astype(np.int32),
        split=np.concatenate([tree.threshold for tree in trees]).astype(np.float64),
        left=children("children_left"), right=children("children_right"),
        value=np.concatenate([tree.value[:, 0, 0] for tree in trees]).astype(np.float64),
        depth=int(max(tree.max_depth for tree in trees)))
    expected = booster.predict_proba(x)[:, 1]
    if not np.allclose(model.predict(x), expected, rtol=0, atol=1e-9):  # a scikit-learn whose trees we misread
        raise RuntimeError("the exported confidence trees do not reproduce scikit-learn's prediction")
    return model


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
