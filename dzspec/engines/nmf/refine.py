"""Sub-pixel refinement of the best NMF trial (METHODS §1.3, not in B26): the parabola through the lowest integer
shift around it and its neighbours, whose vertex is the refined redshift and whose width its uncertainty.

:func:`dzspec.engines.nmf.scan.scan_block` rescans every integer shift of :func:`refinement_shifts` and hands the
chi2 there to :func:`refined_minimum`.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["parabola_vertex", "refined_minimum", "refinement_shifts"]

_LN10 = math.log(10.0)


def parabola_vertex(y_minus: float, y0: float, y_plus: float) -> float:
    """Vertex of the parabola through ``(-1, y_minus)``, ``(0, y0)``, ``(1, y_plus)``, clamped to [-0.5, 0.5].

    Returns 0 where the parabola is not convex or a value is not finite (keep the integer minimum).

    Examples
    --------
    >>> parabola_vertex(1.5625, 0.0625, 0.5625)  # (x - 0.25)**2
    0.25
    >>> parabola_vertex(4.0, 1.0, 0.1), parabola_vertex(1.0, 0.0, -1.0)  # clamped; not convex
    (0.5, 0.0)
    """
    curvature = y_minus - 2.0 * y0 + y_plus
    if not (np.isfinite(curvature) and curvature > 0):
        return 0.0
    return float(np.clip(0.5 * (y_minus - y_plus) / curvature, -0.5, 0.5))


def refinement_shifts(shifts: np.ndarray, best: int) -> tuple[np.ndarray, int, int]:
    """The integer shifts to rescan around trial ``best`` of the increasing trial ``shifts``.

    Returns ``fine``, every integer shift from ``lo = shifts[best - 1]`` to ``hi = shifts[best + 1]`` (clipped at the
    grid's ends) and one more each side inside the grid, so that a minimum at the window's edge still has both
    neighbours; and ``lo``, ``hi``.

    Examples
    --------
    >>> fine, lo, hi = refinement_shifts(np.array([0, 4, 8, 12]), 1)
    >>> fine.tolist(), int(lo), int(hi)
    ([0, 1, 2, 3, 4, 5, 6, 7, 8, 9], 0, 8)
    """
    lo, hi = shifts[max(best - 1, 0)], shifts[min(best + 1, shifts.size - 1)]
    # one extra pixel each side (inside the grid), so a minimum at the window's edge still has both neighbours
    fine = np.arange(max(lo - 1, shifts[0]), min(hi + 1, shifts[-1]) + 1)
    return fine, lo, hi


def refined_minimum(chi2: np.ndarray, fine: np.ndarray, lo: int, hi: int, delta: float) -> tuple[int, float, float]:
    """The refined minimum of the chi2 at the integer shifts ``fine`` (:func:`refinement_shifts`) on a grid of step
    ``delta``.

    Returns ``j``, the position in ``fine`` of the lowest chi2 between ``lo`` and ``hi``; ``z_refined``,
    ``10**(shift * delta) - 1`` at the vertex of the parabola through it and its neighbours (:func:`parabola_vertex`;
    the integer shift itself at the ends of ``fine``); and ``zerr``, the parabola's 1-sigma width in z
    (``Δχ² = 1``: ``ln10 delta (1+z) sqrt(2 / curvature)``, uncalibrated; NaN where it is not convex or ``j`` is at
    an end).

    Examples
    --------
    >>> fine = np.arange(10, 15)
    >>> j, z, zerr = refined_minimum((fine - 12.25) ** 2, fine, 11, 13, 1e-4)
    >>> j, round(float(z), 6), round(float(zerr), 9)
    (2, 0.002825, 0.000230909)
    """
    window = np.flatnonzero((fine >= lo) & (fine <= hi))
    j = int(window[np.argmin(chi2[window])])
    inner = 0 < j < fine.size - 1
    offset = parabola_vertex(chi2[j - 1], chi2[j], chi2[j + 1]) if inner else 0.0
    z_refined = 10.0 ** ((fine[j] + offset) * float(delta)) - 1.0
    curvature = chi2[j - 1] - 2.0 * chi2[j] + chi2[j + 1] if inner else np.nan
    zerr = np.nan
    if curvature > 0:  # chi2 = chi2_min + (shift - vertex)^2 * curvature / 2: Δχ² = 1 at sqrt(2 / curvature) pixels
        zerr = _LN10 * float(delta) * (1.0 + z_refined) * np.sqrt(2.0 / curvature)
    return j, z_refined, zerr
