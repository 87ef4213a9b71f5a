"""Air <-> vacuum wavelength conversion (IAU standard, Morton 2000), pure NumPy in float64.

* :func:`vacuum_to_air` divides by the refractive index of standard dry air of Morton (2000, ApJS 130, 403,
  eq. 8; the Ciddor 1996 / Birch & Downs 1994 fit adopted by the IAU), with ``sigma = 1e4 / lambda_vac``
  in inverse micrometres::

      n = 1 + 8.34254e-5 + 2.406147e-2 / (130 - sigma**2) + 1.5998e-4 / (38.9 - sigma**2)

* :func:`air_to_vacuum` uses N. Piskunov's explicit inverse as published by VALD3 ("Air-to-vacuum conversion",
  astro.uu.se/valdwiki) and used by mpdaf/pydl-style tools, with ``sigma = 1e4 / lambda_air``::

      n = 1 + 8.336624212083e-5 + 2.408926869968e-2 / (130.1065924522 - sigma**2)
            + 1.599740894897e-4 / (38.92568793293 - sigma**2)

  No iteration: the pair round-trips to better than 7e-9 Angstrom between 2000 Angstrom and 10 micrometres
  (MUSE pixels are 1.25 Angstrom).

Wavelengths below 2000 Angstrom (vacuum; ``vacuum_to_air(2000)`` in air) are returned unchanged, following the
IAU convention that UV wavelengths are always quoted in vacuum (and IDL astrolib): the refractivity fit has
poles at 877 and 1603 Angstrom. NaN passes through.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["VACUUM_MIN_ANGSTROM", "air_to_vacuum", "vacuum_to_air"]

#: Vacuum wavelength (Angstrom) below which no conversion is applied.
VACUUM_MIN_ANGSTROM = 2000.0


def _refractive_index_morton(wavelength_vac: np.ndarray) -> np.ndarray:
    sigma2 = (1.0e4 / wavelength_vac) ** 2
    return 1.0 + 8.34254e-5 + 2.406147e-2 / (130.0 - sigma2) + 1.5998e-4 / (38.9 - sigma2)


def _refractive_index_piskunov(wavelength_air: np.ndarray) -> np.ndarray:
    sigma2 = (1.0e4 / wavelength_air) ** 2
    return (
        1.0
        + 8.336624212083e-5
        + 2.408926869968e-2 / (130.1065924522 - sigma2)
        + 1.599740894897e-4 / (38.92568793293 - sigma2)
    )


# The air wavelength of the 2000 A vacuum threshold, so that the two thresholds map onto each other.
_AIR_MIN_ANGSTROM = float(VACUUM_MIN_ANGSTROM / _refractive_index_morton(np.float64(VACUUM_MIN_ANGSTROM)))


def vacuum_to_air(wavelength_vacuum: npt.ArrayLike) -> np.ndarray | np.float64:
    """Convert vacuum wavelengths to air wavelengths (Morton 2000, IAU standard).

    Parameters
    ----------
    wavelength_vacuum
        Vacuum wavelengths in Angstrom, any shape.

    Returns
    -------
    numpy.ndarray or numpy.float64
        Air wavelengths in Angstrom, float64, same shape (a scalar for a scalar input). Values below
        :data:`VACUUM_MIN_ANGSTROM` are returned unchanged.

    Examples
    --------
    >>> round(float(vacuum_to_air(6564.614)), 3)  # H-alpha
    6562.801
    >>> vacuum_to_air([1215.67, 5008.24]).round(2)  # Ly-alpha stays in vacuum
    array([1215.67, 5006.84])
    """
    wave = np.asarray(wavelength_vacuum, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        converted = wave / _refractive_index_morton(wave)
    return np.where(wave >= VACUUM_MIN_ANGSTROM, converted, wave)[()]


def air_to_vacuum(wavelength_air: npt.ArrayLike) -> np.ndarray | np.float64:
    """Convert air wavelengths to vacuum wavelengths (Piskunov's explicit inverse of Morton 2000, VALD3).

    Parameters
    ----------
    wavelength_air
        Air wavelengths in Angstrom, any shape.

    Returns
    -------
    numpy.ndarray or numpy.float64
        Vacuum wavelengths in Angstrom, float64, same shape (a scalar for a scalar input). Values below
        ``vacuum_to_air(2000)`` (1999.352 Angstrom) are returned unchanged.

    Notes
    -----
    ``vacuum_to_air(air_to_vacuum(x))`` equals ``x`` to better than 1e-8 Angstrom for 2000 Angstrom to
    10 micrometres.

    Examples
    --------
    >>> round(float(air_to_vacuum(6056.125)), 4)  # a Krypton line (IDL astrolib's example)
    6057.8019
    >>> import numpy as np
    >>> wave = np.array([4750.0, 9350.0])
    >>> bool(np.all(np.abs(vacuum_to_air(air_to_vacuum(wave)) - wave) < 1e-8))
    True
    """
    wave = np.asarray(wavelength_air, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        converted = wave * _refractive_index_piskunov(wave)
    return np.where(wave >= _AIR_MIN_ANGSTROM, converted, wave)[()]
