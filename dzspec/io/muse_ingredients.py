"""Optional real ingredients of the MUSE-like simulator, read from files the user points at.

Every argument is optional (the simulator has built-in defaults): a sky spectrum (the UVES atlas
``sky/sky-uves.fits`` is the best input for MUSE), the F775W curve (mpdaf's ``filter_list.fits``, HDU
``ACS_F775W``), a MUSE catalogue as redshift prior (the UDF-10 catalogue: ``Z_MUSE``, ``CONFID``), and a MUSE cube
whose faintest spaxels give a real blank-sky residual pattern.
"""

from __future__ import annotations

from os import PathLike

import numpy as np

from dzspec.io.ingredients import load_filter, load_sky_spectrum, load_ssp_grid, load_table_columns
from dzspec.kernels.simulate.muse import MuseIngredients, muse_wavelength

__all__ = ["RESIDUAL_PARTS", "blank_sky_residual_library", "blank_sky_residual_pattern", "blank_sky_spaxels",
           "load_muse_ingredients", "sky_line_pixels"]

#: Which spatial tiles of a cube build a residual library: all of them, or one of two interleaved halves
#: (a chequerboard), so that a training set and a test set carry residuals of disjoint spaxels.
RESIDUAL_PARTS = ("all", "even", "odd")


def load_muse_ingredients(
    sky_path: str | PathLike[str] | None = None,
    filter_path: str | PathLike[str] | None = None,
    catalog_path: str | PathLike[str] | None = None,
    residual_cube_path: str | PathLike[str] | None = None,
    filter_name: str = "ACS_F775W",
    ssp_path: str | PathLike[str] | None = None,
    residual_part: str = "all",
    residual_tiles: int | str = 4,
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
    residual_cube_path, residual_part, residual_tiles
        A MUSE cube (``DATA``/``STAT``) whose faintest 30 % spaxels give real residual/sigma patterns, one per
        spatial tile of ``residual_tiles`` x ``residual_tiles`` (:func:`blank_sky_residual_library`); each
        spectrum carries one of them. ``residual_part`` ``even``/``odd`` keeps half of the tiles (disjoint
        spaxels for training and test sets).
    ssp_path
        A single-stellar-population grid ``.npz`` (:func:`dzspec.io.ingredients.load_ssp_grid`, e.g.
        ``sps/bc03_miles_subset.npz``): galaxy continua become stellar populations (``--continua sps``).

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
    pattern = None if residual_cube_path is None else blank_sky_residual_library(
        residual_cube_path, tiles=int(residual_tiles), part=residual_part)
    ssp = None if ssp_path is None else load_ssp_grid(ssp_path, rest_range=(600.0, 9400.0))
    return MuseIngredients(sky=sky, filter_wavelength=band_wave, filter_throughput=band_throughput,
                           catalog=catalog, sky_residual_pattern=pattern, stellar_populations=ssp)


def blank_sky_residual_pattern(cube_path: str | PathLike[str], faint_fraction: float = 0.3,
                               highpass_pixels: int = 61) -> np.ndarray:
    """The coherent sky-subtraction residual of a MUSE cube, in units of sigma, on the simulation grid.

    The faintest ``faint_fraction`` of spaxels (by median flux) are blank sky; their residual/sigma, high-passed
    (a running median of ``highpass_pixels`` removed, which takes out faint continua), is averaged over
    spaxels, so that the noise averages out and the residuals common to all spaxels remain; only those at sky
    lines are kept (:func:`sky_line_pixels`), so that extended line emission of the field is not taken for sky.
    """
    return blank_sky_residual_library(cube_path, tiles=1, faint_fraction=faint_fraction,
                                      highpass_pixels=highpass_pixels)[0]


def sky_line_pixels(ivar: np.ndarray, *, min_ratio: float = 1.25, window: int = 61, grow: int = 2) -> np.ndarray:
    """Pixels at sky lines, from the variance of blank-sky spectra ``ivar`` ``(nspaxel, nwave)``.

    A sky line raises the photon noise: a pixel is at a sky line when the median variance over the spaxels
    exceeds ``min_ratio`` times its running median over ``window`` pixels; the mask then grows by ``grow``
    pixels on each side (line wings, the resampling of the cube). Extended emission of the field itself (the
    Halpha nebula of a cool-core cluster such as Abell 478, which fills the faintest spaxels of its cube) is far too
    faint to raise the variance like this, so its lines fall outside the mask.

    Examples
    --------
    >>> ivar = np.ones((3, 200)); ivar[:, 100] = 0.25  # a sky line at pixel 100
    >>> np.flatnonzero(sky_line_pixels(ivar)).tolist()
    [98, 99, 100, 101, 102]
    """
    from scipy.ndimage import binary_dilation, median_filter

    with np.errstate(divide="ignore"):
        variance = np.nanmedian(np.where(ivar > 0, 1.0 / ivar, np.nan), axis=0)
    finite = np.isfinite(variance)
    variance = np.where(finite, variance, np.nanmedian(variance))
    line = finite & (variance > min_ratio * median_filter(variance, size=window, mode="nearest"))
    return binary_dilation(line, iterations=grow) if grow > 0 else line


def blank_sky_residual_library(cube_path: str | PathLike[str], tiles: int = 4, part: str = "all",
                               faint_fraction: float = 0.3, highpass_pixels: int = 61) -> np.ndarray:
    """Real sky-subtraction residual/sigma patterns of a MUSE cube on the simulation grid, ``(npattern, nwave)``.

    The cube is cut into ``tiles`` x ``tiles`` spatial tiles; each tile's blank-sky spaxels (the faintest
    ``faint_fraction`` of the cube, :func:`blank_sky_spaxels`) give one pattern as in
    :func:`blank_sky_residual_pattern`: residuals vary across the field (slices, IFUs), so the tiles differ.
    ``part`` keeps every tile (``all``) or one colour of a chequerboard (``even``: x + y tile index even,
    ``odd``): the two halves share no spaxel. Tiles with fewer than 5 blank spaxels are left out. Each pattern is
    zero away from the cube's sky lines (:func:`sky_line_pixels`).

    Examples
    --------
    >>> from dzspec.kernels.simulate.muse import muse_wavelength
    >>> lib = blank_sky_residual_library(cube, tiles=2, part="even")  # doctest: +SKIP
    >>> lib.shape[1] == muse_wavelength().size  # doctest: +SKIP
    True
    """
    from scipy.ndimage import median_filter

    from dzspec.errors import InputError

    if part not in RESIDUAL_PARTS:
        raise InputError(cube_path, f"residual part {part!r}: choose one of {', '.join(RESIDUAL_PARTS)}")
    if tiles < 1:
        raise InputError(cube_path, f"residual tiles must be >= 1, not {tiles}")
    wavelength, flux, ivar, xy = blank_sky_spaxels(cube_path, faint_fraction, with_positions=True)
    ratio = flux * np.sqrt(ivar)
    ratio -= median_filter(ratio, size=(1, highpass_pixels), mode="nearest")
    # Away from sky lines the mean of the faint spaxels is the field's own faint light (e.g. A478's Halpha+[N II]
    # nebula at z = 0.086, 3-6 sigma in every tile), which would pull simulated spectra to the cluster redshift.
    ratio *= sky_line_pixels(ivar)
    size = np.maximum(xy.max(axis=0) + 1, 1)
    tile = np.minimum(xy * tiles // size, tiles - 1)
    patterns = []
    for tx in range(tiles):
        for ty in range(tiles):
            if part != "all" and (tx + ty) % 2 != (0 if part == "even" else 1):
                continue
            members = (tile[:, 0] == tx) & (tile[:, 1] == ty)
            if members.sum() >= 5:
                patterns.append(np.interp(muse_wavelength(), wavelength, ratio[members].mean(axis=0)))
    if not patterns:
        raise InputError(cube_path, f"no tile of {tiles} x {tiles} ({part}) holds 5 blank-sky spaxels")
    return np.stack(patterns)


def blank_sky_spaxels(cube_path: str | PathLike[str], faint_fraction: float = 0.3, with_positions: bool = False
                      ) -> tuple[np.ndarray, ...]:
    """``(wavelength, flux, ivar)`` (float64) of the blank-sky spaxels of a MUSE cube: the faintest
    ``faint_fraction`` by median flux among those with data in more than 90 % of their pixels; with
    ``with_positions`` also their ``(x, y)`` spaxel indices ``(n, 2)``."""
    from dzspec.io.muse import read_muse_cube

    ds = read_muse_cube(cube_path)
    flux = ds["flux"].values.astype(np.float64)
    ivar = ds["ivar"].values.astype(np.float64)
    usable = (ivar > 0).mean(axis=1) > 0.9
    level = np.nanmedian(np.where(ivar > 0, flux, np.nan), axis=1)
    level[~usable] = np.inf
    faint = np.flatnonzero(level <= np.quantile(level[usable], faint_fraction))
    if with_positions:
        xy = np.stack([ds["spaxel_x"].values[faint], ds["spaxel_y"].values[faint]], axis=1).astype(np.int64)
        return ds["wavelength"].values, flux[faint], ivar[faint], xy
    return ds["wavelength"].values, flux[faint], ivar[faint]
