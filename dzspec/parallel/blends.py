"""Blend detection (B26 §4.4) over every spectrum of a store through the block runner (resumable).

It reads each spectrum's first-scan redshift from a finished ``zfind`` results group of the same spectra, scanned
with the same basis, and writes ``results/<grid>/nmf_blend`` with one row per input row. The block kernel
(:data:`~dzspec.engines.nmf.adapter.BLENDS`) finds its rows' ``z1`` through ``targetid``, checked unique and identical
in both groups here before any work starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from distributed import Client

from dzspec.engines.nmf.adapter import BLENDS
from dzspec.io import store as zstore
from dzspec.io.bases import load_basis
from dzspec.parallel.runner import RunReport, run_kernel

__all__ = ["run_blends"]


def run_blends(store: str | PathLike[str], basis_store: str | PathLike[str], client: Client, *,
               basis_name: str = "nmf", zfind_results: str | None = None, params: Mapping[str, Any] | None = None,
               **runner: Any) -> RunReport:
    """Blend detection of every spectrum of a store's spectra group, into ``results/<grid>/nmf_blend``.

    ``zfind_results`` is the finished first scan of the same spectra with the same basis (default
    ``results/<grid>/nmf_zfind``); its trial grid and ``support_floor`` are reused unless ``params`` says
    otherwise. ``params`` override :data:`~dzspec.engines.nmf.adapter.BLENDS`'s defaults (``t_blend``, confusion
    ``tolerance``, line-fit grids, ``lsf_fwhm``, ``continuum_degree``, ``z_column``...); ``runner`` goes to
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
