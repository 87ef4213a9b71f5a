"""specutils in and out: ``Spectrum`` / ``SpectrumCollection`` / ``SpectrumList`` to canonical spectra and stores.

specutils is how spectra arrive from archives and astroquery; this bridge turns them into dzspec's canonical
spectra (:func:`datasets_from_specutils`, one Dataset per wavelength grid, built by
:func:`~dzspec.schema.make_spectra_dataset` like every reader's output), writes them into a store
(:func:`from_specutils`, one spectra group per grid with the store functions :func:`dzspec.ingest` uses) and reads
stored rows back as a ``Spectrum`` (:func:`to_specutils`). specutils is an optional dependency (``pip install
dzspec[specutils]``), imported only when one of these functions runs; specutils >= 2 names the class ``Spectrum``,
older releases ``Spectrum1D``: both work.

Conversions (astropy units throughout):

* **wavelength** -> vacuum Angstrom, through :func:`astropy.units.spectral` (a frequency or wavenumber axis works,
  and a decreasing axis is reversed). The medium: ``medium="air"`` or ``"vacuum"``, else (``"auto"``) the
  ``medium`` that :func:`to_specutils` recorded, a FITS WCS ``CTYPE`` (``AWAV``/``WAVE``) or header
  ``AIRORVAC``/``VACUUM``/``CTYPE1``, MUSE's air for a MUSE spectrum (header ``INSTRUME``, or ``survey="muse"``),
  else vacuum (recorded as assumed). Air is converted with :func:`dzspec.kernels.airvac.air_to_vacuum`;
* **the grid's name** (the spectra group, which also chooses the shipped model and the noise default of
  ``zfind``/``lae``): the one :func:`to_specutils` recorded, if the wavelengths are still those; a grid within
  1e-4 Angstrom of one dzspec knows (the simulators' MUSE grid, DESI's merged b+r+z grid) takes that grid's exact
  values and name; a MUSE spectrum (header ``INSTRUME``, ``survey="muse"``, or a linear 1.25 Angstrom axis inside
  4500-9400 Angstrom, which is then taken to be MUSE's and in air unless said otherwise) on a linear axis is named
  and valued as :mod:`dzspec.io.muse` names a file's grid (``muse-air2vac-<start>-<step>-<n>``), so it joins the
  group an ingest of MUSE files makes; any other grid gets :func:`grid_name_for`'s name;
* **flux** -> :data:`~dzspec.schema.FLUX_UNIT` (1e-17 erg s-1 cm-2 Angstrom-1), with
  :func:`astropy.units.spectral_density` at each pixel's vacuum wavelength (Jy, erg/s/cm2/Hz, W/m2/um,
  photon fluxes ...); a flux with no physical unit needs ``flux_unit=``;
* **uncertainty**: ``StdDevUncertainty``, ``VarianceUncertainty`` or ``InverseVariance`` -> ivar in the flux unit's
  inverse square (their own unit when they carry one, else the flux's); a zero, negative or NaN sigma/variance is
  a bad value (ivar 0, mask BAD_IVAR, a warning), an infinite one means no data. A spectrum without uncertainty is
  an error unless ``missing_uncertainty="estimate"``: then each spectrum gets one sigma, the robust scatter of its
  pixel-to-pixel differences (``1.4826 MAD(diff) / sqrt(2)``), and the Dataset's ``ivar_estimated`` attribute says
  so;
* **mask** (True or nonzero = bad) -> ivar 0 and mask bit ``INSTRUMENT`` (as the generic reader does with a file's
  mask); the ``dzspec_mask`` bits that :func:`to_specutils` puts in ``meta`` come back exactly;
* **per-spectrum coordinates**: ``meta`` entries named like :data:`~dzspec.schema.SPECTRUM_COORDS` (any case;
  scalars apply to every spectrum of the object, except ``targetid``), the FITS header in ``meta["header"]``
  (``RA``, ``DEC``, ``EXPTIME``, ``TARGETID``), the DESI ``FIBERMAP`` table that specutils' DESI loaders put in
  ``meta["fibermap"]`` (``TARGETID``, ``TARGET_RA``, ``TARGET_DEC``, ``COADD_EXPTIME``) and, from
  :func:`to_specutils`, every stored coordinate; ``coords=`` overrides them all.

Spectra are never resampled or merged: specutils' DESI coadd loader returns one ``Spectrum`` per camera, which
become three groups here (``dzspec ingest`` of the FITS file merges the cameras on DESI's wavelength lattice).

Examples
--------
>>> import tempfile, numpy as np, astropy.units as u
>>> from astropy.nddata import StdDevUncertainty
>>> from dzspec.io.specutils_bridge import from_specutils, spectrum_class, to_specutils
>>> wave = np.linspace(5000.0, 6000.0, 201) * u.AA
>>> fnu = np.full((2, 201), 1e-28) * u.erg / u.s / u.cm**2 / u.Hz
>>> spec = spectrum_class()(flux=fnu, spectral_axis=wave, uncertainty=StdDevUncertainty(fnu.value / 10),
...                         meta={"targetid": np.array([11, 12])})
>>> store = tempfile.mkdtemp() + "/s.zarr"
>>> rows = from_specutils(spec, store, medium="vacuum")
>>> back = to_specutils(store)
>>> back.flux.shape, back.flux.unit.to_string(), back.meta["targetid"].tolist()
((2, 201), '1e-17 erg / (Angstrom s cm2)', [11, 12])
>>> round(float(back.flux[0, 0].value), 4)  # 1e-28 erg/s/cm2/Hz at 5000 A: c / lambda^2 = 1.199e-17 per A
1.1992
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from os import PathLike
from typing import Any, Literal

import numpy as np
import xarray as xr

from dzspec.io import store as zstore
from dzspec.io.bases import array_sha256
from dzspec.io.units import grid_attrs, medium_from_text
from dzspec.kernels.airvac import air_to_vacuum
from dzspec.schema import (
    FLUX_UNIT,
    SPECTRUM_COORDS,
    SURVEYS,
    SpecMask,
    code_of,
    default_grid_name,
    make_spectra_dataset,
)

__all__ = [
    "datasets_from_specutils",
    "flux_unit",
    "from_specutils",
    "grid_name_for",
    "spectrum_class",
    "to_specutils",
]

Medium = Literal["auto", "vacuum", "air"]
MissingUncertainty = Literal["raise", "estimate"]

#: Wavelengths within this many Angstrom of a known grid take its exact values (as the DESI reader's lattice check).
_KNOWN_GRID_TOLERANCE = 1e-4
#: Coordinates set by the store or by make_spectra_dataset, never taken from ``meta``.
_OWN_COORDS = ("source_row", "source_file")
#: The ``meta`` key of :func:`to_specutils`'s provenance (store, group, rows, grid, medium, coordinate names).
META_KEY = "dzspec"
#: The ``meta`` key of the stored mask bits (:class:`~dzspec.schema.SpecMask`).
MASK_META_KEY = "dzspec_mask"


def _specutils() -> Any:
    try:
        import specutils
    except ImportError as exc:  # pragma: no cover - specutils is in the test extra
        raise ImportError("the specutils bridge needs specutils: pip install 'dzspec[specutils]'") from exc
    return specutils


def spectrum_class() -> type:
    """specutils' spectrum class: ``Spectrum`` (specutils >= 2) or ``Spectrum1D`` (older).

    Examples
    --------
    >>> spectrum_class().__name__ in ("Spectrum", "Spectrum1D")
    True
    """
    specutils = _specutils()
    return getattr(specutils, "Spectrum", None) or specutils.Spectrum1D


def flux_unit() -> Any:
    """:data:`~dzspec.schema.FLUX_UNIT` as an astropy unit.

    Examples
    --------
    >>> flux_unit().to_string()
    '1e-17 erg / (Angstrom s cm2)'
    """
    import astropy.units as u

    return u.Unit(1e-17 * u.erg / u.s / u.cm**2 / u.AA)


# ---------------------------------------------------------------------------------------------------------------
# Grids
# ---------------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _known_grids() -> dict[str, np.ndarray]:
    from dzspec.kernels.simulate.desi import DESI_GRID_NAME, desi_wavelength
    from dzspec.kernels.simulate.muse import MUSE_GRID_NAME, muse_wavelength

    return {MUSE_GRID_NAME: muse_wavelength(), DESI_GRID_NAME: desi_wavelength()}


def grid_name_for(wavelength: np.ndarray, survey: str | None = None) -> tuple[str, np.ndarray]:
    """The spectra group name of a vacuum wavelength grid, and the grid's values to store.

    A grid within 1e-4 Angstrom of one dzspec knows (``muse-air2vac-4750-1.25-3681``, ``desi-brz-3600-9824-0.8``)
    is that grid, exactly; any other is :func:`~dzspec.schema.default_grid_name`, prefixed by ``survey`` when given
    (``muse-lin-...``), or by ``muse`` when it has MUSE's sampling (1.25 Angstrom pixels to 1 % inside 4500-9400
    Angstrom). The prefix is what chooses the shipped model (:func:`dzspec.models.default_model_for_grid`) and the
    instrument default of the noise calibration for a grid of that instrument.

    Examples
    --------
    >>> from dzspec.kernels.simulate.muse import muse_wavelength
    >>> grid_name_for(muse_wavelength() + 1e-6)[0]
    'muse-air2vac-4750-1.25-3681'
    >>> grid_name_for(np.linspace(5000.0, 6000.0, 11), "muse")[0][:21]
    'muse-lin-5000.0-6000.'
    """
    wave = np.asarray(wavelength, dtype=np.float64)
    for name, grid in _known_grids().items():
        if grid.shape == wave.shape and np.max(np.abs(grid - wave)) <= _KNOWN_GRID_TOLERANCE:
            return name, grid
    if survey is None and _muse_sampled(wave):
        survey = "muse"
    prefix = f"{survey}-" if survey and survey not in ("unknown", "simulated") else ""
    return prefix + default_grid_name(wave), wave


def _muse_sampled(wave: np.ndarray) -> bool:
    """MUSE's sampling: 1.25 Angstrom pixels (to 1 %) inside its 4600-9400 Angstrom range."""
    if wave.size < 100:
        return False
    step = float(np.median(np.diff(wave)))
    return abs(step / 1.25 - 1.0) < 0.01 and wave[0] >= 4500.0 and wave[-1] <= 9400.0


def _muse_grid(wave: np.ndarray, medium: str) -> tuple[str, np.ndarray] | None:
    """The name :func:`dzspec.io.muse.muse_wavelength` gives a linear grid in the file's ``medium`` (Angstrom), and
    its values by that function's arithmetic (``start + i step``), when ``wave`` is such a grid to 1e-4 Angstrom."""
    if wave.size < 2:
        return None
    start = float(f"{wave[0]:.10g}")
    step = float(f"{(wave[-1] - wave[0]) / (wave.size - 1):.10g}")
    exact = start + np.arange(wave.size) * step
    if not np.max(np.abs(exact - wave)) <= _KNOWN_GRID_TOLERANCE:
        return None
    return f"muse-{'air2vac' if medium == 'air' else 'vac'}-{start:.10g}-{step:.10g}-{wave.size}", exact


# ---------------------------------------------------------------------------------------------------------------
# specutils -> canonical spectra
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class _Block:
    """Spectra of one specutils object (or one row of a SpectrumCollection) on one grid, in dzspec's units."""

    wavelength: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    mask: np.ndarray
    coords: dict[str, np.ndarray]
    grid_name: str | None
    medium: str
    medium_assumed: bool
    flux_unit_original: str
    flux_scale: float
    ivar_estimated: bool
    survey: str | None
    index: list[int] = field(default_factory=list)  # positions of its spectra in the input


def _is_spectrum(obj: Any) -> bool:
    return hasattr(obj, "spectral_axis") and hasattr(obj, "flux")


def _pieces(spectra: Any) -> list[tuple[Any, Any | None, int]]:
    """``(object, collection meta selector, row)`` items: a Spectrum is one item (any number of spectra), each row
    of a SpectrumCollection one item, a SpectrumList (or any sequence of them) its elements."""
    specutils = _specutils()
    if isinstance(spectra, specutils.SpectrumCollection):
        return [(spectra, "collection", row) for row in range(len(spectra))]
    if _is_spectrum(spectra):
        return [(spectra, None, -1)]
    if isinstance(spectra, Iterable) and not isinstance(spectra, str | bytes):
        items = []
        for element in spectra:
            if not (_is_spectrum(element) or isinstance(element, specutils.SpectrumCollection)):
                raise TypeError(f"not a specutils spectrum: {type(element).__name__}")
            items += _pieces(element)
        return items
    raise TypeError(f"expected a specutils Spectrum, SpectrumCollection or SpectrumList, not {type(spectra).__name__}")


def _header(meta: Mapping[str, Any]) -> Any:
    header = meta.get("header")
    return header if hasattr(header, "get") else None


def _medium(spectrum: Any, meta: Mapping[str, Any], medium: Medium, survey: str | None) -> tuple[str, bool]:
    if medium != "auto":
        if medium_from_text(medium) is None:
            raise ValueError(f"medium must be 'auto', 'vacuum' or 'air', not {medium!r}")
        return str(medium_from_text(medium)), False
    own = meta.get(META_KEY)
    if isinstance(own, Mapping) and medium_from_text(own.get("medium", "")) is not None:
        return str(medium_from_text(own["medium"])), False
    ctypes = getattr(getattr(getattr(spectrum, "wcs", None), "wcs", None), "ctype", None)
    for ctype in ctypes if ctypes is not None else ():
        found = medium_from_text(str(ctype)[:4])
        if found is not None:
            return found, False
    header = _header(meta)
    if header is not None:
        for key in ("AIRORVAC", "VACUUM", "CTYPE1"):
            if key in header and medium_from_text(header[key]) is not None:
                return str(medium_from_text(header[key])), False
    if survey == "muse":
        return "air", True  # MUSE's pipeline works in air (dzspec.io.muse assumes it too)
    return "vacuum", True


def _survey(meta: Mapping[str, Any], survey: str | None) -> str | None:
    if survey is not None:
        code_of(survey, SURVEYS)  # a clear error for an unknown name
        return survey
    codes = np.atleast_1d(np.asarray(_meta_get(meta, "survey", default=[])))
    if codes.size and codes.dtype.kind in "iu" and np.all(codes == codes[0]) and 0 < int(codes[0]) < len(SURVEYS):
        return SURVEYS[int(codes[0])]
    header = _header(meta)
    instrument = str(header.get("INSTRUME", "")).strip().lower() if header is not None else ""
    return instrument if instrument in SURVEYS and instrument not in ("unknown", "simulated") else None


def _meta_get(meta: Mapping[str, Any], name: str, default: Any = None) -> Any:
    for key, value in meta.items():
        if isinstance(key, str) and key.lower() == name:
            return value
    return default


def _meta_coords(meta: Mapping[str, Any], n: int, row: int, total: int) -> dict[str, np.ndarray]:
    """Per-spectrum coordinates of ``n`` spectra from ``meta`` (row ``row`` of ``total`` for a collection)."""
    own = meta.get(META_KEY)
    names = [*SPECTRUM_COORDS, *(own.get("coords", []) if isinstance(own, Mapping) else [])]
    out: dict[str, np.ndarray] = {}
    header = _header(meta)
    if header is not None:
        for name, key in (("ra", "RA"), ("dec", "DEC"), ("exptime", "EXPTIME"), ("targetid", "TARGETID")):
            value = header.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool) and (name != "targetid" or n == 1):
                out[name] = np.full(n, value)
    fibermap = meta.get("fibermap")  # specutils' DESI loaders keep the FIBERMAP table here
    columns = set(getattr(fibermap, "colnames", ()))
    for name, keys in (("targetid", ("TARGETID",)), ("ra", ("TARGET_RA",)), ("dec", ("TARGET_DEC",)),
                       ("exptime", ("COADD_EXPTIME", "EXPTIME"))):
        key = next((k for k in keys if k in columns), None)
        if key is not None and len(fibermap) == n and row < 0:
            out[name] = np.asarray(fibermap[key])
    for name in dict.fromkeys(names):
        if name in _OWN_COORDS:
            continue
        value = _meta_get(meta, name)
        if value is None:
            continue
        array = np.asarray(value)
        if array.dtype.kind not in "biuf":
            continue
        if array.ndim == 1 and array.size == total and row >= 0:
            array = array[row: row + 1]
        if array.ndim == 0 or array.size == 1:
            if name == "targetid" and n > 1:
                continue  # one targetid for several spectra would make duplicates: not taken
            array = np.full(n, array.reshape(-1)[0])
        if array.shape == (n,):
            out[name] = array
    return out


def _as_2d(values: Any, axis: int, nwave: int) -> np.ndarray:
    array = np.moveaxis(np.asarray(values), axis, -1)
    return array.reshape(-1, nwave)


def _factor(unit: Any, wavelength: np.ndarray, what: str) -> np.ndarray:
    """Per-pixel factor from ``unit`` to FLUX_UNIT at the vacuum ``wavelength`` (Angstrom)."""
    import astropy.units as u

    try:
        return np.broadcast_to((1.0 * unit).to_value(flux_unit(), equivalencies=u.spectral_density(
            wavelength * u.AA)), wavelength.shape).astype(np.float64)
    except u.UnitConversionError:
        raise ValueError(f"{what} in {unit} is not a spectral flux density (per wavelength, frequency, energy; "
                         "photon or energy flux); pass flux_unit= to say what it is") from None


def _ivar(uncertainty: Any, unit: Any, wavelength: np.ndarray, axis: int, overridden: bool) -> np.ndarray:
    """Inverse variance in FLUX_UNIT^-2 of a StdDev, Variance or InverseVariance uncertainty whose parent flux is in
    ``unit`` (its own unit unless ``flux_unit=`` ``overridden`` the flux's): 0 where sigma or the variance is
    infinite, NaN (flagged BAD_IVAR) where it is 0, negative or NaN."""
    from astropy.nddata import InverseVariance, StdDevUncertainty, VarianceUncertainty

    nwave = wavelength.size
    values = _as_2d(uncertainty.array, axis, nwave).astype(np.float64)
    own = None if overridden else uncertainty.unit
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if isinstance(uncertainty, StdDevUncertainty):
            sigma_unit = own or unit
            valid = np.isfinite(values) & (values > 0)
            ivar = np.where(valid, 1.0 / values**2, np.where(values == np.inf, 0.0, np.nan))
        elif isinstance(uncertainty, VarianceUncertainty):
            sigma_unit = (own or unit**2) ** 0.5
            valid = np.isfinite(values) & (values > 0)
            ivar = np.where(valid, 1.0 / values, np.where(values == np.inf, 0.0, np.nan))
        elif isinstance(uncertainty, InverseVariance):
            sigma_unit = (own or unit**-2) ** -0.5
            ivar = values
        else:
            raise TypeError(f"{type(uncertainty).__name__}: dzspec takes StdDevUncertainty, VarianceUncertainty or "
                            "InverseVariance")
        return ivar / _factor(sigma_unit, wavelength, "the uncertainty") ** 2


def _estimated_ivar(flux: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """One ivar per spectrum from the robust scatter of its pixel-to-pixel differences (0 where undefined)."""
    ivar = np.zeros_like(flux)
    for row in range(flux.shape[0]):
        good = ~bad[row] & np.isfinite(flux[row])
        diff = np.diff(flux[row][good])
        if diff.size < 2:
            continue
        sigma = 1.4826 * np.median(np.abs(diff - np.median(diff))) / np.sqrt(2.0)
        if sigma > 0:
            ivar[row] = np.where(good, 1.0 / sigma**2, 0.0)
    return ivar


def _block(obj: Any, kind: Any, row: int, *, medium: Medium, survey: str | None, unit_override: Any,
           missing_uncertainty: MissingUncertainty) -> _Block:
    import astropy.units as u

    meta = dict(obj.meta or {})
    if kind == "collection":
        spectral = obj.spectral_axis[row]
        flux_q = obj.flux[row]
        uncertainty = None if obj.uncertainty is None else type(obj.uncertainty)(
            np.asarray(obj.uncertainty.array)[row], unit=obj.uncertainty.unit)
        mask = None if obj.mask is None else np.asarray(obj.mask)[row]
        axis, total = -1, len(obj)
    else:
        spectral, flux_q, uncertainty, mask = obj.spectral_axis, obj.flux, obj.uncertainty, obj.mask
        axis, total = int(getattr(obj, "spectral_axis_index", flux_q.ndim - 1)), -1
    wave = np.asarray(u.Quantity(spectral).to_value(u.AA, equivalencies=u.spectral()), dtype=np.float64)
    if wave.ndim != 1:
        raise ValueError(f"the spectral axis must be 1-D per spectrum, got shape {wave.shape}")
    nwave = wave.size
    survey = _survey(meta, survey)
    if survey is None and _muse_sampled(wave) and _muse_grid(wave, "air") is not None:
        survey = "muse"  # a linear 1.25 A grid in MUSE's range: a MUSE pipeline product
    medium_used, assumed = _medium(obj, meta, medium, survey)
    grid_name = None
    if survey == "muse" and nwave > 1 and wave[0] < wave[-1]:
        found = _muse_grid(wave, medium_used)  # named and valued as dzspec.io.muse names a file's grid
        if found is not None:
            grid_name, wave = found
    unit = u.Unit(unit_override) if unit_override is not None else flux_q.unit
    if unit is None or unit.physical_type == "dimensionless":
        raise ValueError(f"the flux has no physical unit ({flux_q.unit}); pass flux_unit= (e.g. "
                         "'1e-20 erg / (s cm2 Angstrom)')")
    flux = _as_2d(flux_q.value, axis, nwave).astype(np.float64)
    bad = np.zeros(flux.shape, bool) if mask is None else _as_2d(mask, axis, nwave) != 0
    bits = np.where(bad, np.uint32(SpecMask.INSTRUMENT), np.uint32(0))
    stored_bits = meta.get(MASK_META_KEY)
    if stored_bits is not None and np.shape(stored_bits) == flux.shape and kind != "collection":
        stored = np.asarray(stored_bits, np.uint32)
        bits = np.where(bad & (stored == 0), np.uint32(SpecMask.INSTRUMENT), stored)  # new masks kept as well
    order = np.argsort(wave) if nwave > 1 and wave[0] > wave[-1] else None  # a frequency axis runs backwards
    if medium_used == "air":
        wave = np.asarray(air_to_vacuum(wave), dtype=np.float64)
    factor = _factor(unit, wave, "the flux")
    if uncertainty is None:
        if missing_uncertainty != "estimate":
            raise ValueError("the spectrum has no uncertainty: dzspec needs one (StdDevUncertainty, "
                             "VarianceUncertainty or InverseVariance); pass missing_uncertainty='estimate' to give "
                             "each spectrum the robust scatter of its pixel-to-pixel differences")
        ivar = _estimated_ivar(flux * factor, bad)
    else:
        ivar = _ivar(uncertainty, unit, wave, axis, unit_override is not None)
    flux = flux * factor
    # pixels the object masks are "no data": no NaN/BAD_IVAR report for them (as the generic reader)
    flux[bad & ~np.isfinite(flux)] = 0.0
    ivar[bad] = 0.0
    if order is not None:
        wave, flux, ivar, bits = wave[order], flux[:, order], ivar[:, order], bits[:, order]
    coords = _meta_coords(meta, flux.shape[0], row, total)
    own = meta.get(META_KEY)
    if isinstance(own, Mapping) and own.get("grid_name") and own.get("wavelength_sha256") == array_sha256(wave):
        grid_name = str(own["grid_name"])
    constant = bool(np.all(factor == factor[0]))
    return _Block(wave, flux, ivar, bits, coords, grid_name, medium_used, assumed, unit.to_string(),
                  float(factor[0]) if constant else float("nan"), uncertainty is None, survey)


def datasets_from_specutils(
    spectra: Any,
    *,
    medium: Medium = "auto",
    survey: str | None = None,
    flux_unit: Any = None,
    missing_uncertainty: MissingUncertainty = "raise",
    coords: Mapping[str, Sequence[Any] | np.ndarray] | None = None,
    source: str = "<specutils>",
) -> list[xr.Dataset]:
    """Canonical spectra Datasets (one per wavelength grid) of specutils spectra; see the module docstring.

    Parameters
    ----------
    spectra
        A ``Spectrum`` (``Spectrum1D``; any number of spectra on one spectral axis), a ``SpectrumCollection``, a
        ``SpectrumList`` or any sequence of these.
    medium
        ``"air"`` or ``"vacuum"`` for every spectrum, or ``"auto"`` (per object, see the module docstring).
    survey
        A :data:`~dzspec.schema.SURVEYS` name for every spectrum (default: from the meta or header, else unknown):
        the ``survey`` coordinate, and the prefix of a grid dzspec does not know (:func:`grid_name_for`).
    flux_unit
        The flux's unit when the objects carry none (or carry a wrong one); any astropy unit or string. The
        uncertainties are then taken in it too (sigma in it, variance in its square, ivar in its inverse square).
    missing_uncertainty
        ``"raise"`` (default) for a spectrum without uncertainty, or ``"estimate"`` (see the module docstring).
    coords
        Per-spectrum coordinates (e.g. ``{"targetid": [...], "z_true": [...]}``), one value per input spectrum in
        input order (rows of a 2-D ``Spectrum``, of a collection, then the next object); they override the meta's.
    source
        What the Datasets' ``source_file`` attribute (and every warning) names.

    Returns
    -------
    list of xarray.Dataset
        One per grid, in order of first appearance; each has the attribute ``input_index``: the position of each
        of its spectra in the input.

    Raises
    ------
    ValueError
        No uncertainty (with ``missing_uncertainty="raise"``), a flux or uncertainty unit that is not a flux
        density, coordinates of the wrong length.
    TypeError
        Not specutils objects, or an uncertainty class dzspec does not know.
    """
    blocks: list[_Block] = []
    position = 0
    for obj, kind, row in _pieces(spectra):
        block = _block(obj, kind, row, medium=medium, survey=survey, unit_override=flux_unit,
                       missing_uncertainty=missing_uncertainty)
        block.index = list(range(position, position + block.flux.shape[0]))
        position += block.flux.shape[0]
        blocks.append(block)
    for name, values in (coords or {}).items():
        array = np.asarray(values)
        if array.shape != (position,):
            raise ValueError(f"coords[{name!r}] has shape {array.shape}; the input holds {position} spectra")
        for block in blocks:
            block.coords[name] = array[block.index]

    grids: dict[str, list[_Block]] = {}
    for block in blocks:
        name, wave = grid_name_for(block.wavelength, block.survey)
        if block.grid_name is None or name in _known_grids():
            block.grid_name = name
        block.wavelength = wave
        grids.setdefault(block.grid_name, []).append(block)
    out = []
    for name, members in grids.items():
        if any(not np.array_equal(m.wavelength, members[0].wavelength) for m in members):
            raise ValueError(f"spectra named for the grid {name!r} have different wavelengths")
        out.append(_dataset(name, members, source))
    return out


def _dataset(grid_name: str, members: list[_Block], source: str) -> xr.Dataset:
    coord_names = sorted({name for m in members for name in m.coords})
    coords: dict[str, np.ndarray] = {}
    for name in coord_names:
        dtype, fill = SPECTRUM_COORDS.get(name, (None, None))
        parts = []
        for m in members:
            values = m.coords.get(name)
            if values is None:
                kind = np.result_type(*(mm.coords[name] for mm in members if name in mm.coords))
                values = np.full(m.flux.shape[0], fill if dtype else (np.nan if kind.kind == "f" else -1))
            parts.append(values)
        coords[name] = np.concatenate(parts)
    survey = next((m.survey for m in members if m.survey), None)
    if "survey" not in coords and survey is not None:
        coords["survey"] = np.full(sum(m.flux.shape[0] for m in members), code_of(survey, SURVEYS), np.int8)
    mediums = {m.medium for m in members}
    attrs: dict[str, Any] = {
        "frame": "observed",
        "flux_unit_original": ", ".join(sorted({m.flux_unit_original for m in members})),
        "input_index": np.concatenate([np.asarray(m.index, np.int64) for m in members]).tolist(),
    }
    if any(m.medium_assumed for m in members):
        attrs["medium_assumed"] = True
    if any(m.ivar_estimated for m in members):
        attrs["ivar_estimated"] = True
    scales = {m.flux_scale for m in members}
    ds = make_spectra_dataset(
        members[0].wavelength,
        np.concatenate([m.flux for m in members]),
        np.concatenate([m.ivar for m in members]),
        source_file=source,
        reader="specutils",
        mask=np.concatenate([m.mask for m in members]),
        medium_original="air" if mediums == {"air"} else ("vacuum" if mediums == {"vacuum"} else "unknown"),
        flux_scale=scales.pop() if len(scales) == 1 else float("nan"),
        grid_name=grid_name,
        coords=coords,
        attrs=attrs,
    )
    ds["wavelength"].attrs.update(grid_attrs(ds["wavelength"].values))
    return ds


# ---------------------------------------------------------------------------------------------------------------
# Into a store, and back
# ---------------------------------------------------------------------------------------------------------------


def _content_sha256(ds: xr.Dataset) -> str:
    """Identity of a Dataset's spectra (the manifest's sha256 of an in-memory input): grid, pixels, coordinates."""
    names = ["wavelength", "flux", "ivar", "mask", *sorted(n for n in ds.coords if ds[n].dims == ("spectrum",))]
    return array_sha256(*(ds[name].values for name in names))


def from_specutils(
    spectra: Any,
    store: str | PathLike[str],
    *,
    medium: Medium = "auto",
    survey: str | None = None,
    flux_unit: Any = None,
    missing_uncertainty: MissingUncertainty = "raise",
    coords: Mapping[str, Sequence[Any] | np.ndarray] | None = None,
    source: str = "<specutils>",
    chunk_rows: int | None = None,
    chunk_bytes: int = zstore.DEFAULT_CHUNK_BYTES,
) -> dict[str, range]:
    """Ingest specutils spectra into a store: one spectra group per wavelength grid, as :func:`dzspec.ingest`.

    The spectra are converted by :func:`datasets_from_specutils` (units, medium, uncertainties, mask and
    coordinates: see the module docstring and its parameters) and written with the store functions ingest uses:
    a new group is created for a new grid, rows are appended at the end of an existing group of the same grid
    (whose wavelengths must be equal: dzspec never resamples), each call is one entry of the group's manifest
    (``path`` = ``source``, reader ``specutils``, ``sha256`` = a hash of the converted content), and duplicated
    targetids are flagged. Writing the same spectra again is skipped (the manifest already lists their hash as
    done), like re-ingesting a file; an interrupted write is redone in the rows it had reserved.

    Parameters
    ----------
    spectra, medium, survey, flux_unit, missing_uncertainty, coords, source
        See :func:`datasets_from_specutils`.
    store
        The Zarr store (created if missing).
    chunk_rows, chunk_bytes
        Spectra per chunk of a new group (default from the byte budget, as ingest).

    Returns
    -------
    dict
        Spectra group path -> the rows (``range``) its spectra occupy, in input order within each group.
    """
    datasets = datasets_from_specutils(spectra, medium=medium, survey=survey, flux_unit=flux_unit,
                                       missing_uncertainty=missing_uncertainty, coords=coords, source=source)
    root = zstore.open_root(store, mode="a")
    written: dict[str, range] = {}
    for ds in datasets:
        group_path = f"spectra/{ds.attrs['grid_name']}"
        written[group_path] = _write_group(root, str(store), group_path, ds, source, chunk_rows, chunk_bytes)
    return written


def _write_group(root: Any, store: str, group_path: str, ds: xr.Dataset, source: str, chunk_rows: int | None,
                 chunk_bytes: int) -> range:
    if group_path in root:
        group = root[group_path]
        if not np.array_equal(group["wavelength"][:], ds["wavelength"].values):
            raise ValueError(f"{store}/{group_path}: the spectra's wavelength grid has this group's name but "
                             "differs from the stored grid; not resampled")
    else:
        group = zstore.create_spectra_group(root, ds, chunk_rows=chunk_rows, budget_bytes=chunk_bytes)
    sha256 = _content_sha256(ds)
    manifest = zstore.manifest_of(group)
    nrows = ds.sizes["spectrum"]
    index = next((i for i, entry in enumerate(manifest) if entry["sha256"] == sha256), None)
    if index is not None and manifest[index]["status"] == "done":
        entry = manifest[index]
        return range(entry["row_start"], entry["row_start"] + entry["nrows"])
    if index is None:
        start = max((e["row_start"] + e["nrows"] for e in manifest), default=0)
        scale = ds.attrs.get("flux_scale_applied")
        manifest.append({"sha256": sha256, "path": source, "reader": "specutils", "row_start": start,
                         "nrows": nrows, "status": "pending", "medium_original": ds.attrs.get("medium_original"),
                         "flux_scale_applied": scale if scale == scale else None,
                         "flux_unit_original": ds.attrs.get("flux_unit_original"),
                         "dzspec_version": ds.attrs.get("dzspec_version")})
        index = len(manifest) - 1
    entry = manifest[index]
    start = int(entry["row_start"])
    ds = ds.assign_coords(source_file=("spectrum", np.full(nrows, index, np.int32)))
    zstore.ensure_spectrum_arrays(group, ds.isel(spectrum=slice(0, 1)))
    group["source_file"].attrs["description"] = "index into the manifest attribute of this group"
    # manifest and sizes first, as ingest: an interrupted write finds the same rows reserved
    zstore.set_manifest(group, manifest)
    zstore.resize_spectra_group(group, max(int(group["flux"].shape[0]), start + nrows))
    zstore.write_rows(group, ds, start)
    entry["status"] = "done"
    zstore.set_manifest(group, manifest)
    zstore.flag_duplicate_targetids(group, store)
    return range(start, start + nrows)


def to_specutils(
    store: str | PathLike[str],
    rows: Sequence[int] | np.ndarray | slice | range | None = None,
    *,
    group: str | None = None,
) -> Any:
    """Rows of a spectra group as one specutils ``Spectrum`` with a 2-D flux ``(len(rows), nwave)``.

    The rows of a group share its wavelength grid, so one ``Spectrum`` holds them all (index it, ``spec[i]``, for
    one spectrum; wrap it in a ``SpectrumList`` if a tool wants one): flux in :data:`~dzspec.schema.FLUX_UNIT`,
    spectral axis in vacuum Angstrom, ``InverseVariance`` uncertainty, boolean ``mask`` (True where any
    :class:`~dzspec.schema.SpecMask` bit other than the informative CAMERA_OVERLAP is set, so every pixel with
    ivar 0), and ``meta``: every per-spectrum coordinate of the group as an array (``targetid``, ``ra``, ``dec``,
    ``z_true``, ...), the mask bits (``meta["dzspec_mask"]``) and ``meta["dzspec"]`` (store, group, rows, grid name,
    medium), from which :func:`from_specutils` restores the group name, the bits and the coordinates.

    Parameters
    ----------
    store
        The Zarr store.
    rows
        Row numbers, a slice or a range of the group (default: all rows).
    group
        The spectra group (``<grid>`` or ``spectra/<grid>``; default the store's only one).
    """
    import astropy.units as u
    from astropy.nddata import InverseVariance

    root = zstore.open_root(store)
    path = zstore.resolve_spectra_group(root, group)
    source = root[path]
    nspectrum = int(source["flux"].shape[0])
    if rows is None:
        rows = slice(None)
    index = np.arange(nspectrum)[rows] if isinstance(rows, slice | range) else np.asarray(rows, dtype=np.int64)
    if index.ndim != 1:
        raise ValueError(f"rows must be 1-D, got shape {index.shape}")
    if index.size and (index.min() < -nspectrum or index.max() >= nspectrum):
        raise IndexError(f"{store}/{path} has {nspectrum} spectra; rows {index.min()}..{index.max()} asked")
    index = np.where(index < 0, index + nspectrum, index)

    def read(name: str) -> np.ndarray:
        array = source[name]
        if index.size and np.array_equal(index, np.arange(index[0], index[0] + index.size)):
            return np.asarray(array[int(index[0]): int(index[0]) + index.size])
        return np.asarray(array.oindex[index, ...]) if index.size else np.zeros((0, *array.shape[1:]), array.dtype)

    wave = np.asarray(source["wavelength"][:], dtype=np.float64)
    flux, ivar, bits = read("flux"), read("ivar"), read("mask").astype(np.uint32)
    unit = flux_unit()
    names = sorted(name for name, array in source.arrays()
                   if tuple(array.metadata.dimension_names or ()) == ("spectrum",))
    meta: dict[str, Any] = {name: read(name) for name in names}
    meta[MASK_META_KEY] = bits
    meta[META_KEY] = {"store": str(store), "group": path, "rows": index, "grid_name": path.removeprefix("spectra/"),
                      "medium": "vacuum", "wavelength_sha256": array_sha256(wave), "coords": names,
                      "flux_unit": FLUX_UNIT}
    mask = (bits & ~np.uint32(SpecMask.CAMERA_OVERLAP)) != 0
    return spectrum_class()(flux=flux * unit, spectral_axis=wave * u.AA,
                            uncertainty=InverseVariance(ivar, unit=unit**-2), mask=mask, meta=meta)
