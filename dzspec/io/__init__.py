"""The I/O layer: readers (FITS/npz/HDF5 -> canonical Datasets) and the Zarr store. No scheduling here.

* :mod:`~dzspec.io.registry`: the reader table, format detection (:func:`~dzspec.io.registry.identify_format`),
  :func:`~dzspec.io.registry.read_spectra`; built-in readers and ``dzspec.readers`` entry points load lazily;
* readers, one module per format, none importing another: :mod:`~dzspec.io.desi`, :mod:`~dzspec.io.sdss`,
  :mod:`~dzspec.io.muse`, :mod:`~dzspec.io.generic`;
* what the readers share: :mod:`~dzspec.io.fits` (:func:`~dzspec.io.fits.open_fits`) and :mod:`~dzspec.io.units`
  (flux/wavelength units, air/vacuum, grid attributes);
* :mod:`~dzspec.io.store`: the Zarr store (spectra groups, results groups, the run lock).

The specutils bridge is re-exported here lazily (importing ``dzspec.io`` imports neither specutils nor xarray).

Examples
--------
>>> import dzspec.io
>>> dzspec.io.from_specutils.__module__
'dzspec.io.specutils_bridge'
"""

from __future__ import annotations

from dzspec.reexport import lazy_reexports

_EXPORTS = {
    "datasets_from_specutils": "dzspec.io.specutils_bridge",
    "from_specutils": "dzspec.io.specutils_bridge",
    "to_specutils": "dzspec.io.specutils_bridge",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_reexports(__name__, _EXPORTS)
