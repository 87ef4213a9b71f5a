"""Exact NNLS on the normal equations of the NMF fit (METHODS §5.3), compiled by numba when it is installed.

Per shift the scan solves ``min_{w>=0} w^T G w - 2 b^T w`` exactly: Lawson-Hanson (FNNLS, Bro & De Jong 1997) with
Cholesky solves, warm-started from the passive set of the previous shift. ``scipy.optimize.nnls(G, b)`` would
minimise a different objective and is never used. :func:`scan_nnls` is the compiled loop over the shifts of one
spectrum that :func:`dzspec.engines.nmf.scan.scan_chi2` runs.
"""

from __future__ import annotations

import math

import numpy as np

from dzspec.kernels.jit import HAVE_NUMBA, njit

__all__ = ["HAVE_NUMBA", "PIVOT_REL", "nnls_gram", "nnls_gram_batch", "scan_nnls", "scan_nnls_schur"]

#: Pivot below this fraction of the diagonal = linearly dependent variable (dropped).
PIVOT_REL = 1e-13


@njit(cache=True)
def _solve_passive(G, b, passive, excluded, z, chol, idx):  # pragma: no cover - compiled
    """z_P = G_PP^{-1} b_P by Cholesky, 0 elsewhere. A failed pivot drops (and excludes) that variable and retries."""
    k = b.shape[0]
    while True:
        m = 0
        for a in range(k):
            if passive[a]:
                idx[m] = a
                m += 1
        failed = -1
        for i in range(m):
            ai = idx[i]
            for j in range(i + 1):
                aj = idx[j]
                s = G[ai, aj]
                for p in range(j):
                    s -= chol[i, p] * chol[j, p]
                if i == j:
                    if s <= PIVOT_REL * G[ai, ai]:
                        failed = i
                        break
                    chol[i, i] = math.sqrt(s)
                else:
                    chol[i, j] = s / chol[j, j]
            if failed >= 0:
                break
        if failed >= 0:
            passive[idx[failed]] = False
            excluded[idx[failed]] = True
            continue
        for a in range(k):
            z[a] = 0.0
        # forward: L y = b_P (y stored in z at the passive positions, in order)
        for i in range(m):
            s = b[idx[i]]
            for p in range(i):
                s -= chol[i, p] * z[idx[p]]
            z[idx[i]] = s / chol[i, i]
        # backward: L^T x = y
        for i in range(m - 1, -1, -1):
            s = z[idx[i]]
            for p in range(i + 1, m):
                s -= chol[p, i] * z[idx[p]]
            z[idx[i]] = s / chol[i, i]
        return m


@njit(cache=True)
def _nnls_core(G, b, tol_rel, passive, x, z, chol, idx, excluded, tried, lam):  # pragma: no cover - compiled
    """Lawson-Hanson/FNNLS on ``min w^T G w - 2 b^T w``, w >= 0, warm-started from ``passive`` (updated in place).

    Returns the number of Cholesky solves; the solution is left in ``x``.
    """
    k = b.shape[0]
    bmax = 0.0
    for a in range(k):
        x[a] = 0.0
        tried[a] = False
        excluded[a] = not (G[a, a] > 0.0)
        if excluded[a]:
            passive[a] = False
        elif abs(b[a]) > bmax:
            bmax = abs(b[a])
    if bmax == 0.0:
        for a in range(k):
            passive[a] = False
        return 0
    tol = tol_rel * bmax
    nsolve = 0
    # warm start: solve on the given passive set and drop negative variables until feasible
    while True:
        m = _solve_passive(G, b, passive, excluded, z, chol, idx)
        nsolve += 1
        feasible = True
        for a in range(k):
            if passive[a] and z[a] <= 0.0:
                passive[a] = False
                feasible = False
        if feasible or m == 0:
            break
    for a in range(k):
        x[a] = z[a] if passive[a] else 0.0
    for _outer in range(4 * k + 10):
        # lam = b - G x  (minus half the gradient)
        best = -1
        lbest = tol
        for a in range(k):
            s = b[a]
            for c in range(k):
                s -= G[a, c] * x[c]
            lam[a] = s
            if not passive[a] and not excluded[a] and not tried[a] and s > lbest:
                lbest = s
                best = a
        if best < 0:
            break
        passive[best] = True
        first = True
        while True:
            _solve_passive(G, b, passive, excluded, z, chol, idx)
            nsolve += 1
            if first and not (passive[best] and z[best] > 0.0):
                # round-off: the newly freed variable does not move off zero; undo and try the next candidate
                passive[best] = False
                tried[best] = True
                break
            first = False
            alpha = 2.0
            amin = -1
            for a in range(k):
                if passive[a] and z[a] <= 0.0:
                    r = x[a] / (x[a] - z[a])
                    if r < alpha:
                        alpha = r
                        amin = a
            if amin < 0:
                for a in range(k):
                    x[a] = z[a] if passive[a] else 0.0
                for a in range(k):
                    tried[a] = False
                break
            for a in range(k):
                if passive[a]:
                    x[a] += alpha * (z[a] - x[a])
            x[amin] = 0.0
            for a in range(k):
                if passive[a] and x[a] <= 0.0:
                    x[a] = 0.0
                    passive[a] = False
    return nsolve


def nnls_gram(
    G: np.ndarray, b: np.ndarray, *, tol_rel: float = 1e-12, passive0: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact NNLS on the normal equations: ``argmin_{w >= 0} w^T G w - 2 b^T w``.

    Lawson-Hanson active set with Cholesky solves (FNNLS, Bro & De Jong 1997). Variables with ``G_aa <= 0`` stay 0;
    a failed Cholesky pivot drops that variable. The KKT tolerance is relative: ``tol_rel * max|b|``.

    Parameters
    ----------
    G : (k, k) symmetric positive semi-definite matrix (float64).
    b : (k,) right-hand side.
    tol_rel : stop when ``max_{a active} (b - G w)_a <= tol_rel * max|b|``.
    passive0 : (k,) bool warm start; default all variables.

    Returns
    -------
    omega : (k,) solution, >= 0.
    passive : (k,) bool final passive (free) set, a warm start for a neighbouring problem.

    Examples
    --------
    >>> G = np.array([[2.0, 1.0], [1.0, 2.0]]); b = np.array([1.0, -1.0])
    >>> w, p = nnls_gram(G, b)
    >>> np.round(w, 12).tolist(), p.tolist()
    ([0.5, 0.0], [True, False])
    """
    G = np.ascontiguousarray(G, dtype=np.float64)
    b = np.ascontiguousarray(b, dtype=np.float64)
    k = b.shape[0]
    passive = np.ones(k, dtype=np.bool_) if passive0 is None else np.array(passive0, dtype=np.bool_)
    x, z, lam = np.zeros(k), np.zeros(k), np.zeros(k)
    chol = np.zeros((k, k))
    idx = np.zeros(k, dtype=np.int64)
    excluded, tried = np.zeros(k, dtype=np.bool_), np.zeros(k, dtype=np.bool_)
    _nnls_core(G, b, float(tol_rel), passive, x, z, chol, idx, excluded, tried, lam)
    return x, passive


@njit(cache=True)
def _nnls_batch(G, b, tol_rel, omega, nsolve):  # pragma: no cover - compiled
    n, k = b.shape
    passive = np.ones(k, dtype=np.bool_)
    z, lam = np.zeros(k), np.zeros(k)
    chol = np.zeros((k, k))
    idx = np.zeros(k, dtype=np.int64)
    excluded, tried = np.zeros(k, dtype=np.bool_), np.zeros(k, dtype=np.bool_)
    x = np.zeros(k)
    for i in range(n):
        nsolve[i] = _nnls_core(G[i], b[i], tol_rel, passive, x, z, chol, idx, excluded, tried, lam)
        omega[i] = x


def nnls_gram_batch(G: np.ndarray, b: np.ndarray, *, tol_rel: float = 1e-12) -> np.ndarray:
    """:func:`nnls_gram` over a batch ``G`` (n, k, k), ``b`` (n, k); each problem warm-starts from the previous one.

    Examples
    --------
    >>> G = np.stack([np.eye(2), 2 * np.eye(2)]); b = np.array([[1.0, -1.0], [2.0, 4.0]])
    >>> np.round(nnls_gram_batch(G, b), 12).tolist()
    [[1.0, 0.0], [1.0, 2.0]]
    """
    G = np.ascontiguousarray(G, dtype=np.float64)
    b = np.ascontiguousarray(b, dtype=np.float64)
    omega = np.zeros(b.shape)
    _nnls_batch(G, b, float(tol_rel), omega, np.zeros(b.shape[0], dtype=np.int64))
    return omega


@njit(cache=True)
def scan_nnls(gs, bs, gc, bc, c, pa, pb, tol_rel, omega, chi2):  # pragma: no cover - compiled
    """Per shift: unpack the pair-packed Grams, solve on (gs, bs), evaluate chi2 with (gc, bc, c)."""
    n, k = bs.shape
    npair = pa.shape[0]
    G = np.zeros((k, k))
    Gc = np.zeros((k, k))
    passive = np.ones(k, dtype=np.bool_)
    z, lam, x = np.zeros(k), np.zeros(k), np.zeros(k)
    chol = np.zeros((k, k))
    idx = np.zeros(k, dtype=np.int64)
    excluded, tried = np.zeros(k, dtype=np.bool_), np.zeros(k, dtype=np.bool_)
    for i in range(n):
        for p in range(npair):
            G[pa[p], pb[p]] = gs[i, p]
            G[pb[p], pa[p]] = gs[i, p]
            Gc[pa[p], pb[p]] = gc[i, p]
            Gc[pb[p], pa[p]] = gc[i, p]
        _nnls_core(G, bs[i], tol_rel, passive, x, z, chol, idx, excluded, tried, lam)
        q = c
        for a in range(k):
            omega[i, a] = x[a]
            if x[a] != 0.0:
                q -= 2.0 * x[a] * bc[i, a]
                s = 0.0
                for d in range(k):
                    s += Gc[a, d] * x[d]
                q += x[a] * s
        chi2[i] = max(q, 0.0)  # chi2 >= 0; only round-off of an exact fit can go below



@njit(cache=True)
def scan_nnls_schur(gp, b3, c, t, u, pa, pb, diag, schur_rel, tol_rel, omega, chi2, beta):  # pragma: no cover
    """:func:`scan_nnls` with free-sign nuisance terms eliminated per shift by their Schur complement (METHODS §5.7).

    ``b3[i, :, 0]`` is ``b`` and ``b3[i, :, 1 + j]`` the cross-Gram with nuisance vector ``j``; ``diag[p]`` is the
    position of pair ``(p, p)`` in the packed ``gp``; ``t`` (m', m) and
    ``u`` (m',) come from ``G_PP^-1 = T^T T`` and ``u = T b_P``. Per shift: ``A = G_HP T^T``, ``G' = G - A A^T``,
    ``b' = b - A u``, ``c' = c - u^T u``; a row with ``G'_aa <= schur_rel G_aa`` (the nuisance terms reproduce it on
    the window) is left out; the nuisance coefficients ``beta = T^T (u - A^T omega)`` go to ``beta``.
    """
    n, k = b3.shape[0], b3.shape[1]
    mr, m = t.shape
    npair = pa.shape[0]
    G = np.zeros((k, k))
    bred = np.zeros(k)
    a = np.zeros((k, mr))
    drop = np.zeros(k, dtype=np.bool_)
    passive = np.ones(k, dtype=np.bool_)
    z, lam, x = np.zeros(k), np.zeros(k), np.zeros(k)
    chol = np.zeros((k, k))
    idx = np.zeros(k, dtype=np.int64)
    excluded, tried = np.zeros(k, dtype=np.bool_), np.zeros(k, dtype=np.bool_)
    cred = c
    for q in range(mr):
        cred -= u[q] * u[q]
    for i in range(n):
        for p in range(k):
            s = b3[i, p, 0]
            for q in range(mr):
                v = 0.0
                for j in range(m):
                    v += b3[i, p, 1 + j] * t[q, j]
                a[p, q] = v
                s -= v * u[q]
            bred[p] = s
        for e in range(npair):
            v = gp[i, e]
            for q in range(mr):
                v -= a[pa[e], q] * a[pb[e], q]
            G[pa[e], pb[e]] = v
            G[pb[e], pa[e]] = v
        for p in range(k):
            drop[p] = G[p, p] <= schur_rel * gp[i, diag[p]]
        for p in range(k):
            if drop[p]:
                bred[p] = 0.0
                for r in range(k):
                    G[p, r] = 0.0
                    G[r, p] = 0.0
        _nnls_core(G, bred, tol_rel, passive, x, z, chol, idx, excluded, tried, lam)
        qv = cred
        for p in range(k):
            omega[i, p] = x[p]
            if x[p] != 0.0:
                qv -= 2.0 * x[p] * bred[p]
                s = 0.0
                for r in range(k):
                    s += G[p, r] * x[r]
                qv += x[p] * s
        chi2[i] = max(qv, 0.0)
        for j in range(m):
            v = 0.0
            for q in range(mr):
                r = u[q]
                for p in range(k):
                    r -= a[p, q] * x[p]
                v += t[q, j] * r
            beta[i, j] = v

