"""SDSS / BOSS ``spec-`` files: the coadd placed on the one shared SDSS log10 lattice, never resampled.

SDSS pixels sit on ``loglam = 3.5 + 1e-4 k`` (vacuum, Angstrom), so every spectrum goes by index onto the grid
``loglam = 3.5000 ... 4.1000`` (6001 px, 3162-12589 Angstrom), padded with ``ivar = 0`` + ``NO_COVERAGE``. A pixel
off the lattice by more than 1e-6 in loglam is an :class:`~dzspec.errors.InputError` (the file's loglam is float32:
its rounding is ~1.5e-7).

``and_mask != 0`` (bad in every exposure) sets ``SpecMask.INSTRUMENT``. From ``SPECOBJ``: ``plate``, ``mjd``,
``fiberid``, ``z_pipeline``, ``z_err_pipeline`` and ``zwarning`` coordinates (the pipeline redshift is *not* truth:
``z_true`` stays NaN), ``PLUG_RA/PLUG_DEC`` as ra/dec, and targetid = ``SPECOBJID`` when it fits an int64.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from dzspec.errors import InputError
from dzspec.io.fits import open_fits
from dzspec.io.registry import FileProbe, register_reader
from dzspec.io.units import flux_scale_from_unit
from dzspec.schema import INSTRUMENTS, SURVEYS, SpecMask, code_of, make_spectra_dataset

__all__ = ["SDSS_GRID_NAME", "SDSS_LOGLAM_START", "SDSS_LOGLAM_STEP", "SDSS_NWAVE", "identify_sdss", "read_sdss",
           "sdss_wavelength"]  # fmt: skip

SDSS_LOGLAM_START = 3.5
SDSS_LOGLAM_STEP = 1e-4
SDSS_NWAVE = 6001
SDSS_GRID_NAME = "sdss-loglam-3.5000-4.1000-1e-4"
_LATTICE_TOLERANCE = 1e-6  # in log10(Angstrom)
_REQUIRED = ("loglam", "flux", "ivar")


def sdss_wavelength() -> np.ndarray:
    """The shared SDSS grid, vacuum Angstrom: ``10 ** (3.5 + 1e-4 k)``, k = 0..6000.

    Examples
    --------
    >>> wave = sdss_wavelength()
    >>> wave.size, round(float(wave[0]), 3), round(float(wave[-1]), 1)
    (6001, 3162.278, 12589.3)
    """
    return 10.0 ** (SDSS_LOGLAM_START + SDSS_LOGLAM_STEP * np.arange(SDSS_NWAVE))


def _coadd_hdu(hdus: Any) -> Any:
    """The COADD table, or HDU 1 when it is a table with loglam/flux/ivar (older spec files)."""
    for hdu in hdus:
        if hdu.name.upper() == "COADD":
            return hdu
    return hdus[1] if len(hdus) > 1 else None


def identify_sdss(probe: FileProbe) -> bool:
    """True for FITS files with a ``COADD`` table holding loglam, flux and ivar (or such a table in HDU 1
    together with SDSS signs: an ``and_mask`` column or a ``SPECOBJ`` HDU)."""
    if probe.kind != "fits" or len(probe.hdus) < 2:
        return False
    hdu = probe.hdu("COADD")
    named = hdu is not None
    hdu = hdu or probe.hdus[1]
    columns = {c.lower() for c in hdu.columns}
    if not (hdu.is_table and all(c in columns for c in _REQUIRED)):
        return False
    return named or "and_mask" in columns or "SPECOBJ" in probe.hdu_names


def _specobj_coords(table: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    names = {name.upper(): name for name in table.columns.names}
    row = table[0]
    coords: dict[str, Any] = {}
    attrs: dict[str, Any] = {}
    for column, coord, dtype in (
        ("PLATE", "plate", np.int32), ("MJD", "mjd", np.int32), ("FIBERID", "fiberid", np.int32),
        ("Z", "z_pipeline", np.float64), ("Z_ERR", "z_err_pipeline", np.float64),
        ("ZWARNING", "zwarning", np.int32), ("PLUG_RA", "ra", np.float64), ("PLUG_DEC", "dec", np.float64),
    ):  # fmt: skip
        if column in names:
            coords[coord] = np.array([row[names[column]]], dtype=dtype)
    if "SPECOBJID" in names:
        try:
            targetid = int(str(row[names["SPECOBJID"]]).strip())
        except ValueError:
            targetid = -1
        coords["targetid"] = np.array([targetid if -(2**63) <= targetid < 2**63 else -1], np.int64)
    for column in ("CLASS", "SUBCLASS", "INSTRUMENT", "SURVEY", "RUN2D"):
        if column in names:
            attrs[f"sdss_{column.lower()}"] = str(row[names[column]]).strip()
    return coords, attrs


def read_sdss(path: str | PathLike[str], *, keep_sky: bool = False) -> xr.Dataset:
    """Read an SDSS/BOSS ``spec-`` file onto the shared SDSS log10 grid (see the module docstring).

    Parameters
    ----------
    path
        The file.
    keep_sky
        Also return the per-pixel ``sky`` (spectrum, wavelength) float32 in the flux unit (0 outside coverage).

    Returns
    -------
    xarray.Dataset
        One spectrum on the 6001-pixel grid ``sdss-loglam-3.5000-4.1000-1e-4`` (reader ``"sdss"``, survey
        ``sdss``, instrument ``boss``).

    Raises
    ------
    InputError
        No loglam/flux/ivar table, pixels off the lattice or outside 3.5-4.1, a truncated file.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from astropy.io import fits
    >>> loglam = 3.6 + 1e-4 * np.arange(12)
    >>> table = fits.BinTableHDU.from_columns([fits.Column("flux", "E", array=np.ones(12)),
    ...     fits.Column("loglam", "E", array=loglam), fits.Column("ivar", "E", array=np.ones(12))], name="COADD")
    >>> name = tempfile.mkdtemp() + "/spec-toy.fits"
    >>> fits.HDUList([fits.PrimaryHDU(), table]).writeto(name)
    >>> ds = read_sdss(name)
    >>> ds.sizes["wavelength"], int((ds.ivar > 0).sum()), ds.attrs["grid_name"]
    (6001, 12, 'sdss-loglam-3.5000-4.1000-1e-4')
    """
    path = Path(path)
    with open_fits(path) as hdul:
        hdu = _coadd_hdu(hdul)
        columns = {} if hdu is None or not hasattr(hdu, "columns") else {c.lower(): c for c in hdu.columns.names}
        missing = [c for c in _REQUIRED if c not in columns]
        if missing:
            raise InputError(path, f"no COADD table with columns loglam, flux, ivar (missing {missing})")
        data = hdu.data
        loglam = np.asarray(data[columns["loglam"]], dtype=np.float64)
        flux = np.asarray(data[columns["flux"]], dtype=np.float64)
        ivar = np.asarray(data[columns["ivar"]], dtype=np.float64)
        and_mask = np.array(data[columns["and_mask"]]) if "and_mask" in columns else np.zeros(flux.shape, int)
        sky = np.asarray(data[columns["sky"]], dtype=np.float32) if keep_sky and "sky" in columns else None
        if keep_sky and sky is None:
            raise InputError(path, "keep_sky=True but the COADD table has no sky column")
        coords, attrs = _specobj_coords(hdul["SPECOBJ"].data) if "SPECOBJ" in hdul else ({}, {})
        primary = hdul[0].header
        exptime = primary.get("EXPTIME")
        for key, coord in (("PLATEID", "plate"), ("MJD", "mjd"), ("FIBERID", "fiberid"),
                           ("PLUG_RA", "ra"), ("PLUG_DEC", "dec")):  # fmt: skip
            if coord not in coords and isinstance(primary.get(key), int | float):
                coords[coord] = np.array([primary[key]])
        vacuum = primary.get("VACUUM", True)
        try:
            flux_scale = flux_scale_from_unit(primary.get("BUNIT")) or 1.0  # '1E-17 erg/cm^2/s/Ang'
        except ValueError as exc:
            raise InputError(path, f"flux unit: {exc}") from None

    if loglam.ndim != 1 or loglam.size == 0:
        raise InputError(path, f"loglam must be a non-empty 1-D column, got shape {loglam.shape}")
    if vacuum is False:
        raise InputError(path, "header VACUUM = F: air wavelengths are not on the SDSS vacuum lattice")
    index = np.rint((loglam - SDSS_LOGLAM_START) / SDSS_LOGLAM_STEP)
    off = np.abs(loglam - (SDSS_LOGLAM_START + index * SDSS_LOGLAM_STEP))
    if not np.all(off <= _LATTICE_TOLERANCE):  # NaN fails too
        bad = int(np.flatnonzero(~(off <= _LATTICE_TOLERANCE))[0])
        raise InputError(
            path,
            f"pixel {bad} at loglam {loglam[bad]!r} is off the SDSS lattice 3.5 + 1e-4 k (by {off[bad]:.3g} > "
            f"{_LATTICE_TOLERANCE}); dzspec does not resample",
        )
    if np.any(np.diff(index) <= 0):
        bad = int(np.flatnonzero(np.diff(index) <= 0)[0])
        raise InputError(path, f"loglam is not strictly increasing at pixel {bad}")
    if index[0] < 0 or index[-1] >= SDSS_NWAVE:
        raise InputError(path, f"loglam {loglam[0]:.4f}-{loglam[-1]:.4f} reaches outside the SDSS grid 3.5000-4.1000")
    index = index.astype(np.intp)
    grid_flux = np.zeros((1, SDSS_NWAVE))
    grid_ivar = np.zeros((1, SDSS_NWAVE))
    grid_mask = np.full((1, SDSS_NWAVE), np.uint32(SpecMask.NO_COVERAGE), np.uint32)
    grid_flux[0, index] = flux * flux_scale
    grid_ivar[0, index] = ivar / flux_scale**2
    bad = and_mask != 0
    grid_mask[0, index] = np.where(bad, np.uint32(SpecMask.INSTRUMENT), np.uint32(0))
    # Pixels the pipeline already flagged are "no data", not news: no NaN/BAD_IVAR report for them.
    bad_index = index[bad]
    grid_ivar[0, bad_index] = 0.0
    grid_flux[0, bad_index] = np.where(np.isfinite(flux[bad]), flux[bad] * flux_scale, 0.0)

    coords["survey"] = np.array([code_of("sdss", SURVEYS)], np.int8)
    coords["instrument"] = np.array([code_of("boss", INSTRUMENTS)], np.int8)
    if isinstance(exptime, int | float):
        coords["exptime"] = np.array([exptime], np.float32)
    extra = None
    if sky is not None:
        grid_sky = np.zeros((1, SDSS_NWAVE), np.float32)
        grid_sky[0, index] = sky * flux_scale
        extra = {"sky": (("spectrum", "wavelength"), grid_sky)}
    ds = make_spectra_dataset(
        sdss_wavelength(), grid_flux, grid_ivar, source_file=path, reader="sdss", mask=grid_mask,
        medium_original="vacuum", flux_scale=flux_scale, grid_name=SDSS_GRID_NAME, coords=coords, attrs=attrs,
        extra_vars=extra,
    )  # fmt: skip
    ds["wavelength"].attrs.update({"grid": "log10", "step": SDSS_LOGLAM_STEP})
    return ds


register_reader(
    "sdss",
    identify_sdss,
    read_sdss,
    priority=90,
    description="SDSS/BOSS spec- FITS (COADD table) on the shared loglam 3.5-4.1 grid",
)
