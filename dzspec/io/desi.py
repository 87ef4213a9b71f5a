"""DESI ``coadd-*`` and ``spectra-*`` FITS files: cameras merged onto one 0.8 Angstrom lattice, never resampled.

A DESI file holds, for each camera ``X`` (normally ``B``, ``R``, ``Z``), the HDUs ``X_WAVELENGTH`` (1-D, vacuum,
Angstrom), ``X_FLUX`` and ``X_IVAR`` (spectra x pixels, flux in 1e-17 erg/s/cm2/A) and optionally ``X_MASK``
(SPECMASK bits) and ``X_RESOLUTION`` (spectra x diagonals x pixels), plus an optional ``FIBERMAP`` table.

All DESI cameras sample the same lattice ``3600 + 0.8 k`` Angstrom, so the merge places every camera pixel at its
lattice index: the standard b, r, z cameras give 3600-9824 Angstrom (7781 px), with 51 px (b/r) and 126 px (r/z)
overlaps. In an overlap the cameras are combined inverse-variance weighted (``flux = sum(w f) / sum(w)``,
``ivar = sum(w)``, with ``w = ivar`` and ``w = 0`` where the DESI mask is set). Mask bits of the merged pixel:

* ``INSTRUMENT`` only if *every* camera covering it had a nonzero DESI mask;
* ``CAMERA_OVERLAP`` where two or more cameras contributed (``w > 0``);
* ``NO_COVERAGE`` where no camera covers it (e.g. a file without the r camera).

A camera pixel off the lattice by more than 1e-4 Angstrom is an :class:`~dzspec.errors.InputError`.
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
from dzspec.schema import INSTRUMENTS, SPECTRUM_COORDS, SURVEYS, SpecMask, code_of, make_spectra_dataset

__all__ = ["DESI_GRID_NAME", "DESI_LATTICE_START", "DESI_LATTICE_STEP", "desi_cameras", "identify_desi", "read_desi"]

DESI_LATTICE_START = 3600.0
DESI_LATTICE_STEP = 0.8
#: Number of pixels of the standard merged b+r+z grid, 3600-9824 Angstrom.
DESI_NWAVE = 7781
DESI_GRID_NAME = "desi-brz-3600-9824-0.8"
_LATTICE_TOLERANCE = 1e-4  # Angstrom

# FIBERMAP column -> (coordinate, dtype); the first present of COADD_EXPTIME / EXPTIME gives exptime.
_FIBERMAP_COORDS = {
    "TARGETID": ("targetid", np.int64),
    "TARGET_RA": ("ra", np.float64),
    "TARGET_DEC": ("dec", np.float64),
    "COADD_EXPTIME": ("exptime", np.float32),
    "COADD_NUMEXP": ("nexp", np.int16),
}
_RESERVED = {*SPECTRUM_COORDS, "nexp", "wavelength", "spectrum", "flux", "ivar", "mask", "resolution",
             "source_file", "diagonal"}  # fmt: skip
_PRIMARY_ATTRS = ("SURVEY", "PROGRAM", "SPGRP", "SPGRPVAL", "TILEID", "HPXPIXEL", "NIGHT", "EXPID")


def desi_cameras(hdu_names: set[str] | frozenset[str]) -> list[str]:
    """Camera prefixes ``X`` with ``X_WAVELENGTH``, ``X_FLUX`` and ``X_IVAR`` among upper-case HDU names.

    Examples
    --------
    >>> desi_cameras({"B_WAVELENGTH", "B_FLUX", "B_IVAR", "R_FLUX", "FIBERMAP"})
    ['B']
    """
    cameras = {name[: -len("_WAVELENGTH")] for name in hdu_names if name.endswith("_WAVELENGTH")}
    return sorted(c for c in cameras if c and f"{c}_FLUX" in hdu_names and f"{c}_IVAR" in hdu_names)


def identify_desi(probe: FileProbe) -> bool:
    """True for FITS files with at least one DESI camera (``X_WAVELENGTH`` + ``X_FLUX`` + ``X_IVAR`` HDUs)."""
    return probe.kind == "fits" and bool(desi_cameras(probe.hdu_names))


def _lattice_offset(path: Path, camera: str, wave: np.ndarray) -> int:
    """Index of the camera's first pixel on the 0.8 A lattice, after checking every pixel lies on it."""
    if wave.ndim != 1 or wave.size == 0:
        raise InputError(path, f"{camera}_WAVELENGTH must be a non-empty 1-D array, got shape {wave.shape}")
    start = int(np.rint((wave[0] - DESI_LATTICE_START) / DESI_LATTICE_STEP))
    expected = DESI_LATTICE_START + (start + np.arange(wave.size)) * DESI_LATTICE_STEP
    off = np.abs(wave - expected)
    if not np.all(off <= _LATTICE_TOLERANCE):  # NaN fails too
        bad = int(np.flatnonzero(~(off <= _LATTICE_TOLERANCE))[0])
        raise InputError(
            path,
            f"camera {camera}: pixel {bad} at {wave[bad]!r} A is off the DESI lattice 3600 + 0.8 k A "
            f"(by {off[bad]:.3g} A > {_LATTICE_TOLERANCE} A); dzspec does not resample",
        )
    return start


def _fibermap_coords(path: Path, table: Any, nspec: int) -> dict[str, np.ndarray]:
    if len(table) != nspec:
        raise InputError(path, f"FIBERMAP has {len(table)} rows but the flux HDUs have {nspec} spectra")
    names = {name.upper(): name for name in table.columns.names}
    coords: dict[str, np.ndarray] = {}
    for column, (coord, dtype) in _FIBERMAP_COORDS.items():
        if column in names:
            coords[coord] = np.asarray(table[names[column]]).astype(dtype)
    if "exptime" not in coords and "EXPTIME" in names:  # spectra-* files: one exposure per row
        coords["exptime"] = np.asarray(table[names["EXPTIME"]]).astype(np.float32)
    used = {*_FIBERMAP_COORDS, "EXPTIME"}
    for upper, name in names.items():
        coord = upper.lower()
        if upper in used or coord in _RESERVED or coord in coords:
            continue
        values = np.asarray(table[name])
        if values.ndim != 1 or values.dtype.kind not in "biuf":  # strings and array columns are skipped
            continue
        coords[coord] = values.astype(values.dtype.newbyteorder("="))
    return coords


def read_desi(path: str | PathLike[str], *, keep_resolution: bool = False) -> xr.Dataset:
    """Read a DESI coadd/spectra file, merging its cameras on the 0.8 Angstrom lattice.

    Parameters
    ----------
    path
        The file.
    keep_resolution
        Also return ``resolution`` (spectrum, diagonal, wavelength) float32: each camera's ``X_RESOLUTION``
        placed on the merged lattice, the diagonals combined with the same inverse-variance weights in the
        overlaps (as ``desispec.coaddition.coadd_cameras``). Off by default: ~350 GB per million spectra.

    Returns
    -------
    xarray.Dataset
        Canonical spectra Dataset (reader ``"desi"``); FIBERMAP columns become coordinates (``TARGETID`` ->
        ``targetid``, ``TARGET_RA/DEC`` -> ``ra/dec``, ``COADD_EXPTIME`` (or ``EXPTIME``) -> ``exptime``,
        ``COADD_NUMEXP`` -> ``nexp``, every other numeric 1-D column under its lower-case name).

    Raises
    ------
    InputError
        No camera, shapes that disagree, wavelengths off the lattice, a truncated file.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from astropy.io import fits
    >>> wave = 3600.0 + 0.8 * np.arange(10)
    >>> hdus = [fits.PrimaryHDU(), fits.ImageHDU(wave, name="B_WAVELENGTH"),
    ...         fits.ImageHDU(np.ones((2, 10), "f4"), name="B_FLUX"),
    ...         fits.ImageHDU(np.ones((2, 10), "f4"), name="B_IVAR")]
    >>> name = tempfile.mkdtemp() + "/coadd-toy.fits"
    >>> fits.HDUList(hdus).writeto(name)
    >>> ds = read_desi(name)
    >>> ds.sizes["wavelength"], ds.attrs["grid_name"].startswith("lin-3600.0-3607.2-10")
    (10, True)
    """
    path = Path(path)
    with open_fits(path) as hdul:
        names = {hdu.name.upper() for hdu in hdul}
        cameras = desi_cameras(names)
        if not cameras:
            raise InputError(path, "no DESI camera HDUs (X_WAVELENGTH + X_FLUX + X_IVAR)")
        parts = []
        nspec: int | None = None
        for cam in cameras:
            wave = np.asarray(hdul[f"{cam}_WAVELENGTH"].data, dtype=np.float64)
            start = _lattice_offset(path, cam, wave)
            flux = np.asarray(hdul[f"{cam}_FLUX"].data, dtype=np.float64)
            ivar = np.asarray(hdul[f"{cam}_IVAR"].data, dtype=np.float64)
            flux, ivar = np.atleast_2d(flux), np.atleast_2d(ivar)
            mask = (
                np.atleast_2d(np.asarray(hdul[f"{cam}_MASK"].data)) != 0
                if f"{cam}_MASK" in names
                else np.zeros(flux.shape, bool)
            )
            for what, array in (("FLUX", flux), ("IVAR", ivar), ("MASK", mask)):
                if array.shape != (array.shape[0], wave.size) or (nspec is not None and array.shape[0] != nspec):
                    raise InputError(
                        path,
                        f"{cam}_{what} has shape {array.shape}, expected "
                        f"({nspec if nspec is not None else 'nspec'}, {wave.size}) from {cam}_WAVELENGTH",
                    )
                nspec = array.shape[0]
            res = None
            if keep_resolution:
                if f"{cam}_RESOLUTION" not in names:
                    raise InputError(path, f"keep_resolution=True but there is no {cam}_RESOLUTION HDU")
                res = np.asarray(hdul[f"{cam}_RESOLUTION"].data, dtype=np.float32)
                if res.ndim != 3 or res.shape[0] != nspec or res.shape[2] != wave.size:
                    raise InputError(
                        path, f"{cam}_RESOLUTION has shape {res.shape}, expected ({nspec}, ndiag, {wave.size})"
                    )
            parts.append((cam, start, flux, ivar, mask, res))
        assert nspec is not None
        coords = _fibermap_coords(path, hdul["FIBERMAP"].data, nspec) if "FIBERMAP" in names else {}
        primary = hdul[0].header
        attrs: dict[str, Any] = {
            f"desi_{key.lower()}": (value.strip() if isinstance(value, str) else value)
            for key in _PRIMARY_ATTRS
            if (value := primary.get(key)) is not None and not isinstance(value, bool)
        }

    if keep_resolution and len({p[5].shape[1] for p in parts}) > 1:  # type: ignore[union-attr]
        raise InputError(path, "cameras have different numbers of resolution diagonals")
    # The merged grid spans the cameras present; b+r+z (or b+z) give the standard 3600-9824 A grid.
    lo = min(p[1] for p in parts)
    hi = max(p[1] + p[2].shape[1] for p in parts)
    standard = (lo, hi) == (0, DESI_NWAVE)
    wavelength = DESI_LATTICE_START + np.arange(lo, hi) * DESI_LATTICE_STEP
    shape = (nspec, hi - lo)
    wsum, wfsum = np.zeros(shape), np.zeros(shape)
    plain_sum = np.zeros(shape)  # pixels no camera weighs get the mean of the cameras' finite values
    plain_n, ncover, nmasked, ncontrib = (np.zeros(shape, np.int16) for _ in range(4))
    bad_flux, bad_ivar = np.zeros(shape, bool), np.zeros(shape, bool)
    if keep_resolution:
        ndiag = parts[0][5].shape[1]  # type: ignore[union-attr]
        res_w, res_plain = np.zeros((nspec, ndiag, shape[1])), np.zeros((nspec, ndiag, shape[1]))
    for _cam, start, flux, ivar, mask, res in parts:
        sl = slice(start - lo, start - lo + flux.shape[1])
        finite_flux = np.isfinite(flux)
        good_ivar = np.isfinite(ivar) & (ivar >= 0)
        # Bad values the instrument did not flag are passed on, so that make_spectra_dataset reports them.
        bad_flux[:, sl] |= ~finite_flux & ~mask
        bad_ivar[:, sl] |= ~good_ivar & ~mask
        weight = np.where(finite_flux & good_ivar & ~mask, ivar, 0.0)
        wsum[:, sl] += weight
        wfsum[:, sl] += weight * np.where(finite_flux, flux, 0.0)
        plain_sum[:, sl] += np.where(finite_flux, flux, 0.0)
        plain_n[:, sl] += finite_flux
        ncover[:, sl] += 1
        nmasked[:, sl] += mask
        ncontrib[:, sl] += weight > 0
        if keep_resolution:
            res_w[:, :, sl] += weight[:, None, :] * res
            res_plain[:, :, sl] += res
    weighed = wsum > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        flux_out = np.where(weighed, wfsum / wsum, plain_sum / np.maximum(plain_n, 1))
    ivar_out = wsum
    flux_out[bad_flux] = np.nan
    ivar_out[bad_ivar] = np.nan
    mask_out = np.zeros(shape, np.uint32)
    mask_out[ncover == 0] |= np.uint32(SpecMask.NO_COVERAGE)
    mask_out[(ncover > 0) & (nmasked == ncover)] |= np.uint32(SpecMask.INSTRUMENT)
    mask_out[ncontrib >= 2] |= np.uint32(SpecMask.CAMERA_OVERLAP)
    res_out = None
    if keep_resolution:
        with np.errstate(invalid="ignore", divide="ignore"):
            res_out = np.where(
                weighed[:, None, :], res_w / wsum[:, None, :], res_plain / np.maximum(ncover, 1)[:, None, :]
            ).astype(np.float32)

    coords["survey"] = np.full(nspec, code_of("desi", SURVEYS), np.int8)
    coords["instrument"] = np.full(nspec, code_of("desi", INSTRUMENTS), np.int8)
    attrs["desi_cameras"] = ",".join(c.lower() for c in cameras)
    ds = make_spectra_dataset(
        wavelength, flux_out, ivar_out, source_file=path, reader="desi", mask=mask_out,
        medium_original="vacuum", flux_scale=1.0, grid_name=DESI_GRID_NAME if standard else None,
        coords=coords, attrs=attrs,
        extra_vars=None if res_out is None else {"resolution": (("spectrum", "diagonal", "wavelength"), res_out)},
    )  # fmt: skip
    ds["wavelength"].attrs.update({"grid": "linear", "step": DESI_LATTICE_STEP})
    return ds


register_reader(
    "desi",
    identify_desi,
    read_desi,
    priority=100,
    description="DESI coadd-*/spectra-* FITS: cameras merged on the 0.8 A lattice (3600-9824 A)",
)
