"""Tell Lyman-alpha emitters from low-redshift interlopers once the MADGICS scan has found a line.

The scan (:mod:`dzspec.engines.madgics.scan`) asks only whether a Lya-shaped line is present; an [O II] emitter or a
bright galaxy gives a large |dchi2| too (U25 §6 leaves this open: their sample held LAE candidates only). Two
standard tests of narrow-band LAE surveys separate them, both on the native pixels of the spectrum:

* **Rest-frame equivalent width.** LAEs are selected with ``EW_rest(Lya) > 20 Å`` (Gronwall et al. 2007; HETDEX,
  ODIN). An [O II] line read as Lya has ``EW_Lya = EW_OII x 1215.67 / 3728.48``, a third of its own, and a galaxy
  with a bright continuum a small one. The continuum is the clipped inverse-variance mean flux density at rest
  1250-1500 Å under the Lya hypothesis (red of the line and of N V, blue of C IV).
* **Companion lines.** If the line were [O II] 3727+3729, H-beta or [O III] 5007 at low z, the other strong nebular
  lines ([O II], H-beta, [O III] 5007, H-alpha) would sit at fixed places. Each is fitted as a Gaussian of 100 km/s
  sigma on a local straight line; the hypothesis scores ``sum max(a, 0)² / var(a)`` (a chi-square of one degree of
  freedom per line under noise), and the interloper score is the largest over hypotheses. A true LAE has none of
  these lines (its own UV lines fall elsewhere), so the score stays at the noise level.

And one check that the scan's line is a line at all: a Gaussian of 200 km/s sigma at the Lya wavelength, fitted
with a local straight line on the native pixels, must have S/N >= 2. The LAE component can absorb a continuum
step (bright galaxies at DESI's b/r camera junction near 5 890 Å gave z = 3.848 "LAEs" with a 100-fibre sky
prior); such a fit has a large |dchi2| but no line on the pixels. On the simulated DESI acceptance set the cut
keeps all but 6 of 1 294 correctly measured LAEs above the threshold.

Functions take a block of spectra on one wavelength array (vacuum Å, increasing) and are vectorised over spectra.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dzspec.engines.madgics.scan import LAEWarn
from dzspec.kernels.simulate.common import C_KMS, EMISSION_LINES

__all__ = [
    "INTERLOPER_BITS",
    "LOWZ_HYPOTHESES",
    "InterloperTests",
    "clipped_continuum",
    "interloper_tests",
    "line_amplitudes",
    "select_lae",
]

_OII = 0.5 * (EMISSION_LINES["oii_3726"] + EMISSION_LINES["oii_3729"])
_OII_HALF_SEPARATION = 0.5 * (EMISSION_LINES["oii_3729"] - EMISSION_LINES["oii_3726"])
#: The strong nebular lines of the companion test: name -> (rest wavelength Å, extra rest-frame sigma Å). The
#: [O II] doublet is one Gaussian widened by half its separation.
_NEBULAR = {
    "oii": (_OII, _OII_HALF_SEPARATION),
    "hbeta": (EMISSION_LINES["hbeta"], 0.0),
    "oiii_5007": (EMISSION_LINES["oiii_5007"], 0.0),
    "halpha": (EMISSION_LINES["halpha"], 0.0),
}
#: Low-z readings of the detected line, in the order of ``InterloperTests.hypothesis`` (H-alpha cannot fall in the
#: Lya window of 2 < z < 4.5).
LOWZ_HYPOTHESES: tuple[str, ...] = ("oii", "hbeta", "oiii_5007")
_LYA = EMISSION_LINES["lya"]
_CONTINUUM_REST = (1250.0, 1500.0)


def clipped_continuum(wavelength: np.ndarray, flux: np.ndarray, ivar: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                      clip: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """Inverse-variance mean flux density of each spectrum over ``[lo, hi]`` (observed Å, per spectrum), and its
    error.

    Pixels more than ``clip`` sigma from the window's median are dropped (sky-line residuals, cosmic rays); the error
    is ``1/sqrt(sum ivar)`` inflated by the square root of the kept pixels' reduced chi-square when above 1 (real
    noise beyond ivar). NaN where the window holds no data.

    Examples
    --------
    >>> wave = np.arange(4000.0, 5000.0, 1.0)
    >>> flux = np.full((1, wave.size), 2.0)
    >>> flux[0, 500] = 1e4  # a sky-line residual
    >>> level, error = clipped_continuum(wave, flux, np.full_like(flux, 4.0), np.array([4100.0]), np.array([4900.0]))
    >>> float(level[0]), round(float(error[0]), 4)
    (2.0, 0.0177)
    """
    # each row's window only (a sixth of a DESI spectrum), gathered side by side: the work of the clipping and of
    # the median does not grow with the whole grid
    start = np.searchsorted(wavelength, np.asarray(lo, dtype=float), side="left")
    width = np.searchsorted(wavelength, np.asarray(hi, dtype=float), side="right") - start
    columns = np.arange(max(int(width.max(initial=0)), 1))
    index = np.minimum(start[:, None] + columns, wavelength.size - 1)
    f, w = np.take_along_axis(flux, index, axis=1), np.take_along_axis(ivar, index, axis=1)
    inside = (columns < width[:, None]) & (w > 0) & np.isfinite(f) & np.isfinite(w)
    level, error = np.full(flux.shape[0], np.nan), np.full(flux.shape[0], np.nan)
    rows = np.flatnonzero(inside.any(axis=1))
    if rows.size == 0:
        return level, error
    f, w, inside = f[rows], np.where(inside[rows], w[rows], 0.0), inside[rows]
    median = np.nanmedian(np.where(inside, f, np.nan), axis=1)
    keep = inside & (np.abs(f - median[:, None]) * np.sqrt(w) < clip)
    w = np.where(keep, w, 0.0)
    total = w.sum(axis=1)
    good = total > 0
    mean = np.divide((w * np.where(keep, f, 0.0)).sum(axis=1), total, out=np.full(rows.size, np.nan), where=good)
    dof = np.maximum(keep.sum(axis=1) - 1, 1)
    chi2 = (w * np.where(keep, f - np.nan_to_num(mean)[:, None], 0.0) ** 2).sum(axis=1) / dof
    level[rows] = mean
    error[rows] = np.where(good, np.sqrt(np.maximum(chi2, 1.0) / np.where(good, total, 1.0)), np.nan)
    return level, error


def line_amplitudes(wavelength: np.ndarray, flux: np.ndarray, ivar: np.ndarray, centres: np.ndarray,
                    sigmas: np.ndarray, half_width: float = 6.0) -> tuple[np.ndarray, np.ndarray]:
    """Flux and its error of one Gaussian line per spectrum at ``centres`` (observed Å, NaN = none) with ``sigmas``
    (Å), fitted together with a local straight line over ``± half_width`` sigma by weighted least squares.

    The error is inflated by the square root of the local fit's reduced chi-square when above 1, so sky-line
    residuals near a line do not count as detections. NaN where the window has fewer than 6 pixels with data.

    Examples
    --------
    >>> wave = np.arange(5000.0, 5100.0, 0.8)
    >>> line = 12.0 * np.exp(-0.5 * ((wave - 5050.0) / 2.0) ** 2) / (2.0 * np.sqrt(2 * np.pi))
    >>> amp, err = line_amplitudes(wave, (1.0 + line)[None], np.full((1, wave.size), 100.0), np.array([5050.0]),
    ...                            np.array([2.0]))
    >>> round(float(amp[0]), 6), round(float(err[0]), 3)  # noise 0.1 per pixel: 0.28 is the scatter of 2 000 draws
    (12.0, 0.284)
    """
    centres = np.asarray(centres, dtype=float)
    sigmas = np.broadcast_to(np.asarray(sigmas, dtype=float), centres.shape)
    amplitude, error = np.full(centres.shape, np.nan), np.full(centres.shape, np.nan)
    rows = np.flatnonzero(np.isfinite(centres) & (centres > wavelength[0]) & (centres < wavelength[-1]))
    if rows.size == 0:
        return amplitude, error
    step = float(np.min(np.diff(wavelength)))
    reach = int(np.ceil(half_width * np.max(sigmas[rows]) / step))
    index = np.searchsorted(wavelength, centres[rows])[:, None] + np.arange(-reach, reach + 1)
    on_grid = (index >= 0) & (index < wavelength.size)
    index = np.clip(index, 0, wavelength.size - 1)
    x = (wavelength[index] - centres[rows, None]) / sigmas[rows, None]
    f = np.take_along_axis(flux[rows], index, axis=1)
    w = np.take_along_axis(ivar[rows], index, axis=1)
    w = np.where(on_grid & (np.abs(x) <= half_width) & np.isfinite(f) & np.isfinite(w) & (w > 0), w, 0.0)
    f = np.where(w > 0, f, 0.0)
    # columns: unit-flux Gaussian (per Å), continuum level, continuum slope
    design = np.stack([np.exp(-0.5 * x**2) / (np.sqrt(2 * np.pi) * sigmas[rows, None]), np.ones_like(x), x], axis=-1)
    weighted = design * w[:, :, None]
    normal = np.matmul(weighted.transpose(0, 2, 1), design)  # batched: 3 x 3 per spectrum
    rhs = np.matmul(weighted.transpose(0, 2, 1), f[:, :, None])[:, :, 0]
    used = (w > 0).sum(axis=1)
    solvable = (used >= 6) & (np.linalg.det(normal) > 0)
    normal[~solvable] = np.eye(3)
    inverse = np.linalg.inv(normal)
    solution = np.einsum("rab,rb->ra", inverse, rhs)
    residual = f - np.einsum("rpa,ra->rp", design, solution)
    reduced = (w * residual**2).sum(axis=1) / np.maximum(used - 3, 1)
    variance = inverse[:, 0, 0] * np.maximum(reduced, 1.0)
    amplitude[rows] = np.where(solvable, solution[:, 0], np.nan)
    error[rows] = np.where(solvable & (variance > 0), np.sqrt(np.abs(variance)), np.nan)
    return amplitude, error


@dataclass
class InterloperTests:
    """Per-spectrum results of :func:`interloper_tests`."""

    line_flux: np.ndarray  #: flux of the detected line (the caller's measure, passed through)
    continuum: np.ndarray  #: flux density at rest 1250-1500 Å under the Lya hypothesis
    continuum_err: np.ndarray
    ew_rest: np.ndarray  #: line_flux / (continuum (1 + z)); inf where the continuum is <= 0
    lowz_score: np.ndarray  #: largest companion-line chi-square over :data:`LOWZ_HYPOTHESES`
    hypothesis: np.ndarray  #: int8 index of that hypothesis in LOWZ_HYPOTHESES, -1 where none could be tested
    line_snr: np.ndarray  #: S/N of a 200 km/s Gaussian at the Lya wavelength on the native pixels

    def low_ew(self, ew_min: float = 20.0, continuum_snr: float = 10.0) -> np.ndarray:
        """A continuum detected at ``continuum_snr`` sigma and a rest EW below ``ew_min``: not an LAE."""
        with np.errstate(invalid="ignore"):
            return (self.continuum > continuum_snr * self.continuum_err) & (self.ew_rest < ew_min)

    def lowz_lines(self, max_score: float = 25.0) -> np.ndarray:
        """Companion lines of a low-z reading above ``max_score`` (5 sigma for one line): not an LAE."""
        return np.nan_to_num(self.lowz_score) > max_score

    def no_line(self, min_snr: float = 2.0) -> np.ndarray:
        """The line is not seen on the native pixels (S/N below ``min_snr``, or untestable): not an LAE."""
        return ~(np.nan_to_num(self.line_snr, nan=-np.inf) >= min_snr)

    def warn(self, ew_min: float = 20.0, continuum_snr: float = 10.0, max_score: float = 25.0,
             line_snr_min: float = 2.0) -> np.ndarray:
        """The :class:`~dzspec.engines.madgics.scan.LAEWarn` bits LOW_EW, LOWZ_LINES and NO_LINE (uint32)."""
        return (np.where(self.low_ew(ew_min, continuum_snr), int(LAEWarn.LOW_EW), 0)
                | np.where(self.lowz_lines(max_score), int(LAEWarn.LOWZ_LINES), 0)
                | np.where(self.no_line(line_snr_min), int(LAEWarn.NO_LINE), 0)).astype(np.uint32)


#: Warning bits that reject a line as Lya: a low-z interloper, or no line on the pixels.
INTERLOPER_BITS = int(LAEWarn.LOW_EW | LAEWarn.LOWZ_LINES | LAEWarn.NO_LINE)


def select_lae(abs_dchi2_cal: np.ndarray, warn: np.ndarray, threshold: float = 25.0) -> np.ndarray:
    """LAE classification: calibrated |dchi2| above ``threshold`` (U25: 25, about 5 sigma) and none of
    :data:`INTERLOPER_BITS`.

    Examples
    --------
    >>> select_lae(np.array([40.0, 40.0, 10.0]), np.array([0, int(LAEWarn.LOW_EW), 0])).tolist()
    [True, False, False]
    """
    return (np.nan_to_num(np.asarray(abs_dchi2_cal, dtype=float)) > threshold) & (
        (np.asarray(warn).astype(np.int64) & INTERLOPER_BITS) == 0)


def interloper_tests(wavelength: np.ndarray, flux: np.ndarray, ivar: np.ndarray, z_lya: np.ndarray,
                     line_flux: np.ndarray, sigma_kms: float = 100.0, lya_sigma_kms: float = 200.0
                     ) -> InterloperTests:
    """The equivalent-width and companion-line tests of each spectrum's detected line, read as Lya at ``z_lya``.

    Parameters
    ----------
    wavelength
        ``(npix,)`` vacuum Å, increasing (the native pixels: no resampled, correlated ones).
    flux, ivar
        ``(nspec, npix)``.
    z_lya
        The scan's redshifts (NaN: nothing tested).
    line_flux
        The detected line's flux in the flux unit times Å (e.g. the integral of the posterior LAE component).
    sigma_kms
        Gaussian sigma of the companion lines (instrument and intrinsic width together).
    lya_sigma_kms
        Gaussian sigma of the line check at the Lya wavelength (LAE red peaks: 150-400 km/s FWHM, skewed).

    Examples
    --------
    An [O II] emitter at z = 0.3 (line at 4847 Å, read as Lya at z = 2.99) with H-beta and [O III]:

    >>> wave = np.arange(3600.0, 9800.0, 0.8)
    >>> def gauss(centre, flux):
    ...     return flux * np.exp(-0.5 * ((wave - centre) / 2.0) ** 2) / (2.0 * np.sqrt(2 * np.pi))
    >>> spec = 0.5 + gauss(4847.0, 20.0) + gauss(4862.68 * 1.3, 8.0) + gauss(5008.24 * 1.3, 15.0)
    >>> tests = interloper_tests(wave, spec[None], np.full((1, wave.size), 25.0), np.array([4847.0 / 1215.67 - 1]),
    ...                          np.array([20.0]))
    >>> LOWZ_HYPOTHESES[tests.hypothesis[0]], bool(tests.lowz_lines()[0]), bool(tests.low_ew()[0])
    ('oii', True, True)
    """
    wavelength = np.asarray(wavelength, dtype=np.float64)
    flux, ivar = np.atleast_2d(flux), np.atleast_2d(ivar)
    z_lya, line_flux = np.asarray(z_lya, dtype=float), np.asarray(line_flux, dtype=float)
    observed = _LYA * (1.0 + z_lya)
    continuum, continuum_err = clipped_continuum(wavelength, flux, ivar, _CONTINUUM_REST[0] * (1.0 + z_lya),
                                                 _CONTINUUM_REST[1] * (1.0 + z_lya))
    with np.errstate(divide="ignore", invalid="ignore"):
        ew_rest = np.where(continuum > 0, line_flux / (continuum * (1.0 + z_lya)), np.inf)
    ew_rest[~np.isfinite(continuum) | ~np.isfinite(line_flux)] = np.nan
    scores = np.full((len(LOWZ_HYPOTHESES), z_lya.size), np.nan)
    for h, name in enumerate(LOWZ_HYPOTHESES):
        one_plus_z = observed / _NEBULAR[name][0]
        possible = one_plus_z >= 1.0
        total = np.zeros(z_lya.size)
        tested = np.zeros(z_lya.size, dtype=bool)
        for companion, (rest, extra) in _NEBULAR.items():
            if companion == name:
                continue
            centre = np.where(possible, rest * one_plus_z, np.nan)
            sigma = np.hypot(centre * sigma_kms / C_KMS, extra * one_plus_z)
            amplitude, error = line_amplitudes(wavelength, flux, ivar, centre, np.nan_to_num(sigma, nan=1.0))
            ok = np.isfinite(amplitude) & (error > 0)
            total += np.where(ok, np.maximum(np.where(ok, amplitude, 0.0), 0.0) ** 2 / np.where(ok, error, 1.0) ** 2,
                              0.0)
            tested |= ok
        scores[h] = np.where(tested, total, np.nan)
    any_tested = np.isfinite(scores).any(axis=0)
    best = np.where(any_tested, np.argmax(np.nan_to_num(scores, nan=-1.0), axis=0), -1).astype(np.int8)
    lowz = np.where(any_tested, np.nanmax(np.where(np.isfinite(scores), scores, -np.inf), axis=0), np.nan)
    amplitude, error = line_amplitudes(wavelength, flux, ivar, observed, observed * lya_sigma_kms / C_KMS)
    with np.errstate(invalid="ignore", divide="ignore"):
        line_snr = amplitude / error
    return InterloperTests(line_flux=line_flux, continuum=continuum, continuum_err=continuum_err, ew_rest=ew_rest,
                           lowz_score=lowz, hypothesis=best, line_snr=line_snr)
