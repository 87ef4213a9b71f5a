"""Exceptions and warnings of dzspec.

Every message names the file (or store), the spectrum row where one is concerned, and the problem, so that a
user holding only the log line can find the offending input.
"""

from __future__ import annotations

from os import PathLike

__all__ = [
    "BadSpectrumWarning",
    "DzspecWarning",
    "InputError",
    "ReaderPluginWarning",
    "SchemaError",
    "SkippedInputWarning",
    "StoreError",
    "UnknownFormatError",
]


class DzspecWarning(UserWarning):
    """Base class of dzspec's own warnings (the test suite turns them into errors)."""


class BadSpectrumWarning(DzspecWarning):
    """A spectrum was kept but flagged: NaN flux, negative ivar, no data, duplicated targetid..."""


class ReaderPluginWarning(DzspecWarning):
    """A third-party reader plug-in (entry point group ``dzspec.readers``) was skipped: it failed to load, or it
    would replace a built-in reader. The built-in readers are unaffected."""


class SkippedInputWarning(DzspecWarning):
    """An input file was skipped by a batch ingest because it holds no spectra; the other files are ingested."""


class InputError(ValueError):
    """An input file cannot be turned into spectra.

    Parameters
    ----------
    path
        The offending file.
    problem
        What is wrong, in words.
    row
        The spectrum row inside the file, where the problem concerns one spectrum.

    Examples
    --------
    >>> str(InputError("coadd.fits", "wavelengths are not increasing", row=3))
    'coadd.fits: row 3: wavelengths are not increasing'
    """

    def __init__(self, path: str | PathLike[str], problem: str, row: int | None = None):
        self.path = str(path)
        self.problem = problem
        self.row = row
        where = f"{self.path}: row {row}: " if row is not None else f"{self.path}: "
        super().__init__(where + problem)

    def __reduce__(self) -> tuple[type[InputError], tuple[str, str, int | None]]:
        # Errors travel from Dask workers to the client by pickle, which would call __init__(message) otherwise.
        return (type(self), (self.path, self.problem, self.row))


class UnknownFormatError(InputError):
    """No registered reader recognises the file's content."""


class StoreError(RuntimeError):
    """A Zarr store is missing, inconsistent, or not what the operation expects."""


class SchemaError(StoreError):
    """A store was written with a schema this version of dzspec cannot read."""
