"""Blend detection (B26 §4.4) over every spectrum of a store through the block runner (resumable).

It reads each spectrum's first-scan redshift from a finished ``zfind`` results group of the same spectra, scanned
with the same basis, and writes ``results/<grid>/nmf_blend`` with one row per input row. The runner hands a kernel
only the spectra group's variables, so a block finds its rows' ``z1`` through ``targetid`` (checked unique and
identical in both groups before any work starts); the ``z1`` column is loaded once per worker through an LRU
cache, like the basis.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from distributed import Client

from dzspec.io import store as zstore
from dzspec.io.bases import load_basis
from dzspec.kernels.base import KernelSpec, OutputSpec
from dzspec.kernels.blends import MUSE_LSF_FWHM, detect_blends, line_terms
from dzspec.kernels.restframe import observed_window
from dzspec.parallel.runner import RunReport, run_kernel
from dzspec.parallel.zfind import cached_basis, cached_prepared, trial_redshifts

__all__ = ["BLENDS", "run_blends"]


@lru_cache(maxsize=4)
def _first_redshifts(store: str, results: str, column: str, config_sha256: str) -> tuple[np.ndarray, np.ndarray]:
    """``(targetid sorted, z1 in that order)`` of a zfind results group."""
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
    _, n_obs = observed_window(wavelength, basis.grid)
    prepared = cached_prepared(basis_store, basis_name, basis_sha256, n_obs, support_floor)
    known, z_sorted = _first_redshifts(spectra_store, zfind_results, z_column, zfind_sha256)
    where = np.clip(np.searchsorted(known, targetid), 0, known.size - 1)
    if not np.array_equal(known[where], targetid):
        raise ValueError(f"targetids of this block are missing from {zfind_results}")
    shifts = basis.grid.shift_of(trial_redshifts(z_min, z_max, dz))
    return detect_blends(wavelength, flux, ivar, z_sorted[where], prepared=prepared, grid=basis.grid, shifts=shifts,
                         t_blend=t_blend, tolerance=tolerance, exclusion_steps=exclusion_steps, n_minima=n_minima,
                         continuum_degree=continuum_degree, sigma_grid_kms=tuple(sigma_grid_kms),
                         offset_grid_kms=tuple(offset_grid_kms),
                         lsf_fwhm=None if lsf_fwhm is None else tuple(lsf_fwhm),
                         absorption_sigma_kms=absorption_sigma_kms,
                         absorption_offsets_kms=tuple(absorption_offsets_kms))


def _outputs(params: Mapping[str, Any]) -> dict[str, OutputSpec]:
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
    outputs=_outputs,
    version="4",
    defaults={"z_min": 0.0, "z_max": 6.7, "dz": 0.0005, "support_floor": 0.0, "z_column": "z_refined",
              "t_blend": 0.011, "tolerance": 0.01, "exclusion_steps": 20, "n_minima": 20, "continuum_degree": 6,
              "sigma_grid_kms": [0.0, 30.0, 60.0, 100.0, 150.0, 220.0, 320.0],
              "offset_grid_kms": [-60.0, -45.0, -30.0, -15.0, 0.0, 15.0, 30.0, 45.0, 60.0],
              "lsf_fwhm": list(MUSE_LSF_FWHM), "absorption_sigma_kms": 200.0,
              "absorption_offsets_kms": [-250.0, 0.0]},
)


def run_blends(store: str | PathLike[str], basis_store: str | PathLike[str], client: Client, *,
               basis_name: str = "nmf", zfind_results: str | None = None, params: Mapping[str, Any] | None = None,
               **runner: Any) -> RunReport:
    """Blend detection of every spectrum of a store's spectra group, into ``results/<grid>/nmf_blend``.

    ``zfind_results`` is the finished first scan of the same spectra with the same basis (default
    ``results/<grid>/nmf_zfind``); its trial grid and ``support_floor`` are reused unless ``params`` says
    otherwise. ``params`` override :data:`BLENDS`'s defaults (``t_blend``, confusion ``tolerance``, line-fit
    grids, ``lsf_fwhm``, ``continuum_degree``, ``z_column``...); ``runner`` goes to
    :func:`dzspec.parallel.runner.run_kernel` (group, resume, overwrite, block_rows, ...).

    Raises
    ------
    ValueError
        Before any work, if the first scan is missing, unfinished, of other spectra or another basis, or if
        targetids are not unique.
    """
    store = str(Path(store).resolve())
    basis_store = str(Path(basis_store).resolve())
    basis = load_basis(basis_store, basis_name)
    root = zstore.open_root(store)
    spectra = zstore.resolve_spectra_group(root, runner.get("group"))
    zfind_results = zfind_results or f"results/{spectra.removeprefix('spectra/')}/nmf_zfind"
    if zfind_results not in root:
        raise ValueError(f"{store}: no first scan {zfind_results!r}; run zfind first")
    first = root[zfind_results]
    attrs = dict(first.attrs)
    if not zstore.done_blocks(first).all():
        raise ValueError(f"{store}/{zfind_results} is not finished; resume it first")
    if attrs.get("input_id") != zstore.input_id(root[spectra]):
        raise ValueError(f"{store}/{zfind_results} was computed on other spectra than {spectra}")
    zparams = dict(attrs.get("params", {}))
    if zparams.get("basis_sha256") != basis.attrs["basis_sha256"]:
        raise ValueError(f"{store}/{zfind_results} was scanned with another basis than {basis_store}:{basis_name}")
    targetid = np.asarray(root[spectra]["targetid"][:])
    if np.unique(targetid).size != targetid.size:
        raise ValueError(f"{store}/{spectra}: targetids are not unique; blends need them to find each row's z1")
    inherited = {key: zparams[key] for key in ("z_min", "z_max", "dz", "support_floor") if key in zparams}
    full = {**inherited, **dict(params or {})}
    column = full.get("z_column", BLENDS.defaults["z_column"])
    if column not in first:
        if "z_column" in (params or {}):
            raise ValueError(f"{store}/{zfind_results} has no column {column!r}")
        full["z_column"] = "z"  # a first scan without sub-pixel refinement
    full.update({"basis_store": basis_store, "basis_name": basis_name, "basis_sha256": basis.attrs["basis_sha256"],
                 "rank": basis.rank, "zfind_results": zfind_results, "zfind_sha256": attrs["config_sha256"],
                 "spectra_store": store})
    return run_kernel(store, BLENDS, client, params=full, **runner)
