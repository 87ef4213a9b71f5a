"""FITS helpers shared by the readers: open a file so that every failure is an InputError naming it.

Every reader opens its FITS input with :func:`open_fits`; what the readers share about units lives in
:mod:`dzspec.io.units`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from os import PathLike
from pathlib import Path
from typing import Any

from dzspec.errors import InputError

__all__ = ["open_fits"]


def _is_corruption(message: str) -> bool:
    text = message.lower()
    return "truncated" in text or "error validating header" in text or "corrupt" in text


@contextmanager
def open_fits(path: str | PathLike[str], *, memmap: bool = True) -> Iterator[Any]:
    """Open a FITS file (all headers read, data lazy and memory-mapped), turning any failure into InputError.

    Astropy only *warns* about a truncated file and then serves short or missing HDUs; here that is an
    :class:`~dzspec.errors.InputError` naming the file, as is any exception raised while the body reads data.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from astropy.io import fits
    >>> name = tempfile.mkdtemp() + "/x.fits"
    >>> fits.HDUList([fits.PrimaryHDU(np.arange(3.0))]).writeto(name)
    >>> with open_fits(name) as hdul:
    ...     float(hdul[0].data.sum())
    3.0
    """
    from astropy.io import fits

    path = Path(path)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            hdul = fits.open(path, memmap=memmap, lazy_load_hdus=False)
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except (OSError, ValueError, EOFError, IndexError, TypeError) as exc:
        raise InputError(path, f"not a readable FITS file ({type(exc).__name__}: {exc})") from exc
    fatal = [str(w.message) for w in caught if _is_corruption(str(w.message))]
    if fatal:
        hdul.close()
        raise InputError(path, f"truncated or corrupt FITS file: {fatal[0]}")
    for w in caught:  # harmless warnings (non-standard cards...) are passed on
        warnings.warn(w.message, stacklevel=3)
    try:
        yield hdul
    except InputError:
        raise
    except (OSError, ValueError, KeyError, IndexError, EOFError) as exc:
        raise InputError(path, f"cannot read the FITS data ({type(exc).__name__}: {exc})") from exc
    finally:
        hdul.close()
