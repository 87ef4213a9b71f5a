"""Exposure-time convergence of MADGICS Lya redshifts (U25 §4.3, Fig. 9) over blocks of targets on a Dask cluster.

Layout of the output (default ``stats/exposure_convergence`` of the exposures' store)::

    <out>/targets/   one row per input target (dim ``spectrum``, chunk = block), resumable by ``block_done``
        targetid n_exposures total_exptime line_flux z_all convergence_warn   (spectrum)
        sigma_z exptime_mean n_valid                                            (spectrum, n)
        z_draws exptime_draws                                                   (spectrum, n, draw)
    <out>/grid/      the Fig. 9 table and per-n summaries (small; rewritten at the end of every run)

Each task reads only its own targets' exposures (the rows of the exposures group whose ``targetid`` is one of its
targets), coadds bootstrap subsets and scans them with a prior loaded once per worker
(:func:`~dzspec.engines.madgics.exposure_convergence.target_convergence`), writes its rows and sets its done flag. The
driver holds only per-exposure ``targetid`` and per-target columns, never spectra. Draws are seeded by the target's
row, so the results do not depend on the block size or the number of workers.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from distributed import Client

from dzspec._version import __version__
from dzspec.engines.madgics.adapter import cached_prior
from dzspec.engines.madgics.exposure_convergence import (
    SIGMA_Z_CONVERGED,
    ConvergenceWarn,
    Spread,
    converged_counts,
    target_convergence,
)
from dzspec.engines.madgics.scan import scan_lae
from dzspec.errors import StoreError
from dzspec.io import store as zstore
from dzspec.io.priors import LoadedPrior, load_lae_prior
from dzspec.kernels.base import OutputSpec
from dzspec.parallel.core import map_blocks
from dzspec.schema import flag_attrs

__all__ = [
    "DEFAULT_EXPTIME_EDGES",
    "DEFAULT_FLUX_THRESHOLDS",
    "ConvergenceReport",
    "convergence_grid",
    "exposure_convergence",
    "exposure_groups",
]

log = logging.getLogger(__name__)

#: Exposure-time bins (s): half-hour bins to 5 h (U25 Fig. 9 spans < 1 h to > 3.5 h).
DEFAULT_EXPTIME_EDGES = tuple(float(h) * 1800.0 for h in range(11))
#: Line-flux lower limits in the store's flux unit x Angstrom (1e-17 erg/s/cm2 for DESI): 0 (all), 1e-17 … 1e-15.
DEFAULT_FLUX_THRESHOLDS = (0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)


@dataclass
class ConvergenceReport:
    """What a convergence run did, and its two Datasets."""

    path: str
    ntargets: int
    nblocks: int
    already_done: int
    computed: int
    failed: dict[int, str]
    targets: xr.Dataset
    grid: xr.Dataset

    @property
    def complete(self) -> bool:
        return not self.failed and self.already_done + self.computed == self.nblocks


def exposure_groups(store: str | PathLike[str]) -> list[str]:
    """Spectra groups of a store that hold individual exposures (``spectra/<grid>-exposures-<run>``)."""
    return [g for g in zstore.spectra_groups(zstore.open_root(store)) if "-exposures-" in g]


def _scanner(loaded: LoadedPrior, wavelength: np.ndarray, shifts: np.ndarray, fine_half_width: float) -> Any:
    def scan(flux: np.ndarray, ivar: np.ndarray) -> np.ndarray:
        grid_flux, grid_ivar = loaded.to_grid(wavelength, flux, ivar)
        return scan_lae(grid_flux, grid_ivar, loaded.prior, shifts=shifts, fine_half_width=fine_half_width).z

    return scan


def _outputs(n_max: int, n_draws: int, attrs: dict[str, Any]) -> dict[str, OutputSpec]:
    per_n, per_draw = (("n",), (n_max,)), (("n", "draw"), (n_max, n_draws))
    return {
        "n_exposures": OutputSpec("int32", fill=0, attrs={"description": "exposures of the target"}),
        "total_exptime": OutputSpec("float64", attrs={"units": "s", "description": "sum over all its exposures"}),
        "line_flux": OutputSpec("float64", attrs={"description": f"line flux ({attrs['flux_source']})"}),
        "z_all": OutputSpec("float64", attrs={"description": "redshift of the coadd of every exposure once"}),
        "sigma_z": OutputSpec("float64", *per_n, attrs={
            "description": f"spread ({attrs['estimator']}) of the redshifts of the draws of n exposures"}),
        "exptime_mean": OutputSpec("float64", *per_n, attrs={
            "units": "s", "description": "mean over the draws of the total exposure time of the n exposures"}),
        "n_valid": OutputSpec("int16", *per_n, fill=0, attrs={"description": "draws with a finite redshift"}),
        "z_draws": OutputSpec("float64", *per_draw, attrs={"description": "redshift of each subset coadd"}),
        "exptime_draws": OutputSpec("float64", *per_draw, attrs={"units": "s"}),
        "convergence_warn": OutputSpec("uint32", fill=0, attrs=flag_attrs(ConvergenceWarn)),
    }


def _convergence_task(block: int, start: int, stop: int, store: str, out: str, exposures: str,
                      exposure_rows: list[np.ndarray], line_flux: np.ndarray, params: dict[str, Any]) -> int:
    """One block-map task: the block's targets of the whole run's rows and line fluxes."""
    return _convergence_block(store, out, exposures, block, start, exposure_rows[start:stop], line_flux[start:stop],
                              **params)


def _convergence_block(store: str, out: str, exposures: str, block: int, start: int,
                       exposure_rows: list[np.ndarray], line_flux: np.ndarray, *, prior_store: str, prior_name: str,
                       prior_sha256: str, n_max: int, n_draws: int, min_exposures: int, seed: int,
                       estimator: Spread, z_min: float, n_shifts: int, fine_half_width: float) -> int:
    root = zstore.open_root(store, mode="r+")
    source = root[exposures]
    nt = len(exposure_rows)
    values: dict[str, np.ndarray] = {
        "n_exposures": np.array([r.size for r in exposure_rows], np.int32),
        "total_exptime": np.full(nt, np.nan), "line_flux": np.asarray(line_flux, np.float64),
        "z_all": np.full(nt, np.nan), "sigma_z": np.full((nt, n_max), np.nan),
        "exptime_mean": np.full((nt, n_max), np.nan), "n_valid": np.zeros((nt, n_max), np.int16),
        "z_draws": np.full((nt, n_max, n_draws), np.nan), "exptime_draws": np.full((nt, n_max, n_draws), np.nan),
        "convergence_warn": np.zeros(nt, np.uint32),
    }
    values["convergence_warn"][~np.isfinite(values["line_flux"])] |= np.uint32(ConvergenceWarn.NO_LINE_FLUX)
    values["convergence_warn"][values["n_exposures"] == 0] |= np.uint32(ConvergenceWarn.NODATA)
    few = (values["n_exposures"] > 0) & (values["n_exposures"] < min_exposures)
    values["convergence_warn"][few] |= np.uint32(ConvergenceWarn.FEW_EXPOSURES)
    todo = np.flatnonzero(values["n_exposures"] >= max(min_exposures, 1))
    if todo.size:
        # one sorted read for the whole block; each target takes its rows back out of it
        rows = np.unique(np.concatenate([exposure_rows[t] for t in todo]))
        flux, ivar = source["flux"].oindex[rows, :], source["ivar"].oindex[rows, :]
        exptime = source["exptime"].oindex[rows].astype(np.float64)
        wavelength = source["wavelength"][:]
        loaded = cached_prior(prior_store, prior_name, prior_sha256)
        scan = _scanner(loaded, wavelength, loaded.prior.coarse_shifts(z_min, n_shifts), fine_half_width)
        for t in todo:
            mine = np.searchsorted(rows, exposure_rows[t])
            result = target_convergence(flux[mine], ivar[mine], exptime[mine], scan, key=start + int(t),
                                        n_values=range(1, n_max + 1), n_draws=n_draws, seed=seed,
                                        estimator=estimator)
            values["total_exptime"][t] = exptime[mine].sum()
            values["z_all"][t] = result.z_all
            values["sigma_z"][t], values["exptime_mean"][t] = result.sigma_z, result.exptime_mean
            values["n_valid"][t] = result.n_valid
            values["z_draws"][t], values["exptime_draws"][t] = result.z, result.exptime
            values["convergence_warn"][t] |= np.uint32(result.warn)
    group = root[f"{out}/targets"]
    zstore.write_block(group, start, values)
    zstore.mark_block_done(group, block)
    return block


def _targets_and_rows(group: Any, targets: np.ndarray | None) -> tuple[np.ndarray, list[np.ndarray]]:
    """The targets (given, or every targetid of the exposures in order of first appearance) and each one's rows."""
    tid = np.asarray(group["targetid"][:], np.int64)
    order = np.argsort(tid, kind="stable")
    unique, first, counts = np.unique(tid[order], return_index=True, return_counts=True)
    if targets is None:
        targets = unique[np.argsort(order[first], kind="stable")]
    targets = np.asarray(targets, np.int64)
    where = np.clip(np.searchsorted(unique, targets), 0, max(unique.size - 1, 0))
    found = unique.size > 0
    rows = [np.sort(order[first[w]: first[w] + counts[w]]) if found and unique[w] == t else np.zeros(0, np.int64)
            for t, w in zip(targets, where, strict=True)]
    return targets, rows


def _line_flux(root: Any, exposures: str, targets: np.ndarray, flux_name: str | None,
               coadds: str | None) -> tuple[np.ndarray, str]:
    """Per-target line flux from the coadd group's ``flux_name`` column, joined on ``targetid``; NaN if absent."""
    if flux_name is None:
        return np.full(targets.size, np.nan), "none"
    group_path = coadds or root[exposures].attrs.get("coadd_group")
    if group_path is None:
        raise StoreError(f"{exposures}: no coadd_group attribute; name the group holding {flux_name!r}")
    group = root[zstore.resolve_spectra_group(root, group_path)]
    if flux_name not in group:
        raise StoreError(f"{group.path}: no per-target column {flux_name!r}")
    tid = np.asarray(group["targetid"][:], np.int64)
    out = np.full(targets.size, np.nan)
    if tid.size:
        order = np.argsort(tid, kind="stable")
        where = np.clip(np.searchsorted(tid[order], targets), 0, tid.size - 1)
        match = tid[order][where] == targets
        # oindex wants sorted unique rows; the inverse puts the values back in target order
        rows, inverse = np.unique(order[where[match]], return_inverse=True)
        if rows.size:
            out[match] = np.asarray(group[flux_name].oindex[rows], np.float64)[inverse]
    return out, f"{group.path}/{flux_name}"


def exposure_convergence(
    store: str | PathLike[str],
    prior_store: str | PathLike[str],
    client: Client,
    *,
    exposures: str | None = None,
    targets: Sequence[int] | np.ndarray | None = None,
    prior_name: str = "lae",
    n_max: int = 15,
    n_draws: int = 10,
    min_exposures: int | None = None,
    seed: int = 0,
    estimator: Spread = "std",
    flux_name: str | None = "flux_lya",
    coadds: str | None = None,
    exptime_edges: Sequence[float] = DEFAULT_EXPTIME_EDGES,
    flux_thresholds: Sequence[float] = DEFAULT_FLUX_THRESHOLDS,
    tolerance: float = SIGMA_Z_CONVERGED,
    z_min: float = 2.0,
    n_shifts: int = 4501,
    fine_half_width: float = 5.0,
    out: str = "stats/exposure_convergence",
    block_targets: int = 16,
    overwrite: bool = False,
    max_in_flight: int | None = None,
    retries: int = 1,
    progress: bool | None = True,
) -> ConvergenceReport:
    """Exposure-time convergence of the MADGICS LAE redshift (U25 §4.3) for every target, into ``store``/``out``.

    Parameters
    ----------
    store
        Store holding the individual exposures (and the results).
    prior_store, prior_name
        The MADGICS prior (``priors/<prior_name>``, :func:`dzspec.parallel.lae.build_lae_prior`).
    client
        A Dask client.
    exposures
        The exposures group (default: the store's only ``spectra/*-exposures-*`` group).
    targets
        Target ids to study, each getting one output row in this order (default: every targetid of the exposures
        group, in order of first appearance). Ids without exposures get NaN and ``NODATA``.
    n_max, n_draws
        Subsets of n = 1 … ``n_max`` exposures, ``n_draws`` sets each (U25: 15 and 10).
    min_exposures
        Targets with fewer exposures get NaN and ``FEW_EXPOSURES`` (default ``n_max``; U25 used 15-24).
    seed
        Seed of the draws (with each target's row).
    estimator
        sigma_z: ``"std"`` (U25; sensitive to catastrophic draws, as convergence should be) or ``"iqr"``.
    flux_name, coadds
        Per-target line flux: column ``flux_name`` of the coadd group (default the exposures group's
        ``coadd_group`` attribute) joined on targetid. ``None``: no flux (every target ``NO_LINE_FLUX``).
    exptime_edges, flux_thresholds, tolerance
        The Fig. 9 grid (:func:`convergence_grid`).
    z_min, n_shifts, fine_half_width
        The scan (:func:`~dzspec.engines.madgics.scan.scan_lae`; defaults U25's).
    out
        Output group in ``store``.
    block_targets
        Targets per task (and per output chunk). Each target costs ``n_max * n_draws + 1`` scans.
    overwrite
        Replace an existing output made with other parameters; without it a rerun with the same parameters
        resumes (only blocks not done are computed) and one with other parameters raises.

    Returns
    -------
    ConvergenceReport
        With ``targets`` (lazy, dask-backed, from the store) and ``grid`` (in memory) Datasets.
    """
    store = str(Path(store).resolve())
    prior_store = str(Path(prior_store).resolve())
    if not (n_max >= 1 and n_draws >= 2 and block_targets >= 1):
        raise ValueError(f"need n_max >= 1, n_draws >= 2, block_targets >= 1; got {n_max}, {n_draws}, "
                         f"{block_targets}")
    if estimator not in ("std", "iqr"):
        raise ValueError(f"estimator must be 'std' or 'iqr', not {estimator!r}")
    min_exposures = n_max if min_exposures is None else int(min_exposures)
    root = zstore.open_root(store, mode="r+")
    if exposures is None:
        groups = exposure_groups(store)
        if len(groups) != 1:
            raise StoreError(f"{store}: {len(groups)} exposure groups {groups}; choose one with exposures=")
        exposures = groups[0]
    exposures = zstore.resolve_spectra_group(root, exposures)
    target_ids, rows = _targets_and_rows(root[exposures], None if targets is None else np.asarray(targets))
    line_flux, flux_source = _line_flux(root, exposures, target_ids, flux_name, coadds)
    loaded = load_lae_prior(prior_store, prior_name)
    params = {"prior_store": prior_store, "prior_name": prior_name, "prior_sha256": loaded.attrs["prior_sha256"],
              "n_max": int(n_max), "n_draws": int(n_draws), "min_exposures": min_exposures, "seed": int(seed),
              "estimator": estimator, "z_min": float(z_min), "n_shifts": int(n_shifts),
              "fine_half_width": float(fine_half_width)}
    identity = {**params, "exposures": exposures, "input_id": zstore.input_id(root[exposures]),
                "flux_source": flux_source, "block_targets": int(block_targets),
                "targets_sha256": hashlib.sha256(target_ids.tobytes()).hexdigest()}
    config_sha = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    plan = zstore.BlockPlan(target_ids.size, block_targets)
    path = f"{out}/targets"
    if path in root and root[path].attrs.get("config_sha256") == config_sha and not overwrite:
        group = root[path]
    elif path in root and not overwrite:
        raise StoreError(f"{store}/{path} was made with other parameters or inputs; pass overwrite=True")
    else:
        attrs = {**identity, "config_sha256": config_sha, "flux_source": flux_source,
                 "tolerance_default": tolerance, "reference": "Uzsoy et al. (U25) §4.3, Fig. 9"}
        group = zstore.create_results_group(root, path, plan, _outputs(n_max, n_draws, attrs), attrs, target_ids)
        for name, values in (("n", np.arange(1, n_max + 1, dtype=np.int32)),
                             ("draw", np.arange(n_draws, dtype=np.int32))):
            group.create_array(name, shape=values.shape, chunks=values.shape, dtype=values.dtype,
                               dimension_names=(name,), fill_value=0)[...] = values
    done = zstore.done_blocks(group)
    log.info("%s: %d targets in %d blocks; %d already done", path, target_ids.size, plan.nblocks, int(done.sum()))
    stage = map_blocks(client, _convergence_task, plan.blocks, done=done,
                       args=(store, out, exposures, rows, line_flux, params), name="exposure convergence",
                       describe=lambda block, error: f"{type(error).__name__}: {error}",
                       max_in_flight=max_in_flight, retries=retries, progress=progress)
    failed = stage.failed
    table = zstore.open_results(store, path)
    grid = convergence_grid(table, exptime_edges, flux_thresholds, tolerance=tolerance)
    grid.attrs.update({"config_sha256": config_sha, "complete": int(not failed and bool(group["block_done"][:].all())),
                       "dzspec_version": __version__})
    grid.to_zarr(store, group=f"{out}/grid", mode="w", consolidated=False)
    group.attrs["status"] = "complete" if bool(zstore.done_blocks(group).all()) else "running"
    return ConvergenceReport(f"{store}/{out}", int(target_ids.size), plan.nblocks, stage.already_done,
                             stage.computed, failed, table, grid)


def convergence_grid(table: xr.Dataset, exptime_edges: Sequence[float] = DEFAULT_EXPTIME_EDGES,
                     flux_thresholds: Sequence[float] = DEFAULT_FLUX_THRESHOLDS, *,
                     tolerance: float = SIGMA_Z_CONVERGED, chunk_targets: int = 65536) -> xr.Dataset:
    """The Fig. 9 grid and per-n summaries from a per-target table (as :func:`exposure_convergence` writes it).

    Reads the table ``chunk_targets`` rows at a time (dask or NumPy backed alike) and sums
    :func:`~dzspec.engines.madgics.exposure_convergence.converged_counts`; the per-n quantiles of sigma_z hold one float
    per (target, n) in memory.

    Returns
    -------
    xarray.Dataset
        ``converged_fraction`` and ``count`` (flux_threshold, exptime_bin) with bin edges ``exptime_lo``,
        ``exptime_hi``; per ``n``: ``sigma_z_q16``, ``sigma_z_median``, ``sigma_z_q84`` (over targets),
        ``exptime_mean`` (over targets, s), ``converged_fraction_n`` and ``count_n`` (flux known or not).

    Examples
    --------
    >>> table = xr.Dataset({"sigma_z": (("spectrum", "n"), [[0.3, 0.0004], [0.2, 0.01]]),
    ...                     "exptime_mean": (("spectrum", "n"), [[1000.0, 2000.0], [900.0, 1900.0]]),
    ...                     "line_flux": ("spectrum", [12.0, 1.5])}, coords={"n": [1, 2]})
    >>> grid = convergence_grid(table, [0.0, 1800.0, 3600.0], [0.0, 10.0])
    >>> grid.converged_fraction.values.tolist(), grid.converged_fraction_n.values.tolist()
    ([[0.0, 0.5], [0.0, 1.0]], [0.0, 0.5])
    """
    edges = np.asarray(exptime_edges, np.float64)
    thresholds = np.asarray(flux_thresholds, np.float64)
    converged = np.zeros((thresholds.size, edges.size - 1), np.int64)
    count = np.zeros_like(converged)
    sigma_parts, time_parts = [], []
    n_targets = table.sizes["spectrum"]
    for start in range(0, n_targets, chunk_targets):
        part = table[["sigma_z", "exptime_mean", "line_flux"]].isel(spectrum=slice(start, start + chunk_targets))
        sigma, time, flux = (np.asarray(part[name].values, np.float64) for name in ("sigma_z", "exptime_mean",
                                                                                      "line_flux"))
        c, k = converged_counts(sigma, time, flux, edges, thresholds, tolerance=tolerance)
        converged += c
        count += k
        sigma_parts.append(sigma)
        time_parts.append(time)
    n = np.asarray(table["n"].values)
    sigma = np.concatenate(sigma_parts) if sigma_parts else np.zeros((0, n.size))
    time = np.concatenate(time_parts) if time_parts else np.zeros((0, n.size))
    finite = np.isfinite(sigma)
    count_n = finite.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        quantiles = (np.nanquantile(np.where(finite, sigma, np.nan), [0.16, 0.5, 0.84], axis=0)
                     if finite.any() else np.full((3, n.size), np.nan))
        fraction_n = np.where(count_n > 0, (finite & (sigma < tolerance)).sum(axis=0) / np.maximum(count_n, 1),
                              np.nan)
        time_n = np.where(count_n > 0, np.where(finite, time, 0.0).sum(axis=0) / np.maximum(count_n, 1), np.nan)
    fraction = np.divide(converged, count, out=np.full(count.shape, np.nan), where=count > 0)
    dims = ("flux_threshold", "exptime_bin")
    return xr.Dataset(
        {"converged_fraction": (dims, fraction, {"description": f"fraction of (target, n) with sigma_z < "
                                                                f"{tolerance}, line flux >= threshold"}),
         "count": (dims, count), "converged": (dims, converged),
         "sigma_z_q16": ("n", quantiles[0]), "sigma_z_median": ("n", quantiles[1]), "sigma_z_q84": ("n", quantiles[2]),
         "exptime_mean": ("n", time_n, {"units": "s"}), "converged_fraction_n": ("n", fraction_n),
         "count_n": ("n", count_n)},
        coords={"flux_threshold": thresholds, "exptime_lo": ("exptime_bin", edges[:-1], {"units": "s"}),
                "exptime_hi": ("exptime_bin", edges[1:], {"units": "s"}), "n": n},
        attrs={"tolerance": float(tolerance), "n_targets": int(n_targets)},
    )
