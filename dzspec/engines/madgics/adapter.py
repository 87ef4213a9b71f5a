"""The MADGICS engine's block adapters: the pure functions that turn a block of spectra and a run's parameters into
the outputs of ``dzspec lae`` (:data:`LAE_SCAN`), and the per-block pieces of ``dzspec priors``.

Model loading: a prior never travels with tasks; each process loads it once through :mod:`dzspec.engines.cache`,
keyed by path, name and checksum (:func:`cached_prior`). :func:`lae_params` resolves a scan's parameters and
:func:`scan_as_run` runs the scan of native spectra exactly as a run with those parameters does (what
:mod:`dzspec.model_spectra` rescans). The prior's block pieces (:func:`prior_sky_power`, :func:`prior_sky_gram`,
:func:`prior_lae_windows`) take the rows that :func:`dzspec.parallel.lae.build_lae_prior` reads from a store, already
on the prior's grid. What submits work to a cluster is :mod:`dzspec.parallel.lae`.
"""

from __future__ import annotations

from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from dzspec.engines.adapter import NOISE_PARAMS, calibrated_ivar
from dzspec.engines.cache import process_cache
from dzspec.engines.madgics.interlopers import LOWZ_HYPOTHESES, interloper_tests
from dzspec.engines.madgics.params import LaeScanParams
from dzspec.engines.madgics.priors import align_windows, gram, sky_line_counts, sky_power, sky_spectra_keep
from dzspec.engines.madgics.scan import LAEScan, lae_line_flux, scan_lae, sky_component
from dzspec.io.priors import LoadedPrior, load_lae_prior
from dzspec.kernels.base import KernelSpec, OutputSpec
from dzspec.kernels.restframe import LogGrid
from dzspec.params import defaults_of
from dzspec.results_schema import CANDIDATE_DIM, LAEWarn, output_specs

__all__ = ["LAE_SCAN", "cached_prior", "lae_params", "prior_lae_windows", "prior_sky_gram", "prior_sky_power",
           "scan_as_run"]


@process_cache(maxsize=2)
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


def _lae_outputs(params: Mapping[str, Any]) -> dict[str, OutputSpec]:
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
    outputs=_lae_outputs,
    version="6",
    defaults={**defaults_of(LaeScanParams), **NOISE_PARAMS},
)


def lae_params(prior_store: str | PathLike[str], prior_name: str = "lae",
               params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The parameters of :data:`LAE_SCAN` for a scan with the prior ``prior_store``/priors/``prior_name``, all but the
    noise calibration's: what :func:`~dzspec.parallel.lae.run_lae` passes to the runner and :func:`dzspec.lae` to the
    block kernel in process. ``params`` override the defaults; a non-positive ``calibration`` is refused before any
    work.

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


def prior_sky_power(flux: np.ndarray, ivar: np.ndarray, *, max_sum: float, max_masked: int) -> dict[str, Any]:
    """Pass 1 of the sky prior on one block of sky rows (on the prior's grid, not rescaled): which rows pass the cuts
    (:func:`~dzspec.engines.madgics.priors.sky_spectra_keep`, ``keep``) and their per-bin ``power`` and ``count``."""
    keep = sky_spectra_keep(flux, ivar, max_sum=max_sum, max_masked=max_masked)
    power, count = sky_power(flux[keep], ivar[keep])
    return {"power": power, "count": count, "keep": keep}


def prior_sky_gram(flux: np.ndarray, ivar: np.ndarray, n_pixels: int) -> dict[str, Any]:
    """Pass 2 of the sky prior on one block of kept, rescaled sky rows: the sky-line outlier ``counts``, the Gram
    matrix ``gram`` (``n_pixels`` x ``n_pixels``) and the number of rows ``n``; summed over blocks."""
    if not flux.shape[0]:
        return {"counts": np.zeros(n_pixels, np.int64), "gram": np.zeros((n_pixels, n_pixels)), "n": 0}
    return {"counts": sky_line_counts(flux, ivar), "gram": gram(flux, ivar), "n": int(flux.shape[0])}


def prior_lae_windows(flux: np.ndarray, ivar: np.ndarray, z: np.ndarray, grid: LogGrid, sky_vectors: np.ndarray,
                      sky_mask: np.ndarray, window_start: int, m: int, z_ref: float) -> dict[str, np.ndarray]:
    """The LAE prior's pass on one block of rescaled LAE rows with known redshifts ``z``: each row loses its MADGICS
    sky component, and returns its residual ``variance`` (over unmasked measured pixels; NaN below 2) and its
    residual window aligned to ``z_ref`` (``data``, ``covered``: :func:`~dzspec.engines.madgics.priors.align_windows`,
    ``m`` pixels from ``window_start``)."""
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
