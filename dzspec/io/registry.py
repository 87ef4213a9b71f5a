"""Reader registry: detect a file's format from its content and read it into canonical spectra Datasets.

A reader is two functions registered under a name with :func:`register_reader`:

* ``identify(probe) -> bool`` looks only at a cheap :class:`FileProbe` (magic bytes, FITS HDU names and headers,
  npz/HDF5 keys), never at the data;
* ``read(path, **options) -> xarray.Dataset`` returns one NumPy-backed Dataset built with
  :func:`dzspec.schema.make_spectra_dataset`.

Readers are tried in decreasing ``priority`` so that specific formats (DESI, MUSE cube) win over the generic one.

How readers are found (as xarray finds its backends): this module holds the table and imports no reader. The first
time the table is consulted (:func:`readers`, :func:`identify_format`, :func:`read_spectra`) it imports

1. the built-in reader modules named in :data:`BUILTIN_READERS` (each registers its readers when imported), then
2. every entry point of the group ``dzspec.readers``: a module (imported) or a callable (called with no
   arguments), either of which calls :func:`register_reader`. A third-party package declares one with::

       [project.entry-points."dzspec.readers"]
       myformat = "mypackage.dzspec_reader"

A plug-in that fails to load, or that would replace a built-in reader, is skipped with a
:class:`~dzspec.errors.ReaderPluginWarning` naming it; the built-in readers always work.
"""

from __future__ import annotations

import gzip
import importlib
import importlib.metadata
import threading
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from os import PathLike
from pathlib import Path
from typing import Any

import xarray as xr

from dzspec.errors import InputError, ReaderPluginWarning, UnknownFormatError

__all__ = [
    "BUILTIN_READERS",
    "ENTRY_POINT_GROUP",
    "FileProbe",
    "Reader",
    "identify_format",
    "read_spectra",
    "readers",
    "register_reader",
]

#: The built-in reader modules, by module path: the one list of them. Imported on first use of the table, never
#: at the import of this module (each imports :func:`register_reader` from here).
BUILTIN_READERS: tuple[str, ...] = ("dzspec.io.desi", "dzspec.io.sdss", "dzspec.io.muse", "dzspec.io.generic")
#: The entry-point group through which other packages add readers.
ENTRY_POINT_GROUP = "dzspec.readers"

_FITS_MAGIC = b"SIMPLE  ="
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


@dataclass(frozen=True)
class FitsHDU:
    """Name, header and kind of one FITS HDU, as seen by a probe."""

    index: int
    name: str
    header: Any  # astropy.io.fits.Header
    is_table: bool
    shape: tuple[int, ...]
    columns: tuple[str, ...] = ()


@dataclass
class FileProbe:
    """What a file is, read from its first bytes and its headers only.

    Attributes
    ----------
    path
        The file.
    kind
        ``"fits"``, ``"npz"``, ``"hdf5"`` or ``"unknown"`` (from magic bytes, gzip-compressed FITS included).
    """

    path: Path
    kind: str = field(init=False)

    def __post_init__(self) -> None:
        self.kind = _sniff_kind(self.path)

    @cached_property
    def hdus(self) -> tuple[FitsHDU, ...]:
        """The FITS HDUs (empty for non-FITS files), headers only."""
        if self.kind != "fits":
            return ()
        from astropy.io import fits
        from astropy.utils.exceptions import AstropyWarning

        out = []
        # A truncated or non-standard file makes astropy warn here; the reader then raises an InputError that
        # names the file, so the probe stays quiet.
        with warnings.catch_warnings(), fits.open(self.path, memmap=False, lazy_load_hdus=True) as hdul:
            warnings.simplefilter("ignore", AstropyWarning)
            for index, hdu in enumerate(hdul):
                header = hdu.header
                is_table = header.get("XTENSION", "") in ("BINTABLE", "TABLE")
                if is_table:
                    shape: tuple[int, ...] = (int(header.get("NAXIS2", 0)),)
                    columns = tuple(
                        str(header[f"TTYPE{i}"]).strip()
                        for i in range(1, int(header.get("TFIELDS", 0)) + 1)
                        if f"TTYPE{i}" in header
                    )
                else:
                    naxis = int(header.get("NAXIS", 0))
                    shape = tuple(int(header.get(f"NAXIS{i}", 0)) for i in range(naxis, 0, -1))
                    columns = ()
                name = str(header.get("EXTNAME", "PRIMARY" if index == 0 else "")).strip().upper()
                out.append(FitsHDU(index, name, header.copy(), is_table, shape, columns))
        return tuple(out)

    @cached_property
    def hdu_names(self) -> frozenset[str]:
        """Upper-case EXTNAMEs of the FITS HDUs."""
        return frozenset(h.name for h in self.hdus)

    def hdu(self, name: str) -> FitsHDU | None:
        """The first HDU called ``name`` (case-insensitive), or None."""
        name = name.upper()
        return next((h for h in self.hdus if h.name == name), None)

    @cached_property
    def keys(self) -> frozenset[str]:
        """Array names of an npz or HDF5 file (lower-case; HDF5 datasets at any depth by full path)."""
        if self.kind == "npz":
            with zipfile.ZipFile(self.path) as archive:
                return frozenset(n.removesuffix(".npy").lower() for n in archive.namelist())
        if self.kind == "hdf5":
            try:
                import h5py
            except ImportError as exc:  # pragma: no cover - h5py is an optional dependency
                raise InputError(self.path, "HDF5 input needs h5py: pip install 'dzspec[hdf5]'") from exc
            names: list[str] = []
            with h5py.File(self.path, "r") as handle:
                handle.visititems(lambda n, obj: names.append(n.lower()) if isinstance(obj, h5py.Dataset) else None)
            return frozenset(names)
        return frozenset()


def _sniff_kind(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
            if head[:2] == b"\x1f\x8b":
                handle.seek(0)
                with gzip.GzipFile(fileobj=handle) as inner:
                    head = inner.read(16)
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except (OSError, EOFError) as exc:
        raise InputError(path, f"cannot read the file: {exc}") from exc
    if head.startswith(_FITS_MAGIC):
        return "fits"
    if head.startswith(_HDF5_MAGIC):
        return "hdf5"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "npz"
    return "unknown"


@dataclass(frozen=True)
class Reader:
    """A registered reader: see the module docstring."""

    name: str
    identify: Callable[[FileProbe], bool]
    read: Callable[..., xr.Dataset]
    priority: int = 0
    description: str = ""


_READERS: dict[str, Reader] = {}


def register_reader(
    name: str,
    identify: Callable[[FileProbe], bool],
    read: Callable[..., xr.Dataset],
    *,
    priority: int = 0,
    description: str = "",
) -> Reader:
    """Register a reader under ``name`` (replacing one of the same name).

    Examples
    --------
    >>> from dzspec.io.registry import register_reader, readers
    >>> _ = register_reader("never", lambda probe: False, lambda path: None, priority=-100)
    >>> "never" in readers()
    True
    >>> _ = _READERS.pop("never")
    """
    reader = Reader(name, identify, read, priority, description)
    _READERS[name] = reader
    return reader


def readers() -> dict[str, Reader]:
    """The registered readers by name, highest priority first (built-ins and plug-ins, loaded on first use).

    Examples
    --------
    >>> from dzspec.io.registry import readers
    >>> list(readers())[0], list(readers())[-1]
    ('desi', 'generic')
    """
    _load_readers()
    return dict(sorted(_READERS.items(), key=lambda item: -item[1].priority))


def identify_format(path: str | PathLike[str]) -> str:
    """Name of the first reader (by priority) that recognises the file's content.

    Raises
    ------
    UnknownFormatError
        No reader recognises it; the message lists what the probe saw.
    InputError
        The file is missing or unreadable.
    """
    probe = FileProbe(Path(path))
    for reader in readers().values():
        try:
            if reader.identify(probe):
                return reader.name
        except InputError:
            raise
        except Exception as exc:  # a corrupt header is the file's fault, not the reader's
            raise InputError(path, f"unreadable {probe.kind} file ({type(exc).__name__}: {exc})") from exc
    seen = sorted(probe.hdu_names) if probe.kind == "fits" else sorted(probe.keys)
    raise UnknownFormatError(
        path, f"no reader recognises this {probe.kind} file (saw {seen[:12]}); known: {', '.join(readers())}"
    )


def read_spectra(path: str | PathLike[str], format: str | None = None, **options: Any) -> xr.Dataset:
    """Read one file into a canonical spectra Dataset, detecting its format from its content.

    Parameters
    ----------
    path
        The input file.
    format
        A registered reader name to skip detection (e.g. ``"desi"``).
    **options
        Passed to the reader (e.g. ``keep_resolution=True`` for DESI).

    Raises
    ------
    InputError
        The file is unreadable or inconsistent; the message names the file (and row).
    """
    name = format or identify_format(path)
    try:
        reader = readers()[name]
    except KeyError:
        raise InputError(path, f"unknown reader {name!r}; known: {', '.join(readers())}") from None
    try:
        return reader.read(Path(path), **options)
    except InputError:
        raise
    except (OSError, ValueError, KeyError, IndexError, TypeError, EOFError) as exc:
        raise InputError(path, f"{name} reader failed: {type(exc).__name__}: {exc}") from exc


_LOAD_LOCK = threading.RLock()
_LOADED = False  # True once the table is complete
_LOADING = False  # True while the thread holding _LOAD_LOCK fills it


def _load_readers() -> None:
    """Fill the table once: the built-in modules, then the ``dzspec.readers`` entry points."""
    global _LOADED, _LOADING
    if _LOADED:
        return
    with _LOAD_LOCK:  # other threads wait here for a complete table
        if _LOADED or _LOADING:  # _LOADING: a module being loaded consults the table (same thread)
            return
        _LOADING = True
        try:
            for module in BUILTIN_READERS:
                importlib.import_module(module)  # a broken built-in is dzspec's bug: let it raise
            builtin = dict(_READERS)
            for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
                _load_plugin(entry_point, builtin)
            _LOADED = True
        finally:
            _LOADING = False


def _load_plugin(entry_point: importlib.metadata.EntryPoint, builtin: dict[str, Reader]) -> None:
    """Load one plug-in; on any failure undo what it registered and warn, naming it."""
    before = dict(_READERS)
    what = f"dzspec reader plug-in {entry_point.name!r} ({entry_point.value})"
    try:
        loaded = entry_point.load()
        if callable(loaded):
            loaded()
    except Exception as exc:  # a third-party bug must not take the built-in readers down with it
        _READERS.clear()
        _READERS.update(before)
        warnings.warn(ReaderPluginWarning(f"{what} failed to load ({type(exc).__name__}: {exc}); skipped"),
                      stacklevel=4)
        return
    replaced = sorted(name for name, reader in builtin.items() if _READERS.get(name) is not reader)
    if replaced:
        _READERS.update({name: builtin[name] for name in replaced})
        warnings.warn(ReaderPluginWarning(f"{what} registers built-in reader names {replaced}; the built-in "
                                          "readers are kept (register under another name)"), stacklevel=4)
