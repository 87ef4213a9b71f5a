"""The canonical layout of spectra in memory and in Zarr.

One spectra group holds spectra that share **one** wavelength grid:

* dims ``(spectrum, wavelength)``;
* ``flux`` float32 in :data:`FLUX_UNIT`; ``ivar`` float32, 0 where there is no usable data;
* ``mask`` uint32 with the :class:`SpecMask` bits (every pixel with ``ivar == 0`` carries at least one bit);
* coordinate ``wavelength`` float64, vacuum, Angstrom (MUSE air wavelengths are converted at ingest);
* per-spectrum coordinates :data:`SPECTRUM_COORDS` (plus reader-specific numeric extras such as DESI FIBERMAP
  columns, prefixed by nothing but lower-cased);
* attributes: :data:`SCHEMA_VERSION`, flux unit, original wavelength medium, reader, input checksums, dzspec version.

Readers build their output with :func:`make_spectra_dataset`, which is where bad values become mask bits and
per-spectrum ``ingest_warn`` flags (never exceptions, never silent drops).
"""

from __future__ import annotations

import enum
import hashlib
import warnings
from collections.abc import Mapping
from os import PathLike
from typing import Any, Literal

import numpy as np
import xarray as xr

from dzspec._version import __version__
from dzspec.errors import BadSpectrumWarning, InputError

__all__ = [
    "FLUX_UNIT",
    "INSTRUMENTS",
    "MAX_FLUX_SIGMA",
    "MIN_USABLE_PIXELS",
    "RUN_STATUS",
    "SCHEMA_VERSION",
    "SPECTRUM_COORDS",
    "SURVEYS",
    "WAVELENGTH_RANGE",
    "IngestWarn",
    "SpecMask",
    "code_of",
    "duplicated_targetid_rows",
    "file_sha256",
    "flag_attrs",
    "make_spectra_dataset",
    "suspect_spectra",
]

#: Version of the on-disk layout. A store with a larger number is refused by this dzspec.
SCHEMA_VERSION = 1

#: The one flux unit of every store; readers rescale (MUSE's 1e-20 by 1e-3) and record the factor.
FLUX_UNIT = "1e-17 erg s-1 cm-2 Angstrom-1"

Medium = Literal["vacuum", "air", "unknown"]


class SpecMask(enum.IntFlag):
    """Per-pixel ``mask`` bits. Any pixel with a bit set in :data:`SpecMask.UNUSABLE` has ``ivar == 0``."""

    NODATA = 1 << 0  #: ivar is 0 (no measurement, or made 0 by one of the bits below)
    INSTRUMENT = 1 << 1  #: the instrument pipeline flagged the pixel (DESI MASK, MUSE DQ, SDSS and_mask)
    NONFINITE_FLUX = 1 << 2  #: the file held NaN or inf flux; flux set to 0
    BAD_IVAR = 1 << 3  #: the file held a negative, NaN or inf ivar (or variance <= 0)
    NO_COVERAGE = 1 << 4  #: the instrument does not cover this pixel (padding on a shared grid)
    CAMERA_OVERLAP = 1 << 5  #: informative: inverse-variance combination of two cameras (DESI)


class IngestWarn(enum.IntFlag):
    """Per-spectrum ``ingest_warn`` bits set at ingest; the spectrum is always kept.

    The members are the one source of the stored CF ``flag_masks``/``flag_meanings`` (:func:`flag_attrs`).
    "Usable" pixels have finite flux, ``ivar > 0`` and no :class:`SpecMask` bit but CAMERA_OVERLAP.
    """

    EMPTY = 1 << 0  #: no pixel with ivar > 0
    NONFINITE_FLUX = 1 << 1  #: some flux values were NaN/inf
    BAD_IVAR = 1 << 2  #: some ivar/variance values were negative, NaN or inf
    DUPLICATE_TARGETID = 1 << 3  #: another spectrum of the store has the same (known) targetid
    NO_TARGETID = 1 << 4  #: the file gives no targetid (stored as -1)
    FEW_PIXELS = 1 << 5  #: 1 to MIN_USABLE_PIXELS - 1 usable pixels (none is EMPTY)
    WAVELENGTH_RANGE = 1 << 6  #: the file's grid reaches outside WAVELENGTH_RANGE Angstrom (nm or um given?): all rows
    EXTREME_FLUX = 1 << 7  #: a usable pixel's |flux| exceeds MAX_FLUX_SIGMA times the median sigma = 1/sqrt(ivar)


#: Fewer usable pixels than this flag a spectrum FEW_PIXELS.
MIN_USABLE_PIXELS = 10
#: Vacuum Angstrom range every wavelength of a file should lie in; outside it flags all rows WAVELENGTH_RANGE.
WAVELENGTH_RANGE: tuple[float, float] = (900.0, 30_000.0)
#: A usable pixel with ``|flux| > MAX_FLUX_SIGMA * median(sigma)`` (over the spectrum's usable pixels) flags it
#: EXTREME_FLUX.
MAX_FLUX_SIGMA = 1e6


#: Survey codes stored in the int8 ``survey`` coordinate (CF flag_values / flag_meanings).
SURVEYS: tuple[str, ...] = ("unknown", "desi", "muse", "sdss", "legac", "simulated")
#: Instrument codes stored in the int8 ``instrument`` coordinate.
INSTRUMENTS: tuple[str, ...] = ("unknown", "desi", "muse", "boss", "vimos", "simulated")

#: Codes of a results group's per-spectrum ``run_status``: never computed (yet), computed, or its block failed
#: (unreadable input, a kernel error, an unwritable output; the group's ``failed_blocks`` attribute says which).
RUN_STATUS: tuple[str, ...] = ("not_run", "ok", "failed")

#: Per-spectrum coordinates every spectra dataset has: name -> (dtype, fill value for "unknown").
SPECTRUM_COORDS: dict[str, tuple[str, Any]] = {
    "targetid": ("int64", -1),
    "source_row": ("int32", -1),
    "survey": ("int8", 0),
    "instrument": ("int8", 0),
    "exptime": ("float32", np.nan),
    "ra": ("float64", np.nan),
    "dec": ("float64", np.nan),
    "z_true": ("float64", np.nan),
    "ingest_warn": ("uint32", 0),
}


def code_of(name: str, table: tuple[str, ...]) -> int:
    """Return the integer code of ``name`` in a code table (``SURVEYS`` or ``INSTRUMENTS``).

    Examples
    --------
    >>> code_of("muse", SURVEYS)
    2
    """
    try:
        return table.index(name)
    except ValueError:
        raise ValueError(f"unknown code {name!r}; known: {', '.join(table)}") from None


def flag_attrs(flags: type[enum.IntFlag] | tuple[str, ...]) -> dict[str, Any]:
    """CF attributes describing a bit mask (``flag_masks``) or a category code (``flag_values``).

    Examples
    --------
    >>> flag_attrs(IngestWarn)["flag_meanings"].split()[0]
    'EMPTY'
    >>> flag_attrs(SURVEYS)["flag_values"][:3]
    [0, 1, 2]
    """
    if isinstance(flags, tuple):
        return {"flag_values": list(range(len(flags))), "flag_meanings": " ".join(flags)}
    members = list(flags)
    return {
        "flag_masks": [int(m) for m in members],
        "flag_meanings": " ".join(str(m.name) for m in members),
    }


def duplicated_targetid_rows(targetid: np.ndarray) -> np.ndarray:
    """Rows whose known targetid (>= 0; -1 means unknown) occurs more than once.

    Examples
    --------
    >>> duplicated_targetid_rows(np.array([5, -1, 7, 5, -1])).tolist()
    [0, 3]
    """
    targetid = np.asarray(targetid)
    values, counts = np.unique(targetid[targetid >= 0], return_counts=True)
    return np.flatnonzero(np.isin(targetid, values[counts > 1]))


def file_sha256(path: str | PathLike[str], chunk_bytes: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes, the identity of an input in a store's manifest."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def _check_wavelength(path: str, wavelength: np.ndarray) -> np.ndarray:
    wavelength = np.asarray(wavelength, dtype=np.float64)
    if wavelength.ndim != 1 or wavelength.size == 0:
        raise InputError(path, f"wavelength must be a non-empty 1-D array, got shape {wavelength.shape}")
    if not np.all(np.isfinite(wavelength)):
        bad = int(np.flatnonzero(~np.isfinite(wavelength))[0])
        raise InputError(path, f"wavelength is not finite at pixel {bad}")
    steps = np.diff(wavelength)
    if np.any(steps <= 0):
        bad = int(np.flatnonzero(steps <= 0)[0])
        raise InputError(
            path,
            f"wavelengths are not strictly increasing at pixel {bad} "
            f"({wavelength[bad]!r} -> {wavelength[bad + 1]!r})",
        )
    if wavelength[0] <= 0:
        raise InputError(path, f"wavelengths must be positive Angstrom, first is {wavelength[0]!r}")
    return wavelength


def _rows_text(rows: np.ndarray, limit: int = 8) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:limit])
    return shown + (f", ... ({rows.size} in all)" if rows.size > limit else "")


def _rows_targetids_text(rows: np.ndarray, targetid: np.ndarray, limit: int = 5) -> str:
    """``rows 0, 3 (targetids 11, 14)``: the first few rows and their targetids (when known)."""
    text = f"rows {_rows_text(rows, limit)}"
    known = targetid[rows[:limit]]
    if (known >= 0).any():
        text += f" (targetids {', '.join(str(int(t)) for t in known)})"
    return text


def suspect_spectra(wavelength: np.ndarray, flux: np.ndarray, ivar: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The :class:`IngestWarn` bits FEW_PIXELS, WAVELENGTH_RANGE and EXTREME_FLUX of each spectrum.

    Parameters
    ----------
    wavelength
        Vacuum Angstrom, shape ``(nwave,)``.
    flux, ivar, mask
        Shape ``(nspec, nwave)``: flux in :data:`FLUX_UNIT`, ivar, :class:`SpecMask` bits.

    Returns
    -------
    numpy.ndarray
        uint32 bits, shape ``(nspec,)``: FEW_PIXELS for 1 to :data:`MIN_USABLE_PIXELS` - 1 usable pixels;
        WAVELENGTH_RANGE on every row when a wavelength lies outside :data:`WAVELENGTH_RANGE`; EXTREME_FLUX when a
        usable pixel has ``|flux|`` above :data:`MAX_FLUX_SIGMA` times the median of ``1/sqrt(ivar)`` over the
        usable pixels.

    Examples
    --------
    >>> wave = np.linspace(4000.0, 5000.0, 20)
    >>> flux, ivar = np.ones((3, 20)), np.ones((3, 20))
    >>> ivar[0, 5:] = 0          # 5 usable pixels
    >>> flux[1, 3] = 1e7         # 1e7 sigma
    >>> [IngestWarn(int(b)).name for b in suspect_spectra(wave, flux, ivar, np.zeros((3, 20), np.uint32))]
    ['FEW_PIXELS', 'EXTREME_FLUX', None]
    >>> IngestWarn(int(suspect_spectra(wave / 10, flux, ivar, np.zeros((3, 20), np.uint32))[2])).name
    'WAVELENGTH_RANGE'
    """
    flux = np.asarray(flux, dtype=np.float64)
    ivar = np.asarray(ivar, dtype=np.float64)
    usable = np.isfinite(flux) & (ivar > 0) & ((np.asarray(mask) & ~np.uint32(SpecMask.CAMERA_OVERLAP)) == 0)
    bits = np.zeros(flux.shape[0], np.uint32)
    nusable = usable.sum(axis=1)
    bits[(nusable > 0) & (nusable < MIN_USABLE_PIXELS)] |= np.uint32(IngestWarn.FEW_PIXELS)
    low, high = WAVELENGTH_RANGE
    if np.size(wavelength) and (np.min(wavelength) < low or np.max(wavelength) > high):
        bits |= np.uint32(IngestWarn.WAVELENGTH_RANGE)
    rows = np.flatnonzero(nusable > 0)
    if rows.size:
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            sigma = np.where(usable[rows], 1.0 / np.sqrt(np.where(usable[rows], ivar[rows], 1.0)), np.nan)
            limit = MAX_FLUX_SIGMA * np.nanmedian(sigma, axis=1)
            extreme = (usable[rows] & (np.abs(flux[rows]) > limit[:, None])).any(axis=1)
        bits[rows[extreme]] |= np.uint32(IngestWarn.EXTREME_FLUX)
    return bits


def make_spectra_dataset(
    wavelength: np.ndarray,
    flux: np.ndarray,
    ivar: np.ndarray,
    *,
    source_file: str | PathLike[str],
    reader: str,
    mask: np.ndarray | None = None,
    medium_original: Medium = "vacuum",
    flux_scale: float = 1.0,
    grid_name: str | None = None,
    coords: Mapping[str, np.ndarray] | None = None,
    attrs: Mapping[str, Any] | None = None,
    extra_vars: Mapping[str, tuple[tuple[str, ...], np.ndarray]] | None = None,
) -> xr.Dataset:
    """Build a canonical, NumPy-backed spectra Dataset from arrays, flagging every bad value.

    Parameters
    ----------
    wavelength
        Vacuum wavelengths in Angstrom, shape ``(nwave,)``, strictly increasing.
    flux, ivar
        Arrays of shape ``(nspec, nwave)`` (or ``(nwave,)`` for one spectrum), flux already in
        :data:`FLUX_UNIT` (``flux_scale`` records the factor the reader applied).
    source_file
        The input file; every message names it.
    reader
        Name of the reader that produced the arrays.
    mask
        Optional uint32 :class:`SpecMask` bits already known (e.g. INSTRUMENT).
    medium_original
        The medium the file's wavelengths were in before conversion to vacuum.
    grid_name
        Name of the wavelength grid; spectra are stored in the group ``spectra/<grid_name>``.
    coords
        Per-spectrum coordinates: any of :data:`SPECTRUM_COORDS` plus numeric extras.
    attrs
        Extra global attributes (e.g. ``{"survey_release": "edr"}``).
    extra_vars
        Extra variables with a leading ``spectrum`` dim (e.g. DESI ``resolution``).

    Returns
    -------
    xarray.Dataset
        Dims ``(spectrum, wavelength)``; see the module docstring.

    Raises
    ------
    InputError
        Wavelengths not 1-D, not finite or not increasing; flux/ivar shapes that disagree.

    Warns
    -----
    BadSpectrumWarning
        Once per kind of problem per file, naming the rows: NaN/inf flux, bad ivar, spectra with no data, and
        the :func:`suspect_spectra` checks (too few usable pixels, wavelengths outside 900-30000 A, extreme flux),
        these three with the rows' targetids.

    Examples
    --------
    >>> import numpy as np
    >>> ds = make_spectra_dataset(np.linspace(5000.0, 5011.0, 12), np.ones((2, 12)), np.ones((2, 12)),
    ...                           source_file="toy.npz", reader="generic")
    >>> ds.sizes["spectrum"], ds.flux.dtype.name, ds.attrs["schema_version"]
    (2, 'float32', 1)
    """
    path = str(source_file)
    wavelength = _check_wavelength(path, wavelength)
    flux = np.atleast_2d(np.asarray(flux))
    ivar = np.atleast_2d(np.asarray(ivar))
    if flux.ndim != 2 or flux.shape != ivar.shape:
        raise InputError(path, f"flux shape {flux.shape} and ivar shape {ivar.shape} differ")
    if flux.shape[1] != wavelength.size:
        raise InputError(
            path, f"flux has {flux.shape[1]} pixels per spectrum but there are {wavelength.size} wavelengths"
        )
    nspec = flux.shape[0]
    pixel_mask = np.zeros(flux.shape, np.uint32) if mask is None else np.atleast_2d(mask).astype(np.uint32)
    if pixel_mask.shape != flux.shape:
        raise InputError(path, f"mask shape {pixel_mask.shape} differs from flux shape {flux.shape}")

    flux = flux.astype(np.float32)  # copies: the caller's arrays are never modified
    with np.errstate(invalid="ignore", over="ignore"):
        ivar = ivar.astype(np.float32)
    warn_bits = np.zeros(nspec, np.uint32)

    bad_flux = ~np.isfinite(flux)
    bad_ivar = ~np.isfinite(ivar) | (ivar < 0)
    for bad, pixel_bit, spec_bit, what in (
        (bad_flux, SpecMask.NONFINITE_FLUX, IngestWarn.NONFINITE_FLUX, "NaN/inf flux"),
        (bad_ivar, SpecMask.BAD_IVAR, IngestWarn.BAD_IVAR, "negative, NaN or inf ivar"),
    ):
        rows = np.flatnonzero(bad.any(axis=1))
        if rows.size:
            pixel_mask[bad] |= np.uint32(pixel_bit)
            warn_bits[rows] |= np.uint32(spec_bit)
            warnings.warn(
                BadSpectrumWarning(
                    f"{path}: rows {_rows_text(rows)}: {what} in {int(bad.sum())} pixels; "
                    f"ivar set to 0 and mask bit {pixel_bit.name} set"
                ),
                stacklevel=2,
            )
    flux[bad_flux] = 0.0
    ivar[bad_flux | bad_ivar] = 0.0
    ivar[(pixel_mask & SpecMask.INSTRUMENT) != 0] = 0.0
    pixel_mask[ivar == 0] |= np.uint32(SpecMask.NODATA)

    empty = np.flatnonzero(~(ivar > 0).any(axis=1))
    if empty.size:
        warn_bits[empty] |= np.uint32(IngestWarn.EMPTY)
        warnings.warn(
            BadSpectrumWarning(f"{path}: rows {_rows_text(empty)}: no pixel with ivar > 0; kept, flagged EMPTY"),
            stacklevel=2,
        )

    coord_values: dict[str, np.ndarray] = {}
    for name, (dtype, fill) in SPECTRUM_COORDS.items():
        coord_values[name] = np.full(nspec, fill, dtype=dtype)
    coord_values["source_row"] = np.arange(nspec, dtype=np.int32)
    for name, values in (coords or {}).items():
        values = np.asarray(values)
        if values.shape != (nspec,):
            raise InputError(path, f"coordinate {name!r} has shape {values.shape}, expected ({nspec},)")
        if values.dtype.kind not in "biuf":
            raise InputError(path, f"coordinate {name!r} must be numeric, got dtype {values.dtype}")
        dtype = SPECTRUM_COORDS[name][0] if name in SPECTRUM_COORDS else values.dtype
        coord_values[name] = values.astype(dtype)
    suspect = suspect_spectra(wavelength, flux, ivar, pixel_mask)
    for bit, what in (
        (IngestWarn.FEW_PIXELS, f"fewer than {MIN_USABLE_PIXELS} usable pixels (finite flux, ivar > 0, not masked)"),
        (IngestWarn.WAVELENGTH_RANGE, f"wavelengths {wavelength[0]:.6g}-{wavelength[-1]:.6g} A reach outside "
                                      f"{WAVELENGTH_RANGE[0]:g}-{WAVELENGTH_RANGE[1]:g} A (nm or um given as A?)"),
        (IngestWarn.EXTREME_FLUX, f"|flux| above {MAX_FLUX_SIGMA:g} times the median sigma (1/sqrt(ivar))"),
    ):
        rows = np.flatnonzero(suspect & np.uint32(bit))
        if rows.size:
            warnings.warn(
                BadSpectrumWarning(
                    f"{path}: {_rows_targetids_text(rows, coord_values['targetid'])}: {what}; kept, flagged "
                    f"{bit.name} in ingest_warn"
                ),
                stacklevel=2,
            )
    coord_values["ingest_warn"] = coord_values["ingest_warn"] | warn_bits | suspect
    if not (coords and "targetid" in coords):
        coord_values["ingest_warn"] |= np.uint32(IngestWarn.NO_TARGETID)

    data_vars: dict[str, Any] = {
        "flux": (("spectrum", "wavelength"), flux, {"units": FLUX_UNIT}),
        "ivar": (("spectrum", "wavelength"), ivar, {"units": f"({FLUX_UNIT})-2"}),
        "mask": (("spectrum", "wavelength"), pixel_mask, flag_attrs(SpecMask)),
    }
    for name, (dims, values) in (extra_vars or {}).items():
        if dims[0] != "spectrum" or np.shape(values)[0] != nspec:
            raise InputError(path, f"extra variable {name!r} must have a leading spectrum dim of {nspec}")
        data_vars[name] = (dims, values)
    ds = xr.Dataset(
        data_vars,
        coords={
            "wavelength": (
                "wavelength",
                wavelength,
                {"units": "Angstrom", "medium": "vacuum", "frame": "observed"},
            ),
            **{name: ("spectrum", values) for name, values in coord_values.items()},
        },
    )
    ds["survey"].attrs.update(flag_attrs(SURVEYS))
    ds["instrument"].attrs.update(flag_attrs(INSTRUMENTS))
    ds["ingest_warn"].attrs.update(flag_attrs(IngestWarn))
    ds.attrs.update(
        {
            "schema_version": SCHEMA_VERSION,
            "flux_unit": FLUX_UNIT,
            "flux_scale_applied": float(flux_scale),
            "medium_original": medium_original,
            "reader": reader,
            "source_file": path,
            "grid_name": grid_name or default_grid_name(wavelength),
            "dzspec_version": __version__,
        }
    )
    ds.attrs.update(dict(attrs or {}))
    return ds


def default_grid_name(wavelength: np.ndarray) -> str:
    """A readable, collision-safe name for a wavelength grid: range, size and a hash of the values.

    Examples
    --------
    >>> default_grid_name(np.linspace(4750.0, 9350.0, 3681))[:20]
    'lin-4750.0-9350.0-36'
    """
    wavelength = np.ascontiguousarray(wavelength, dtype=np.float64)
    steps = np.diff(wavelength)
    kind = "lin" if steps.size and np.allclose(steps, steps[0], rtol=1e-6) else "grid"
    digest = hashlib.sha256(wavelength.tobytes()).hexdigest()[:8]
    return f"{kind}-{wavelength[0]:.1f}-{wavelength[-1]:.1f}-{wavelength.size}-{digest}"
