"""``dzspec calibrate-noise``: the per-wavelength noise calibration of a spectra group, as one Dask reduction.

Each chunk of spectra becomes a per-pixel histogram of normalised residuals
(:func:`dzspec.kernels.noise_calibration.residual_histogram`); Dask sums them in a tree on the active scheduler, so
only one ``(nwave, nbins)`` table reaches this process whatever the store's size. The calibration is written to
``calibration/<grid>/<name>`` (:mod:`dzspec.io.noise`) and used by ``dzspec zfind`` and ``dzspec lae``: the driver
names it in the run's parameters (:func:`noise_params`, so its checksum enters the results' provenance) and each
worker divides the inverse variance of its blocks by its square (:func:`calibrated_ivar`, loaded once per worker).
"""

from __future__ import annotations

import logging
from functools import lru_cache
from os import PathLike

import dask.array as da
import numpy as np

from dzspec.io import store as zstore
from dzspec.io.noise import NoiseCalibration, calibration_path, load_noise_calibration, save_noise_calibration
from dzspec.kernels.noise_calibration import (
    HISTOGRAM_EDGES,
    MIN_SPECTRA,
    calibration_from_histogram,
    resample_calibration,
    residual_histogram,
)

__all__ = ["MIN_SURVEY_SPECTRA", "NOISE_PARAMS", "calibrate_noise", "calibrated_ivar", "instrument_default",
           "noise_params", "residual_histogram_total", "resolve_noise_calibration"]

log = logging.getLogger(__name__)

#: Spectra a group needs before ``zfind`` measures its calibration by itself (METHODS §5.7: a few hundred).
MIN_SURVEY_SPECTRA = 300
#: The kernel parameters naming a calibration (all "" for none): its store, spectra group, name and checksum.
NOISE_PARAMS: dict[str, str] = {"noise_store": "", "noise_group": "", "noise_name": "", "noise_sha256": ""}


def residual_histogram_total(flux: da.Array | np.ndarray, ivar: da.Array | np.ndarray, *,
                             window: int = 51) -> np.ndarray:
    """The summed :func:`~dzspec.kernels.noise_calibration.residual_histogram` of all rows (NumPy or Dask input).

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> flux, ivar = rng.normal(size=(20, 100)), np.ones((20, 100))
    >>> lazy = residual_histogram_total(da.from_array(flux, chunks=(7, 100)), da.from_array(ivar, chunks=(7, 100)))
    >>> bool(np.array_equal(lazy, residual_histogram(flux, ivar))), int(lazy.sum())  # 25 pixels at each end left out
    (True, 1000)
    """
    if not isinstance(flux, da.Array):
        return residual_histogram(flux, ivar, window=window)
    nbins = HISTOGRAM_EDGES.size - 1
    nwave = flux.shape[1]
    ivar = ivar.rechunk(flux.chunks)
    partial = da.map_blocks(lambda f, w: residual_histogram(f, w, window=window)[None], flux, ivar,
                            dtype=np.int64, new_axis=2, chunks=((1,) * flux.numblocks[0], (nwave,), (nbins,)),
                            meta=np.empty((0, 0, 0), np.int64))
    return np.asarray(partial.sum(axis=0).compute())


def calibrate_noise(store: str | PathLike[str], *, group: str | None = None, name: str = "noise", window: int = 51,
                    smooth_pixels: int = 3, min_spectra: int = MIN_SPECTRA,
                    overwrite: bool = False) -> NoiseCalibration:
    """Measure the noise calibration of a spectra group on the active Dask scheduler and store it.

    ``window`` is the running median (pixels) that stands for each spectrum's smooth continuum; pixels with fewer
    than ``min_spectra`` spectra keep 1. Returns the stored calibration.
    """
    root = zstore.open_root(store)
    spectra = zstore.resolve_spectra_group(root, group)
    ds = zstore.open_spectra(store, spectra)
    counts = residual_histogram_total(ds.flux.data, ds.ivar.data, window=window)
    scale = calibration_from_histogram(counts, smooth_pixels=smooth_pixels, min_spectra=min_spectra)
    n_residuals = counts.sum(axis=1)
    save_noise_calibration(store, spectra, scale, n_residuals, name=name, overwrite=overwrite, attrs={
        "method": "-q0.1587 of (f - running median) sqrt(ivar) per pixel, max(1, .)",
        "window": int(window), "smooth_pixels": int(smooth_pixels), "min_spectra": int(min_spectra),
        "n_spectra": int(ds.sizes["spectrum"]), "pixels_inflated": int(np.sum(scale > 1.0)),
    })
    calibration = load_noise_calibration(store, spectra, name)
    log.info("%s: noise calibration of %d spectra, %d of %d pixels inflated (max x%.2f)", calibration_path(spectra),
             ds.sizes["spectrum"], int(np.sum(scale > 1.0)), scale.size, float(scale.max()))
    return calibration


def resolve_noise_calibration(store: str | PathLike[str], spectra: str, choice: str,
                              fallback: str | PathLike[str] | None = None) -> NoiseCalibration | None:
    """The calibration a scan of ``spectra`` uses for ``choice``: ``"off"`` (none), a stored calibration's name, or
    ``"auto"``: the stored ``noise`` calibration if it was measured on the group as it is now, else a new one when
    the group has at least :data:`MIN_SURVEY_SPECTRA` spectra, else the instrument default that the ``fallback``
    store (the basis's, e.g. a shipped model) holds for the same grid, else its default for another grid of the same
    instrument resampled to this one (and stored in the group's store), else none."""
    if choice == "off":
        return None
    root = zstore.open_root(store)
    if choice != "auto":
        return load_noise_calibration(store, spectra, choice)
    if calibration_path(spectra) in root:
        stored = load_noise_calibration(store, spectra)
        if stored.attrs.get("input_id") == zstore.input_id(root[spectra]):
            return stored
    nspectrum = root[spectra]["flux"].shape[0]
    if nspectrum >= MIN_SURVEY_SPECTRA:
        return calibrate_noise(store, group=spectra, overwrite=True)
    if fallback is not None and calibration_path(spectra) in zstore.open_root(fallback):
        log.info("%s/%s: %d spectra are too few to measure a noise calibration (%d needed); using the instrument "
                 "default of %s", store, spectra, nspectrum, MIN_SURVEY_SPECTRA, fallback)
        return load_noise_calibration(fallback, spectra)
    target = np.asarray(root[spectra]["wavelength"][...], dtype=np.float64)
    default = instrument_default(fallback, spectra, target) if fallback else None
    if default is not None:
        # another grid of the same instrument (a real cube starting at 4749.89 A, an MXDF spectrum from 4700 A): the
        # default carried to this grid, written beside the spectra so that workers read it like a measured one
        scale = resample_calibration(default.wavelength, default.scale, target)
        counts = np.interp(target, default.wavelength, default.n_residuals, left=0, right=0).astype(np.int64)
        save_noise_calibration(store, spectra, scale, counts, overwrite=True, attrs={
            "method": "instrument default resampled to this grid (linear in wavelength, 1 beyond its range)",
            "resampled_from": {"store": default.path, "spectra_group": default.attrs["spectra_group"],
                               "scale_sha256": default.sha256},
            "n_spectra": int(default.attrs.get("n_spectra", 0)), "pixels_inflated": int(np.sum(scale > 1.0))})
        log.info("%s/%s: %d spectra are too few to measure a noise calibration (%d needed); using the instrument "
                 "default of %s for %s, resampled to this grid", store, spectra, nspectrum, MIN_SURVEY_SPECTRA,
                 fallback, default.attrs["spectra_group"])
        return load_noise_calibration(store, spectra)
    log.warning("%s/%s: %d spectra are too few to measure a noise calibration (%d needed) and there is no "
                "instrument default for this grid; scanning with the pipeline variances", store, spectra, nspectrum,
                MIN_SURVEY_SPECTRA)
    return None


#: Grid names that do not name an instrument (``dzspec.schema.default_grid_name``): no default is carried to them.
_GENERIC_GRIDS = ("lin", "grid")


def instrument_default(fallback: str | PathLike[str], spectra: str, wavelength: np.ndarray) -> NoiseCalibration | None:
    """The calibration in ``fallback`` of another grid of the same instrument as ``spectra`` (the grid name's first
    word: ``muse``, ``desi`` ...; the same pixel step to 1 %) that covers most of ``wavelength``, if any."""
    instrument = spectra.removeprefix("spectra/").split("-")[0]
    root = zstore.open_root(fallback)
    if instrument in _GENERIC_GRIDS or "calibration" not in root:
        return None
    step = float(np.median(np.diff(wavelength)))
    best, best_overlap = None, 0.5  # at least half the pixels inside the default's range
    for grid in sorted(root["calibration"].group_keys()):
        if grid.split("-")[0] != instrument or "noise" not in root["calibration"][grid]:
            continue
        candidate = load_noise_calibration(fallback, f"spectra/{grid}")
        if candidate.wavelength is None or abs(np.median(np.diff(candidate.wavelength)) / step - 1.0) > 0.01:
            continue
        overlap = float(np.mean((wavelength >= candidate.wavelength[0]) & (wavelength <= candidate.wavelength[-1])))
        if overlap >= best_overlap:
            best, best_overlap = candidate, overlap
    return best


def noise_params(store: str | PathLike[str], spectra: str, choice: str,
                 fallback: str | PathLike[str] | None = None) -> dict[str, str]:
    """The :data:`NOISE_PARAMS` of the calibration :func:`resolve_noise_calibration` picks (empty for none), for a
    scan's parameters."""
    calibration = resolve_noise_calibration(store, spectra, choice, fallback=fallback)
    if calibration is None:
        return {}
    return {"noise_store": calibration.path, "noise_group": spectra, "noise_name": str(calibration.attrs["name"]),
            "noise_sha256": calibration.sha256}


@lru_cache(maxsize=2)
def _noise_scale(path: str, spectra: str, name: str, sha256: str) -> np.ndarray:
    calibration = load_noise_calibration(path, spectra, name)
    if calibration.sha256 != sha256:
        raise ValueError(f"{path}: noise calibration {name} of {spectra} changed since the run started")
    return calibration.scale


def calibrated_ivar(ivar: np.ndarray, *, noise_store: str, noise_group: str, noise_name: str,
                    noise_sha256: str) -> np.ndarray:
    """``ivar / scale**2`` with the calibration that :func:`noise_params` named (``ivar`` itself when none): the
    sky-subtraction residuals that the pipeline variance leaves out (METHODS §5.7). The scale is read once per
    worker process and checked against ``noise_sha256``."""
    if not noise_sha256:
        return ivar
    return ivar / _noise_scale(noise_store, noise_group, noise_name, noise_sha256) ** 2
