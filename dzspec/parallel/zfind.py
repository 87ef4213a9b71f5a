"""``dzspec zfind``: NMF redshifts of every spectrum of a store through the block runner (resumable).

The block kernel, its parameters and the worker-side basis cache are the NMF engine's
(:mod:`dzspec.engines.nmf.adapter`); this module submits them to a cluster and runs the store-level passes after a
complete run (:func:`finalize_zfind`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from distributed import Client

from dzspec.engines.nmf.adapter import ZFIND, finalize_flags, zfind_params
from dzspec.engines.nmf.confidence import FEATURE_INPUTS, ConfidenceModel
from dzspec.io import store as zstore
from dzspec.io.bases import load_basis
from dzspec.parallel.noise_calibration import noise_params
from dzspec.parallel.runner import RunReport, run_kernel

__all__ = ["finalize_zfind", "run_zfind"]

log = logging.getLogger(__name__)


def run_zfind(store: str | PathLike[str], basis_store: str | PathLike[str], client: Client, *,
              basis_name: str = "nmf", params: Mapping[str, Any] | None = None, noise_calibration: str = "auto",
              sky_nuisance: str = "auto", finalize: bool = True, **runner: Any) -> RunReport:
    """Scan every spectrum of a store's spectra group with a saved basis, into ``results/<grid>/nmf_zfind``.

    ``params`` override :data:`~dzspec.engines.nmf.adapter.ZFIND`'s defaults (trial grid, weighting, ``refine``,
    ``store_chi2``, ``chi2_decimate``, ``nuisance_order`` ...; a missing or None ``z_min``/``z_max`` is the basis's
    ``scan_z_range`` attribute when it has one, else 0-6.7; Moose's ``weighting="unweighted"`` fit has no nuisance
    terms, so there the default order is -1: :func:`~dzspec.engines.nmf.adapter.zfind_params`); ``noise_calibration``
    is ``"auto"`` (the group's own calibration, measured first when missing or stale and the group is large enough,
    else the basis store's instrument default for the grid:
    :func:`~dzspec.parallel.noise_calibration.resolve_noise_calibration`), ``"off"``, or the name of a stored one;
    ``sky_nuisance`` ``"auto"`` fits the basis's night-sky continuum (when it carries one and there are nuisance
    terms) as one more free-sign term, ``"off"`` does not; with ``finalize`` a complete run ends with
    :func:`finalize_zfind` (redshift spikes, confidence); ``runner`` goes to
    :func:`dzspec.parallel.runner.run_kernel` (group, resume, overwrite, block_rows, ...).
    """
    basis_store = str(Path(basis_store).resolve())
    full = zfind_params(basis_store, basis_name, params, sky_nuisance=sky_nuisance)
    spectra = zstore.resolve_spectra_group(zstore.open_root(store), runner.get("group"))
    full.update(noise_params(store, spectra, noise_calibration, fallback=basis_store))
    report = run_kernel(store, ZFIND, client, params=full, **runner)
    if finalize and report.complete:
        finalize_zfind(store, report.results)
    return report


def finalize_zfind(store: str | PathLike[str], results: str, *, keep_deltachi2: float = 100.0,
                   p_max: float = 1e-6) -> dict[str, Any]:
    """The store-level passes after a complete ``nmf_zfind`` run: redshift spikes, then confidence
    (:func:`~dzspec.engines.nmf.adapter.finalize_flags` on the whole results group).

    Reads a few columns per spectrum (even 10^6 spectra take some tens of MB here) and rewrites ``zwarn``,
    ``znote`` and ``confidence``; deterministic, so a rerun or a resumed run gives the same bits. Returns the
    spikes summary.
    """
    root = zstore.open_root(store, mode="a")
    group = root[results]
    params = dict(group.attrs["params"])
    model = None
    if params.get("confidence_sha256"):
        stored = load_basis(params["basis_store"], params["basis_name"]).attrs.get("confidence", {})
        if stored.get("sha256") != params["confidence_sha256"]:
            raise ValueError(f"{params['basis_store']}/bases/{params['basis_name']}: the confidence model changed "
                             "since the scan started")
        model = ConfidenceModel.from_attrs(stored)
    names = {"z", "zwarn", "znote", "deltachi2", *(FEATURE_INPUTS if model is not None else ())}
    columns = {name: group[name][...] for name in sorted(names) if name in group}
    zwarn, znote = np.asarray(columns["zwarn"], dtype=np.uint32), np.asarray(columns["znote"], dtype=np.uint32)
    flagged, noted, confidence, summary = finalize_flags(columns, params, model, keep_deltachi2=keep_deltachi2,
                                                         p_max=p_max)
    with zstore.run_lock(store, results):
        if not np.array_equal(flagged, zwarn):
            group["zwarn"][...] = flagged
        if not np.array_equal(noted, znote):
            group["znote"][...] = noted
        if confidence is not None:
            group["confidence"][...] = confidence.astype(np.float32)
        group.attrs["redshift_spikes"] = zstore.jsonable(summary)
    if summary["z"]:
        log.info("%s: %d redshift spikes (z = %s), %d spectra flagged Z_SPIKE", results, len(summary["z"]),
                 ", ".join(f"{z:.4f}" for z in summary["z"]), summary["flagged"])
    return summary
