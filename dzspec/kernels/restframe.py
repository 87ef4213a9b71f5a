"""Log-wavelength grids and the B26 rest-frame transform of spectra (METHODS 1.1, 5.1).

A :class:`LogGrid` is uniform in log10 wavelength: pixel ``i`` is at ``log10 lambda = start + i * step``. The NMF
basis lives on a rest-frame grid; spectra are put once on the *same* grid (same step and phase) in the observed
frame, so that a trial redshift is an integer pixel shift.

The transform (B26 Eq. 4): flux per unit log lambda, ``f(log lambda) = ln10 * lambda * f_lambda(lambda)``, variance
multiplied by ``(ln10 * lambda)^2``, linear interpolation onto the grid, weight 0 (the exact limit of B26's "huge
variance") outside the data or next to a pixel without data. All grid arithmetic is float64.

A pixel has data where its inverse variance is positive and it is not in a run of exactly-zero flux
(:func:`measured_pixels`): MUSE products of AO-fed fields write flux 0 with a finite STAT in the Na laser notch
(5800-5966 A air), which a fit would otherwise take as hundreds of precise measurements of zero flux.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["MIN_ZERO_RUN", "MOOSE_GRID", "PAPER_GRID", "LogGrid", "linear_weights", "measured_pixels",
           "observed_window", "to_log_grid"]

_LN10 = math.log(10.0)
#: Consecutive exactly-zero flux values from which pixels count as not measured (a measured flux, with noise, is
#: exactly 0.0 at one pixel at most by chance; the AO notch holds about 130 MUSE pixels).
MIN_ZERO_RUN = 5


@dataclass(frozen=True)
class LogGrid:
    """A grid uniform in log10 wavelength (Angstrom): ``start + step * arange(size)``.

    Examples
    --------
    >>> PAPER_GRID.size
    53918
    >>> round(float(PAPER_GRID.wavelength()[0]), 3)
    597.403
    """

    start: float
    step: float
    size: int

    @classmethod
    def spanning(cls, wave_min: float, wave_max: float, step: float) -> LogGrid:
        """The grid from ``wave_min`` with ``round((log wave_max - log wave_min)/step) + 1`` pixels."""
        start = math.log10(wave_min)
        return cls(start, step, round((math.log10(wave_max) - start) / step) + 1)

    def loglam(self) -> np.ndarray:
        return self.start + self.step * np.arange(self.size, dtype=np.float64)

    def wavelength(self) -> np.ndarray:
        return 10.0 ** self.loglam()

    def shift_of(self, z: np.ndarray | float) -> np.ndarray:
        """Nearest integer pixel shift ``k = round(log10(1 + z) / step)`` of redshifts ``z``."""
        return np.rint(np.log10(1.0 + np.asarray(z, dtype=np.float64)) / self.step).astype(np.int64)

    def redshift_of(self, shift: np.ndarray | int) -> np.ndarray:
        """Redshift ``10**(k * step) - 1`` of integer shifts ``k``."""
        return 10.0 ** (np.asarray(shift, dtype=np.float64) * self.step) - 1.0

    def as_attrs(self) -> dict[str, float | int]:
        return asdict(self)


#: B26's rest grid: Gamma_0 = log10(4600/7.7) (bluest MUSE wavelength at z = 6.7) to log10(9350).
PAPER_GRID = LogGrid.spanning(4600.0 / 7.7, 9350.0, 2.215525e-5)
#: Moose.jl's grid: Gamma_0 = log10(562.5) (z_max = 7 from 4500 A), delta = 2.170461e-5.
MOOSE_GRID = LogGrid.spanning(562.5, 9350.0, 2.170461e-5)


def observed_window(wavelength: np.ndarray, grid: LogGrid) -> tuple[int, int]:
    """``(j0, n)``: the grid pixels ``j0 .. j0+n-1`` (same phase as ``grid``, possibly beyond it) inside the
    observed wavelength range.

    Examples
    --------
    >>> j0, n = observed_window(np.array([4750.0, 9350.0]), PAPER_GRID)
    >>> n
    13275
    """
    lo = math.ceil((math.log10(float(wavelength[0])) - grid.start) / grid.step - 1e-9)
    hi = math.floor((math.log10(float(wavelength[-1])) - grid.start) / grid.step + 1e-9)
    return lo, max(0, hi - lo + 1)


def linear_weights(x: np.ndarray, position: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Linear interpolation of samples at increasing ``x`` onto ``position``: ``(left, right, t, inside)`` with the
    value ``(1 - t) * y[left] + t * y[right]``, valid where ``inside`` (within ``[x[0], x[-1]]``).

    Examples
    --------
    >>> left, right, t, inside = linear_weights(np.array([0.0, 1.0, 2.0]), np.array([0.25, 2.0, 3.0]))
    >>> left.tolist(), t.tolist(), inside.tolist()
    ([0, 1, 1], [0.25, 1.0, 2.0], [True, True, False])
    """
    right = np.searchsorted(x, position, side="right")
    inside = (right > 0) & (right < x.size) | (position == x[-1])
    right = np.clip(right, 1, x.size - 1)
    left = right - 1
    return left, right, (position - x[left]) / (x[right] - x[left]), inside


def measured_pixels(flux: np.ndarray, ivar: np.ndarray, *, min_zero_run: int = MIN_ZERO_RUN) -> np.ndarray:
    """Which pixels hold a measurement: positive finite ``ivar``, finite flux, and not in a run of at least
    ``min_zero_run`` consecutive exactly-zero fluxes (a filled gap, such as the AO laser notch of MUSE products,
    which carries flux 0 and a finite variance).

    Examples
    --------
    >>> flux = np.array([[1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0, 0.0, 3.0]])
    >>> measured_pixels(flux, np.ones((1, 9))).astype(int).tolist()
    [[1, 0, 0, 0, 0, 0, 1, 1, 1]]
    """
    flux = np.atleast_2d(np.asarray(flux))
    ivar = np.atleast_2d(np.asarray(ivar))
    with np.errstate(invalid="ignore"):
        good = (ivar > 0) & np.isfinite(ivar) & np.isfinite(flux)
    zero = np.zeros((flux.shape[0], flux.shape[1] + 2), dtype=np.int8)
    zero[:, 1:-1] = flux == 0
    step = np.diff(zero, axis=1)  # +1 where a run of zeros starts, -1 one past its end; rows begin and end at 0
    rows, starts = np.nonzero(step == 1)
    _, ends = np.nonzero(step == -1)
    long = ends - starts >= min_zero_run  # only these are visited: isolated zeros cost nothing per pixel
    for row, start, end in zip(rows[long], starts[long], ends[long], strict=True):
        good[row, start:end] = False
    return good


def to_log_grid(
    wavelength: np.ndarray,
    flux: np.ndarray,
    ivar: np.ndarray,
    grid: LogGrid,
    z: np.ndarray | float = 0.0,
    *,
    window: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Flux per unit log lambda and its inverse variance on ``grid`` pixels, de-redshifted by ``z``.

    Parameters
    ----------
    wavelength
        Observed vacuum wavelengths (Angstrom), increasing, ``(nwave,)``.
    flux, ivar
        ``(nspec, nwave)`` (or ``(nwave,)``); pixels without data are those :func:`measured_pixels` rejects
        (``ivar == 0``, and runs of exactly-zero flux).
    grid
        The target grid.
    z
        Redshift(s), scalar or ``(nspec,)``: rest ``log lambda = log lambda_obs - log10(1 + z)``.
    window
        ``(j0, n)``: return only grid pixels ``j0 .. j0+n-1`` (e.g. :func:`observed_window` with ``z = 0``);
        default the whole grid.

    Returns
    -------
    flux_log, ivar_log
        float64 ``(nspec, n)``; both 0 where there is no data.

    Examples
    --------
    >>> wave = np.linspace(5000.0, 6000.0, 801)
    >>> f, w = to_log_grid(wave, np.ones(801), np.ones(801), PAPER_GRID, z=0.5)
    >>> rest = PAPER_GRID.wavelength()
    >>> inside = (rest > 5000 / 1.5) & (rest < 6000 / 1.5)
    >>> bool((w[0, inside] > 0).all() and (w[0, ~inside] == 0).all())
    True
    >>> i = np.argmin(abs(rest - 3600.0))
    >>> round(float(f[0, i] / (np.log(10) * rest[i] * 1.5)), 6)  # ln10 * lambda_obs * f_lambda
    1.0
    """
    wavelength = np.asarray(wavelength, dtype=np.float64)
    flux = np.atleast_2d(np.asarray(flux, dtype=np.float64))
    ivar = np.atleast_2d(np.asarray(ivar, dtype=np.float64))
    nspec = flux.shape[0]
    z = np.broadcast_to(np.asarray(z, dtype=np.float64), (nspec,))
    j0, n = window if window is not None else (0, grid.size)
    target = grid.start + grid.step * np.arange(j0, j0 + n, dtype=np.float64)
    loglam = np.log10(wavelength)
    jacobian = _LN10 * wavelength
    good = measured_pixels(flux, ivar)
    flux_per_log = np.where(good, flux * jacobian, 0.0)
    with np.errstate(divide="ignore"):
        variance = np.where(good, 1.0 / np.where(good, ivar, 1.0) * jacobian**2, 0.0)
    out_flux = np.zeros((nspec, n))
    out_ivar = np.zeros((nspec, n))
    for i in range(nspec):
        # where each rest pixel falls in the observed log grid
        left, right, t, inside = linear_weights(loglam, target + math.log10(1.0 + z[i]))
        usable = inside & good[i, left] & good[i, right]
        out_flux[i] = np.where(usable, (1 - t) * flux_per_log[i, left] + t * flux_per_log[i, right], 0.0)
        var = (1 - t) * variance[i, left] + t * variance[i, right]
        with np.errstate(divide="ignore"):
            out_ivar[i] = np.where(usable & (var > 0), 1.0 / np.where(var > 0, var, 1.0), 0.0)
    return out_flux, out_ivar
