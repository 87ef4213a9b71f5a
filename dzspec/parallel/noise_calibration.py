"""``dzspec calibrate-noise``: the per-wavelength noise calibration of a spectra group, as one block reduction.

Each chunk of spectra becomes a per-pixel histogram of normalised residuals
(:func:`dzspec.kernels.noise_calibration.residual_histogram`), summed on the workers in a fixed tree by
:func:`dzspec.parallel.core.reduce_blocks` (partials checkpointed in the store, so an interrupted pass resumes), so
only one ``(nwave, nbins)`` table reaches this process whatever the store's size. The calibration is written to
``calibration/<grid>/<name>`` (:mod:`dzspec.io.noise`) and used by ``dzspec zfind`` and ``dzspec lae``: the driver
names it in the run's parameters (:func:`noise_params`, so its checksum enters the results' provenance) and each
worker divides the inverse variance of its blocks by its square (:func:`dzspec.engines.adapter.calibrated_ivar`,
loaded once per worker).
"""

from __future__ import annotations

import logging
from os import PathLike
from pathlib import Path

import numpy as np
from distributed import Client, get_client

from dzspec.io import store as zstore
from dzspec.io.noise import NoiseCalibration, calibration_path, load_noise_calibration, save_noise_calibration
from dzspec.kernels.noise_calibration import (
    MIN_SPECTRA,
    calibration_from_histogram,
    resample_calibration,
    residual_histogram,
)
from dzspec.parallel.core import Checkpoint, Provenance, reduce_blocks

__all__ = ["MIN_SURVEY_SPECTRA", "calibrate_noise", "instrument_default", "noise_params",
           "resolve_noise_calibration"]

log = logging.getLogger(__name__)

#: Spectra a group needs before ``zfind`` measures its calibration by itself (METHODS §5.7: a few hundred).
MIN_SURVEY_SPECTRA = 300
#: The kernel parameters naming a calibration (all "" for none): its store, spectra group, name and checksum.


def _histogram_block(block: int, start: int, stop: int, store: str, spectra: str, window: int) -> np.ndarray:
    """One block's per-pixel histogram of normalised residuals (read from the store on the worker)."""
    arrays = zstore.read_rows(zstore.open_root(store)[spectra], start, stop, ("flux", "ivar"))
    return residual_histogram(arrays["flux"], arrays["ivar"], window=window)


def calibrate_noise(store: str | PathLike[str], *, group: str | None = None, name: str = "noise", window: int = 51,
                    smooth_pixels: int = 3, min_spectra: int = MIN_SPECTRA,
                    overwrite: bool = False, client: Client | None = None,
                    progress: bool | None = None) -> NoiseCalibration:
    """Measure the noise calibration of a spectra group on ``client`` (default: the active one) and store it.

    ``window`` is the running median (pixels) that stands for each spectrum's smooth continuum; pixels with fewer
    than ``min_spectra`` spectra keep 1. Returns the stored calibration.
    """
    store = str(Path(store).resolve())  # workers may run in another directory
    root = zstore.open_root(store)
    spectra = zstore.resolve_spectra_group(root, group)
    source = root[spectra]
    nspectrum = int(source["flux"].shape[0])
    plan = zstore.BlockPlan(nspectrum, int(source.attrs["chunk_rows"]))  # cheap per row: whole chunks
    run = Provenance("noise_histogram", "1", {"window": int(window)}, zstore.input_id(source))
    counts = reduce_blocks(client or get_client(), _histogram_block, plan.blocks, args=(store, spectra, int(window)),
                           checkpoint=Checkpoint(store, f"checkpoints/{calibration_path(spectra, name)}", run.sha256 +
                                                 run.input_id),
                           name=f"noise calibration {spectra}", progress=progress)
    scale = calibration_from_histogram(counts, smooth_pixels=smooth_pixels, min_spectra=min_spectra)
    n_residuals = counts.sum(axis=1)
    save_noise_calibration(store, spectra, scale, n_residuals, name=name, overwrite=overwrite, attrs={
        "method": "-q0.1587 of (f - running median) sqrt(ivar) per pixel, max(1, .)",
        "window": int(window), "smooth_pixels": int(smooth_pixels), "min_spectra": int(min_spectra),
        "n_spectra": nspectrum, "pixels_inflated": int(np.sum(scale > 1.0)),
    })
    calibration = load_noise_calibration(store, spectra, name)
    log.info("%s: noise calibration of %d spectra, %d of %d pixels inflated (max x%.2f)", calibration_path(spectra),
             nspectrum, int(np.sum(scale > 1.0)), scale.size, float(scale.max()))
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
    """The :data:`~dzspec.engines.adapter.NOISE_PARAMS` of the calibration :func:`resolve_noise_calibration`
    picks (empty for none), for a scan's parameters."""
    calibration = resolve_noise_calibration(store, spectra, choice, fallback=fallback)
    if calibration is None:
        return {}
    return {"noise_store": calibration.path, "noise_group": spectra, "noise_name": str(calibration.attrs["name"]),
            "noise_sha256": calibration.sha256}
