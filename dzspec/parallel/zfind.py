"""``dzspec zfind``: NMF redshifts of every spectrum of a store through the block runner (resumable).

The basis (and its FFTs, ~35 MB at the paper's grid) never travels with tasks: each worker loads it once from
its Zarr store through an LRU cache keyed by path, name and checksum.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from numbers import Integral
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from distributed import Client

from dzspec.io.bases import Basis, load_basis
from dzspec.kernels.base import KernelSpec, OutputSpec
from dzspec.kernels.nmf_scan import PreparedBasis, prepare_basis
from dzspec.kernels.restframe import observed_window
from dzspec.kernels.zfind import ZWarn, nmf_zfind
from dzspec.parallel.runner import RunReport, run_kernel
from dzspec.schema import flag_attrs

__all__ = ["ZFIND", "run_zfind"]


@lru_cache(maxsize=2)
def _basis(path: str, name: str, sha256: str) -> Basis:
    basis = load_basis(path, name)
    if basis.attrs["basis_sha256"] != sha256:
        raise ValueError(f"{path}/bases/{name} changed since the run started (checksum differs)")
    return basis


@lru_cache(maxsize=2)
def _prepared(path: str, name: str, sha256: str, n_obs: int, support_floor: float) -> PreparedBasis:
    return prepare_basis(_basis(path, name, sha256).basis, n_obs, support_floor=support_floor)


def _zfind_block(wavelength: np.ndarray, flux: np.ndarray, ivar: np.ndarray, *, basis_store: str, basis_name: str,
                 basis_sha256: str, rank: int, z_min: float, z_max: float, dz: float, weighting: str,
                 support_floor: float, n_candidates: int, refine: bool, store_chi2: bool,
                 chi2_decimate: int) -> dict[str, np.ndarray]:
    basis = _basis(basis_store, basis_name, basis_sha256)
    _, n_obs = observed_window(wavelength, basis.grid)
    prepared = _prepared(basis_store, basis_name, basis_sha256, n_obs, support_floor)
    z_trials = _z_trials(z_min, z_max, dz)
    return nmf_zfind(wavelength, flux, ivar, prepared=prepared, grid=basis.grid, shifts=basis.grid.shift_of(z_trials),
                     weighting=weighting, n_candidates=n_candidates, refine=refine, store_chi2=store_chi2,
                     chi2_decimate=chi2_decimate)


def _z_trials(z_min: float, z_max: float, dz: float) -> np.ndarray:
    """The nominal trial redshifts (B26: 0, 0.0005, ..., 6.7)."""
    return z_min + dz * np.arange(round((z_max - z_min) / dz) + 1)


def _outputs(params: Mapping[str, Any]) -> dict[str, OutputSpec]:
    k, c = int(params["rank"]), int(params["n_candidates"])
    optional: dict[str, OutputSpec] = {}
    if params["refine"]:
        optional["z_refined"] = OutputSpec("float64", attrs={
            "description": "sub-pixel redshift: parabola through the chi2 of the best integer shift within one trial "
                           "step of the best trial and its neighbours; its width is not a calibrated error"})
        optional["chi2_refined"] = OutputSpec("float64", attrs={
            "description": "chi2 at the best integer shift within one trial step of the best trial (<= chi2)"})
    if params["store_chi2"]:
        n = int(params["chi2_decimate"])
        z_trials = _z_trials(float(params["z_min"]), float(params["z_max"]), float(params["dz"]))
        # the nominal redshift of each group's first trial; stored as attrs because the runner writes no coordinates
        trial_z = np.round(z_trials[::n], 12)
        optional["chi2_curve"] = OutputSpec("float32", ("trial",), (trial_z.size,), attrs={
            "description": f"chi2 over the trial grid, decimated by {n}: entry i is the minimum over trials "
                           f"i*{n} to i*{n}+{n - 1}, so minima keep their values",
            "decimate": n, "trial_z": trial_z.tolist()})
    return {
        "z": OutputSpec("float64", attrs={"description": "best trial redshift (quantised to the basis grid)"}),
        "chi2": OutputSpec("float64", attrs={"description": "chi2 at the best trial, sum over pixels"}),
        "npixels": OutputSpec("int32", fill=-1),
        "coeff": OutputSpec("float32", ("coeff",), (k,)),
        "nmf_significance": OutputSpec("float32", attrs={"description": "B26 1 - chi2_min / Q1(chi2)"}),
        "nmf_robustness": OutputSpec("float32", attrs={"description": "B26 R = (min2 - min1) / sigma_Q1"}),
        "cand_z": OutputSpec("float64", ("candidate",), (c,)),
        "cand_chi2": OutputSpec("float64", ("candidate",), (c,)),
        "cand_score": OutputSpec("float32", ("candidate",), (c,), attrs={"description": "significance of each"}),
        "zwarn": OutputSpec("uint32", fill=0, attrs=flag_attrs(ZWarn)),
        **optional,
    }


#: The NMF redshift kernel as the runner sees it.
ZFIND = KernelSpec(
    name="nmf_zfind",
    func=_zfind_block,
    inputs=("flux", "ivar"),
    outputs=_outputs,
    version="2",
    defaults={"z_min": 0.0, "z_max": 6.7, "dz": 0.0005, "weighting": "weighted", "support_floor": 0.0,
              "n_candidates": 5, "refine": True, "store_chi2": False, "chi2_decimate": 1},
)


def run_zfind(store: str | PathLike[str], basis_store: str | PathLike[str], client: Client, *,
              basis_name: str = "nmf", params: Mapping[str, Any] | None = None, **runner: Any) -> RunReport:
    """Scan every spectrum of a store's spectra group with a saved basis, into ``results/<grid>/nmf_zfind``.

    ``params`` override :data:`ZFIND`'s defaults (trial grid, weighting, ``refine``, ``store_chi2``,
    ``chi2_decimate``, ...); ``runner`` goes to
    :func:`dzspec.parallel.runner.run_kernel` (group, resume, overwrite, block_rows, ...).
    """
    decimate = dict(params or {}).get("chi2_decimate", 1)
    if isinstance(decimate, bool) or not isinstance(decimate, Integral) or decimate < 1:  # fail before any work starts
        raise ValueError(f"chi2_decimate must be a positive integer, not {decimate!r}")
    basis_store = str(Path(basis_store).resolve())
    basis = load_basis(basis_store, basis_name)
    full = {**dict(params or {}), "basis_store": basis_store, "basis_name": basis_name,
            "basis_sha256": basis.attrs["basis_sha256"], "rank": basis.rank}
    return run_kernel(store, ZFIND, client, params=full, **runner)
