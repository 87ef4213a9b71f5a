"""The MADGICS LAE scan's parameters: the one source of their defaults and help (the kernel spec
:data:`~dzspec.engines.madgics.adapter.LAE_SCAN`, ``dzspec lae``'s flags, the ``params`` of a pipeline's lae step).

Examples
--------
>>> LaeScanParams().n_shifts, LaeScanParams(dchi2_min=16.0).dchi2_min
(4501, 16.0)
"""

from __future__ import annotations

from dataclasses import dataclass

from dzspec.params import param

__all__ = ["LaeScanParams"]


@dataclass(frozen=True)
class LaeScanParams:
    """What a MADGICS scan and its interloper tests depend on, besides the prior and the noise calibration."""

    z_min: float = param(2.0, "redshift of the first shift (U25: 2)")
    n_shifts: int = param(4501, "one-pixel shifts scanned (U25: 4501)")
    fine_half_width: float = param(5.0, "fine scan +- pixels at 0.1 px (U25: 5)")
    calibration: float = param(1.0, "U25's s: zerr is multiplied by it, |dchi2| divided by its square (1: none)")
    exclusion: int = param(10, "candidates closer than this many pixels to a better one are not candidates",
                           cli=False)
    ew_min: float = param(20.0, "flag LOW_EW below this rest-frame Lya EW (A) where the continuum is detected")
    continuum_snr: float = param(10.0, "the continuum counts as detected above this S/N (the LOW_EW test)")
    lowz_max: float = param(25.0, "flag LOWZ_LINES above this companion-line chi-square of a low-z reading")
    line_snr_min: float = param(2.0, "flag NO_LINE below this S/N of a Gaussian at the Lya wavelength on the "
                                     "native pixels")
    dchi2_min: float = param(25.0, "calibrated |dchi2| of an LAE detection (U25: 25): below it zwarn has "
                                   "LOW_SIGNIFICANCE", flag="threshold")
