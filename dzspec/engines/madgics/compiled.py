"""The MADGICS engine's compiled inner loops (numba when it is installed, plain Python otherwise): the per-shift
Schur-complement solve of the scan and the per-pixel resampling onto the LAE grid.

Both replace chains of whole-array NumPy temporaries that cost more than the arithmetic: the scan's per-shift
``S = I + E - QᵀQ``, ``r = g - Qᵀa`` and ``-rᵀ S⁻¹ r`` over 4 501 shifts and 50 sky vectors
(:func:`shift_dchi2`), and the interpolation of every spectrum of a block onto 8 720 log pixels
(:func:`resample_rows`), which repeats :func:`dzspec.engines.madgics.priors.to_lae_grid`'s operations in its order,
so that its output is bit-identical.
"""

from __future__ import annotations

import math

import numpy as np

from dzspec.kernels.jit import HAVE_NUMBA, njit

__all__ = ["HAVE_NUMBA", "add_sky_terms", "resample_rows", "shift_dchi2", "solve_shifts"]


def shift_dchi2(q: np.ndarray, a: np.ndarray, e_pairs: np.ndarray, g: np.ndarray, ns: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """dchi2 and alpha at the first ``ns`` shifts from ``Q = L⁻¹ C`` (k_sky, k, >= ns), ``a`` (k_sky,), the upper
    triangle of ``E`` (pairs, >= ns; row-major order: (0, 0), (0, 1), ..., (1, 1), ...) and ``g`` (k, >= ns):
    :func:`add_sky_terms` then :func:`solve_shifts`."""
    k = q.shape[1]
    qq, qa = np.zeros((k * (k + 1) // 2, ns)), np.zeros((k, ns))
    add_sky_terms(q, a, qq, qa, ns)
    return solve_shifts(e_pairs, g, qq, qa, ns)


@njit(cache=True)
def add_sky_terms(q, a, qq, qa, ns):  # pragma: no cover - compiled
    """Add the sky vectors' terms of ``QᵀQ`` (upper triangle, pairs x ns) and ``Qᵀa`` (k x ns) at the first ``ns``
    shifts to ``qq`` and ``qa``; ``q`` (k_sky, k, >= ns) may be a slice of the sky vectors (then ``a`` the same
    slice). The sums run shift-innermost over contiguous rows, so they vectorise."""
    k_sky, k = q.shape[0], q.shape[1]
    if k == 2:  # U25's two LAE vectors: one pass over each pair of rows
        q00, q01, q11, qa0, qa1 = qq[0], qq[1], qq[2], qa[0], qa[1]
        for mu in range(k_sky):
            row0, row1, am = q[mu, 0], q[mu, 1], a[mu]
            for s in range(ns):
                x, y = row0[s], row1[s]
                q00[s] += x * x
                q01[s] += x * y
                q11[s] += y * y
                qa0[s] += x * am
                qa1[s] += y * am
        return
    for mu in range(k_sky):
        p = 0
        for i in range(k):
            row_i = q[mu, i]
            for j in range(i, k):
                row_j, out = q[mu, j], qq[p]
                for s in range(ns):
                    out[s] += row_i[s] * row_j[s]
                p += 1
            am, out = a[mu], qa[i]
            for s in range(ns):
                out[s] += row_i[s] * am


@njit(cache=True)
def solve_shifts(e_pairs, g, qq, qa, ns):  # pragma: no cover - compiled
    """dchi2 and alpha at each shift from ``E`` and ``QᵀQ`` (pairs, >= ns) and ``g`` and ``Qᵀa`` (k, >= ns).

    ``S = I + E - QᵀQ`` is positive definite (at least I: ``E - QᵀQ = Vᵀ M⁻¹ V`` with M the sky + residual
    covariance), so each shift is solved by Cholesky, ``S = C Cᵀ``: ``y = C⁻¹ r``, ``dchi2 = -yᵀy`` and
    ``alpha = C⁻ᵀ y``.
    """
    k = g.shape[0]
    dchi2 = np.empty(ns)
    alpha = np.empty((ns, k))
    if k == 2:  # U25's two LAE vectors: the 2 x 2 Cholesky written out
        for s in range(ns):
            c00 = math.sqrt(1.0 + e_pairs[0, s] - qq[0, s])
            c10 = (e_pairs[1, s] - qq[1, s]) / c00
            c11 = math.sqrt(1.0 + e_pairs[2, s] - qq[2, s] - c10 * c10)
            y0 = (g[0, s] - qa[0, s]) / c00
            y1 = (g[1, s] - qa[1, s] - c10 * y0) / c11
            dchi2[s] = -(y0 * y0 + y1 * y1)
            alpha[s, 1] = y1 / c11
            alpha[s, 0] = (y0 - c10 * alpha[s, 1]) / c00
        return dchi2, alpha
    schur = np.zeros((k, k))
    chol = np.zeros((k, k))
    y = np.empty(k)
    for s in range(ns):
        p = 0
        for i in range(k):
            for j in range(i, k):
                schur[i, j] = schur[j, i] = e_pairs[p, s] - qq[p, s]
                p += 1
            schur[i, i] += 1.0
        total_chi2 = 0.0
        for i in range(k):
            for j in range(i + 1):
                total = schur[i, j]
                for p in range(j):
                    total -= chol[i, p] * chol[j, p]
                if i == j:
                    chol[i, i] = math.sqrt(total)
                else:
                    chol[i, j] = total / chol[j, j]
            total = g[i, s] - qa[i, s]
            for p in range(i):
                total -= chol[i, p] * y[p]
            y[i] = total / chol[i, i]
            total_chi2 += y[i] * y[i]
        for i in range(k - 1, -1, -1):
            total = y[i]
            for p in range(i + 1, k):
                total -= chol[p, i] * alpha[s, p]
            alpha[s, i] = total / chol[i, i]
        dchi2[s] = -total_chi2
    return dchi2, alpha


@njit(cache=True)
def resample_rows(flux, ivar, good, left, right, t, inside, factor, propagate, sqrt_scale, scale, out_flux,
                  out_ivar):  # pragma: no cover - compiled
    """Linear interpolation of each row of ``flux`` and of its variance onto the pixels ``(left, right, t)``, into
    ``out_flux`` and ``out_ivar``; the operations and their order are those of
    :func:`~dzspec.engines.madgics.priors.to_lae_grid` (no fused multiply-adds: numba does not contract without
    fastmath), so the values are bit-identical.

    ``good``: measured native pixels; ``inside``: grid pixels within the native range; ``factor``: the conserving
    model's ``min(1, width_log / width_native)`` per grid pixel (unused with ``propagate``); ``sqrt_scale`` and
    ``scale``: ``sqrt(10**y)`` and ``10**y`` per grid pixel, or empty for no rescaling.
    """
    nspec, npix = out_flux.shape
    rescale = scale.size > 0
    for row in range(nspec):
        for j in range(npix):
            lo, hi = left[j], right[j]
            good_lo, good_hi = good[row, lo], good[row, hi]
            usable = inside[j] and good_lo and good_hi
            tj = t[j]
            value = 0.0
            if usable:
                flux_lo = np.float64(flux[row, lo]) if good_lo else 0.0
                flux_hi = np.float64(flux[row, hi]) if good_hi else 0.0
                value = (1 - tj) * flux_lo + tj * flux_hi
            var_lo = 1.0 / np.float64(ivar[row, lo]) if good_lo else 0.0
            var_hi = 1.0 / np.float64(ivar[row, hi]) if good_hi else 0.0
            if propagate:  # NumPy squares by multiplying: so does this, not pow()
                variance = (1 - tj) * (1 - tj) * var_lo + tj * tj * var_hi
            else:
                variance = ((1 - tj) * var_lo + tj * var_hi) / factor[j]
            weight = 1.0 / variance if usable and variance > 0 else 0.0
            if rescale:
                value = value / sqrt_scale[j]
                weight = weight * scale[j]
            out_flux[row, j] = value
            out_ivar[row, j] = weight
