"""Units, media and grids shared by the readers: flux and wavelength units (FITS, CDS and informal spellings)
to dzspec's, air/vacuum spellings, and the ``grid``/``step`` attributes of a wavelength coordinate.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import numpy as np

__all__ = ["flux_scale_from_unit", "grid_attrs", "medium_from_text", "wavelength_factor_from_unit"]


def _normalise_unit_text(text: str) -> str:
    text = text.replace("Å", "Angstrom").replace("^", "**")
    text = re.sub(r"(?i)\bangstroms?\b", "Angstrom", text)
    text = re.sub(r"\b(?:Ang|AA|A)\b", "Angstrom", text)  # in spectra "A" is Angstrom, never Ampere
    return text


def _parse_unit(text: str) -> Any:
    import astropy.units as u

    normalised = _normalise_unit_text(text)
    for fmt in (None, "fits", "cds"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # astropy warns about "multiple slashes" and the like
            try:
                return u.Unit(normalised) if fmt is None else u.Unit(normalised, format=fmt)
            except (ValueError, TypeError):
                continue
    raise ValueError(f"cannot parse the unit {text!r}")


def flux_scale_from_unit(unit: str | None) -> float | None:
    """Factor turning a flux density in ``unit`` into :data:`dzspec.schema.FLUX_UNIT` (1e-17 erg/s/cm2/A).

    Parameters
    ----------
    unit
        A BUNIT/TUNIT-style string; FITS, CDS and the usual informal spellings are accepted.

    Returns
    -------
    float or None
        The factor, or None when ``unit`` is empty (unknown: the caller decides).

    Raises
    ------
    ValueError
        The unit cannot be parsed or is not a flux density per unit wavelength.

    Examples
    --------
    >>> flux_scale_from_unit("10**(-20)*erg/s/cm**2/Angstrom")
    0.001
    >>> flux_scale_from_unit("1E-17 erg/cm^2/s/Ang")
    1.0
    >>> flux_scale_from_unit("10**(-19).erg.cm**(-2).s**(-1).angstrom**(-1)")
    0.01
    >>> flux_scale_from_unit("") is None
    True
    """
    import astropy.units as u

    if unit is None or not str(unit).strip():
        return None
    parsed = _parse_unit(str(unit).strip())
    try:
        factor = parsed.to(u.erg / u.s / u.cm**2 / u.AA)
    except u.UnitConversionError:
        raise ValueError(f"{unit!r} is not a flux density per unit wavelength") from None
    return float(f"{factor / 1e-17:.12g}")  # 9.999999999999999e-18 / 1e-17 -> 1.0


def wavelength_factor_from_unit(unit: str | None) -> float:
    """Factor turning wavelengths in ``unit`` into Angstrom (1 when ``unit`` is empty).

    Examples
    --------
    >>> wavelength_factor_from_unit("nm"), wavelength_factor_from_unit("ANGSTROMS"), wavelength_factor_from_unit("")
    (10.0, 1.0, 1.0)
    """
    import astropy.units as u

    if unit is None or not str(unit).strip():
        return 1.0
    parsed = _parse_unit(str(unit).strip())
    try:
        return float(f"{parsed.to(u.AA):.12g}")
    except u.UnitConversionError:
        raise ValueError(f"{unit!r} is not a wavelength unit") from None


def grid_attrs(wavelength: np.ndarray) -> dict[str, Any]:
    """``grid`` ("linear", "log10" or "irregular") and ``step`` attributes of a wavelength coordinate.

    Examples
    --------
    >>> grid_attrs(np.arange(4000.0, 4010.0, 2.5))
    {'grid': 'linear', 'step': 2.5}
    >>> grid_attrs(10 ** (3.6 + 1e-4 * np.arange(5)))["grid"]
    'log10'
    """
    wave = np.asarray(wavelength, dtype=np.float64)
    if wave.size < 2:
        return {"grid": "irregular"}
    steps = np.diff(wave)
    if np.allclose(steps, steps[0], rtol=1e-6, atol=0):
        return {"grid": "linear", "step": float(f"{steps[0]:.10g}")}
    logsteps = np.diff(np.log10(wave))
    if np.allclose(logsteps, logsteps[0], rtol=1e-4, atol=0):
        return {"grid": "log10", "step": float(f"{logsteps[0]:.8g}")}
    return {"grid": "irregular"}


def medium_from_text(value: Any) -> str | None:
    """Map a medium spelling (``air``, ``vac``, ``AWAV``, ``WAVE``, SDSS ``VACUUM = T``...) to air/vacuum.

    Examples
    --------
    >>> medium_from_text("AWAV"), medium_from_text(True), medium_from_text("rest") is None
    ('air', 'vacuum', True)
    """
    if isinstance(value, bool | np.bool_):
        return "vacuum" if value else "air"
    text = str(value).strip().lower()
    if text in ("air", "awav"):
        return "air"
    if text in ("vac", "vacuum", "wave", "vacu"):
        return "vacuum"
    return None
