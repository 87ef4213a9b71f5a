"""The generic reader (lowest priority): wavelength + flux + uncertainty arrays in FITS, ``.npz`` or HDF5.

Accepted layouts, with array names matched case-insensitively against aliases:

* **FITS binary table**: the first table HDU that has a wavelength and a flux column. Scalar columns make one
  spectrum (rows are pixels); array columns make one spectrum per row (ESO Phase 3 / LEGA-C style).
* **FITS images**: HDUs named ``WAVE``/``WAVELENGTH``/... + ``FLUX`` + ``IVAR``/``VAR``/``ERR``/...
* **npz** / **HDF5**: arrays (HDF5 datasets at any depth, matched by their last path component).

Aliases: wavelength ``wave, wavelength, lambda, lam, loglam`` (``loglam`` is log10 Angstrom); flux ``flux``;
uncertainty ``ivar`` | ``var, variance`` | ``err, error, sigma, noise`` (and ``fluxerror``-like spellings), turned
into ivar; optional ``mask`` (also ``qual``, ``quality``, ``dq``, ``and_mask``: nonzero = bad, SpecMask.INSTRUMENT),
``targetid``, ``z_true`` (or ``z``), ``exptime``, ``ra``, ``dec``.

Flux may be 1-D (one spectrum) or 2-D (rows are spectra). The wavelength is 1-D and shared; a 2-D wavelength is
accepted only when all its rows are equal (dzspec never resamples).

Pixels the file already marks bad (nonzero mask) are taken as "no data": their ivar is set to 0 and NaN flux to 0
without a warning. Every other NaN/inf flux and invalid uncertainty is flagged and reported by
:func:`dzspec.schema.make_spectra_dataset`.

The helpers it shares with the other readers live in :mod:`dzspec.io.fits` and :mod:`dzspec.io.units`.
"""

from __future__ import annotations

import zipfile
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from dzspec.errors import InputError
from dzspec.io.fits import open_fits
from dzspec.io.registry import FileProbe, register_reader
from dzspec.io.units import flux_scale_from_unit, grid_attrs, medium_from_text, wavelength_factor_from_unit
from dzspec.kernels.airvac import air_to_vacuum
from dzspec.schema import INSTRUMENTS, SURVEYS, SpecMask, code_of, make_spectra_dataset

__all__ = ["identify_generic", "read_generic"]

WAVE_ALIASES = ("wave", "wavelength", "lambda", "lam", "loglam")
FLUX_ALIASES = ("flux",)
IVAR_ALIASES = ("ivar", "inverse_variance", "invvar")
VAR_ALIASES = ("var", "variance")
ERR_ALIASES = (
    "err", "error", "sigma", "noise", "fluxerr", "flux_err", "fluxerror", "flux_error", "err_flux", "error_flux",
)  # fmt: skip
MASK_ALIASES = ("mask", "qual", "quality", "dq", "and_mask")
COORD_ALIASES: dict[str, tuple[str, ...]] = {
    "targetid": ("targetid",),
    "z_true": ("z_true", "z"),
    "exptime": ("exptime",),
    "ra": ("ra",),
    "dec": ("dec",),
}

# ---------------------------------------------------------------------------------------------------------------
# Collected arrays
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class _Found:
    """What a layout parser found in a file, before checks and unit conversion."""

    wave: np.ndarray
    wave_name: str
    wave_key: str
    flux: np.ndarray
    flux_name: str
    unc: np.ndarray | None = None
    unc_name: str = ""
    unc_kind: str = ""  # ivar | var | err
    mask: np.ndarray | None = None
    mask_name: str = ""
    coords: dict[str, Any] = field(default_factory=dict)
    wave_unit: str | None = None
    flux_unit: str | None = None
    medium: str | None = None
    medium_source: str = ""
    frame: str | None = None
    instrument: str | None = None
    attrs: dict[str, Any] = field(default_factory=dict)


def _pick(names: Collection[str], aliases: tuple[str, ...]) -> str | None:
    """The first alias present among lower-case ``names``."""
    return next((alias for alias in aliases if alias in names), None)


def _pick_uncertainty(names: Collection[str]) -> tuple[str | None, str]:
    for kind, aliases in (("ivar", IVAR_ALIASES), ("var", VAR_ALIASES), ("err", ERR_ALIASES)):
        name = _pick(names, aliases)
        if name is not None:
            return name, kind
    return None, ""


def _text(value: Any) -> str:
    value = np.asarray(value)
    item = value.item() if value.size == 1 else value
    return item.decode() if isinstance(item, bytes) else str(item)


def _header_medium(*headers: Any) -> tuple[str | None, str]:
    for header in headers:
        if header is None:
            continue
        for key in ("AIRORVAC", "VACUUM", "CTYPE1"):
            if key in header:
                medium = medium_from_text(header[key])
                if medium is not None:
                    return medium, f"header {key}={header[key]!r}"
    return None, ""


def _header_frame(*headers: Any) -> str | None:
    for header in headers:
        if header is None:
            continue
        if str(header.get("SPECSYS", "")).strip().upper() == "SOURCE":  # FITS WCS III: source rest frame
            return "rest"
        frame = str(header.get("FRAME", "")).strip().lower()
        if frame in ("rest", "observed"):
            return frame
    return None


def _header_coords(*headers: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, keys in (("ra", ("RA",)), ("dec", ("DEC",)), ("exptime", ("EXPTIME",)), ("targetid", ("TARGETID",))):
        for header in headers:
            if header is None or name in out:
                continue
            for key in keys:
                value = header.get(key)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    out[name] = value
                    break
    return out


def _from_fits(path: Path) -> _Found:
    with open_fits(path) as hdul:
        primary = hdul[0].header
        frame = "rest" if any(h.name.upper() == "STACKINFO" for h in hdul) else None
        instrument = str(primary.get("INSTRUME", "")).strip().lower() or None
        # (a) the first table with a wavelength and a flux column
        for hdu in hdul[1:]:
            if not hasattr(hdu, "columns"):
                continue
            columns = {c.name.strip().lower(): c for c in hdu.columns}
            wave_key, flux_key = _pick(columns, WAVE_ALIASES), _pick(columns, FLUX_ALIASES)
            if wave_key is None or flux_key is None:
                continue
            data = hdu.data
            if data is None or len(data) == 0:
                raise InputError(path, f"table HDU {hdu.name or hdu.ver} has no rows")
            unc_key, unc_kind = _pick_uncertainty(columns)
            mask_key = _pick(columns, MASK_ALIASES)

            def col(key: str, data: Any = data, columns: dict[str, Any] = columns) -> np.ndarray:
                return np.array(data[columns[key].name])  # a copy out of the memmap

            found = _Found(
                wave=col(wave_key), wave_name=f"column {columns[wave_key].name}", wave_key=wave_key,
                flux=col(flux_key), flux_name=f"column {columns[flux_key].name}",
                unc=None if unc_key is None else col(unc_key),
                unc_name="" if unc_key is None else f"column {columns[unc_key].name}", unc_kind=unc_kind,
                mask=None if mask_key is None else col(mask_key),
                mask_name="" if mask_key is None else f"column {columns[mask_key].name}",
                wave_unit=columns[wave_key].unit, flux_unit=columns[flux_key].unit or hdu.header.get("BUNIT"),
                frame=frame or _header_frame(hdu.header, primary), instrument=instrument,
            )  # fmt: skip
            # ESO Phase 3 / IVOA: a UCD "em.wl;obs.atmos" marks air wavelengths
            ucd = str(hdu.header.get(f"TUCD{list(columns).index(wave_key) + 1}", ""))
            if "obs.atmos" in ucd:
                found.medium, found.medium_source = "air", f"wavelength UCD {ucd!r}"
            else:
                found.medium, found.medium_source = _header_medium(hdu.header, primary)
            if found.flux.ndim >= 2:  # one spectrum per row: scalar columns give per-spectrum coordinates
                for name, aliases in COORD_ALIASES.items():
                    key = _pick(columns, aliases)
                    if key is not None and np.ndim(data[columns[key].name]) == 1:
                        found.coords[name] = col(key)
            if found.flux.ndim == 1 or len(data) == 1:  # one spectrum: the header describes it
                for name, value in _header_coords(hdu.header, primary).items():
                    found.coords.setdefault(name, value)
            _copy_header_attrs(found, hdu.header, primary)
            return found
        # (b) image HDUs named after the aliases
        images = {h.name.strip().lower(): h for h in hdul if not hasattr(h, "columns") and h.name}
        wave_key, flux_key = _pick(images, WAVE_ALIASES), _pick(images, FLUX_ALIASES)
        if wave_key is None or flux_key is None:
            raise InputError(path, "no table with wavelength and flux columns and no WAVE + FLUX image HDUs")
        unc_key, unc_kind = _pick_uncertainty(images)
        mask_key = _pick(images, MASK_ALIASES)
        image = lambda key: np.array(images[key].data)  # noqa: E731
        found = _Found(
            wave=image(wave_key), wave_name=f"HDU {images[wave_key].name}", wave_key=wave_key,
            flux=image(flux_key), flux_name=f"HDU {images[flux_key].name}",
            unc=None if unc_key is None else image(unc_key),
            unc_name="" if unc_key is None else f"HDU {images[unc_key].name}", unc_kind=unc_kind,
            mask=None if mask_key is None else image(mask_key),
            mask_name="" if mask_key is None else f"HDU {images[mask_key].name}",
            wave_unit=images[wave_key].header.get("BUNIT") or images[wave_key].header.get("CUNIT1"),
            flux_unit=images[flux_key].header.get("BUNIT"),
            frame=frame or _header_frame(images[flux_key].header, primary), instrument=instrument,
        )  # fmt: skip
        found.medium, found.medium_source = _header_medium(images[wave_key].header, primary)
        for name, aliases in COORD_ALIASES.items():
            key = _pick(images, aliases)
            if key is not None:
                found.coords[name] = image(key)
        if np.ndim(found.flux) == 1 or np.shape(found.flux)[0] == 1:
            for name, value in _header_coords(images[flux_key].header, primary).items():
                found.coords.setdefault(name, value)
        _copy_header_attrs(found, images[flux_key].header, primary)
        return found


def _copy_header_attrs(found: _Found, *headers: Any) -> None:
    for header in headers:
        if "SPECSYS" in header and "specsys" not in found.attrs:
            found.attrs["specsys"] = str(header["SPECSYS"]).strip()


def _from_mapping(arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any], path: Path) -> _Found:
    """npz / HDF5: ``arrays`` maps lower-case names to arrays (loaded lazily via __getitem__)."""
    wave_key, flux_key = _pick(arrays, WAVE_ALIASES), _pick(arrays, FLUX_ALIASES)
    if wave_key is None or flux_key is None:
        raise InputError(path, f"needs a wavelength ({'/'.join(WAVE_ALIASES)}) and a flux array; has {sorted(arrays)}")
    unc_key, unc_kind = _pick_uncertainty(arrays)
    mask_key = _pick(arrays, MASK_ALIASES)
    found = _Found(
        wave=np.asarray(arrays[wave_key]), wave_name=f"array {wave_key!r}", wave_key=wave_key,
        flux=np.asarray(arrays[flux_key]), flux_name=f"array {flux_key!r}",
        unc=None if unc_key is None else np.asarray(arrays[unc_key]),
        unc_name=f"array {unc_key!r}", unc_kind=unc_kind,
        mask=None if mask_key is None else np.asarray(arrays[mask_key]), mask_name=f"array {mask_key!r}",
    )  # fmt: skip
    for name, aliases in COORD_ALIASES.items():
        key = _pick(arrays, aliases)
        if key is not None:
            found.coords[name] = np.asarray(arrays[key])
    text = {**{k: v for k, v in attrs.items()}, **{k: arrays[k] for k in ("medium", "frame", "flux_unit", "bunit")
                                                   if k in arrays}}  # fmt: skip
    if "medium" in text:
        found.medium = medium_from_text(_text(text["medium"]))
        if found.medium is None:
            raise InputError(path, f"cannot interpret medium {_text(text['medium'])!r} (expected air or vacuum)")
        found.medium_source = "key 'medium'"
    if "frame" in text:
        found.frame = _text(text["frame"]).strip().lower()
    for key in ("flux_unit", "bunit"):
        if key in text:
            found.flux_unit = _text(text[key])
            break
    return found


class _LazyNpz(Mapping[str, np.ndarray]):
    def __init__(self, handle: Any):
        self._handle = handle
        self._names = {name.lower(): name for name in handle.files}

    def __getitem__(self, key: str) -> np.ndarray:
        return self._handle[self._names[key]]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def _from_npz(path: Path) -> _Found:
    try:
        with np.load(path, allow_pickle=False) as handle:
            return _from_mapping(_LazyNpz(handle), {}, path)
    except InputError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(path, f"unreadable npz file ({type(exc).__name__}: {exc})") from exc


def _from_hdf5(path: Path) -> _Found:
    try:
        import h5py
    except ImportError as exc:  # pragma: no cover - optional dependency
        raise InputError(path, "HDF5 input needs h5py: pip install 'dzspec[hdf5]'") from exc
    try:
        with h5py.File(path, "r") as handle:
            datasets: dict[str, str] = {}
            duplicates: set[str] = set()

            def visit(name: str, obj: Any) -> None:
                if isinstance(obj, h5py.Dataset):
                    base = name.rsplit("/", 1)[-1].lower()
                    if base in datasets:
                        duplicates.add(base)
                    datasets.setdefault(base, name)

            handle.visititems(visit)
            wanted = set(WAVE_ALIASES + FLUX_ALIASES + IVAR_ALIASES + VAR_ALIASES + ERR_ALIASES + MASK_ALIASES)
            clash = sorted(duplicates & wanted)
            if clash:
                raise InputError(path, f"ambiguous HDF5 layout: several datasets named {clash}")
            arrays = {base: handle[full][()] for base, full in datasets.items()}
            attrs = {str(k).lower(): v for k, v in handle.attrs.items()}
            flux_key = _pick(arrays, FLUX_ALIASES)
            if flux_key is not None:
                for key in ("units", "unit", "bunit"):
                    if key in handle[datasets[flux_key]].attrs:
                        attrs.setdefault("flux_unit", handle[datasets[flux_key]].attrs[key])
            return _from_mapping(arrays, attrs, path)
    except InputError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(path, f"unreadable HDF5 file ({type(exc).__name__}: {exc})") from exc


# ---------------------------------------------------------------------------------------------------------------
# Assembly
# ---------------------------------------------------------------------------------------------------------------


def _shared_wavelength(path: Path, found: _Found, nspec: int, npix: int) -> np.ndarray:
    wave = np.asarray(found.wave, dtype=np.float64)
    if wave.ndim == 2:
        if wave.shape[0] not in (1, nspec):
            raise InputError(path, f"{found.wave_name} has {wave.shape[0]} rows but there are {nspec} spectra")
        differs = np.flatnonzero(~np.all((wave == wave[0]) | (np.isnan(wave) & np.isnan(wave[0])), axis=1))
        if differs.size:
            raise InputError(
                path,
                f"{found.wave_name} differs from row 0: every spectrum of a file must share one wavelength grid "
                "(dzspec does not resample)",
                row=int(differs[0]),
            )
        wave = wave[0]
    if wave.ndim != 1:
        raise InputError(path, f"{found.wave_name} must be 1-D (or 2-D with equal rows), got shape {wave.shape}")
    if wave.size != npix:
        raise InputError(
            path, f"length mismatch: {found.wave_name} has {wave.size} values but {found.flux_name} has {npix} pixels"
        )
    return wave


def _ivar_from(found: _Found, path: Path, shape: tuple[int, ...]) -> np.ndarray:
    if found.unc is None:
        raise InputError(path, "no uncertainty array (ivar, var/variance or err/error/sigma/noise)")
    unc = np.asarray(found.unc, dtype=np.float64)
    if unc.ndim == 1 and len(shape) == 2 and shape[0] == 1:
        unc = unc[None, :]
    if unc.shape != shape:
        raise InputError(
            path, f"length mismatch: {found.unc_name} has shape {unc.shape} but {found.flux_name} has {shape}"
        )
    if found.unc_kind == "ivar":
        return unc
    # A nonpositive or non-finite variance/error becomes NaN ivar, which make_spectra_dataset flags as BAD_IVAR.
    valid = np.isfinite(unc) & (unc > 0)
    var = unc if found.unc_kind == "var" else unc * unc
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return np.where(valid, 1.0 / var, np.nan)


def _coords(path: Path, found: _Found, nspec: int) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name, value in found.coords.items():
        array = np.asarray(value)
        if array.ndim == 0 or array.size == 1:
            array = np.full(nspec, array.reshape(-1)[0])
        if array.shape != (nspec,):
            raise InputError(path, f"length mismatch: {name!r} has shape {array.shape}, expected ({nspec},)")
        if array.dtype.kind not in "biuf":
            raise InputError(path, f"{name!r} must be numeric, got {array.dtype}")
        out[name] = array
    return out


def read_generic(
    path: str | PathLike[str],
    *,
    medium: str | None = None,
    flux_scale: float | None = None,
    frame: str | None = None,
    survey: str = "unknown",
    instrument: str | None = None,
) -> xr.Dataset:
    """Read a generic FITS / npz / HDF5 spectra file (see the module docstring for the layouts).

    Parameters
    ----------
    path
        The file.
    medium
        ``"vacuum"`` or ``"air"`` (air is converted to vacuum). Default: from the file (header ``AIRORVAC``,
        ``VACUUM`` or ``CTYPE1``, a wavelength UCD ``obs.atmos``, an npz/HDF5 ``medium`` entry), else vacuum with
        ``attrs["medium_assumed"] = True``.
    flux_scale
        Factor turning the file's flux into 1e-17 erg/s/cm2/A. Default: from the flux unit (BUNIT, TUNIT, a
        ``flux_unit`` entry), else 1.0 with ``attrs["flux_unit_assumed"] = True``.
    frame
        ``"observed"`` or ``"rest"``. Default: ``"rest"`` for DESI stacks (a ``STACKINFO`` HDU), a
        ``SPECSYS = 'SOURCE'`` or ``FRAME`` keyword, or a ``frame`` entry; else ``"observed"``.
    survey, instrument
        Codes from :data:`~dzspec.schema.SURVEYS` / :data:`~dzspec.schema.INSTRUMENTS`. The instrument defaults
        to the header ``INSTRUME`` when it is a known code, else ``"unknown"``.

    Returns
    -------
    xarray.Dataset
        The canonical spectra Dataset (reader ``"generic"``).

    Raises
    ------
    InputError
        Unreadable file, no wavelength/flux/uncertainty, lengths that disagree (naming the arrays), 2-D wavelength
        rows that differ (naming the row), unparseable flux unit, non-increasing wavelengths.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> name = tempfile.mkdtemp() + "/toy.npz"
    >>> np.savez(name, wave=np.linspace(5000.0, 5010.0, 11), flux=np.ones((2, 11)), ivar=np.ones((2, 11)),
    ...          targetid=[7, 8], medium="vacuum")
    >>> ds = read_generic(name, survey="simulated")
    >>> ds.sizes["spectrum"], int(ds.targetid[1]), ds.attrs["reader"]
    (2, 8, 'generic')
    """
    path = Path(path)
    if medium is not None and medium_from_text(medium) is None:
        raise ValueError(f"medium must be 'vacuum' or 'air', not {medium!r}")
    if frame is not None and frame not in ("observed", "rest"):
        raise ValueError(f"frame must be 'observed' or 'rest', not {frame!r}")
    survey_code = code_of(survey, SURVEYS)
    kind = FileProbe(path).kind
    if kind == "fits":
        found = _from_fits(path)
    elif kind == "npz":
        found = _from_npz(path)
    elif kind == "hdf5":
        found = _from_hdf5(path)
    else:
        raise InputError(path, "not a FITS, npz or HDF5 file")

    flux = np.asarray(found.flux, dtype=np.float64)
    if flux.ndim == 1:
        flux = flux[None, :]
    if flux.ndim != 2 or flux.shape[1] == 0:
        raise InputError(path, f"{found.flux_name} must be 1-D or 2-D (spectra x pixels), got shape {flux.shape}")
    nspec, npix = flux.shape
    wave = _shared_wavelength(path, found, nspec, npix)
    ivar = _ivar_from(found, path, flux.shape)

    pixel_mask = None
    if found.mask is not None:
        bad = np.asarray(found.mask)
        if bad.ndim == 1 and nspec == 1:
            bad = bad[None, :]
        if bad.shape != flux.shape:
            raise InputError(
                path, f"length mismatch: {found.mask_name} has shape {bad.shape} but {found.flux_name} has {flux.shape}"
            )
        bad = bad != 0
        pixel_mask = np.where(bad, np.uint32(SpecMask.INSTRUMENT), np.uint32(0))
        # Pixels the file already flags are "no data", not news: no NaN/BAD_IVAR report for them.
        flux[bad & ~np.isfinite(flux)] = 0.0
        ivar[bad] = 0.0

    try:
        factor = wavelength_factor_from_unit(found.wave_unit)
    except ValueError as exc:
        raise InputError(path, f"{found.wave_name}: {exc}") from None
    wave = 10.0**wave if found.wave_key == "loglam" else wave * factor

    attrs: dict[str, Any] = dict(found.attrs)
    medium_used = medium_from_text(medium) if medium is not None else found.medium
    if medium_used is None:
        medium_used = "vacuum"
        attrs["medium_assumed"] = True
    if medium_used == "air":
        wave = np.asarray(air_to_vacuum(wave), dtype=np.float64)

    if flux_scale is None:
        try:
            flux_scale = flux_scale_from_unit(found.flux_unit)
        except ValueError as exc:
            raise InputError(path, f"flux unit: {exc}; pass flux_scale= to override") from None
        if flux_scale is None:
            flux_scale = 1.0
            attrs["flux_unit_assumed"] = True
    if found.flux_unit:
        attrs["flux_unit_original"] = str(found.flux_unit)
    flux = flux * flux_scale
    ivar = ivar / flux_scale**2

    frame_used = frame or found.frame or "observed"
    attrs["frame"] = frame_used
    if instrument is None:
        instrument = found.instrument if found.instrument in INSTRUMENTS else "unknown"
    coords = _coords(path, found, nspec)
    coords["survey"] = np.full(nspec, survey_code, np.int8)
    coords["instrument"] = np.full(nspec, code_of(instrument, INSTRUMENTS), np.int8)

    ds = make_spectra_dataset(
        wave, flux, ivar, source_file=path, reader="generic", mask=pixel_mask,
        medium_original=medium_used, flux_scale=flux_scale, coords=coords, attrs=attrs,
    )  # fmt: skip
    ds["wavelength"].attrs.update({**grid_attrs(ds["wavelength"].values), "frame": frame_used})
    return ds


def identify_generic(probe: FileProbe) -> bool:
    """True for FITS/npz/HDF5 files that hold a wavelength and a flux array under the accepted names."""
    if probe.kind == "fits":
        for hdu in probe.hdus:
            columns = {c.lower() for c in hdu.columns}
            if hdu.is_table and _pick(columns, WAVE_ALIASES) and _pick(columns, FLUX_ALIASES):
                return True
        names = {h.name.lower() for h in probe.hdus if not h.is_table}
        return bool(_pick(names, WAVE_ALIASES) and _pick(names, FLUX_ALIASES))
    if probe.kind in ("npz", "hdf5"):
        names = {key.rsplit("/", 1)[-1] for key in probe.keys}
        return bool(_pick(names, WAVE_ALIASES) and _pick(names, FLUX_ALIASES))
    return False


register_reader(
    "generic",
    identify_generic,
    read_generic,
    priority=-100,
    description="wavelength + flux + ivar/var/err arrays in a FITS table or images, npz or HDF5",
)
