"""``dzspec calibrate-confidence``: learn the NMF confidence model on a scanned store with known redshifts.

The store is a simulated survey (truth in ``z_true``; false sources, with NaN, are never right) already scanned by
``dzspec zfind`` with the basis the model will belong to. Its rows are split in two disjoint halves by a seeded
permutation: the gradient-boosted trees are fitted on one, and the LOW_CONFIDENCE threshold chosen on the other as the
lowest cut at which the spectra left with ``zwarn == 0`` are ``purity`` right. The model, the threshold and that
report are stored with the basis (``bases/<name>`` attributes), so every later ``zfind`` with it fills
``confidence`` and sets LOW_CONFIDENCE. Quote acceptance figures from a third store that neither the basis nor this
calibration saw.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from os import PathLike
from typing import Any

import numpy as np

from dzspec.io import store as zstore
from dzspec.io.bases import load_basis, save_confidence
from dzspec.kernels.confidence import FEATURE_INPUTS, FEATURES, fit_confidence, scan_features, threshold_for_purity
from dzspec.kernels.zfind import ZWarn

__all__ = ["calibrate_confidence", "right_redshifts"]

log = logging.getLogger(__name__)


def right_redshifts(z: np.ndarray, z_true: np.ndarray, tolerance: float = 0.005) -> np.ndarray:
    """``|z - z_true| < tolerance (1 + z_true)`` (B26's good redshift); False where either is NaN.

    Examples
    --------
    >>> right_redshifts(np.array([1.0, 1.0, 2.0]), np.array([1.009, np.nan, 2.1])).tolist()
    [True, False, False]
    """
    with np.errstate(invalid="ignore"):
        return np.abs(np.asarray(z) - np.asarray(z_true)) < tolerance * (1 + np.asarray(z_true))


def calibrate_confidence(store: str | PathLike[str], results: str, basis_store: str | PathLike[str], *,
                         basis_name: str = "nmf", purity: float = 0.995, seed: int = 0) -> dict[str, Any]:
    """Fit, calibrate and store the confidence model of ``bases/<basis_name>``; returns the report."""
    root = zstore.open_root(store)
    group = root[results]
    if group.attrs.get("status") != "complete":
        raise ValueError(f"{store}/{results}: the zfind run is not complete")
    params = dict(group.attrs["params"])
    basis = load_basis(basis_store, basis_name)
    if params.get("basis_sha256") != basis.attrs["basis_sha256"]:
        raise ValueError(f"{store}/{results} was scanned with another basis than {basis_store}/bases/{basis_name}")
    columns = {name: group[name][...] for name in (*FEATURE_INPUTS, "zwarn") if name in group}
    z_true = np.asarray(root[group.attrs["input_group"]]["z_true"][...], np.float64)
    right = right_redshifts(columns["z"], z_true)
    x = scan_features(columns, spike_bit=int(ZWarn.Z_SPIKE), npixels_max=int(np.nanmax(columns["npixels"])))
    # the confidence takes over from LOW_ROBUSTNESS (finalize_zfind moves it to znote), so it is no gate here
    other_bits = (columns["zwarn"] & ~np.uint32(ZWarn.LOW_CONFIDENCE | ZWarn.LOW_ROBUSTNESS)) != 0
    scanned = np.isfinite(columns["z"])
    order = np.random.default_rng(seed).permutation(np.flatnonzero(scanned))
    fit_rows, calibration_rows = np.sort(order[: order.size // 2]), np.sort(order[order.size // 2:])
    model = fit_confidence(x[fit_rows], right[fit_rows], FEATURES, seed=seed)
    confidence = model.predict(x)
    eligible = calibration_rows[~other_bits[calibration_rows]]
    cut = threshold_for_purity(confidence[eligible], right[eligible], purity)
    model = replace(model, threshold=cut["threshold"])
    kept = calibration_rows[~other_bits[calibration_rows] & (confidence[calibration_rows] >= model.threshold)]
    known = calibration_rows[np.isfinite(z_true[calibration_rows])]
    report = {
        "store": str(store), "results": results, "purity_target": purity, "seed": seed,
        "fit_spectra": int(fit_rows.size), "calibration_spectra": int(calibration_rows.size),
        "threshold": model.threshold,
        "calibration_purity": float(right[kept].mean()) if kept.size else float("nan"),
        "calibration_kept_of_known_z": float(np.isin(known, kept).mean()) if known.size else float("nan"),
        "calibration_purity_without_confidence": float(right[calibration_rows[~other_bits[calibration_rows]]].mean()),
    }
    report["confidence_sha256"] = save_confidence(basis_store, basis_name, model.as_attrs(), report)
    log.info("confidence model of %s/bases/%s: threshold %.4f, calibration purity %.4f keeping %.3f of known-z "
             "spectra", basis_store, basis_name, model.threshold, report["calibration_purity"],
             report["calibration_kept_of_known_z"])
    return report
