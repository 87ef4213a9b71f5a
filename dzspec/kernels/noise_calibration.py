"""Per-wavelength noise calibration from a survey's own spectra (METHODS §5.7).

Pipeline variances do not include sky-subtraction residuals: at the wavelengths of bright sky lines real MUSE and
DESI spectra scatter well beyond their stated sigma, at the same observed wavelengths in every spectrum. Over the
spectra of a store, per observed pixel ``i``, the normalised residual of spectrum ``s`` is
``r_si = (f_si - smooth_s(lambda_i)) sqrt(ivar_si)`` (``smooth`` a running median), and the calibration is
``c_i = max(1, e_i)`` with ``e_i`` a robust scale of ``r_i`` over the spectra; the scan then uses ``ivar / c^2``.

The scale is read from the *lower* tail of the distribution, ``e_i = -q_0.1587(r_i)`` (``r`` is centred on 0 by
construction): emission lines only add positive residuals, so a galaxy cluster (many spectra with a line at one
observed wavelength) does not inflate the variance at its own lines, while sky residuals of random sign do. (A
residual of the same positive sign in most spectra is not a scatter and is not caught here.) Partial sums are
per-pixel histograms of ``r`` (additive, so blocks tree-reduce in any order to the same counts).

Examples
--------
>>> rng = np.random.default_rng(0)
>>> flux = rng.normal(0.0, 1.0, (4000, 300)); flux[:, 100] *= 3.0  # a pixel scattering 3x its stated sigma
>>> counts = residual_histogram(flux, np.ones_like(flux))
>>> scale = calibration_from_histogram(counts, smooth_pixels=1)
>>> bool(2.8 < scale[100] < 3.2), round(float(np.median(scale)), 1)
(True, 1.0)
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage

from dzspec.kernels.restframe import measured_pixels
from dzspec.kernels.survey_stats import histogram_quantile

__all__ = [
    "HISTOGRAM_EDGES",
    "MIN_SPECTRA",
    "calibration_from_histogram",
    "normalised_residuals",
    "resample_calibration",
    "residual_histogram",
]

#: Bin edges of the normalised-residual histograms (values beyond fall in the end bins).
HISTOGRAM_EDGES = np.linspace(-12.0, 12.0, 481)
#: Spectra per pixel below which a pixel keeps calibration 1 (its quantiles would be noise).
MIN_SPECTRA = 50
#: Gaussian quantile at -1 sigma.
_LOWER_SIGMA_QUANTILE = 0.15865525393145707


def normalised_residuals(flux: np.ndarray, ivar: np.ndarray, *, window: int = 51) -> np.ndarray:
    """``(f - running_median(f)) sqrt(ivar)`` per spectrum, NaN where there is no data
    (:func:`dzspec.kernels.restframe.measured_pixels`) and within half a window of
    the ends (where the window is one-sided, so their calibration stays 1).

    Masked pixels are bridged by linear interpolation before the running median (``window`` pixels, odd), so a
    masked stretch neither leaks zeros into the smooth continuum nor shifts it.

    Examples
    --------
    >>> r = normalised_residuals(np.array([[1.0, 1.0, 5.0, 1.0, 1.0, 1.0]]),
    ...                          np.array([[1.0, 1.0, 1.0, 0.0, 4.0, 1.0]]), window=3)
    >>> r.tolist()
    [[nan, 0.0, 2.0, nan, 0.0, nan]]
    """
    flux = np.atleast_2d(np.asarray(flux, dtype=np.float64))
    ivar = np.atleast_2d(np.asarray(ivar, dtype=np.float64))
    good = measured_pixels(flux, ivar)
    bridged = np.zeros_like(flux)
    pixels = np.arange(flux.shape[1])
    for row in range(flux.shape[0]):
        if good[row].any():
            bridged[row] = np.interp(pixels, pixels[good[row]], flux[row, good[row]])
    window = int(window) | 1
    smooth = scipy.ndimage.median_filter(bridged, size=(1, window), mode="nearest")
    # within half a window of the ends the window is one-sided and a continuum slope biases the residual: left out
    edge = np.zeros(flux.shape[1], dtype=bool)
    edge[: window // 2] = edge[flux.shape[1] - window // 2 :] = True
    good &= ~edge
    with np.errstate(invalid="ignore"):
        return np.where(good, (flux - smooth) * np.sqrt(np.where(good, ivar, 0.0)), np.nan)


def residual_histogram(flux: np.ndarray, ivar: np.ndarray, *, window: int = 51) -> np.ndarray:
    """Per-pixel histogram ``(nwave, nbins)`` int64 of :func:`normalised_residuals` over :data:`HISTOGRAM_EDGES`.

    The partial sum of the calibration: histograms of blocks add up.
    """
    r = normalised_residuals(flux, ivar, window=window)
    nbins = HISTOGRAM_EDGES.size - 1
    bins = np.clip(np.searchsorted(HISTOGRAM_EDGES, r, side="right") - 1, 0, nbins - 1)
    pixel = np.broadcast_to(np.arange(r.shape[1]), r.shape)
    finite = np.isfinite(r)
    flat = pixel[finite] * nbins + bins[finite]
    return np.bincount(flat, minlength=r.shape[1] * nbins).reshape(r.shape[1], nbins).astype(np.int64)


def calibration_from_histogram(counts: np.ndarray, *, smooth_pixels: int = 3,
                               min_spectra: int = MIN_SPECTRA) -> np.ndarray:
    """The calibration ``c_i = max(1, e_i)`` (float64, per pixel) from summed :func:`residual_histogram` counts.

    ``e_i = -q_0.1587`` of pixel ``i``'s residuals (the lower tail: blind to emission lines), lightly
    smoothed by a running median of ``smooth_pixels``; pixels with fewer than ``min_spectra`` residuals get 1.
    """
    counts = np.asarray(counts)
    scale = -histogram_quantile(counts, HISTOGRAM_EDGES, _LOWER_SIGMA_QUANTILE)
    scale = np.where(counts.sum(axis=1) >= min_spectra, scale, 1.0)
    if smooth_pixels > 1:
        scale = scipy.ndimage.median_filter(scale, size=int(smooth_pixels), mode="nearest")
    return np.maximum(scale, 1.0)


def resample_calibration(wavelength: np.ndarray, scale: np.ndarray, target: np.ndarray) -> np.ndarray:
    """A calibration measured on pixels ``wavelength`` carried to pixels ``target`` of another grid of the same
    instrument: linear in wavelength, 1 beyond the measured range, never below 1.

    Examples
    --------
    >>> resample_calibration(np.array([5000.0, 5001.0, 5002.0]), np.array([1.0, 3.0, 1.0]),
    ...                      np.array([5000.5, 5001.0, 5004.0])).tolist()
    [2.0, 3.0, 1.0]
    """
    return np.maximum(np.interp(target, wavelength, scale, left=1.0, right=1.0), 1.0)
