"""MUSE (mpdaf layout): 1-D spectra, MPDAF Source files and data cubes (apertures or spaxels).

Layouts of the 1-D reader ``"muse"``, tried in this order:

* MPDAF **Source** files: ``SPE_<NAME>_DATA`` / ``_STAT`` / optional ``_DQ`` (``spectrum_name`` picks one, default
  ``MUSE_TOT``, else the first); the primary header's ``ID``/``RA``/``DEC``/``ZCONF`` and the ``Z`` table become
  coordinates (``targetid``, ``ra``, ``dec``, ``zconf``, ``z_true``);
* ``DATA`` (1-D) + ``STAT`` (variance) + optional ``DQ`` image HDUs;
* **legacy** files: data in the PRIMARY HDU, variance in extension 1 (recognised only with ``INSTRUME = MUSE`` or
  ``AUTHOR = MPDAF``, so that other "flux + error" files are not misread).

The cube reader ``"muse_cube"`` takes a 3-D ``DATA``/``STAT``/``DQ`` cube and returns every spaxel, the spaxels of
a boolean mask, or circular-aperture sums at given positions.

Conventions (STYLE.md section 6):

* lambda_i = CRVAL + (i + 1 - CRPIX) * CD (or CDELT); ``CTYPE`` ``AWAV`` is air (converted to vacuum with
  :func:`~dzspec.kernels.airvac.air_to_vacuum`, ``medium_original = "air"``), ``WAVE`` vacuum; a legacy
  ``LINEAR``/missing CTYPE is taken as air (the MUSE pipeline always works in air) with
  ``attrs["medium_assumed"] = True``.
* Flux is rescaled from ``BUNIT`` (MUSE: 1e-20 erg/s/cm2/A, factor 1e-3; ivar by 1e6). An empty BUNIT is taken as
  the MUSE default 1e-20 (``attrs["flux_unit_assumed"] = True``); an unknown unit is an InputError. STAT's own
  BUNIT is ignored (the pipeline writes ``.../Angstrom**2`` there): STAT is in BUNIT squared.
* ivar = 1/STAT where STAT > 0 and finite. Pixels where both DATA and STAT are NaN are MUSE's "no data" marker:
  ivar 0 (``NODATA``), no warning; ``DQ != 0`` gives ``INSTRUMENT`` (ivar 0), no warning. Any other NaN DATA or
  invalid STAT is flagged ``NONFINITE_FLUX`` / ``BAD_IVAR`` and reported (``BadSpectrumWarning``).
* The grid name records start, step, size and medium in the *file's* terms, e.g. ``muse-air2vac-4750-1.25-3681``
  or ``muse-vac-4750-1.25-3681``, so spectra on different source grids never share a group.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from dzspec.errors import InputError
from dzspec.io.fits import open_fits
from dzspec.io.registry import FileProbe, register_reader
from dzspec.io.units import flux_scale_from_unit, medium_from_text, wavelength_factor_from_unit
from dzspec.kernels.airvac import air_to_vacuum
from dzspec.schema import INSTRUMENTS, SURVEYS, SpecMask, code_of, make_spectra_dataset

__all__ = ["identify_muse", "identify_muse_cube", "muse_wavelength", "read_muse", "read_muse_cube"]

_MUSE_DEFAULT_SCALE = 1e-3  # 1e-20 -> 1e-17 erg/s/cm2/A
_BATCH = 2048  # spaxels combined at a time (bounds the float64 temporaries of a full-cube read)


# ---------------------------------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------------------------------


def muse_wavelength(header: Any, axis: int = 1, *, medium: str | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Vacuum wavelengths of a MUSE spectral axis and a description of the file's grid.

    Parameters
    ----------
    header
        FITS header with ``CRVALn``, ``CRPIXn``, ``CDn_n`` or ``CDELTn``, ``CTYPEn``, ``CUNITn``.
    axis
        The spectral axis ``n`` (1 for spectra, 3 for cubes).
    medium
        Override the medium given by ``CTYPEn``.

    Returns
    -------
    wavelength, info
        Vacuum Angstrom (float64) and a dict with ``medium`` (of the file), ``medium_assumed``, ``start``,
        ``step``, ``n`` (in the file's medium) and ``grid_name``.

    Raises
    ------
    ValueError
        Missing WCS keywords, a log-sampled or unknown CTYPE, a non-wavelength CUNIT.

    Examples
    --------
    >>> from astropy.io import fits
    >>> header = fits.Header({"NAXIS1": 3681, "CRVAL1": 4750.0, "CRPIX1": 1.0, "CDELT1": 1.25, "CTYPE1": "AWAV"})
    >>> wave, info = muse_wavelength(header)
    >>> info["grid_name"], round(float(wave[0]), 3)
    ('muse-air2vac-4750-1.25-3681', 4751.328)
    """
    n = int(header.get(f"NAXIS{axis}", 0))
    if n <= 0:
        raise ValueError(f"NAXIS{axis} is missing or zero")
    if f"CRVAL{axis}" not in header:
        raise ValueError(f"no CRVAL{axis}: cannot build the wavelength axis")
    step = header.get(f"CD{axis}_{axis}", header.get(f"CDELT{axis}"))
    if step is None:
        raise ValueError(f"neither CD{axis}_{axis} nor CDELT{axis}: cannot build the wavelength axis")
    factor = wavelength_factor_from_unit(header.get(f"CUNIT{axis}"))
    start = float(header[f"CRVAL{axis}"]) + (1.0 - float(header.get(f"CRPIX{axis}", 1.0))) * float(step)
    start, step = start * factor, float(step) * factor
    ctype = str(header.get(f"CTYPE{axis}", "")).strip().upper()
    assumed = False
    if medium is not None:
        file_medium = medium_from_text(medium)
        if file_medium is None:
            raise ValueError(f"medium must be 'vacuum' or 'air', not {medium!r}")
    elif ctype == "AWAV":
        file_medium = "air"
    elif ctype == "WAVE":
        file_medium = "vacuum"
    elif ctype in ("", "LINEAR"):
        file_medium, assumed = "air", True  # legacy MUSE products: the pipeline works in air
    else:
        raise ValueError(f"CTYPE{axis} = {ctype!r} is not a linear wavelength axis (AWAV, WAVE or LINEAR)")
    wave = start + np.arange(n) * step
    if file_medium == "air":
        wave = np.asarray(air_to_vacuum(wave), dtype=np.float64)
    tag = "air2vac" if file_medium == "air" else "vac"
    info = {
        "medium": file_medium,
        "medium_assumed": assumed,
        "start": start,
        "step": step,
        "n": n,
        "grid_name": f"muse-{tag}-{start:.10g}-{step:.10g}-{n}",
    }
    return wave, info


def _flux_scale(path: Path, bunit: Any, flux_unit: str | None) -> tuple[float, dict[str, Any]]:
    attrs: dict[str, Any] = {}
    text = flux_unit if flux_unit is not None else bunit
    try:
        scale = flux_scale_from_unit(None if text is None else str(text))
    except ValueError as exc:
        raise InputError(path, f"unknown flux unit: {exc}; pass flux_unit= to override") from None
    if scale is None:
        scale = _MUSE_DEFAULT_SCALE
        attrs["flux_unit_assumed"] = True
    else:
        attrs["flux_unit_original"] = str(text).strip()
    return scale, attrs


def _rvcorr(header: Any) -> str | None:
    """The MUSE pipeline's radial-velocity correction (``rvcorr`` recipe parameter: bary, helio, geo, none)."""
    for key, value in header.items():
        if key.startswith("ESO PRO REC") and key.endswith("NAME") and str(value).strip() == "rvcorr":
            found = header.get(key[: -len("NAME")] + "VALUE")
            if found is not None:
                return str(found).strip()
    return None


def _combine(data: np.ndarray, stat: np.ndarray, dq: np.ndarray | None) -> tuple[np.ndarray, ...]:
    """Sum spaxels along the last axis: flux, variance (NaN where a value is invalid) and per-pixel flags.

    ``data``, ``stat``, ``dq`` have shape (..., nwave, nspaxel). Returns flux and var of shape (..., nwave), and
    boolean ``instrument`` / ``quiet`` (no usable spaxel, no error to report).
    """
    with np.errstate(invalid="ignore"):
        nodata = np.isnan(data) & np.isnan(stat)  # MUSE's "no data" marker
        flagged = np.zeros(data.shape, bool) if dq is None else dq != 0
        quiet = nodata | flagged
        finite = np.isfinite(data)
        stat_ok = np.isfinite(stat) & (stat > 0)
        flux = np.where(~quiet & finite, data, 0.0).sum(axis=-1)
        var = np.where(~quiet & stat_ok, stat, 0.0).sum(axis=-1)
    flux[(~quiet & ~finite).any(axis=-1)] = np.nan  # reported as NONFINITE_FLUX
    var[(~quiet & ~stat_ok).any(axis=-1)] = np.nan  # reported as BAD_IVAR
    all_quiet = quiet.all(axis=-1)
    instrument = all_quiet & flagged.any(axis=-1)
    return flux, var, instrument, all_quiet


def _finish(flux: np.ndarray, var: np.ndarray, instrument: np.ndarray, quiet: np.ndarray, scale: float):
    """Scaled flux, ivar (NaN where invalid, 0 where quiet) and mask bits, float32/uint32."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ivar = np.where(np.isfinite(var) & (var > 0), 1.0 / var, np.nan)
    flux = np.where(quiet, 0.0, flux)
    ivar = np.where(quiet, 0.0, ivar)
    mask = np.where(instrument, np.uint32(SpecMask.INSTRUMENT), np.uint32(0))
    return (flux * scale).astype(np.float32), (ivar / scale**2).astype(np.float32), mask


def _header_number(header: Any, key: str) -> float | int | None:
    value = header.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


# ---------------------------------------------------------------------------------------------------------------
# 1-D spectra
# ---------------------------------------------------------------------------------------------------------------


def identify_muse(probe: FileProbe) -> bool:
    """True for MUSE/MPDAF 1-D spectra (Source ``SPE_*_DATA``, 1-D ``DATA``, legacy PRIMARY + variance) and for
    MPDAF Source files (so that reading one without a spectrum says so)."""
    if probe.kind != "fits" or not probe.hdus:
        return False
    names = probe.hdu_names
    if any(n.startswith("SPE_") and n.endswith("_DATA") for n in names):
        return True
    data = probe.hdu("DATA")
    if data is not None and not data.is_table and len(data.shape) == 1 and "CRVAL1" in data.header:
        return True
    primary = probe.hdus[0]
    author = str(primary.header.get("AUTHOR", "")).strip().upper()
    muse = "MUSE" in str(primary.header.get("INSTRUME", "")).upper() or author == "MPDAF"
    if (
        muse
        and len(primary.shape) == 1
        and len(probe.hdus) > 1
        and not probe.hdus[1].is_table
        and probe.hdus[1].shape == primary.shape
        and "CRVAL1" in primary.header
    ):
        return True
    return author == "MPDAF" and any(n.startswith(("IMA_", "CUB_")) or n in ("LINES", "Z", "MAG") for n in names)


def _source_z(path: Path, table: Any, z_desc: str | None) -> float:
    names = {name.upper(): name for name in table.columns.names}
    if "Z" not in names or len(table) == 0:
        return np.nan
    descs = [str(d).strip() for d in table[names["Z_DESC"]]] if "Z_DESC" in names else [""] * len(table)
    wanted = z_desc if z_desc is not None else "MUSE"
    rows = [i for i, d in enumerate(descs) if d.upper() == wanted.upper()]
    if not rows:
        if z_desc is not None:
            raise InputError(path, f"the Z table has no row with Z_DESC = {z_desc!r} (has {descs})")
        rows = [0]
    return float(table[names["Z"]][rows[0]])


def read_muse(
    path: str | PathLike[str],
    *,
    spectrum_name: str = "MUSE_TOT",
    z_desc: str | None = None,
    flux_unit: str | None = None,
    medium: str | None = None,
) -> xr.Dataset:
    """Read a MUSE / MPDAF 1-D spectrum (see the module docstring for the layouts and conventions).

    Parameters
    ----------
    path
        The file.
    spectrum_name
        Source files: the ``SPE_<NAME>_DATA`` to read; falls back to the first ``SPE_*_DATA``.
    z_desc
        Source files: the ``Z_DESC`` of the ``Z`` table row that gives ``z_true`` (default ``MUSE``, else the first
        row).
    flux_unit
        Override BUNIT (e.g. ``"1e-20 erg/s/cm2/Angstrom"``).
    medium
        Override CTYPE1 (``"air"`` or ``"vacuum"``).

    Returns
    -------
    xarray.Dataset
        One spectrum, vacuum wavelengths, flux in 1e-17 erg/s/cm2/A (reader ``"muse"``).

    Raises
    ------
    InputError
        No spectrum, no STAT, shapes that differ, an unknown flux unit or wavelength axis, a truncated file.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from astropy.io import fits
    >>> header = fits.Header({"CRVAL1": 4750.0, "CRPIX1": 1.0, "CDELT1": 1.25, "CTYPE1": "AWAV",
    ...                       "BUNIT": "10**(-20)*erg/s/cm**2/Angstrom"})
    >>> hdus = [fits.PrimaryHDU(), fits.ImageHDU(np.full(12, 50.0, "f4"), header, name="DATA"),
    ...         fits.ImageHDU(np.full(12, 4.0, "f4"), header, name="STAT")]
    >>> name = tempfile.mkdtemp() + "/spec.fits"
    >>> fits.HDUList(hdus).writeto(name)
    >>> ds = read_muse(name)
    >>> round(float(ds.flux[0, 0]), 6), float(ds.ivar[0, 0]), ds.attrs["medium_original"]
    (0.05, 250000.0, 'air')
    """
    path = Path(path)
    attrs: dict[str, Any] = {}
    coords: dict[str, np.ndarray] = {}
    with open_fits(path) as hdul:
        names = [hdu.name.upper() for hdu in hdul]
        primary = hdul[0]
        spectra = [n for n in names if n.startswith("SPE_") and n.endswith("_DATA")]
        if spectra:
            wanted = f"SPE_{spectrum_name.upper()}_DATA"
            data_name = wanted if wanted in spectra else spectra[0]
            base = data_name[: -len("_DATA")]
            data_hdu = hdul[data_name]
            stat_hdu = hdul[f"{base}_STAT"] if f"{base}_STAT" in names else None
            dq_hdu = hdul[f"{base}_DQ"] if f"{base}_DQ" in names else None
            attrs["muse_spectrum"] = base[len("SPE_") :]
            what = f"HDU {data_name}"
        elif "DATA" in names and hdul["DATA"].header.get("NAXIS") == 1:
            data_hdu = hdul["DATA"]
            stat_hdu = hdul["STAT"] if "STAT" in names else None
            dq_hdu = hdul["DQ"] if "DQ" in names else None
            what = "HDU DATA"
        elif primary.header.get("NAXIS") == 1 and len(hdul) > 1 and hdul[1].header.get("NAXIS") == 1:
            data_hdu, stat_hdu, dq_hdu = primary, hdul[1], None  # legacy: variance in extension 1
            what = "the PRIMARY HDU"
        elif str(primary.header.get("AUTHOR", "")).strip().upper() == "MPDAF":
            raise InputError(path, f"MPDAF Source file without a SPE_*_DATA spectrum (HDUs: {names})")
        else:
            raise InputError(path, f"no MUSE 1-D spectrum (DATA/STAT, SPE_*_DATA or PRIMARY + variance); {names}")
        if stat_hdu is None:
            raise InputError(path, f"{what} has no STAT (variance) HDU")
        header = data_hdu.header
        try:
            wave, info = muse_wavelength(header, 1, medium=medium)
        except ValueError as exc:
            raise InputError(path, f"{what}: {exc}") from None
        data = np.asarray(data_hdu.data, dtype=np.float64)
        stat = np.asarray(stat_hdu.data, dtype=np.float64)
        dq = None if dq_hdu is None else np.array(dq_hdu.data)
        for label, array in (("STAT", stat), ("DQ", dq)):
            if array is not None and array.shape != data.shape:
                raise InputError(path, f"length mismatch: {label} has shape {array.shape}, data {data.shape}")
        if data.shape != (info["n"],):
            raise InputError(path, f"{what} has shape {data.shape} but NAXIS1 = {info['n']}")
        scale, unit_attrs = _flux_scale(path, header.get("BUNIT", primary.header.get("BUNIT")), flux_unit)
        attrs.update(unit_attrs)
        meta = primary.header
        if (target := _header_number(meta, "ID")) is not None and float(target).is_integer():
            coords["targetid"] = np.array([int(target)], np.int64)
        for key, coord, dtype in (("RA", "ra", np.float64), ("DEC", "dec", np.float64),
                                  ("EXPTIME", "exptime", np.float32), ("ZCONF", "zconf", np.int16)):  # fmt: skip
            if (value := _header_number(meta, key)) is not None:
                coords[coord] = np.array([value], dtype)
        if "Z" in names and hasattr(hdul["Z"], "columns"):
            coords["z_true"] = np.array([_source_z(path, hdul["Z"].data, z_desc)])
        rvcorr = _rvcorr(meta)

    flux, var, instrument, quiet = _combine(data[None, :, None], stat[None, :, None],
                                            None if dq is None else dq[None, :, None])  # fmt: skip
    flux, ivar, mask = _finish(flux, var, instrument, quiet, scale)
    coords["survey"] = np.array([code_of("muse", SURVEYS)], np.int8)
    coords["instrument"] = np.array([code_of("muse", INSTRUMENTS)], np.int8)
    return _build(path, "muse", wave, info, flux, ivar, mask, scale, coords, attrs, rvcorr)


def _build(path: Path, reader: str, wave: np.ndarray, info: dict[str, Any], flux: np.ndarray, ivar: np.ndarray,
           mask: np.ndarray, scale: float, coords: dict[str, np.ndarray], attrs: dict[str, Any],
           rvcorr: str | None) -> xr.Dataset:  # fmt: skip
    if info["medium_assumed"]:
        attrs["medium_assumed"] = True
    if rvcorr is not None:
        attrs["muse_rvcorr"] = rvcorr
    ds = make_spectra_dataset(
        wave, flux, ivar, source_file=path, reader=reader, mask=mask, medium_original=info["medium"],
        flux_scale=scale, grid_name=info["grid_name"], coords=coords, attrs=attrs,
    )  # fmt: skip
    grid = {"grid": "linear", "step": info["step"]}
    if info["medium"] == "air":  # linear in air is not linear in vacuum
        grid = {"grid": "irregular", "air_start": info["start"], "air_step": info["step"]}
    ds["wavelength"].attrs.update(grid)
    return ds


# ---------------------------------------------------------------------------------------------------------------
# Cubes
# ---------------------------------------------------------------------------------------------------------------


def identify_muse_cube(probe: FileProbe) -> bool:
    """True for FITS files whose ``DATA`` HDU is a 3-D image (a MUSE cube)."""
    data = probe.hdu("DATA") if probe.kind == "fits" else None
    return data is not None and not data.is_table and len(data.shape) == 3


def _celestial_wcs(header: Any) -> Any:
    """The celestial part of the cube's WCS, or None when the header has none."""
    from astropy.wcs import WCS, FITSFixedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)  # MUSE headers mix CDELT and CD; harmless
        celestial = WCS(header).celestial
    return celestial if celestial.naxis == 2 else None


def _aperture_pixels(cube: Any, y0: int, y1: int, x0: int, x1: int, sel: tuple[np.ndarray, np.ndarray]):
    """(nwave, nspaxel) values of the selected spaxels, read through their bounding box (memmap-friendly)."""
    return np.asarray(cube[:, y0:y1, x0:x1][:, sel[0] - y0, sel[1] - x0])


def _spaxel_pixels(cube: Any, y: np.ndarray, x: np.ndarray, dtype: Any = np.float64) -> np.ndarray:
    """(nspaxel, nwave, 1) values of single spaxels."""
    return np.asarray(cube[:, y, x], dtype=dtype).T[:, :, None]


def read_muse_cube(
    path: str | PathLike[str],
    *,
    positions: Sequence[tuple[float, float]] | np.ndarray | None = None,
    positions_world: bool = False,
    radius: float = 1.0,
    spaxel_mask: np.ndarray | None = None,
    flux_unit: str | None = None,
    medium: str | None = None,
) -> xr.Dataset:
    """Extract spectra from a MUSE cube: apertures, masked spaxels, or (default) every spaxel.

    Parameters
    ----------
    path
        The cube (``DATA`` 3-D, ``STAT`` variance, optional ``DQ``); ``.fits.gz`` is fine (read whole).
    positions
        Aperture centres ``(x, y)``: 0-based pixel coordinates (x along NAXIS1), or ``(ra, dec)`` in degrees with
        ``positions_world=True`` (converted with the celestial WCS).
    positions_world
        Interpret ``positions`` as ``(ra, dec)``.
    radius
        Aperture radius in spaxels: spaxels whose centre lies within ``radius`` of the position are summed
        (flux = sum of DATA, variance = sum of STAT over the valid spaxels).
    spaxel_mask
        2-D boolean (ny, nx): every True spaxel is one spectrum. Not together with ``positions``.
    flux_unit, medium
        Override BUNIT / CTYPE3.

    Returns
    -------
    xarray.Dataset
        Reader ``"muse_cube"``; coordinates ``spaxel_x``, ``spaxel_y`` (int32; the rounded centre for
        apertures), ``ra``, ``dec`` (from the WCS, or the given world positions), ``aperture_nspaxel`` (int32).

    Raises
    ------
    InputError
        No 3-D DATA or no STAT, shapes that differ, an aperture entirely outside the cube (naming its row),
        a mask of the wrong shape, an unknown flux unit or wavelength axis.

    Notes
    -----
    In an aperture a wavelength pixel sums the spaxels with finite DATA, positive finite STAT and ``DQ == 0``
    (as mpdaf's masked sums do). It is ``INSTRUMENT`` only when every spaxel there has ``DQ != 0``, and no data
    (ivar 0) when none is usable; a NaN DATA or an invalid STAT not explained by DQ or by NaN DATA+STAT makes
    the pixel ``NONFINITE_FLUX`` / ``BAD_IVAR`` and is reported.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from astropy.io import fits
    >>> header = fits.Header({"CRVAL3": 4750.0, "CRPIX3": 1.0, "CD3_3": 1.25, "CTYPE3": "AWAV",
    ...                       "BUNIT": "10**(-20)*erg/s/cm**2/Angstrom"})
    >>> cube = np.ones((12, 4, 5), "f4")
    >>> hdus = [fits.PrimaryHDU(), fits.ImageHDU(cube, header, name="DATA"),
    ...         fits.ImageHDU(cube, header, name="STAT")]
    >>> name = tempfile.mkdtemp() + "/cube.fits"
    >>> fits.HDUList(hdus).writeto(name)
    >>> read_muse_cube(name).sizes["spectrum"]
    20
    >>> ds = read_muse_cube(name, positions=[(2, 2)], radius=1.0)
    >>> int(ds.aperture_nspaxel[0]), round(float(ds.flux[0, 0]) * 1e3, 4)
    (5, 5.0)
    """
    path = Path(path)
    if positions is not None and spaxel_mask is not None:
        raise ValueError("give positions or spaxel_mask, not both")
    if radius < 0 or not np.isfinite(radius):
        raise ValueError(f"radius must be a finite number >= 0, not {radius!r}")
    with open_fits(path) as hdul:
        names = [hdu.name.upper() for hdu in hdul]
        if "DATA" not in names or hdul["DATA"].header.get("NAXIS") != 3:
            raise InputError(path, "no 3-D DATA HDU")
        if "STAT" not in names:
            raise InputError(path, "the cube has no STAT (variance) HDU")
        header = hdul["DATA"].header
        try:
            wave, info = muse_wavelength(header, 3, medium=medium)
        except ValueError as exc:
            raise InputError(path, f"HDU DATA: {exc}") from None
        data_hdu, stat_hdu = hdul["DATA"], hdul["STAT"]
        dq_hdu = hdul["DQ"] if "DQ" in names else None
        shape = tuple(data_hdu.shape)
        for label, hdu in (("STAT", stat_hdu), ("DQ", dq_hdu)):
            if hdu is not None and tuple(hdu.shape) != shape:
                raise InputError(path, f"length mismatch: {label} has shape {tuple(hdu.shape)}, DATA {shape}")
        nwave, ny, nx = shape
        scale, attrs = _flux_scale(path, header.get("BUNIT", hdul[0].header.get("BUNIT")), flux_unit)
        wcs = _celestial_wcs(header)
        exptime = _header_number(hdul[0].header, "EXPTIME")
        rvcorr = _rvcorr(hdul[0].header)

        if positions is None:
            if spaxel_mask is None:
                ys, xs = np.divmod(np.arange(ny * nx), nx)
            else:
                spaxel_mask = np.asarray(spaxel_mask, dtype=bool)
                if spaxel_mask.shape != (ny, nx):
                    raise InputError(path, f"spaxel_mask has shape {spaxel_mask.shape}, the cube is ({ny}, {nx})")
                ys, xs = np.nonzero(spaxel_mask)
            nspec = ys.size
            flux = np.empty((nspec, nwave), np.float32)
            ivar = np.empty((nspec, nwave), np.float32)
            mask = np.empty((nspec, nwave), np.uint32)
            data, stat = data_hdu.data, stat_hdu.data
            dq = None if dq_hdu is None else dq_hdu.data
            for lo in range(0, nspec, _BATCH):
                y, x = ys[lo : lo + _BATCH], xs[lo : lo + _BATCH]
                parts = _combine(
                    _spaxel_pixels(data, y, x),
                    _spaxel_pixels(stat, y, x),
                    None if dq is None else _spaxel_pixels(dq, y, x, dtype=None),
                )
                flux[lo : lo + _BATCH], ivar[lo : lo + _BATCH], mask[lo : lo + _BATCH] = _finish(*parts, scale)
            centre_x, centre_y = xs.astype(np.float64), ys.astype(np.float64)
            nspaxel = np.ones(nspec, np.int32)
            world = None
        else:
            centres = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
            world = None
            if positions_world:
                if wcs is None:
                    raise InputError(path, "positions_world=True but the DATA header has no celestial WCS")
                world = centres
                centre_x, centre_y = wcs.world_to_pixel_values(centres[:, 0], centres[:, 1])
                centre_x, centre_y = np.asarray(centre_x, np.float64), np.asarray(centre_y, np.float64)
            else:
                centre_x, centre_y = centres[:, 0], centres[:, 1]
            nspec = centres.shape[0]
            flux = np.empty((nspec, nwave), np.float32)
            ivar = np.empty((nspec, nwave), np.float32)
            mask = np.empty((nspec, nwave), np.uint32)
            nspaxel = np.zeros(nspec, np.int32)
            for row, (cx, cy) in enumerate(zip(centre_x, centre_y, strict=True)):
                if not (np.isfinite(cx) and np.isfinite(cy)):
                    raise InputError(path, f"aperture position {centres[row].tolist()} is not finite", row=row)
                x0, x1 = max(0, int(np.ceil(cx - radius))), min(nx, int(np.floor(cx + radius)) + 1)
                y0, y1 = max(0, int(np.ceil(cy - radius))), min(ny, int(np.floor(cy + radius)) + 1)
                yy, xx = np.mgrid[y0 : max(y0, y1), x0 : max(x0, x1)]
                inside = (xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2
                if not inside.any():
                    raise InputError(
                        path,
                        f"aperture at {centres[row].tolist()} (pixel x={cx:.2f}, y={cy:.2f}, radius {radius}) "
                        f"has no spaxel inside the {nx} x {ny} cube",
                        row=row,
                    )
                box = (y0, y1, x0, x1, (yy[inside], xx[inside]))
                parts = _combine(
                    _aperture_pixels(data_hdu.data, *box).astype(np.float64)[None],
                    _aperture_pixels(stat_hdu.data, *box).astype(np.float64)[None],
                    None if dq_hdu is None else _aperture_pixels(dq_hdu.data, *box)[None],
                )
                flux[row], ivar[row], mask[row] = (a[0] for a in _finish(*parts, scale))
                nspaxel[row] = int(inside.sum())
            attrs["aperture_radius_spaxel"] = float(radius)

    if world is None and wcs is None:
        ra = dec = np.full(nspec, np.nan)
    elif world is None:
        ra, dec = wcs.pixel_to_world_values(centre_x, centre_y)
    else:
        ra, dec = world[:, 0], world[:, 1]
    coords: dict[str, np.ndarray] = {
        "spaxel_x": np.rint(centre_x).astype(np.int32),
        "spaxel_y": np.rint(centre_y).astype(np.int32),
        "ra": np.asarray(ra, np.float64),
        "dec": np.asarray(dec, np.float64),
        "aperture_nspaxel": nspaxel,
        "survey": np.full(nspec, code_of("muse", SURVEYS), np.int8),
        "instrument": np.full(nspec, code_of("muse", INSTRUMENTS), np.int8),
    }
    if exptime is not None:
        coords["exptime"] = np.full(nspec, exptime, np.float32)
    return _build(path, "muse_cube", wave, info, flux, ivar, mask, scale, coords, attrs, rvcorr)


register_reader(
    "muse_cube",
    identify_muse_cube,
    read_muse_cube,
    priority=80,
    description="MUSE data cube (DATA/STAT/DQ): every spaxel, a spaxel mask, or circular apertures",
)
register_reader(
    "muse",
    identify_muse,
    read_muse,
    priority=70,
    description="MUSE/MPDAF 1-D spectrum: DATA+STAT(+DQ), Source SPE_<NAME>_*, or legacy PRIMARY+variance",
)
