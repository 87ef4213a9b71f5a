"""The NMF engine's block adapters: the pure functions that turn a block of spectra and a run's parameters into the
outputs of ``dzspec zfind`` (:data:`ZFIND`) and ``dzspec blends`` (:data:`BLENDS`), as the block runner
(:func:`dzspec.parallel.runner.run_kernel`) and the in-process API (:func:`dzspec.zfind`) call them.

Model loading: the basis (and its FFTs, ~35 MB at the paper's grid), its sky continuum and a first scan's redshift
column never travel with tasks; each process loads them once through :mod:`dzspec.engines.cache`, keyed by path,
name and checksum (:func:`cached_basis`, :func:`cached_prepared`, :func:`cached_sky_continuum`,
:func:`cached_first_redshifts`). Parameter resolution (:func:`zfind_params`) and the passes over a whole set of
results (:func:`finalize_flags`) are here too; what submits work to a cluster is :mod:`dzspec.parallel.zfind` and
:mod:`dzspec.parallel.blends`.
"""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Integral
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from dzspec.engines.adapter import NOISE_PARAMS, calibrated_ivar
from dzspec.engines.cache import process_cache
from dzspec.engines.nmf.blends import detect_blends, line_terms
from dzspec.engines.nmf.confidence import FEATURE_INPUTS, ConfidenceModel, scan_features
from dzspec.engines.nmf.grams import PreparedBasis, lag_range, prepare_basis
from dzspec.engines.nmf.params import BlendParams, ZfindParams
from dzspec.engines.nmf.zfind import MIN_DELTACHI2, nmf_zfind
from dzspec.engines.nmf.zspikes import find_spikes, spike_members, trial_index
from dzspec.io import store as zstore
from dzspec.io.bases import Basis, load_basis, load_sky_continuum
from dzspec.kernels.base import KernelSpec, OutputSpec
from dzspec.kernels.restframe import observed_window
from dzspec.kernels.trials import trial_redshifts
from dzspec.params import defaults_of
from dzspec.results_schema import CANDIDATE_DIM, REDSHIFT_DIM, ZNote, ZWarn, output_specs

__all__ = [
    "BLENDS",
    "ZFIND",
    "cached_basis",
    "cached_first_redshifts",
    "cached_prepared",
    "cached_sky_continuum",
    "finalize_flags",
    "sky_continuum_on",
    "zfind_params",
]


@process_cache(maxsize=2)
def cached_basis(path: str, name: str, sha256: str) -> Basis:
    """The basis ``bases/<name>`` of ``path``, loaded once per process and checked against ``sha256``."""
    basis = load_basis(path, name)
    if basis.attrs["basis_sha256"] != sha256:
        raise ValueError(f"{path}/bases/{name} changed since the run started (checksum differs)")
    return basis


@process_cache(maxsize=2)
def cached_prepared(path: str, name: str, sha256: str, n_obs: int, support_floor: float,
                    lags: tuple[int, int]) -> PreparedBasis:
    """:func:`~dzspec.engines.nmf.grams.prepare_basis` of :func:`cached_basis` for ``n_obs`` pixels and the lags
    ``[lags[0], lags[1])`` of a trial grid, once per process."""
    return prepare_basis(cached_basis(path, name, sha256).basis, n_obs, lags=lags, support_floor=support_floor)


@process_cache(maxsize=2)
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
    j0, n_obs = observed_window(wavelength, basis.grid)
    shifts = basis.grid.shift_of(trial_redshifts(z_min, z_max, dz))
    prepared = cached_prepared(basis_store, basis_name, basis_sha256, n_obs, support_floor, lag_range(j0, shifts))
    out = nmf_zfind(wavelength, flux, ivar, prepared=prepared, grid=basis.grid, shifts=shifts,
                    weighting=weighting, n_candidates=n_candidates, refine=refine, store_chi2=store_chi2,
                    chi2_decimate=chi2_decimate, nuisance_order=nuisance_order, sky_continuum=sky,
                    zerr_scale=zerr_scale, zerr_floor=zerr_floor, zerr_z_edges=zerr_z_edges)
    out["confidence"] = np.full(flux.shape[0], np.nan, np.float32)  # needs the whole set: finalize_flags
    return out


def _zfind_outputs(params: Mapping[str, Any]) -> dict[str, OutputSpec]:
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
    coords = {}
    if params["store_chi2"]:
        n = int(params["chi2_decimate"])
        z_trials = trial_redshifts(float(params["z_min"]), float(params["z_max"]), float(params["dz"]))
        # the coordinate: the nominal redshift of each group's first trial
        coords[REDSHIFT_DIM] = np.round(z_trials[::n], 12)
        names.append("zchi2")
        sizes[REDSHIFT_DIM] = coords[REDSHIFT_DIM].size
        extra["zchi2"] = {"description": f"chi2 over the trial grid, decimated by {n}: entry i is the minimum over "
                                         f"trials i*{n} to i*{n}+{n - 1}, so minima keep their values",
                          "decimate": n}
    return output_specs("nmf_zfind", names, sizes, extra, coords)


#: The NMF redshift kernel as the runner sees it.
ZFIND = KernelSpec(
    name="nmf_zfind",
    func=_zfind_block,
    inputs=("flux", "ivar"),
    outputs=_zfind_outputs,
    version="5",
    defaults={**defaults_of(ZfindParams), **NOISE_PARAMS},
)


def zfind_params(basis_store: str | PathLike[str], basis_name: str = "nmf", params: Mapping[str, Any] | None = None,
                 *, sky_nuisance: str = "auto") -> dict[str, Any]:
    """The parameters of :data:`ZFIND` for a scan with the basis ``basis_store``/bases/``basis_name``, all but the
    noise calibration's (:data:`~dzspec.engines.adapter.NOISE_PARAMS`): what :func:`~dzspec.parallel.zfind.run_zfind`
    passes to the runner and :func:`dzspec.zfind` to the block kernel in process.

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


def finalize_flags(columns: Mapping[str, np.ndarray], params: Mapping[str, Any], model: ConfidenceModel | None, *,
                   keep_deltachi2: float = 100.0, p_max: float = 1e-6, spikes: bool = True,
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict[str, Any]]:
    """The passes over a whole set of ``nmf_zfind`` results (a store's group, or :func:`dzspec.zfind`'s spectra).

    1. with ``spikes``, ``ZWarn.Z_SPIKE`` on the members of the set's redshift spikes
       (:mod:`dzspec.engines.nmf.zspikes`), with the other ``zwarn`` bits as the untrusted set;
    2. with a confidence ``model`` (``dzspec calibrate-confidence``), ``confidence`` for every spectrum
       (:mod:`dzspec.engines.nmf.confidence`; its pixel-count feature is scaled by the set's largest ``npixels``) and
       ``ZWarn.LOW_CONFIDENCE`` below its threshold; the confidence then decides on robustness too (R is one of its
       features), so ``ZWarn.LOW_ROBUSTNESS`` moves to ``znote`` (``ZNote.LOW_ROBUSTNESS``).

    ``columns`` holds ``z``, ``zwarn``, ``znote``, ``deltachi2`` and, with a model,
    :data:`~dzspec.engines.nmf.confidence.FEATURE_INPUTS`; ``params`` the scan's (``z_min``, ``z_max``, ``dz``). The
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


@process_cache(maxsize=4)
def cached_first_redshifts(store: str, results: str, column: str,
                           config_sha256: str) -> tuple[np.ndarray, np.ndarray]:
    """``(targetid sorted, z1 in that order)`` of the zfind results group ``results`` of ``store`` (the first scan a
    blend search starts from), loaded once per process and refused if its ``config_sha256`` changed. The runner
    hands a block only the spectra group's variables, so a block finds its rows' ``z1`` through ``targetid``."""
    group = zstore.open_root(store)[results]
    if group.attrs.get("config_sha256") != config_sha256:
        raise ValueError(f"{store}/{results} changed since the run started (config_sha256 differs)")
    targetid = np.asarray(group["targetid"][:], dtype=np.int64)
    z1 = np.asarray(group[column][:], dtype=np.float64)
    order = np.argsort(targetid, kind="stable")
    return targetid[order], z1[order]


def _blend_block(wavelength: np.ndarray, flux: np.ndarray, ivar: np.ndarray, targetid: np.ndarray, *,
                 basis_store: str, basis_name: str, basis_sha256: str, rank: int, zfind_results: str,
                 zfind_sha256: str, z_column: str, z_min: float, z_max: float, dz: float, support_floor: float,
                 t_blend: float, tolerance: float, exclusion_steps: int, n_minima: int, continuum_degree: int,
                 sigma_grid_kms: list[float], offset_grid_kms: list[float], lsf_fwhm: list[float] | None,
                 absorption_sigma_kms: float, absorption_offsets_kms: list[float],
                 spectra_store: str) -> dict[str, np.ndarray]:
    basis = cached_basis(basis_store, basis_name, basis_sha256)
    j0, n_obs = observed_window(wavelength, basis.grid)
    shifts = basis.grid.shift_of(trial_redshifts(z_min, z_max, dz))
    prepared = cached_prepared(basis_store, basis_name, basis_sha256, n_obs, support_floor, lag_range(j0, shifts))
    known, z_sorted = cached_first_redshifts(spectra_store, zfind_results, z_column, zfind_sha256)
    where = np.clip(np.searchsorted(known, targetid), 0, known.size - 1)
    if not np.array_equal(known[where], targetid):
        raise ValueError(f"targetids of this block are missing from {zfind_results}")
    return detect_blends(wavelength, flux, ivar, z_sorted[where], prepared=prepared, grid=basis.grid, shifts=shifts,
                         t_blend=t_blend, tolerance=tolerance, exclusion_steps=exclusion_steps, n_minima=n_minima,
                         continuum_degree=continuum_degree, sigma_grid_kms=tuple(sigma_grid_kms),
                         offset_grid_kms=tuple(offset_grid_kms),
                         lsf_fwhm=None if lsf_fwhm is None else tuple(lsf_fwhm),
                         absorption_sigma_kms=absorption_sigma_kms,
                         absorption_offsets_kms=tuple(absorption_offsets_kms))


def _blend_outputs(params: Mapping[str, Any]) -> dict[str, OutputSpec]:
    k = int(params["rank"])
    degree = int(params["continuum_degree"])
    terms = line_terms(absorption_offsets_kms=tuple(params["absorption_offsets_kms"]))
    layout = ([f"basis_{a}" for a in range(k)] + [f"line_{name}" for name in terms]
              + [f"legendre_{d}" for d in range(degree + 1)])
    return {
        "blend_flag": OutputSpec("bool", fill=False, attrs={
            "description": f"blend_score > t_blend = {params['t_blend']}"}),
        "blend_score": OutputSpec("float32", attrs={
            "description": "highest B26 significance 1 - chi2/Q1 of the rescan chi2_2 among its local minima not in "
                           "confusion with z1 (0 if none)"}),
        "blend_z": OutputSpec("float64", attrs={"description": "z2: the trial of blend_score (NaN if none)"}),
        "blend_chi2": OutputSpec("float64", attrs={"description": "chi2_2 at z2"}),
        "blend_z1": OutputSpec("float64", attrs={"description": f"z1 used: {params['z_column']} of the first scan"}),
        "blend_nkept": OutputSpec("int32", fill=-1, attrs={
            "description": "local minima of chi2_2 left after the confusion rule"}),
        "blend_coeff2": OutputSpec("float32", ("coeff2",), (k + 1,), attrs={
            "description": "coefficients at z2: the first model's, then the basis'"}),
        "fit_chi2": OutputSpec("float64", attrs={"description": "chi2 of the first model at z1"}),
        "fit_sigma_kms": OutputSpec("float32", attrs={"description": "intrinsic line dispersion of the first model"}),
        "fit_offset_kms": OutputSpec("float32", attrs={"description": "line-centre offset of the first model"}),
        "fit_coeff": OutputSpec("float32", ("fit_term",), (len(layout),), attrs={
            "description": "first-model coefficients (line peaks and absorption depths per unit log lambda)",
            "terms": layout}),
    }


#: The blend-detection kernel as the runner sees it.
BLENDS = KernelSpec(
    name="nmf_blend",
    func=_blend_block,
    inputs=("flux", "ivar", "targetid"),
    outputs=_blend_outputs,
    version="4",
    defaults=defaults_of(BlendParams),
)
