"""dzspec: survey-scale redshifts of galaxy spectra on Zarr and Dask.

The public API is re-exported here lazily, so that ``import dzspec.kernels`` never pulls in dask, xarray or zarr.

Examples
--------
>>> import dzspec
>>> dzspec.SpecMask.NODATA.value
1
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from dzspec._version import __version__

_EXPORTS = {
    "SpecMask": "dzspec.schema",
    "IngestWarn": "dzspec.schema",
    "make_spectra_dataset": "dzspec.schema",
    "read_spectra": "dzspec.io.registry",
    "register_reader": "dzspec.io.registry",
    "identify_format": "dzspec.io.registry",
    "open_spectra": "dzspec.io.store",
    "open_results": "dzspec.io.store",
    "validate_store": "dzspec.io.validate",
    "from_specutils": "dzspec.io.specutils_bridge",
    "to_specutils": "dzspec.io.specutils_bridge",
    "zfind": "dzspec.inprocess",
    "lae": "dzspec.inprocess",
    "ingest": "dzspec.parallel.ingest",
    "run_kernel": "dzspec.parallel.runner",
    "make_client": "dzspec.cluster",
    "KernelSpec": "dzspec.kernels.base",
    "OutputSpec": "dzspec.kernels.base",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dzspec' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
