"""Night-sky emission: a built-in physical model, or an observed spectrum the user points at.

The built-in model needs no file: a smooth dark-sky continuum (zodiacal light + airglow, about V = 21.7 mag
arcsec^-2), the atomic airglow lines ([OI] 5577, Na D, [OI] 6300/6364) and the OH Meinel bands, each band a set
of P-, Q- and R-branch rotational lines of a rigid-rotor Hund's-case-(b) approximation with a Boltzmann
population at T_rot = 190 K. Band origins and relative band strengths are approximate; use an observed sky
(e.g. the UVES atlas, loaded by :func:`dzspec.io.ingredients.load_sky_spectrum`) where line positions must be
exact. Units: 1e-17 erg s^-1 cm^-2 A^-1 arcsec^-2, vacuum wavelengths.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dzspec.kernels.simulate.common import add_gaussian_lines

__all__ = ["SkySpectrum", "builtin_sky", "sky_continuum", "sky_on_grid"]

_H_C_K = 1.4387769  # cm K (second radiation constant)

#: OH Meinel bands: (v', v'', band origin in vacuum Angstrom, relative strength, rotational constant B' in cm^-1).
_OH_BANDS = (
    (9, 3, 6256.0, 0.25, 13.8),
    (5, 0, 5618.0, 0.05, 16.0),
    (6, 1, 6496.0, 0.45, 15.4),
    (7, 2, 6863.0, 0.13, 14.8),
    (8, 3, 7276.0, 0.43, 14.3),
    (9, 4, 7750.0, 0.60, 13.8),
    (5, 1, 7913.0, 0.50, 16.0),
    (6, 2, 8345.0, 0.90, 15.4),
    (7, 3, 8827.0, 1.70, 14.8),
    (8, 4, 9375.0, 2.30, 14.3),
    (3, 0, 9788.0, 2.50, 17.0),
)
#: Atomic airglow lines: (vacuum wavelength, integrated flux in 1e-17 erg/s/cm2/arcsec2).
_ATOMIC = ((5578.89, 220.0), (5891.58, 20.0), (5897.56, 15.0), (6302.05, 160.0), (6365.54, 55.0))
#: Integrated OH flux per unit band strength (1e-17 erg/s/cm2/arcsec2). Band strengths and this scale were tuned
#: so that the integrated line emission per 300-600 A window matches the DESI/SDSS model dark sky to ~30 %.
_OH_SCALE = 700.0


@dataclass(frozen=True)
class SkySpectrum:
    """A sky surface-brightness spectrum: vacuum wavelength (Angstrom), flux (1e-17 cgs per arcsec^2) and the
    FWHM (Angstrom) of the lines as sampled (0 for a model of infinitely narrow lines)."""

    wavelength: np.ndarray
    surface_brightness: np.ndarray
    line_fwhm: float = 0.0
    source: str = "builtin"


def _oh_lines(temperature: float = 190.0, jmax: int = 12) -> tuple[np.ndarray, np.ndarray]:
    centers, strengths = [], []
    j = np.arange(1, jmax + 1, dtype=np.float64)
    for _, _, origin, strength, b in _OH_BANDS:
        sigma0 = 1e8 / origin  # band origin in cm^-1
        population = (2 * j + 1) * np.exp(-_H_C_K * b * j * (j + 1) / temperature)
        population /= population.sum()
        # Rigid rotor with slightly smaller B'' in the lower state: P/Q/R branches, P strongest in OH airglow.
        b_lower = 1.08 * b
        for dj, branch_weight in ((-1, 0.55), (0, 0.15), (1, 0.30)):
            j_lower = j - dj
            sigma = sigma0 + b * j * (j + 1) - b_lower * j_lower * (j_lower + 1)
            centers.append(1e8 / sigma)
            strengths.append(strength * branch_weight * population)
    return np.concatenate(centers), np.concatenate(strengths) * _OH_SCALE


def builtin_sky(step: float = 0.2, wave_min: float = 3500.0, wave_max: float = 10000.0) -> SkySpectrum:
    """The built-in dark-sky model on a fine grid (default 0.2 Angstrom), infinitely narrow lines.

    Examples
    --------
    >>> sky = builtin_sky()
    >>> oi = (sky.wavelength > 5570) & (sky.wavelength < 5590)
    >>> bool(sky.surface_brightness[oi].max() > 100 * np.median(sky.surface_brightness))
    True
    """
    wave = np.arange(wave_min, wave_max + step / 2, step)
    # Continuum: blue zodiacal (solar-like, falling below 4500 A) plus a flat red airglow pseudo-continuum.
    continuum = 1.0 * (wave / 5500.0) ** -0.5 * (1 - 0.35 * np.exp(-((wave - 3800.0) / 500.0) ** 2))
    continuum = continuum * np.where(wave > 6500.0, 0.9, 1.0 - 0.1 * np.clip((wave - 5500.0) / 1000.0, 0, 1))
    sky = continuum.copy()
    oh_centers, oh_fluxes = _oh_lines()
    centers = np.concatenate([[c for c, _ in _ATOMIC], oh_centers])
    fluxes = np.concatenate([[f for _, f in _ATOMIC], oh_fluxes])
    keep = (centers > wave_min) & (centers < wave_max)
    add_gaussian_lines(wave, sky, centers[keep], fluxes[keep], np.full(keep.sum(), 0.6 * step))
    return SkySpectrum(wave, sky, line_fwhm=0.0, source="builtin")


def sky_on_grid(sky: SkySpectrum, wavelength: np.ndarray, lsf_fwhm: np.ndarray) -> np.ndarray:
    """The sky seen by an instrument: convolved to its LSF (FWHM per output pixel, Angstrom) and averaged onto
    its pixels (flux density per Angstrom preserved).

    Examples
    --------
    >>> sky = builtin_sky()
    >>> wave = np.arange(4750.0, 9350.0, 1.25)
    >>> seen = sky_on_grid(sky, wave, np.full(wave.size, 2.5))
    >>> oi = np.argmin(abs(wave - 5578.9))
    >>> bool(seen[oi] > 20 * np.median(seen))
    True
    """
    from dzspec.kernels.simulate.common import gaussian_smooth_variable

    fwhm_fine = np.interp(sky.wavelength, wavelength, lsf_fwhm)
    extra = np.sqrt(np.clip(fwhm_fine**2 - sky.line_fwhm**2, (2 * np.gradient(sky.wavelength)) ** 2, None))
    smooth = gaussian_smooth_variable(sky.wavelength, sky.surface_brightness, extra)
    # Average over each output pixel: cumulative integral differenced at the pixel edges.
    cumulative = np.concatenate([[0.0], np.cumsum(0.5 * (smooth[1:] + smooth[:-1]) * np.diff(sky.wavelength))])
    mid = 0.5 * (wavelength[1:] + wavelength[:-1])
    edges = np.concatenate([[wavelength[0] - (mid[0] - wavelength[0])], mid,
                            [wavelength[-1] + (wavelength[-1] - mid[-1])]])
    integral = np.interp(edges, sky.wavelength, cumulative)
    return np.diff(integral) / np.diff(edges)


def sky_continuum(surface: np.ndarray, *, size: int = 41) -> np.ndarray:
    """The continuum of a sky spectrum seen by an instrument (:func:`sky_on_grid`): a low envelope between its
    lines (the 20th percentile over ``size`` pixels, then a running mean over as many), never above the spectrum.

    What a sky over-subtraction removes from a spectrum besides the line residuals: the simulator's pedestals and
    ``zfind``'s sky nuisance term (:func:`dzspec.engines.nmf.zfind.nmf_zfind`) both take this shape.

    Examples
    --------
    >>> wave = np.arange(4750.0, 9350.0, 1.25)
    >>> seen = sky_on_grid(builtin_sky(), wave, np.full(wave.size, 2.5))
    >>> continuum = sky_continuum(seen)
    >>> bool(np.all(continuum <= seen)), bool(np.median(continuum) < np.median(seen))
    (True, True)
    """
    from scipy.ndimage import percentile_filter, uniform_filter1d

    envelope = uniform_filter1d(percentile_filter(surface, 20, size=size, mode="nearest"), size, mode="nearest")
    return np.minimum(envelope, surface)
