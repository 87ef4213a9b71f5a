"""MADGICS on a Dask cluster: ``dzspec priors`` (sky and LAE priors from stores) and ``dzspec lae`` (the scan of every
spectrum through the resumable block runner).

Priors (U25 §2.2-2.3, METHODS §2.2-2.3), in two passes over blocks of rows:

1. sky rows: each block is put on the log grid and cut (:func:`~dzspec.kernels.madgics_priors.sky_spectra_keep`)
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
from functools import lru_cache
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import numpy as np
from distributed import Client

from dzspec.io import store as zstore
from dzspec.io.priors import LoadedPrior, load_lae_prior, save_lae_prior
from dzspec.kernels.base import KernelSpec, OutputSpec
from dzspec.kernels.lae_injection import lae_template
from dzspec.kernels.lae_interlopers import LOWZ_HYPOTHESES, interloper_tests
from dzspec.kernels.madgics import LAEPrior, LAEScan, lae_line_flux, scan_lae, sky_component
from dzspec.kernels.madgics_priors import (
    LAE_GRID,
    LAE_WINDOW,
    RescalePolynomial,
    VarianceModel,
    align_windows,
    gram,
    lae_vectors_from_windows,
    sky_line_counts,
    sky_mask_from_counts,
    sky_power,
    sky_spectra_keep,
    sky_vectors_from_gram,
    to_lae_grid,
)
from dzspec.kernels.restframe import LogGrid
from dzspec.parallel.noise_calibration import NOISE_PARAMS, calibrated_ivar, noise_params
from dzspec.parallel.runner import RunReport, run_kernel
from dzspec.results_schema import CANDIDATE_DIM, LAEWarn, output_specs

__all__ = ["LAE_SCAN", "build_lae_prior", "lae_params", "prior_rows", "run_lae", "scan_as_run"]

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


def _sky_power_block(store: str, group: str, rows: np.ndarray, grid: LogGrid, variance_model: VarianceModel,
                     max_sum: float, max_masked: int) -> dict[str, Any]:
    flux, ivar = _read(store, group, rows, grid, None, variance_model)
    keep = sky_spectra_keep(flux, ivar, max_sum=max_sum, max_masked=max_masked)
    power, count = sky_power(flux[keep], ivar[keep])
    return {"power": power, "count": count, "keep": keep}


def _sky_gram_block(store: str, group: str, rows: np.ndarray, grid: LogGrid, variance_model: VarianceModel,
                    y: np.ndarray) -> dict[str, Any]:
    flux, ivar = _read(store, group, rows, grid, y, variance_model)
    if not rows.size:
        return {"counts": np.zeros(grid.size, np.int64), "gram": np.zeros((grid.size, grid.size)), "n": 0}
    return {"counts": sky_line_counts(flux, ivar), "gram": gram(flux, ivar), "n": int(rows.size)}


def _add(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {key: a[key] + b[key] for key in a}


def _lae_block(store: str, group: str, rows: np.ndarray, z: np.ndarray, grid: LogGrid,
               variance_model: VarianceModel, y: np.ndarray, sky_vectors: np.ndarray, sky_mask: np.ndarray,
               window_start: int, m: int, z_ref: float) -> dict[str, np.ndarray]:
    flux, ivar = _read(store, group, rows, grid, y, variance_model)
    residual = flux - sky_component(flux, ivar, sky_vectors, sky_mask)
    valid = ivar > 0
    valid[:, sky_mask] = False
    with np.errstate(invalid="ignore"):
        count = valid.sum(axis=1)
        mean = np.where(valid, residual, 0.0).sum(axis=1) / np.maximum(count, 1)
        variance = np.where(valid, (residual - mean[:, None]) ** 2, 0.0).sum(axis=1) / np.maximum(count - 1, 1)
    variance[count < 2] = np.nan
    shift = np.log10((1 + z) / (1 + z_ref)) / grid.step
    data, covered = align_windows(np.where(valid, residual, 0.0), valid.astype(float), shift, window_start, m)
    return {"variance": variance, "data": data, "covered": covered}


def _tree_sum(client: Client, futures: list[Any]) -> Any:
    """Pairwise sums on the workers, so the driver receives one Gram instead of one per block."""
    while len(futures) > 1:
        futures = [client.submit(_add, futures[i], futures[i + 1], pure=False) if i + 1 < len(futures)
                   else futures[i] for i in range(0, len(futures), 2)]
    return futures[0].result()


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
        How ivar is resampled onto the grid (:func:`~dzspec.kernels.madgics_priors.to_lae_grid`); stored with the
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
    blocks = [sky_rows[s: s + block_rows] for s in range(0, sky_rows.size, block_rows)]
    powers = client.gather([client.submit(_sky_power_block, sky_store, sky_group, b, grid, variance_model, max_sum,
                                          max_masked, pure=False) for b in blocks])
    kept_rows = [b[p["keep"]] for b, p in zip(blocks, powers, strict=True)]
    n_kept = sum(r.size for r in kept_rows)
    if n_kept < n_sky:
        raise ValueError(f"{sky_store}: only {n_kept} sky spectra pass the cuts, {n_sky} vectors asked")
    power = sum(p["power"] for p in powers)
    count = sum(p["count"] for p in powers)
    wavelength = grid.wavelength()
    variance = np.divide(power, count, out=np.zeros(grid.size), where=count > 0)
    polynomial = (RescalePolynomial.paper() if rescale == "paper" else
                  RescalePolynomial.fit(wavelength, variance, count > 0))
    y = polynomial(wavelength)
    # pass 2, rescaled: the sky-line mask (outliers stand out only once the smooth variance trend is divided out)
    # and the Gram matrix
    total = _tree_sum(client, [client.submit(_sky_gram_block, sky_store, sky_group, r, grid, variance_model, y,
                                             pure=False)
                               for r in kept_rows])
    mask = sky_mask_from_counts(total["counts"], total["n"])
    sky_vectors, sky_values = sky_vectors_from_gram(total.pop("gram"), total["n"], mask, n_sky)
    log.info("sky prior: %d of %d spectra kept, %d bins masked", total["n"], sky_rows.size, int(mask.sum()))

    window_start = round((np.log10(window[0]) - grid.start) / grid.step)
    m = round((np.log10(window[1]) - grid.start) / grid.step) - window_start + 1
    z_all = zstore.open_root(lae_store)[lae_group][z_name].oindex[lae_rows]
    pieces = client.gather([client.submit(_lae_block, lae_store, lae_group, lae_rows[s: s + block_rows],
                                          z_all[s: s + block_rows], grid, variance_model, y, sky_vectors, mask,
                                          window_start, m, z_ref, pure=False)
                            for s in range(0, lae_rows.size, block_rows)])
    variance = np.concatenate([p["variance"] for p in pieces])
    data = np.concatenate([p["data"] for p in pieces])
    covered = np.concatenate([p["covered"] for p in pieces])
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


@lru_cache(maxsize=2)
def cached_prior(path: str, name: str, sha256: str) -> LoadedPrior:
    """The prior ``path``/priors/``name``, loaded once per worker process (it never travels inside task arguments),
    refused if its checksum is no longer ``sha256``."""
    loaded = load_lae_prior(path, name)
    if loaded.attrs["prior_sha256"] != sha256:
        raise ValueError(f"{path}/priors/{name} changed since the run started (checksum differs)")
    return loaded


def scan_as_run(wavelength: np.ndarray, flux: np.ndarray, ivar: np.ndarray, *, prior_store: str, prior_name: str,
                prior_sha256: str, z_min: float, n_shifts: int, fine_half_width: float, calibration: float,
                exclusion: int, noise_store: str, noise_group: str, noise_name: str, noise_sha256: str,
                return_curve: bool = False, return_components: bool = False, **_: Any
                ) -> tuple[LoadedPrior, np.ndarray, LAEScan]:
    """The MADGICS scan of native spectra as ``dzspec lae`` runs it with these parameters (a run's ``params``; the
    interloper cuts among them are ignored): the prior (cached per process), the calibrated ivar and the scan, with
    its curves and components when asked for (:func:`dzspec.model_spectra.rescan`)."""
    loaded = cached_prior(prior_store, prior_name, prior_sha256)
    ivar = calibrated_ivar(ivar, noise_store=noise_store, noise_group=noise_group, noise_name=noise_name,
                           noise_sha256=noise_sha256)
    grid_flux, grid_ivar = loaded.to_grid(wavelength, flux, ivar)
    result = scan_lae(grid_flux, grid_ivar, loaded.prior, shifts=loaded.prior.coarse_shifts(z_min, n_shifts),
                      fine_half_width=fine_half_width, calibration=calibration, exclusion=exclusion,
                      return_curve=return_curve, return_components=return_components)
    return loaded, ivar, result


def _lae_scan_block(wavelength: np.ndarray, flux: np.ndarray, ivar: np.ndarray, *, prior_store: str, prior_name: str,
                    prior_sha256: str, n_lae: int, z_min: float, n_shifts: int, fine_half_width: float,
                    calibration: float, exclusion: int, ew_min: float, continuum_snr: float,
                    lowz_max: float, line_snr_min: float, dchi2_min: float, noise_store: str, noise_group: str,
                    noise_name: str, noise_sha256: str) -> dict[str, np.ndarray]:
    loaded, ivar, result = scan_as_run(wavelength, flux, ivar, prior_store=prior_store, prior_name=prior_name,
                                       prior_sha256=prior_sha256, z_min=z_min, n_shifts=n_shifts,
                                       fine_half_width=fine_half_width, calibration=calibration, exclusion=exclusion,
                                       noise_store=noise_store, noise_group=noise_group, noise_name=noise_name,
                                       noise_sha256=noise_sha256)
    grid_wavelength = loaded.grid.wavelength()
    line_flux = lae_line_flux(loaded.prior, result.z, result.lae_amplitude, np.sqrt(10.0**loaded.rescale_y),
                              grid_wavelength * np.log(10) * loaded.grid.step)
    # EW and companion lines on the native pixels: uncorrelated, and not rescaled
    tests = interloper_tests(wavelength, np.asarray(flux, np.float64), np.asarray(ivar, np.float64), result.z,
                             line_flux)
    warn = result.warn.astype(np.uint32) | tests.warn(ew_min, continuum_snr, lowz_max, line_snr_min)
    # every bit means "not a trusted LAE": zwarn == 0 is select_lae's selection (less the EDGE/curvature cases)
    with np.errstate(invalid="ignore"):
        warn[~(result.abs_dchi2_cal > dchi2_min)] |= np.uint32(LAEWarn.LOW_SIGNIFICANCE)
    # candidate 0 is the coarse best, then the coarse alternatives (the vocabulary's one candidate dimension)
    candidate_z = np.column_stack([result.z_coarse, result.z_alt])
    candidate_dchi2 = np.column_stack([result.dchi2_coarse, result.dchi2_alt])
    return {"z": result.z, "zerr": result.zerr, "deltachi2": candidate_dchi2[:, 1] - candidate_dchi2[:, 0],
            "lae_dchi2": result.dchi2, "lae_abs_dchi2_cal": result.abs_dchi2_cal, "candidate_z": candidate_z,
            "candidate_lae_dchi2": candidate_dchi2, "chi2_null": result.chi2_null,
            "lae_amplitude": result.lae_amplitude, "lae_line_flux": line_flux, "lae_continuum": tests.continuum,
            "lae_continuum_err": tests.continuum_err, "lae_ew_rest": tests.ew_rest, "lowz_score": tests.lowz_score,
            "lowz_hypothesis": tests.hypothesis, "lae_line_snr": tests.line_snr, "zwarn": warn}


def _outputs(params: Mapping[str, Any]) -> dict[str, OutputSpec]:
    s = float(params["calibration"])
    names = ["z", "zerr", "deltachi2", "lae_dchi2", "lae_abs_dchi2_cal", "candidate_z", "candidate_lae_dchi2",
             "chi2_null", "lae_amplitude", "lae_line_flux", "lae_continuum", "lae_continuum_err", "lae_ew_rest",
             "lowz_score", "lowz_hypothesis", "lae_line_snr", "zwarn"]
    extra = {
        "z": {"description": "best redshift of the fine scan (0.1 pixel)"},
        "zerr": {"description": f"(1+z) delta ln10 sigma_p from the curvature of dchi2/2 at +-0.5 px, times s = {s}"},
        "deltachi2": {"description": "lae_dchi2 of the second coarse candidate minus that of the first (both coarse, "
                                     f"candidates more than {params['exclusion']} px apart)"},
        "lae_abs_dchi2_cal": {"calibration": s},
        "candidate_z": {"description": "the coarse best, then the 2nd and 3rd lowest local minima of the coarse "
                                       f"dchi2, more than {params['exclusion']} px from better ones"},
        "lowz_score": {"hypotheses": ", ".join(LOWZ_HYPOTHESES)},
        "lowz_hypothesis": {"flag_meanings": " ".join(LOWZ_HYPOTHESES)},
        "zwarn": {"interloper_cuts": f"LOW_EW: continuum > {params['continuum_snr']} sigma and EW_rest < "
                                     f"{params['ew_min']} A; LOWZ_LINES: lowz_score > {params['lowz_max']}; NO_LINE: "
                                     f"lae_line_snr < {params['line_snr_min']}; LOW_SIGNIFICANCE: "
                                     f"lae_abs_dchi2_cal <= {params['dchi2_min']}"},
    }
    return output_specs("madgics_lae", names, {CANDIDATE_DIM: 3, "lae_vector": int(params["n_lae"])}, extra)


#: The MADGICS LAE scan as the runner sees it.
LAE_SCAN = KernelSpec(
    name="madgics_lae",
    func=_lae_scan_block,
    inputs=("flux", "ivar"),
    outputs=_outputs,
    version="6",
    defaults={"z_min": 2.0, "n_shifts": 4501, "fine_half_width": 5.0, "calibration": 1.0, "exclusion": 10,
              "ew_min": 20.0, "continuum_snr": 10.0, "lowz_max": 25.0, "line_snr_min": 2.0, "dchi2_min": 25.0,
              **NOISE_PARAMS},
)


def lae_params(prior_store: str | PathLike[str], prior_name: str = "lae",
               params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The parameters of :data:`LAE_SCAN` for a scan with the prior ``prior_store``/priors/``prior_name``, all but the
    noise calibration's: what :func:`run_lae` passes to the runner and :func:`dzspec.lae` to the block kernel in
    process. ``params`` override the defaults; a non-positive ``calibration`` is refused before any work.

    Examples
    --------
    >>> from dzspec.models import default_prior_path
    >>> p = lae_params(default_prior_path("desi_lae"))
    >>> p["prior_name"], p["n_lae"]
    ('lae', 2)
    """
    prior_store = str(Path(prior_store).resolve())
    loaded = load_lae_prior(prior_store, prior_name)
    calibration = float(dict(params or {}).get("calibration", 1.0))
    if not calibration > 0:
        raise ValueError(f"calibration must be positive, not {calibration}")
    return {**dict(params or {}), "prior_store": prior_store, "prior_name": prior_name,
            "prior_sha256": loaded.attrs["prior_sha256"], "n_lae": loaded.prior.lae_vectors.shape[1]}


def run_lae(store: str | PathLike[str], prior_store: str | PathLike[str], client: Client, *, prior_name: str = "lae",
            params: Mapping[str, Any] | None = None, noise_calibration: str = "auto", **runner: Any) -> RunReport:
    """Scan every spectrum of a store's spectra group for a Lya emitter, into ``results/<grid>/madgics_lae``.

    ``params`` override :data:`LAE_SCAN`'s defaults (``z_min``, ``n_shifts``, ``fine_half_width``, ``calibration``
    (U25's s), ``exclusion``, and the interloper cuts ``ew_min``, ``continuum_snr``, ``lowz_max``, ``line_snr_min`` of
    :mod:`dzspec.kernels.lae_interlopers`, and ``dchi2_min``, the detection threshold of calibrated abs(dchi2) below
    which ``zwarn`` has LOW_SIGNIFICANCE); ``noise_calibration`` inflates the variance at sky-residual pixels as
    in ``dzspec zfind`` (``"auto"``: the group's own, measured first when missing and the group has enough spectra,
    else the prior store's instrument default for the grid if it holds one, else none; ``"off"``; or a stored
    calibration's name: :func:`~dzspec.parallel.noise_calibration.resolve_noise_calibration`); ``runner`` goes to
    :func:`dzspec.parallel.runner.run_kernel`.
    ``zwarn == 0`` is the trust cut: a detected LAE (:func:`~dzspec.kernels.lae_interlopers.select_lae` at
    ``dchi2_min``) with no interloper flag and a well-measured redshift.
    """
    prior_store = str(Path(prior_store).resolve())
    scan = lae_params(prior_store, prior_name, params)
    spectra = zstore.resolve_spectra_group(zstore.open_root(store), runner.get("group"))
    noise = noise_params(store, spectra, noise_calibration, fallback=prior_store)
    full = {**dict(params or {}), **noise, **{key: scan[key] for key in ("prior_store", "prior_name", "prior_sha256",
                                                                          "n_lae")}}
    return run_kernel(store, LAE_SCAN, client, params=full, **runner)
