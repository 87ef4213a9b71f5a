"""Optional real ingredients of the MUSE-like simulator, read from files the user points at.

Every argument is optional (the simulator has built-in defaults): a sky spectrum (the UVES atlas
``sky/sky-uves.fits`` is the best input for MUSE), the F775W curve (mpdaf's ``filter_list.fits``, HDU
``ACS_F775W``), a MUSE catalogue as redshift prior (the UDF-10 catalogue: ``Z_MUSE``, ``CONFID``), and a MUSE cube
whose faintest spaxels give a real blank-sky residual pattern.
"""

from __future__ import annotations

from os import PathLike

import numpy as np

from dzspec.io.ingredients import load_filter, load_sky_spectrum, load_table_columns
from dzspec.kernels.simulate.muse import MuseIngredients, muse_wavelength

__all__ = ["blank_sky_residual_pattern", "blank_sky_spaxels", "load_muse_ingredients"]


def load_muse_ingredients(
    sky_path: str | PathLike[str] | None = None,
    filter_path: str | PathLike[str] | None = None,
    catalog_path: str | PathLike[str] | None = None,
    residual_cube_path: str | PathLike[str] | None = None,
    filter_name: str = "ACS_F775W",
) -> MuseIngredients:
    """Read the optional inputs of :func:`dzspec.kernels.simulate.muse.simulate_muse_block`.

    Parameters
    ----------
    sky_path
        Sky surface brightness (:func:`dzspec.io.ingredients.load_sky_spectrum`), e.g. ``sky/sky-uves.fits``.
    filter_path, filter_name
        Bandpass for ``mag_f775w``: an mpdaf filter list and its HDU, or a speclite ``.ecsv`` curve.
    catalog_path
        A FITS catalogue with ``Z_MUSE`` and ``CONFID`` (sources with CONFID >= 1 form the redshift prior).
    residual_cube_path
        A MUSE cube (``DATA``/``STAT``) whose faintest 30 % spaxels give a real residual/sigma pattern
        (:func:`blank_sky_residual_pattern`).

    Returns
    -------
    MuseIngredients

    Examples
    --------
    >>> load_muse_ingredients().sky is None  # nothing given: the built-in models are used
    True
    """
    sky = None if sky_path is None else load_sky_spectrum(sky_path)
    band_wave = band_throughput = None
    if filter_path is not None:
        band_wave, band_throughput = load_filter(filter_path, filter_name)
    catalog = None if catalog_path is None else load_table_columns(catalog_path, ["Z_MUSE", "CONFID"])
    pattern = None if residual_cube_path is None else blank_sky_residual_pattern(residual_cube_path)
    return MuseIngredients(sky=sky, filter_wavelength=band_wave, filter_throughput=band_throughput,
                           catalog=catalog, sky_residual_pattern=pattern)


def blank_sky_residual_pattern(cube_path: str | PathLike[str], faint_fraction: float = 0.3,
                               highpass_pixels: int = 61) -> np.ndarray:
    """The coherent sky-subtraction residual of a MUSE cube, in units of sigma, on the simulation grid.

    The faintest ``faint_fraction`` of spaxels (by median flux) are blank sky; their residual/sigma, high-passed
    (a running median of ``highpass_pixels`` removed, which takes out faint continua), is averaged over
    spaxels, so that the noise averages out and the residuals common to all spaxels (sky lines) remain.
    """
    from scipy.ndimage import median_filter

    wavelength, flux, ivar = blank_sky_spaxels(cube_path, faint_fraction)
    ratio = flux * np.sqrt(ivar)
    ratio -= median_filter(ratio, size=(1, highpass_pixels), mode="nearest")
    return np.interp(muse_wavelength(), wavelength, ratio.mean(axis=0))


def blank_sky_spaxels(cube_path: str | PathLike[str], faint_fraction: float = 0.3
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(wavelength, flux, ivar)`` (float64) of the blank-sky spaxels of a MUSE cube: the faintest
    ``faint_fraction`` by median flux among those with data in more than 90 % of their pixels."""
    from dzspec.io.muse import read_muse_cube

    ds = read_muse_cube(cube_path)
    flux = ds["flux"].values.astype(np.float64)
    ivar = ds["ivar"].values.astype(np.float64)
    usable = (ivar > 0).mean(axis=1) > 0.9
    level = np.nanmedian(np.where(ivar > 0, flux, np.nan), axis=1)
    level[~usable] = np.inf
    faint = np.flatnonzero(level <= np.quantile(level[usable], faint_fraction))
    return ds["wavelength"].values, flux[faint], ivar[faint]
