"""``dzspec calibrate-confidence`` and ``dzspec calibrate-zerr``: what a basis learns from a scanned store with known
redshifts.

The store is a simulated survey (truth in ``z_true``; false sources, with NaN, are never right) already scanned by
``dzspec zfind`` with the basis the model will belong to. Its rows are split in two disjoint halves by a seeded
permutation: the gradient-boosted trees are fitted on one, and the LOW_CONFIDENCE threshold chosen on the other as the
lowest cut at which the spectra left with ``zwarn == 0`` are ``purity`` right. The model, the threshold and that
report are stored with the basis (``bases/<name>`` attributes), so every later ``zfind`` with it fills
``confidence`` and sets LOW_CONFIDENCE. Quote acceptance figures from a third store that neither the basis nor this
calibration saw.

``calibrate_zerr`` fits the ZERR calibration (:mod:`dzspec.engines.nmf.zerr`) on the right redshifts of such a store and
stores it with the basis, or (``save=False``) reports the pull widths of a store scanned with it: the check on a
store the calibration did not see.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from os import PathLike
from typing import Any

import numpy as np

from dzspec.engines.nmf.confidence import FEATURE_INPUTS, FEATURES, fit_confidence, scan_features, threshold_for_purity
from dzspec.engines.nmf.zerr import apply_zerr_calibration, fit_zerr_calibration, pull_widths
from dzspec.engines.nmf.zfind import ZWarn
from dzspec.io import store as zstore
from dzspec.io.bases import load_basis, save_confidence, save_zerr_calibration

__all__ = ["calibrate_confidence", "calibrate_zerr", "right_redshifts"]

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


def calibrate_zerr(store: str | PathLike[str], results: str, basis_store: str | PathLike[str] | None = None, *,
                   basis_name: str = "nmf", snr: str = "snr_lines", edges: tuple[float, ...] = (5.0, 13.0, 30.0),
                   z_edges: tuple[float, ...] = (1.5, 2.9), min_count: int = 30, save: bool = True) -> dict[str, Any]:
    """Fit the ZERR calibration of a basis on a scanned simulated store and store it with the basis (``save``), or
    measure the pull widths on a store the calibration did not see (``save=False``: the store's own ``zerr``, or
    with ``basis_store`` the zerr that the basis's stored calibration gives the same scan).

    Right redshifts (:func:`right_redshifts` of ``z_refined``) are binned by the spectra group's coordinate ``snr`` (the
    simulator's ``snr_lines``) at ``edges``, and calibrated apart in the ranges of z between ``z_edges``
    (:func:`~dzspec.engines.nmf.zerr.fit_zerr_calibration`); bins of fewer than ``min_count`` do not constrain the fit.
    The scan's raw parabola widths are recovered from its ``zerr`` and the calibration it ran with, so a store scanned
    with an earlier calibration serves as well. Returns the report: scale, floor, and per bin the count and the pull
    widths (IQR / 1.349 of ``(z - z_true) / zerr``).
    """
    root = zstore.open_root(store)
    group = root[results]
    params = dict(group.attrs["params"])
    if "zerr" not in group:
        raise ValueError(f"{store}/{results}: no zerr (a scan without refine, or from before ZERR)")
    spectra = root[group.attrs["input_group"]]
    if snr not in spectra or "z_true" not in spectra:
        raise ValueError(f"{store}/{group.attrs['input_group']}: needs z_true and {snr} (a simulated store)")
    z = np.asarray(group["z_refined"][...], np.float64)
    zerr = np.asarray(group["zerr"][...], np.float64)
    z_true = np.asarray(spectra["z_true"][...], np.float64)
    snr_values = np.asarray(spectra[snr][...], np.float64)
    right = right_redshifts(z, z_true)
    scan = {key: params.get(key, default) for key, default in
            (("zerr_scale", [1.0]), ("zerr_floor", [0.0]), ("zerr_z_edges", []))}
    # the raw widths: the scan's calibration undone (a = sqrt(sigma^2 scale^2 + floor^2 (1+z)^2))
    unit = apply_zerr_calibration(np.ones_like(z), z, scan["zerr_scale"], 0.0, scan["zerr_z_edges"])
    floor = apply_zerr_calibration(np.zeros_like(z), z, 1.0, scan["zerr_floor"], scan["zerr_z_edges"])
    with np.errstate(invalid="ignore"):
        sigma = np.sqrt(np.maximum(zerr**2 - floor**2, 0.0)) / unit
    report: dict[str, Any] = {"store": str(store), "results": results, "snr": snr, "snr_edges": list(edges),
                              "right": int(right.sum()), **{f"scan_{key}": value for key, value in scan.items()}}
    if save:
        if basis_store is None:
            raise ValueError("calibrate_zerr(save=True) needs the basis store")
        basis = load_basis(basis_store, basis_name)
        if params.get("basis_sha256") != basis.attrs["basis_sha256"]:
            raise ValueError(f"{store}/{results} was scanned with another basis than {basis_store}/bases/{basis_name}")
        fit = fit_zerr_calibration(z[right], z_true[right], sigma[right], snr_values[right], edges=edges,
                                   z_edges=z_edges, min_count=min_count)
        report.update(fit.as_attrs())
        save_zerr_calibration(basis_store, basis_name, {**fit.as_attrs(), "source": f"{store}/{results}"})
        zerr = apply_zerr_calibration(sigma, z, fit.scale, fit.floor, fit.z_edges)
    elif basis_store is not None:
        basis = load_basis(basis_store, basis_name)
        if params.get("basis_sha256") != basis.attrs["basis_sha256"]:
            raise ValueError(f"{store}/{results} was scanned with another basis than {basis_store}/bases/{basis_name}")
        stored = basis.attrs.get("zerr_calibration")
        if stored is None:
            raise ValueError(f"{basis_store}/bases/{basis_name} has no ZERR calibration to check")
        report.update({key: stored[key] for key in ("zerr_scale", "zerr_floor", "zerr_z_edges")})
        zerr = apply_zerr_calibration(sigma, z, stored["zerr_scale"], stored["zerr_floor"], stored["zerr_z_edges"])
    right &= np.isfinite(snr_values)  # as the fit: a spectrum without an S/N is in no bin
    bins = np.searchsorted(np.asarray(edges), snr_values[right], side="right")
    widths, counts = pull_widths(z[right], z_true[right], zerr[right], bins, len(edges) + 1)
    report.update({"pull_widths": widths.tolist(), "counts": counts.tolist()})
    log.info("%s/%s: ZERR pull widths by %s bin %s: %s", store, results, snr, edges, np.round(widths, 3).tolist())
    return report
