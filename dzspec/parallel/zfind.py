"""``dzspec zfind``: NMF redshifts of every spectrum of a store through the block runner (resumable).

The basis (and its FFTs, ~35 MB at the paper's grid) never travels with tasks: each worker loads it once from
its Zarr store through an LRU cache keyed by path, name and checksum.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from functools import lru_cache
from numbers import Integral
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from distributed import Client

from dzspec.io import store as zstore
from dzspec.io.bases import Basis, load_basis, load_sky_continuum
from dzspec.kernels.base import KernelSpec, OutputSpec
from dzspec.kernels.confidence import FEATURE_INPUTS, ConfidenceModel, scan_features
from dzspec.kernels.nmf_scan import PreparedBasis, prepare_basis
from dzspec.kernels.restframe import observed_window
from dzspec.kernels.zfind import MIN_DELTACHI2, ZWarn, nmf_zfind
from dzspec.kernels.zspikes import find_spikes, spike_members, trial_index
from dzspec.parallel.noise_calibration import NOISE_PARAMS, calibrated_ivar, noise_params
from dzspec.parallel.runner import RunReport, run_kernel
from dzspec.results_schema import CANDIDATE_DIM, REDSHIFT_DIM, ZNote, output_specs

__all__ = [
    "ZFIND",
    "cached_basis",
    "cached_prepared",
    "cached_sky_continuum",
    "finalize_flags",
    "finalize_zfind",
    "run_zfind",
    "sky_continuum_on",
    "trial_redshifts",
    "zfind_params",
]

log = logging.getLogger(__name__)


@lru_cache(maxsize=2)
def cached_basis(path: str, name: str, sha256: str) -> Basis:
    """The basis ``bases/<name>`` of ``path``, loaded once per process and checked against ``sha256``."""
    basis = load_basis(path, name)
    if basis.attrs["basis_sha256"] != sha256:
        raise ValueError(f"{path}/bases/{name} changed since the run started (checksum differs)")
    return basis


@lru_cache(maxsize=2)
def cached_prepared(path: str, name: str, sha256: str, n_obs: int, support_floor: float) -> PreparedBasis:
    """:func:`~dzspec.kernels.nmf_scan.prepare_basis` of :func:`cached_basis` for ``n_obs`` pixels, once per process."""
    return prepare_basis(cached_basis(path, name, sha256).basis, n_obs, support_floor=support_floor)


@lru_cache(maxsize=2)
def cached_sky_continuum(path: str, name: str, sha256: str) -> tuple[np.ndarray, np.ndarray]:
    """``(wavelength, continuum)`` of the basis's sky nuisance term, once per process, checked against ``sha256``."""
    sky = load_sky_continuum(path, name, sha256=sha256)
    if sky is None:
        raise ValueError(f"{path}/bases/{name} lost its sky continuum since the run started")
    return sky


def sky_continuum_on(wavelength: np.ndarray, basis_store: str, basis_name: str, sky_sha256: str) -> np.ndarray | None:
    """The basis's sky continuum interpolated onto ``wavelength`` (NaN beyond its range), as the scan fits it; None
    for a scan without the sky term (``sky_sha256`` empty)."""
    if not sky_sha256:
        return None
    sky_wave, sky_values = cached_sky_continuum(basis_store, basis_name, sky_sha256)
    return np.interp(wavelength, sky_wave, sky_values, left=np.nan, right=np.nan)


def _zfind_block(wavelength: np.ndarray, flux: np.ndarray, ivar: np.ndarray, *, basis_store: str, basis_name: str,
                 basis_sha256: str, rank: int, z_min: float, z_max: float, dz: float, weighting: str,
                 support_floor: float, n_candidates: int, refine: bool, store_chi2: bool,
                 chi2_decimate: int, nuisance_order: int, sky_sha256: str, noise_store: str, noise_group: str,
                 noise_name: str, noise_sha256: str, confidence_sha256: str, zerr_scale: list[float],
                 zerr_floor: list[float], zerr_z_edges: list[float]) -> dict[str, np.ndarray]:
    basis = cached_basis(basis_store, basis_name, basis_sha256)
    sky = sky_continuum_on(wavelength, basis_store, basis_name, sky_sha256)
    ivar = calibrated_ivar(ivar, noise_store=noise_store, noise_group=noise_group, noise_name=noise_name,
                           noise_sha256=noise_sha256)
    _, n_obs = observed_window(wavelength, basis.grid)
    prepared = cached_prepared(basis_store, basis_name, basis_sha256, n_obs, support_floor)
    z_trials = trial_redshifts(z_min, z_max, dz)
    out = nmf_zfind(wavelength, flux, ivar, prepared=prepared, grid=basis.grid, shifts=basis.grid.shift_of(z_trials),
                    weighting=weighting, n_candidates=n_candidates, refine=refine, store_chi2=store_chi2,
                    chi2_decimate=chi2_decimate, nuisance_order=nuisance_order, sky_continuum=sky,
                    zerr_scale=zerr_scale, zerr_floor=zerr_floor, zerr_z_edges=zerr_z_edges)
    out["confidence"] = np.full(flux.shape[0], np.nan, np.float32)  # needs the whole store: finalize_zfind
    return out


def trial_redshifts(z_min: float, z_max: float, dz: float) -> np.ndarray:
    """The nominal trial redshifts (B26: 0, 0.0005, ..., 6.7)."""
    return z_min + dz * np.arange(round((z_max - z_min) / dz) + 1)


def _outputs(params: Mapping[str, Any]) -> dict[str, OutputSpec]:
    names = ["z", "chi2", "deltachi2", "npixels", "coeff", "nmf_significance", "nmf_robustness", "candidate_z",
             "candidate_chi2", "candidate_significance", "zwarn", "znote", "confidence"]
    if int(params["nuisance_order"]) >= 0:
        names.append("nuisance_coeff")
    sizes = {"coeff": int(params["rank"]), CANDIDATE_DIM: int(params["n_candidates"]),
             "nuisance": int(params["nuisance_order"]) + 1 + bool(params["sky_sha256"])}
    extra: dict[str, dict[str, Any]] = {
        "z": {"description": "best trial redshift (quantised to the basis grid)"},
        "zwarn": {"small_delta_chi2": f"deltachi2 < {MIN_DELTACHI2}"},
    }
    if params["refine"]:
        names += ["z_refined", "chi2_refined", "zerr"]
        extra["zerr"] = {"description": "1-sigma uncertainty of z_refined: sqrt((zerr_scale sigma)^2 + (zerr_floor "
                                        "(1+z))^2), sigma the width of the refined chi2 parabola at dchi2 = 1, one "
                                        "scale and floor per range of z between zerr_z_edges",
                         **{key: list(params[key]) for key in ("zerr_scale", "zerr_floor", "zerr_z_edges")}}
    if params["store_chi2"]:
        n = int(params["chi2_decimate"])
        z_trials = trial_redshifts(float(params["z_min"]), float(params["z_max"]), float(params["dz"]))
        # the nominal redshift of each group's first trial; stored as attrs because the runner writes no coordinates
        trial_z = np.round(z_trials[::n], 12)
        names.append("zchi2")
        sizes[REDSHIFT_DIM] = trial_z.size
        extra["zchi2"] = {"description": f"chi2 over the trial grid, decimated by {n}: entry i is the minimum over "
                                         f"trials i*{n} to i*{n}+{n - 1}, so minima keep their values",
                          "decimate": n, "trial_z": trial_z.tolist()}
    return output_specs("nmf_zfind", names, sizes, extra)


#: The NMF redshift kernel as the runner sees it.
ZFIND = KernelSpec(
    name="nmf_zfind",
    func=_zfind_block,
    inputs=("flux", "ivar"),
    outputs=_outputs,
    version="5",
    defaults={"z_min": 0.0, "z_max": 6.7, "dz": 0.0005, "weighting": "weighted", "support_floor": 0.0,
              "n_candidates": 5, "refine": True, "store_chi2": False, "chi2_decimate": 1, "nuisance_order": 0,
              "sky_sha256": "", **NOISE_PARAMS, "confidence_sha256": "", "zerr_scale": [1.0], "zerr_floor": [0.0],
              "zerr_z_edges": []},
)


def zfind_params(basis_store: str | PathLike[str], basis_name: str = "nmf", params: Mapping[str, Any] | None = None,
                 *, sky_nuisance: str = "auto") -> dict[str, Any]:
    """The parameters of :data:`ZFIND` for a scan with the basis ``basis_store``/bases/``basis_name``, all but the
    noise calibration's (:data:`~dzspec.parallel.noise_calibration.NOISE_PARAMS`): what :func:`run_zfind` passes to
    the runner and :func:`dzspec.zfind` to the block kernel in process.

    ``params`` override :data:`ZFIND`'s defaults; a missing or None ``z_min``/``z_max`` is the basis's
    ``scan_z_range`` attribute when it has one, Moose's ``weighting="unweighted"`` defaults to ``nuisance_order``
    -1, ``sky_nuisance="auto"`` adds the basis's sky continuum (``sky_sha256``) when it carries one and there are
    nuisance terms, a basis with a confidence model gives ``confidence_sha256`` and one with a ZERR calibration
    (``dzspec calibrate-zerr``) ``zerr_scale``, ``zerr_floor`` and ``zerr_z_edges`` unless they are given. Raises
    before any work for a bad ``chi2_decimate``, an unweighted fit with nuisance terms, a bad ``sky_nuisance`` or a
    confidence model made for other features.

    Examples
    --------
    >>> from dzspec.models import default_basis_path
    >>> p = zfind_params(default_basis_path("desi_galaxy"))
    >>> p["z_min"], p["z_max"], p["rank"], bool(p["confidence_sha256"])
    (0.0, 1.7, 10, True)
    """
    decimate = dict(params or {}).get("chi2_decimate", 1)
    if isinstance(decimate, bool) or not isinstance(decimate, Integral) or decimate < 1:  # fail before any work starts
        raise ValueError(f"chi2_decimate must be a positive integer, not {decimate!r}")
    params = dict(params or {})
    if params.get("weighting") == "unweighted" and params.setdefault("nuisance_order", -1) >= 0:
        raise ValueError("weighting='unweighted' (Moose's fit) takes no nuisance terms: use nuisance_order -1")
    basis_store = str(Path(basis_store).resolve())
    basis = load_basis(basis_store, basis_name)
    # a basis made for one redshift range (the shipped DESI galaxy basis: 0-1.7) is scanned over it unless asked
    for key, value in zip(("z_min", "z_max"), basis.attrs.get("scan_z_range", ()), strict=False):
        if params.get(key) is None:
            params[key] = float(value)
    params = {key: value for key, value in params.items() if value is not None}
    if sky_nuisance not in ("auto", "off"):
        raise ValueError(f"sky_nuisance must be 'auto' or 'off', not {sky_nuisance!r}")
    sky_meta = basis.attrs.get("sky_continuum")
    with_nuisance = params.get("nuisance_order", ZFIND.defaults["nuisance_order"]) >= 0
    if sky_nuisance == "auto" and sky_meta is not None and with_nuisance:
        params["sky_sha256"] = sky_meta["sha256"]
    model = basis.attrs.get("confidence")
    if model is not None:
        ConfidenceModel.from_attrs(model)  # refuse one made for other features before any work starts
        params["confidence_sha256"] = model["sha256"]
    # the three ZERR numbers come from one source: the caller's (the rest from the defaults) or else the basis's
    zerr_keys = ("zerr_scale", "zerr_floor", "zerr_z_edges")
    source = params if any(key in params for key in zerr_keys) else basis.attrs.get("zerr_calibration", {})
    for key in zerr_keys:
        params[key] = [float(v) for v in np.atleast_1d(source.get(key, ZFIND.defaults[key]))]
    return {**params, "basis_store": basis_store, "basis_name": basis_name,
            "basis_sha256": basis.attrs["basis_sha256"], "rank": basis.rank}


def run_zfind(store: str | PathLike[str], basis_store: str | PathLike[str], client: Client, *,
              basis_name: str = "nmf", params: Mapping[str, Any] | None = None, noise_calibration: str = "auto",
              sky_nuisance: str = "auto", finalize: bool = True, **runner: Any) -> RunReport:
    """Scan every spectrum of a store's spectra group with a saved basis, into ``results/<grid>/nmf_zfind``.

    ``params`` override :data:`ZFIND`'s defaults (trial grid, weighting, ``refine``, ``store_chi2``,
    ``chi2_decimate``, ``nuisance_order`` ...; a missing or None ``z_min``/``z_max`` is the basis's ``scan_z_range``
    attribute when it has one, else 0-6.7; Moose's ``weighting="unweighted"`` fit has no nuisance terms, so
    there the default order is -1: :func:`zfind_params`); ``noise_calibration`` is ``"auto"`` (the group's own
    calibration, measured first when missing or stale and the group is large enough, else the basis store's
    instrument default for the grid: :func:`~dzspec.parallel.noise_calibration.resolve_noise_calibration`), ``"off"``,
    or the name of a stored one; ``sky_nuisance`` ``"auto"`` fits the basis's night-sky continuum (when it carries one
    and there are nuisance terms) as one more free-sign term, ``"off"`` does not; with ``finalize`` a complete run ends
    with :func:`finalize_zfind` (redshift spikes, confidence); ``runner`` goes to
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
    (:func:`finalize_flags` on the whole results group).

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


def finalize_flags(columns: Mapping[str, np.ndarray], params: Mapping[str, Any], model: ConfidenceModel | None, *,
                   keep_deltachi2: float = 100.0, p_max: float = 1e-6, spikes: bool = True,
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict[str, Any]]:
    """The passes over a whole set of ``nmf_zfind`` results (a store's group, or :func:`dzspec.zfind`'s spectra).

    1. with ``spikes``, ``ZWarn.Z_SPIKE`` on the members of the set's redshift spikes
       (:mod:`dzspec.kernels.zspikes`), with the other ``zwarn`` bits as the untrusted set;
    2. with a confidence ``model`` (``dzspec calibrate-confidence``), ``confidence`` for every spectrum
       (:mod:`dzspec.kernels.confidence`; its pixel-count feature is scaled by the set's largest ``npixels``) and
       ``ZWarn.LOW_CONFIDENCE`` below its threshold; the confidence then decides on robustness too (R is one of its
       features), so ``ZWarn.LOW_ROBUSTNESS`` moves to ``znote`` (``ZNote.LOW_ROBUSTNESS``).

    ``columns`` holds ``z``, ``zwarn``, ``znote``, ``deltachi2`` and, with a model,
    :data:`~dzspec.kernels.confidence.FEATURE_INPUTS`; ``params`` the scan's (``z_min``, ``z_max``, ``dz``). The
    scan's own bits are recovered first (a LOW_ROBUSTNESS moved to ``znote`` goes back), so applying this twice
    gives the same result. Returns ``zwarn``, ``znote``, ``confidence`` (None without a model) and the spikes
    summary.
    """
    trial_z = trial_redshifts(float(params["z_min"]), float(params["z_max"]), float(params["dz"]))
    zwarn = np.asarray(columns["zwarn"], dtype=np.uint32)
    znote = np.asarray(columns["znote"], dtype=np.uint32)
    z = np.asarray(columns["z"])
    # the scan's own bits, as the kernel set them (a moved LOW_ROBUSTNESS back in: a rerun gives the same result)
    moved = (znote & np.uint32(ZNote.LOW_ROBUSTNESS)) != 0
    base = (zwarn & ~np.uint32(ZWarn.Z_SPIKE | ZWarn.LOW_CONFIDENCE)) | np.where(
        moved, np.uint32(ZWarn.LOW_ROBUSTNESS), np.uint32(0))
    noted = znote & ~np.uint32(ZNote.LOW_ROBUSTNESS)
    summary: dict[str, Any] = {"z": [], "count": [], "expected": [], "untrusted_fraction": [], "flagged": 0,
                               "keep_deltachi2": keep_deltachi2, "p_max": p_max}
    flagged = base.astype(np.uint32)
    if spikes:
        index = trial_index(z, trial_z)
        found = find_spikes(index, trial_z.size, base != 0, p_max=p_max)
        members = spike_members(index, found["trial"], np.asarray(columns["deltachi2"]),
                                keep_deltachi2=keep_deltachi2)
        flagged = np.where(members, base | np.uint32(ZWarn.Z_SPIKE), base).astype(np.uint32)
        summary = {"z": [float(trial_z[t]) for t in found["trial"]], "count": found["count"].tolist(),
                   "expected": [round(float(e), 3) for e in found["expected"]],
                   "untrusted_fraction": [round(float(f), 3) for f in found["untrusted_fraction"]],
                   "flagged": int(members.sum()), "keep_deltachi2": keep_deltachi2, "p_max": p_max}
    confidence = None
    if model is not None:
        features = {name: columns[name] for name in FEATURE_INPUTS if name in columns}
        features["zwarn"] = flagged
        confidence = model.predict(scan_features(features, spike_bit=int(ZWarn.Z_SPIKE),
                                                 npixels_max=int(np.nanmax(features["npixels"]))))
        confidence[~np.isfinite(z)] = np.nan
        with np.errstate(invalid="ignore"):
            flagged[~(confidence >= model.threshold)] |= np.uint32(ZWarn.LOW_CONFIDENCE)
        robust_low = (flagged & np.uint32(ZWarn.LOW_ROBUSTNESS)) != 0
        flagged &= ~np.uint32(ZWarn.LOW_ROBUSTNESS)
        noted[robust_low] |= np.uint32(ZNote.LOW_ROBUSTNESS)
    return flagged, noted, confidence, summary
