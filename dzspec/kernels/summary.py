"""A sample block kernel: per-spectrum data-quality summary (coverage, S/N, weighted flux statistics).

It is what `dzspec demo` runs through the block runner before the redshift engines exist, and it stays useful:
``median_snr`` and ``ngood`` are the first things a survey scientist looks at in a new store.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from dzspec.kernels.base import KernelSpec, OutputSpec

__all__ = ["SUMMARY", "SUMMARY_QUANTILES", "spectrum_summary"]

#: Flux quantiles reported per spectrum (over pixels with ivar > 0).
SUMMARY_QUANTILES = (0.16, 0.5, 0.84)


def spectrum_summary(
    wavelength: np.ndarray, flux: np.ndarray, ivar: np.ndarray, *, snr_window: tuple[float, float] | None = None
) -> dict[str, np.ndarray]:
    """Coverage and signal-to-noise summary of a block of spectra.

    Parameters
    ----------
    wavelength
        Grid in Angstrom, shape ``(nwave,)``.
    flux, ivar
        Shape ``(nspec, nwave)``; pixels with ``ivar == 0`` are ignored.
    snr_window
        Optional ``(lo, hi)`` Angstrom range for ``median_snr`` (default: the whole grid).

    Returns
    -------
    dict
        ``ngood`` (int32, pixels with ivar > 0), ``median_snr`` (float32, median of flux·sqrt(ivar) over good
        pixels in the window), ``wmean_flux`` (float64, inverse-variance weighted mean flux),
        ``wmean_flux_err`` (float64), ``flux_quantiles`` (float32, :data:`SUMMARY_QUANTILES` of good-pixel
        flux), ``wave_min``/``wave_max`` (float64, first and last good pixel). Rows without good pixels get
        ``ngood = 0`` and NaN elsewhere.

    Examples
    --------
    >>> import numpy as np
    >>> wave = np.linspace(5000.0, 6000.0, 5)
    >>> out = spectrum_summary(wave, np.array([[1.0, 2, 3, 4, 5], [1, 1, 1, 1, 1]]),
    ...                        np.array([[4.0, 4, 4, 4, 0], [0, 0, 0, 0, 0]]))
    >>> out["ngood"].tolist(), out["median_snr"][0], out["wmean_flux"][0]
    ([4, 0], np.float32(5.0), np.float64(2.5))
    >>> bool(np.isnan(out["median_snr"][1]))
    True
    """
    flux = np.asarray(flux, dtype=np.float64)
    ivar = np.asarray(ivar, dtype=np.float64)
    good = ivar > 0
    ngood = good.sum(axis=1)
    # Pixels without data become NaN so that the nan-aware reductions skip them; a NaN flux with ivar > 0
    # cannot occur in a validated store, but would be skipped the same way.
    flux_good = np.where(good, flux, np.nan)
    snr = flux_good * np.sqrt(np.where(good, ivar, np.nan))
    if snr_window is not None:
        in_window = (wavelength >= snr_window[0]) & (wavelength <= snr_window[1])
        snr = np.where(in_window, snr, np.nan)
    weight_sum = np.where(good, ivar, 0.0).sum(axis=1)
    weighted = np.where(good, ivar * np.where(good, flux, 0.0), 0.0).sum(axis=1)
    has_data = ngood > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        wmean = np.where(has_data, weighted / weight_sum, np.nan)
        wmean_err = np.where(has_data, 1.0 / np.sqrt(weight_sum), np.nan)
    first = np.where(has_data, wavelength[np.argmax(good, axis=1)], np.nan)
    last = np.where(has_data, wavelength[wavelength.size - 1 - np.argmax(good[:, ::-1], axis=1)], np.nan)

    median_snr = np.full(flux.shape[0], np.nan)
    quantiles = np.full((flux.shape[0], len(SUMMARY_QUANTILES)), np.nan)
    rows = np.flatnonzero(has_data)
    if rows.size:
        quantiles[rows] = np.nanquantile(flux_good[rows], SUMMARY_QUANTILES, axis=1).T
        snr_rows = rows[np.isfinite(snr[rows]).any(axis=1)]
        if snr_rows.size:
            median_snr[snr_rows] = np.nanmedian(snr[snr_rows], axis=1)
    return {
        "ngood": ngood.astype(np.int32),
        "median_snr": median_snr.astype(np.float32),
        "wmean_flux": wmean,
        "wmean_flux_err": wmean_err,
        "flux_quantiles": quantiles.astype(np.float32),
        "wave_min": first,
        "wave_max": last,
    }


def _summary_outputs(params: Mapping[str, Any]) -> dict[str, OutputSpec]:
    return {
        "ngood": OutputSpec("int32", fill=-1, attrs={"description": "pixels with ivar > 0"}),
        "median_snr": OutputSpec("float32", attrs={"description": "median flux*sqrt(ivar) over good pixels"}),
        "wmean_flux": OutputSpec("float64", attrs={"description": "inverse-variance weighted mean flux"}),
        "wmean_flux_err": OutputSpec("float64"),
        "flux_quantiles": OutputSpec("float32", ("quantile",), (len(SUMMARY_QUANTILES),)),
        "wave_min": OutputSpec("float64", attrs={"units": "Angstrom"}),
        "wave_max": OutputSpec("float64", attrs={"units": "Angstrom"}),
    }


#: The summary kernel as the runner sees it.
SUMMARY = KernelSpec(
    name="summary",
    func=spectrum_summary,
    inputs=("flux", "ivar"),
    outputs=_summary_outputs,
    version="1",
    defaults={"snr_window": None},
)
