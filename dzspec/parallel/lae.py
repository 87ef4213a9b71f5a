"""MADGICS on a Dask cluster: ``dzspec priors`` (sky and LAE priors from stores) and ``dzspec lae`` (the scan of every
spectrum through the resumable block runner).

Priors (U25 §2.2-2.3, METHODS §2.2-2.3), in two passes over blocks of rows:

1. sky rows: each block is put on the log grid and cut (:func:`~dzspec.engines.madgics.priors.sky_spectra_keep`)
   and returns its per-bin power; the driver fits the rescaling (a robust refit of the log10 covariance diagonal in
   a scaled variable, or the paper's Eq. 7);
2. kept sky rows, rescaled: each block returns its sky-line outlier counts and its Gram matrix ``XᵀX`` (n x n),
   summed pairwise on the workers; the driver builds the mask and keeps the top eigenvectors over unmasked bins.
   The mask is taken on rescaled spectra: un-rescaled, the noisy blue end lies beyond each spectrum's percentiles
   in most spectra and would be masked wholesale (1 415 bins on simulated DESI sky fibres, against U25's 89);
3. LAE rows: each block is rescaled, loses its MADGICS sky component and returns per spectrum the residual
   variance and the window aligned to ``z_ref``; the driver applies the variance cut and forms ``DDᵀ ⊘ AAᵀ``.

Memory: one Gram is ``n² x 8`` bytes (608 MB on the DESI grid) per sky block in flight, whatever the number of
sky spectra.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import numpy as np
from distributed import Client

from dzspec.engines.madgics.adapter import (
    LAE_SCAN,
    lae_params,
    prior_lae_windows,
    prior_sky_gram,
    prior_sky_power,
)
from dzspec.engines.madgics.injection import lae_template
from dzspec.engines.madgics.priors import (
    LAE_GRID,
    LAE_WINDOW,
    RescalePolynomial,
    VarianceModel,
    lae_vectors_from_windows,
    sky_mask_from_counts,
    sky_vectors_from_gram,
    to_lae_grid,
)
from dzspec.engines.madgics.scan import LAEPrior
from dzspec.io import store as zstore
from dzspec.io.priors import LoadedPrior, save_lae_prior
from dzspec.kernels.restframe import LogGrid
from dzspec.parallel.core import PerBlock, reduce_blocks
from dzspec.parallel.noise_calibration import noise_params
from dzspec.parallel.runner import RunReport, run_kernel

__all__ = ["build_lae_prior", "prior_rows", "run_lae"]

log = logging.getLogger(__name__)


def prior_rows(store: str | PathLike[str], group: str | None, classes: Sequence[str] = (), *,
               z_name: str | None = None, limit: int | None = None, seed: int = 0) -> np.ndarray:
    """Rows of a spectra group to build a prior from: those whose ``sim_class`` is one of ``classes`` (by the flag's
    ``flag_meanings``; all rows when empty), with a finite ``z_name`` when given, at most ``limit`` drawn with
    ``seed``; sorted."""
    root = zstore.open_root(store)
    source = root[zstore.resolve_spectra_group(root, group)]
    rows = np.arange(source["flux"].shape[0])
    if classes:
        if "sim_class" not in source:
            raise ValueError(f"{store}: no sim_class to select {list(classes)} by")
        meanings = str(source["sim_class"].attrs.get("flag_meanings", "")).split()
        unknown = [c for c in classes if c not in meanings]
        if unknown:
            raise ValueError(f"{store}: sim_class has no {unknown}; it has {meanings}")
        rows = np.flatnonzero(np.isin(source["sim_class"][:], [meanings.index(c) for c in classes]))
    if z_name is not None:
        if z_name not in source:
            raise ValueError(f"{store}: no {z_name!r} to align the LAE spectra with")
        rows = rows[np.isfinite(source[z_name].oindex[rows])]
    if limit is not None and rows.size > limit:
        rows = np.sort(np.random.default_rng(seed).choice(rows, limit, replace=False))
    return rows


def _read(store: str, group: str, rows: np.ndarray, grid: LogGrid, y: np.ndarray | None,
          variance_model: VarianceModel) -> tuple[np.ndarray, np.ndarray]:
    source = zstore.open_root(store)[group]
    return to_lae_grid(source["wavelength"][:], source["flux"].oindex[rows, :], source["ivar"].oindex[rows, :], grid,
                       y=y, variance_model=variance_model)


#: Blocks per node of the prior's reduction trees. Pass 1 and the LAE windows combine up to this many blocks in
#: block order (as a sequential sum or concatenation would); the sky Gram (below) is summed in pairs.
SPLIT_EVERY = 64


def _sky_power_block(block: int, start: int, stop: int, store: str, group: str, rows: np.ndarray, grid: LogGrid,
                     variance_model: VarianceModel, max_sum: float, max_masked: int) -> dict[str, Any]:
    flux, ivar = _read(store, group, rows[start:stop], grid, None, variance_model)
    power = prior_sky_power(flux, ivar, max_sum=max_sum, max_masked=max_masked)
    return {"kept_rows": [rows[start:stop][power["keep"]]], "power": power["power"], "count": power["count"]}


def _merge_powers(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {"kept_rows": a["kept_rows"] + b["kept_rows"], "power": a["power"] + b["power"],
            "count": a["count"] + b["count"]}


def _sky_gram_block(block: int, start: int, stop: int, store: str, group: str, rows: np.ndarray, grid: LogGrid,
                    variance_model: VarianceModel, y: np.ndarray) -> dict[str, Any]:
    flux, ivar = _read(store, group, rows, grid, y, variance_model)
    return prior_sky_gram(flux, ivar, grid.size)


def _add(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {key: a[key] + b[key] for key in a}


def _lae_block(block: int, start: int, stop: int, store: str, group: str, rows: np.ndarray, z: np.ndarray,
               grid: LogGrid, variance_model: VarianceModel, y: np.ndarray, sky_vectors: np.ndarray,
               sky_mask: np.ndarray, window_start: int, m: int, z_ref: float) -> dict[str, np.ndarray]:
    flux, ivar = _read(store, group, rows[start:stop], grid, y, variance_model)
    return prior_lae_windows(flux, ivar, z[start:stop], grid, sky_vectors, sky_mask, window_start, m, z_ref)


def _concatenate(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {key: np.concatenate([a[key], b[key]]) for key in a}


def build_lae_prior(
    client: Client,
    sky: tuple[str | PathLike[str], str | None, np.ndarray],
    lae: tuple[str | PathLike[str], str | None, np.ndarray],
    *,
    out: str | PathLike[str] | None = None,
    name: str = "lae",
    rescale: Literal["fit", "paper"] = "fit",
    n_sky: int = 50,
    n_lae: int = 2,
    z_ref: float = 2.45,
    window: tuple[float, float] = LAE_WINDOW,
    variance_quantile: float = 0.75,
    max_sum: float = 1e6,
    max_masked: int = 1000,
    z_name: str = "z_true",
    block_rows: int = 1024,
    grid: LogGrid = LAE_GRID,
    variance_model: VarianceModel = "conserve",
    overwrite: bool = False,
) -> tuple[LoadedPrior, dict[str, Any]]:
    """Build the sky-residual and LAE priors (U25 §2.2-2.3) on the cluster; save them to ``out``/priors/``name``.

    Parameters
    ----------
    client
        A Dask client.
    sky, lae
        ``(store, group, rows)``: the sky-residual spectra and the LAE spectra with known redshifts ``z_name``.
    rescale
        ``"fit"``: refit U25 Eq. 7 to this sky sample's log10 covariance diagonal in a scaled variable; ``"paper"``:
        the printed coefficients.
    n_sky, n_lae
        Eigenvectors kept (U25: 50 and 2).
    z_ref, window
        The LAEs are aligned to ``z_ref`` and the prior kept over ``window`` (Å, observed at ``z_ref``).
    variance_quantile
        LAE spectra whose residual variance is above this quantile are dropped (U25: 0.75).
    variance_model
        How ivar is resampled onto the grid (:func:`~dzspec.engines.madgics.priors.to_lae_grid`); stored with the
        prior, and every spectrum scanned with it is resampled the same way.

    Returns
    -------
    The prior as the scan loads it, and a summary (counts at each cut, mask size, eigenvalues).
    """
    sky_store, sky_group = str(Path(sky[0]).resolve()), zstore.resolve_spectra_group(zstore.open_root(sky[0]), sky[1])
    lae_store, lae_group = str(Path(lae[0]).resolve()), zstore.resolve_spectra_group(zstore.open_root(lae[0]), lae[1])
    sky_rows, lae_rows = np.sort(np.asarray(sky[2], dtype=np.int64)), np.sort(np.asarray(lae[2], dtype=np.int64))
    if sky_rows.size < n_sky or lae_rows.size < n_lae:
        raise ValueError(f"{sky_rows.size} sky and {lae_rows.size} LAE spectra cannot make {n_sky} + {n_lae} vectors")
    # pass 1: the cuts and the covariance diagonal the rescaling is fitted to
    powers = reduce_blocks(client, _sky_power_block, zstore.BlockPlan(sky_rows.size, block_rows).blocks,
                           args=(sky_store, sky_group, sky_rows, grid, variance_model, max_sum, max_masked),
                           combine=_merge_powers, split_every=SPLIT_EVERY, name="sky prior: cuts", progress=None)
    kept_rows = powers["kept_rows"]
    n_kept = sum(r.size for r in kept_rows)
    if n_kept < n_sky:
        raise ValueError(f"{sky_store}: only {n_kept} sky spectra pass the cuts, {n_sky} vectors asked")
    power, count = powers["power"], powers["count"]
    wavelength = grid.wavelength()
    variance = np.divide(power, count, out=np.zeros(grid.size), where=count > 0)
    polynomial = (RescalePolynomial.paper() if rescale == "paper" else
                  RescalePolynomial.fit(wavelength, variance, count > 0))
    y = polynomial(wavelength)
    # pass 2, rescaled: the sky-line mask (outliers stand out only once the smooth variance trend is divided out)
    # and the Gram matrix
    # summed in pairs on the workers, so the driver receives one Gram instead of one per block
    total = reduce_blocks(client, _sky_gram_block, [(0, r.size) for r in kept_rows],
                          args=(sky_store, sky_group, PerBlock(kept_rows), grid, variance_model, y), combine=_add,
                          split_every=2, name="sky prior: Gram", progress=None)
    mask = sky_mask_from_counts(total["counts"], total["n"])
    sky_vectors, sky_values = sky_vectors_from_gram(total.pop("gram"), total["n"], mask, n_sky)
    log.info("sky prior: %d of %d spectra kept, %d bins masked", total["n"], sky_rows.size, int(mask.sum()))

    window_start = round((np.log10(window[0]) - grid.start) / grid.step)
    m = round((np.log10(window[1]) - grid.start) / grid.step) - window_start + 1
    z_all = zstore.open_root(lae_store)[lae_group][z_name].oindex[lae_rows]
    pieces = reduce_blocks(client, _lae_block, zstore.BlockPlan(lae_rows.size, block_rows).blocks,
                           args=(lae_store, lae_group, lae_rows, z_all, grid, variance_model, y, sky_vectors, mask,
                                 window_start, m, z_ref), combine=_concatenate, split_every=SPLIT_EVERY,
                           name="LAE prior: windows", progress=None)
    variance, data, covered = pieces["variance"], pieces["data"], pieces["covered"]
    usable = np.isfinite(variance) & np.isfinite(z_all) & covered.any(axis=1)
    kept = usable & (variance < np.quantile(variance[usable], variance_quantile))
    lae_vectors, lae_values = lae_vectors_from_windows(data[kept].T @ data[kept], covered[kept].T @ covered[kept],
                                                       n_lae)
    template = lae_template(data[kept], covered[kept])
    prior = LAEPrior(sky_vectors, lae_vectors, window_start=window_start, z_ref=z_ref, sky_mask=mask,
                     delta=grid.step)
    summary = {
        "sky_spectra": int(sky_rows.size), "sky_kept": int(total["n"]), "sky_masked_bins": int(mask.sum()),
        "lae_spectra": int(lae_rows.size), "lae_usable": int(usable.sum()), "lae_kept": int(kept.sum()),
        "rescale": polynomial.as_attrs(), "variance_model": variance_model, "window": list(window),
        "window_pixels": int(m),
        "sky_eigenvalues_top5": sky_values[:5].tolist(), "lae_eigenvalues": lae_values.tolist(),
        "sky_source": {"store": sky_store, "group": sky_group, "rows_sha256": _rows_sha256(sky_rows)},
        "lae_source": {"store": lae_store, "group": lae_group, "rows_sha256": _rows_sha256(lae_rows),
                       "z_name": z_name},
    }
    if out is not None:
        save_lae_prior(out, name, prior, grid, y, sky_eigenvalues=sky_values, lae_eigenvalues=lae_values,
                       template=template, overwrite=overwrite, extra_attrs=summary)
    return LoadedPrior(prior, grid, y, template, summary), summary


def _rows_sha256(rows: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(rows, dtype=np.int64).tobytes()).hexdigest()


def run_lae(store: str | PathLike[str], prior_store: str | PathLike[str], client: Client, *, prior_name: str = "lae",
            params: Mapping[str, Any] | None = None, noise_calibration: str = "auto", **runner: Any) -> RunReport:
    """Scan every spectrum of a store's spectra group for a Lya emitter, into ``results/<grid>/madgics_lae``.

    ``params`` override :data:`LAE_SCAN`'s defaults (``z_min``, ``n_shifts``, ``fine_half_width``, ``calibration``
    (U25's s), ``exclusion``, and the interloper cuts ``ew_min``, ``continuum_snr``, ``lowz_max``, ``line_snr_min`` of
    :mod:`dzspec.engines.madgics.interlopers`, and ``dchi2_min``, the detection threshold of calibrated abs(dchi2) below
    which ``zwarn`` has LOW_SIGNIFICANCE); ``noise_calibration`` inflates the variance at sky-residual pixels as
    in ``dzspec zfind`` (``"auto"``: the group's own, measured first when missing and the group has enough spectra,
    else the prior store's instrument default for the grid if it holds one, else none; ``"off"``; or a stored
    calibration's name: :func:`~dzspec.parallel.noise_calibration.resolve_noise_calibration`); ``runner`` goes to
    :func:`dzspec.parallel.runner.run_kernel`.
    ``zwarn == 0`` is the trust cut: a detected LAE (:func:`~dzspec.engines.madgics.interlopers.select_lae` at
    ``dchi2_min``) with no interloper flag and a well-measured redshift.
    """
    prior_store = str(Path(prior_store).resolve())
    scan = lae_params(prior_store, prior_name, params)
    spectra = zstore.resolve_spectra_group(zstore.open_root(store), runner.get("group"))
    noise = noise_params(store, spectra, noise_calibration, fallback=prior_store)
    full = {**dict(params or {}), **noise, **{key: scan[key] for key in ("prior_store", "prior_name", "prior_sha256",
                                                                          "n_lae")}}
    return run_kernel(store, LAE_SCAN, client, params=full, **runner)
