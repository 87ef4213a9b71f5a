"""Exact fast NMF redshift scan: FFT cross-correlation Gram matrices and a warm-started NNLS per shift.

On a common log-wavelength grid (METHODS §5.1) a trial redshift is an integer shift. Observed pixel ``j`` of a
spectrum on the grid ``log lambda = gamma0 + (j0 + j) delta`` meets rest pixel ``s + j`` of the basis ``H``
(``k x n_rest``, non-negative) at shift ``k_z = round(log10(1+z)/delta)``, with lag ``s = j0 - k_z``. For every lag
(METHODS §5.2)::

    chi2(s, w) = c - 2 w^T b(s) + w^T G(s) w,     c = sum_j W_j f_j^2
    b_a(s)  = sum_j (W_j f_j) H_a(s+j)            G_ab(s) = sum_j W_j H_a(s+j) H_b(s+j)

``G`` and ``b`` at all lags come from real FFT cross-correlations (float64, 5-smooth length); the
per-basis transforms are computed once (:func:`prepare_basis`). Per shift, ``min_{w>=0} w^T G w - 2 b^T w`` is solved
exactly by Lawson-Hanson on the normal equations with Cholesky solves, warm-started from the passive set of the
previous shift (METHODS §5.3). ``scipy.optimize.nnls(G, b)`` would minimise a different objective and is never used.

:func:`scan_block` turns the chi2 curves of a block of spectra into the B26 per-spectrum outputs (METHODS §1.3-1.4);
:func:`reference_scan` is the straightforward per-shift weighted tall-matrix NNLS it must agree with.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import scipy.fft
import scipy.optimize

try:
    from numba import njit

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - pure-Python fallback, correct but slow
    HAVE_NUMBA = False

    def njit(*args, **kwargs):  # type: ignore[no-redef]
        """Identity decorator standing in for :func:`numba.njit`."""
        if len(args) == 1 and callable(args[0]) and not kwargs:
            return args[0]
        return lambda f: f


__all__ = [
    "HAVE_NUMBA",
    "PreparedBasis",
    "ScanResult",
    "chi2_metrics",
    "delta_chi2",
    "gram_projections",
    "nnls_gram",
    "nnls_gram_batch",
    "nuisance_vectors",
    "prepare_basis",
    "reference_scan",
    "scan_block",
    "scan_chi2",
    "spike_pixels",
    "trial_grid",
]

Weighting = Literal["weighted", "unweighted"]

#: Pivot below this fraction of the diagonal = linearly dependent variable (dropped).
_PIVOT_REL = 1e-13
_LN10 = math.log(10.0)
#: A basis row is "weakly supported" at a lag when its FFT ``G_aa`` is below this fraction of its Cauchy-Schwarz bound
#: ``||H_a^2||_2 ||w||_2`` (the scale of the FFT round-off, ~1e-16 of it). Its Gram row and projection are then
#: recomputed by FFTs restricted to the pixels those lags' windows cover (round-off relative to the row's size
#: *there*), halving the set of lags while some stay weak, and by direct sums for the last few (:func:`_refine_row`).
_WEAK_REL = 1e-6
#: A basis row whose weighted norm on a window drops below this fraction (squared) once the nuisance terms are
#: projected out (METHODS §5.7) is, there, a smooth polynomial to within 0.1 %: the nuisance terms already span it, and
#: all it could add is a cancellation at absurd coefficients (1e6 against the polynomial) that float64 Grams cannot
#: resolve. Such a row is left out at that lag, in the fast scan and in :func:`reference_scan` alike.
_SCHUR_REL = 1e-6
#: Lags (per row and group) at or below which the weak-row refinement sums directly instead of by FFT.
_DIRECT_LAGS = 24
#: Halvings of a group of weak lags before the remaining ones are summed directly.
_MAX_HALVINGS = 8
#: Forward FFTs of restricted pair products kept per prepared basis (~6 MB each at the paper's grid).
_RANGE_CACHE = 32


# ---------------------------------------------------------------------------------------------------------------------
# NNLS on the normal equations
# ---------------------------------------------------------------------------------------------------------------------


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
                    if s <= _PIVOT_REL * G[ai, ai]:
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
def _scan_nnls(gs, bs, gc, bc, c, pa, pb, tol_rel, omega, chi2):  # pragma: no cover - compiled
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


# ---------------------------------------------------------------------------------------------------------------------
# FFT Gram matrices and projections
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedBasis:
    """Per-basis FFTs for one observed window length (:func:`prepare_basis`).

    Attributes
    ----------
    basis : (k, n_rest) float64 non-negative basis ``H``.
    n_obs : observed pixels per spectrum.
    fft_len : 5-smooth real FFT length >= n_rest + n_obs.
    pair_a, pair_b : the k(k+1)/2 index pairs a <= b of the packed Gram.
    fft_h : (k, fft_len//2+1) rfft of each basis row.
    fft_hh : (npair, fft_len//2+1) rfft of the pair products ``H_a * H_b``.
    hh_norm : (npair,) 2-norms of ``H_a * H_b`` (the scale of the FFT round-off).
    pair_index : (k, k) position of the pair (a, b) in the packed Gram.
    support_index, support_offset : sorted non-zero pixels of row a are
        ``support_index[support_offset[a]:support_offset[a + 1]]``.
    spike_pixels : sorted rest pixels left out of the FFTs (``fft_h``, ``fft_hh``, ``hh_norm``) and summed directly
        at every lag instead: the few pixels where a row towers over its own typical level.
    smooth : ``basis`` with the spike pixels set to 0 (what the FFTs see).
    restricted_cache : forward FFTs of restricted pair products reused across spectra (:func:`_refine_row`).
    """

    basis: np.ndarray
    n_obs: int
    fft_len: int
    pair_a: np.ndarray
    pair_b: np.ndarray
    fft_h: np.ndarray
    fft_hh: np.ndarray
    hh_norm: np.ndarray
    pair_index: np.ndarray
    support_index: np.ndarray
    support_offset: np.ndarray
    spike_pixels: np.ndarray
    smooth: np.ndarray
    restricted_cache: OrderedDict = field(default_factory=OrderedDict, repr=False, compare=False)

    @property
    def k(self) -> int:
        """Number of basis vectors."""
        return self.basis.shape[0]

    @property
    def n_rest(self) -> int:
        """Rest-frame pixels."""
        return self.basis.shape[1]


def spike_pixels(basis: np.ndarray, *, ratio: float = 1e3, max_pixels: int = 64) -> np.ndarray:
    """Rest pixels where some basis row exceeds ``ratio`` times its median non-zero value (at most ``max_pixels``,
    the most extreme first), sorted.

    A float64 FFT correlation is accurate to ~1e-16 of the *largest* terms, at every lag. Trained bases hold a few
    spikes of 1e6-1e8 times the row's level at rest pixels that few training spectra cover (the blue edge of the
    grid), which would make the FFT Gram of that row useless wherever the window misses the spike. Summing those
    pixels directly keeps the FFT part accurate; the split is exact whichever pixels are chosen.

    Examples
    --------
    >>> h = np.ones((2, 50)); h[1, 7] = 1e8
    >>> spike_pixels(h).tolist()
    [7]
    """
    h = np.asarray(basis, dtype=np.float64)
    level = np.array([np.median(row[row > 0]) if (row > 0).any() else 0.0 for row in h])
    with np.errstate(divide="ignore", invalid="ignore"):
        excess = np.max(np.where(level[:, None] > 0, h / level[:, None], 0.0), axis=0)
    candidates = np.flatnonzero(excess > ratio)
    candidates = candidates[np.argsort(excess[candidates])[::-1][:max_pixels]]
    return np.sort(candidates).astype(np.int64)


def prepare_basis(basis: np.ndarray, n_obs: int, *, support_floor: float = 0.0) -> PreparedBasis:
    """Precompute the real FFTs of the basis rows and of their pair products (METHODS §5.2, once per basis).

    Parameters
    ----------
    basis : (k, n_rest) non-negative basis.
    n_obs : observed pixels per spectrum.
    support_floor : entries below ``support_floor * max(H_a)`` are set to exactly 0 in the scanned basis
        (``prepared.basis``). The default 0 scans the given basis exactly. Where a row's window holds only a faint
        tail (G_aa < 1e-6 of its FFT round-off scale), its Gram row is summed directly over the row's non-zero
        pixels: cheap for compact rows, slow (~n_obs k flops per shift) for rows whose tails never reach 0, such
        as multiplicative-update bases decaying to 1e-250. A floor such as 1e-12 restores compact support; it
        changes chi2 only at trials where the fit leans on a row at < 1e-12 of its peak (huge coefficients).

    Examples
    --------
    >>> pb = prepare_basis(np.ones((2, 100)), 30)
    >>> pb.fft_len >= 130, pb.fft_hh.shape[0]
    (True, 3)
    """
    h = np.array(basis, dtype=np.float64)
    if h.ndim != 2 or np.any(h < 0) or not np.all(np.isfinite(h)):
        raise ValueError("basis must be a finite non-negative (k, n_rest) array")
    if support_floor > 0:
        h[h < support_floor * np.max(h, axis=1, keepdims=True)] = 0.0
    k, n_rest = h.shape
    length = scipy.fft.next_fast_len(n_rest + int(n_obs), real=True)
    pa, pb = np.triu_indices(k)
    hh = h[pa] * h[pb]
    pair_index = np.zeros((k, k), dtype=np.int64)
    pair_index[pa, pb] = np.arange(pa.size)
    pair_index[pb, pa] = np.arange(pa.size)
    rows, cols = np.nonzero(h)
    spikes = spike_pixels(h)
    smooth = h.copy()
    smooth[:, spikes] = 0.0
    hh[:, spikes] = 0.0
    return PreparedBasis(
        basis=h,
        n_obs=int(n_obs),
        fft_len=length,
        pair_a=pa.astype(np.int64),
        pair_b=pb.astype(np.int64),
        fft_h=scipy.fft.rfft(smooth, n=length, axis=-1, workers=1),
        fft_hh=scipy.fft.rfft(hh, n=length, axis=-1, workers=1),
        hh_norm=np.linalg.norm(hh, axis=-1),
        pair_index=pair_index,
        support_index=cols.astype(np.int64),
        support_offset=np.r_[0, np.cumsum(np.bincount(rows, minlength=k))].astype(np.int64),
        spike_pixels=spikes,
        smooth=smooth,
    )


def trial_grid(
    delta: float, j0: int, *, z_min: float = 0.0, z_max: float = 6.7, dz: float = 0.0005
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The trial redshift grid (B26: 0..6.7 step 0.0005), its pixel shifts and basis lags.

    Returns ``z`` (nominal trial values), ``shift = round(log10(1+z)/delta)`` and ``lag = j0 - shift`` (int64), for
    spectra on the grid ``gamma0 + (j0 + j) delta``. The quantised redshift of a trial is ``10**(shift*delta) - 1``.

    Examples
    --------
    >>> z, shift, lag = trial_grid(2.215525e-5, 40000)
    >>> len(z), int(shift[0]), int(shift[-1]), bool(np.all(np.diff(shift) > 0))
    (13401, 0, 40013, True)
    """
    n = round((z_max - z_min) / dz) + 1
    z = z_min + dz * np.arange(n, dtype=np.float64)
    shift = np.rint(np.log10(1.0 + z) / delta).astype(np.int64)
    return z, shift, int(j0) - shift


def _clean(flux: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.atleast_2d(np.asarray(flux, dtype=np.float64))
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    good = np.isfinite(f) & np.isfinite(w) & (w > 0)
    return np.where(good, f, 0.0), np.where(good, w, 0.0)


def gram_projections(
    prepared: PreparedBasis, flux: np.ndarray, weights: np.ndarray, lags: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float]:
    """Packed Gram ``G(s)``, projections ``b(s)`` and ``c`` of one spectrum at the given lags, by FFT.

    Returns ``gp`` (nlag, npair) (pairs ``prepared.pair_a/pair_b``), ``b`` (nlag, k) and ``c``. Lags without any
    overlap with the basis give zeros. Rows of weakly supported basis vectors (FFT ``G_aa`` below 1e-6 of its
    Cauchy-Schwarz bound) are recomputed by direct sums, so that no support gives exact zeros.

    Examples
    --------
    >>> pb = prepare_basis(np.array([[1.0, 2.0, 3.0, 0.0]]), 2)
    >>> gp, b, c = gram_projections(pb, np.array([1.0, 1.0]), np.array([1.0, 0.5]), np.array([0, 1, 3]))
    >>> np.round(gp[:, 0], 12).tolist(), np.round(b[:, 0], 12).tolist(), c
    ([3.0, 8.5, 0.0], [2.0, 3.5, 0.0], 1.5)
    """
    f, w = _clean(flux, weights)
    f, w = f[0], w[0]
    gp, b, c = _at_lags(prepared, _correlate(prepared, f, w), f, w, lags)
    return gp, np.ascontiguousarray(b[:, :, 0]), c


def _correlate(prepared: PreparedBasis, f: np.ndarray, w: np.ndarray, nuisance: np.ndarray | None = None) -> np.ndarray:
    """The FFT cross-correlations of one (clean) spectrum with every pair product and basis row, at all lags.

    Rows: the ``npair`` pair products against ``w``, then ``k`` rows per right-hand side (``w f``, then ``w p_j`` for
    each nuisance vector ``p_j``, METHODS §5.7).
    """
    if f.shape[0] != prepared.n_obs:
        raise ValueError(f"spectrum has {f.shape[0]} pixels, the prepared basis expects {prepared.n_obs}")
    length, npair, k = prepared.fft_len, prepared.fft_hh.shape[0], prepared.k
    rhs = _right_hand_sides(f, w, nuisance)
    fw = scipy.fft.rfft(w, n=length, workers=1)
    frhs = np.conj(scipy.fft.rfft(rhs, n=length, axis=-1, workers=1))
    spec = np.empty((npair + k * rhs.shape[0], fw.shape[0]), dtype=np.complex128)
    np.multiply(prepared.fft_hh, np.conj(fw), out=spec[:npair])
    for r in range(rhs.shape[0]):
        np.multiply(prepared.fft_h, frhs[r], out=spec[npair + r * k : npair + (r + 1) * k])
    return scipy.fft.irfft(spec, n=length, axis=-1, workers=1, overwrite_x=True)


def _right_hand_sides(f: np.ndarray, w: np.ndarray, nuisance: np.ndarray | None) -> np.ndarray:
    """``(1 + m, n_obs)``: ``w f``, then ``w p_j`` for the ``m`` nuisance vectors."""
    if nuisance is None:
        return (w * f)[None]
    return np.vstack([w * f, w * np.asarray(nuisance, dtype=np.float64)])


def _at_lags(prepared: PreparedBasis, corr: np.ndarray, f: np.ndarray, w: np.ndarray, lags: np.ndarray,
             nuisance: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Packed Grams ``(nlag, npair)``, projections ``(nlag, k, 1 + m)`` and ``c`` at ``lags`` from
    :func:`_correlate`'s output (spikes and weak rows exact). Projection ``[..., 0]`` is ``b``, ``[..., 1 + j]`` the
    cross-Gram ``G_HP`` with nuisance vector ``j``."""
    lags = np.asarray(lags, dtype=np.int64)
    valid = (lags > -prepared.n_obs) & (lags < prepared.n_rest)
    cols = np.take(corr, np.mod(lags, prepared.fft_len), axis=1).T  # (nlag, npair + k (1 + m))
    cols[~valid] = 0.0
    npair, k = prepared.fft_hh.shape[0], prepared.k
    rhs = _right_hand_sides(f, w, nuisance)
    gp = np.ascontiguousarray(cols[:, :npair])
    b = np.ascontiguousarray(cols[:, npair:].reshape(lags.size, rhs.shape[0], k).transpose(0, 2, 1))
    _add_spikes(prepared.basis, prepared.spike_pixels, w, rhs, lags, gp, b, prepared.pair_a, prepared.pair_b,
                prepared.n_obs)
    _refine_weak(prepared, w, rhs, lags, gp, b)
    return gp, b, float(np.sum(w * f * f))


@njit(cache=True)
def _add_spikes(h, spikes, w, rhs, lags, gp, b, pa, pb, n_obs):  # pragma: no cover - compiled
    """Add the direct sums over the spike pixels (left out of the FFTs) to the Grams and projections."""
    for i in range(lags.shape[0]):
        s = lags[i]
        for p in spikes:
            j = p - s
            if j < 0 or j >= n_obs or w[j] == 0.0:
                continue
            for q in range(pa.shape[0]):
                gp[i, q] += w[j] * h[pa[q], p] * h[pb[q], p]
            for a in range(h.shape[0]):
                for r in range(rhs.shape[0]):
                    b[i, a, r] += rhs[r, j] * h[a, p]


def _refine_weak(prepared: PreparedBasis, w: np.ndarray, rhs: np.ndarray, lags: np.ndarray, gp: np.ndarray,
                 b: np.ndarray) -> None:
    """Recompute, in place, the Gram rows and projections (``b``: nlag x k x right-hand sides ``rhs``) of basis rows
    that are weakly supported at some lags."""
    diag = np.diagonal(prepared.pair_index)
    weak = gp[:, diag] < _WEAK_REL * prepared.hh_norm[diag] * np.linalg.norm(w)
    weak &= (lags > -prepared.n_obs)[:, None] & (lags < prepared.n_rest)[:, None]
    spectrum_ffts: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # rows weak at the same lags share FFT lengths
    for a in np.flatnonzero(weak.any(axis=0)):
        idx = np.flatnonzero(weak[:, a])
        idx = idx[np.argsort(lags[idx], kind="stable")]
        # lags further apart than a window share no pixel: refine such groups separately
        for group in np.split(idx, np.flatnonzero(np.diff(lags[idx]) > prepared.n_obs) + 1):
            _refine_row(prepared, w, rhs, int(a), group, lags, gp, b, 0, spectrum_ffts)


def _refine_row(prepared: PreparedBasis, w: np.ndarray, rhs: np.ndarray, a: int, idx: np.ndarray, lags: np.ndarray,
                gp: np.ndarray, b: np.ndarray, halvings: int,
                spectrum_ffts: dict[int, tuple[np.ndarray, np.ndarray]]) -> None:
    """Gram row ``a`` and ``b_a`` at ``lags[idx]`` (sorted) from FFTs over only the pixels these windows cover.

    The round-off is then relative to row ``a``'s size on those pixels rather than over the whole grid; lags where
    it is still too weak are split in two halves and refined again, and the last few are summed directly.
    """
    n_obs, k = prepared.n_obs, prepared.k
    pairs = prepared.pair_index[a]
    sub = lags[idx]
    if idx.size <= _DIRECT_LAGS or halvings >= _MAX_HALVINGS:
        g_rows, b_rows = np.zeros((idx.size, k)), np.zeros((idx.size, rhs.shape[0]))
        _direct_row(prepared.basis, w, rhs, a, sub, prepared.support_index, prepared.support_offset, n_obs, g_rows,
                    b_rows)
        gp[idx[:, None], pairs[None, :]] = g_rows
        b[idx, a] = b_rows
        return
    # exactly the covered pixels (widening towards a row's bright part would spoil the point); spectra of one
    # instrument mostly share these ranges, so the forward FFTs are kept for the next spectra
    p0, p1 = max(int(sub[0]), 0), min(int(sub[-1]) + n_obs, prepared.n_rest)
    length = scipy.fft.next_fast_len(p1 - p0 + n_obs, real=True)
    cache = prepared.restricted_cache
    key = (a, p0, p1)
    if key in cache:
        cache.move_to_end(key)
        forward, norm_aa = cache[key]
    else:
        h = prepared.smooth[:, p0:p1]
        products = np.vstack([h[a] * h, h[a]])  # (k + 1, m): the Gram row's pair products, then the row itself
        forward = scipy.fft.rfft(products, n=length, axis=-1, workers=1)
        norm_aa = float(np.linalg.norm(products[a]))
        cache[key] = (forward, norm_aa)
        while len(cache) > _RANGE_CACHE:
            cache.popitem(last=False)
    if length not in spectrum_ffts:
        spectrum_ffts[length] = (np.conj(scipy.fft.rfft(w, n=length, workers=1)),
                                 np.conj(scipy.fft.rfft(rhs, n=length, axis=-1, workers=1)))
    fw, frhs = spectrum_ffts[length]
    spectra = np.empty((k + rhs.shape[0], forward.shape[1]), dtype=forward.dtype)
    np.multiply(forward[:k], fw, out=spectra[:k])
    np.multiply(forward[k], frhs, out=spectra[k:])
    corr = scipy.fft.irfft(spectra, n=length, axis=-1, workers=1, overwrite_x=True)
    cols = corr[:, np.mod(sub - p0, length)].T  # (nsub, k + right-hand sides)
    g_rows, b_rows = np.ascontiguousarray(cols[:, :k]), np.ascontiguousarray(cols[:, k:])
    _add_row_spikes(prepared.basis, a, prepared.spike_pixels, w, rhs, sub, g_rows, b_rows, n_obs)
    fine = g_rows[:, a] >= _WEAK_REL * norm_aa * np.linalg.norm(w)
    gp[idx[fine, None], pairs[None, :]] = g_rows[fine]
    b[idx[fine], a] = b_rows[fine]
    rest = idx[~fine]
    if rest.size:
        half = rest.size // 2
        _refine_row(prepared, w, rhs, a, rest[:half], lags, gp, b, halvings + 1, spectrum_ffts)
        _refine_row(prepared, w, rhs, a, rest[half:], lags, gp, b, halvings + 1, spectrum_ffts)


@njit(cache=True)
def _add_row_spikes(h, a, spikes, w, rhs, lags, g_rows, b_rows, n_obs):  # pragma: no cover - compiled
    """:func:`_add_spikes` for Gram row ``a`` and ``b_a`` only."""
    for i in range(lags.shape[0]):
        for p in spikes:
            j = p - lags[i]
            if j < 0 or j >= n_obs or w[j] == 0.0:
                continue
            for c in range(h.shape[0]):
                g_rows[i, c] += w[j] * h[a, p] * h[c, p]
            for r in range(rhs.shape[0]):
                b_rows[i, r] += rhs[r, j] * h[a, p]


@njit(cache=True)
def _direct_row(h, w, rhs, a, lags, sup, off, n_obs, g_rows, b_rows):  # pragma: no cover - compiled
    """Direct sums of Gram row ``a`` and ``b_a`` at each lag, over row ``a``'s non-zero pixels in the window."""
    k = h.shape[0]
    row = sup[off[a] : off[a + 1]]
    for i in range(lags.shape[0]):
        s = lags[i]
        for q in range(np.searchsorted(row, s), np.searchsorted(row, s + n_obs)):
            p = row[q]
            wj = w[p - s]
            if wj == 0.0:
                continue
            t = wj * h[a, p]
            for c in range(k):
                g_rows[i, c] += t * h[c, p]
            for r in range(rhs.shape[0]):
                b_rows[i, r] += rhs[r, p - s] * h[a, p]


def _unweighted_gram(prepared: PreparedBasis, lags: np.ndarray) -> np.ndarray:
    """Packed Gram over the whole observed window (all weights 1), Moose's spectrum-independent Gram."""
    gp, _, _ = gram_projections(prepared, np.zeros(prepared.n_obs), np.ones(prepared.n_obs), lags)
    return gp


def _unweighted_projections(prepared: PreparedBasis, f: np.ndarray, lags: np.ndarray, ug: np.ndarray) -> np.ndarray:
    """Moose's ``b^u_a(s) = sum_j f_j H_a(s+j)`` (k inverse FFTs), exact on weakly supported rows of ``ug``."""
    length = prepared.fft_len
    lags = np.asarray(lags, dtype=np.int64)
    ff = scipy.fft.rfft(f, n=length, workers=1)
    corr = scipy.fft.irfft(prepared.fft_h * np.conj(ff), n=length, axis=-1, workers=1, overwrite_x=True)
    b = np.ascontiguousarray(np.take(corr, np.mod(lags, length), axis=1).T)[:, :, None]
    b[~((lags > -prepared.n_obs) & (lags < prepared.n_rest))] = 0.0
    ones = np.ones(prepared.n_obs)
    _add_spikes(prepared.basis, prepared.spike_pixels, ones, f[None], lags, np.zeros_like(ug), b, prepared.pair_a,
                prepared.pair_b, prepared.n_obs)
    _refine_weak(prepared, ones, f[None], lags, ug.copy(), b)
    return np.ascontiguousarray(b[:, :, 0])


def nuisance_vectors(n_obs: int, order: int) -> np.ndarray | None:
    """Legendre polynomials ``P_0 .. P_order`` over the observed window (``x`` from -1 to 1), ``(order + 1, n_obs)``.

    The free-sign nuisance terms of the robust scan (METHODS §5.7): ``P_0`` absorbs a sky pedestal, the higher ones
    flat-field tilts and curvature. ``order < 0`` means no nuisance terms (None).

    Examples
    --------
    >>> nuisance_vectors(5, 1).tolist()
    [[1.0, 1.0, 1.0, 1.0, 1.0], [-1.0, -0.5, 0.0, 0.5, 1.0]]
    >>> nuisance_vectors(5, -1) is None
    True
    """
    if order < 0:
        return None
    x = np.linspace(-1.0, 1.0, int(n_obs))
    return np.polynomial.legendre.legvander(x, int(order)).T.copy()


def _schur(gp: np.ndarray, b: np.ndarray, c: float, f: np.ndarray, w: np.ndarray, nuisance: np.ndarray,
           pa: np.ndarray, pb: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, np.ndarray, np.ndarray,
                                                     np.ndarray]:
    """Eliminate the free-sign nuisance coefficients from the normal equations (METHODS §5.7).

    With ``G_PP^-1 = T^T T`` (``T`` from an eigendecomposition, so a rank-deficient ``G_PP`` keeps its range), the
    reduced problem is ``G' = G_HH - A A^T``, ``b' = b_H - A u``, ``c' = c - u^T u`` with ``A = G_HP T^T`` and
    ``u = T b_P``; the nuisance coefficients are ``beta = T^T (u - A^T omega)``. Returns the packed ``G'``, ``b'``,
    ``c'``, ``T``, ``A`` and ``u``. A basis row that the nuisance terms reproduce on the window to within
    :data:`_SCHUR_REL` of its own norm is dropped there (its reduced Gram is round-off).
    """
    g_pp = (nuisance * w) @ nuisance.T
    b_p = nuisance @ (w * f)
    values, vectors = np.linalg.eigh(g_pp)
    keep = values > _PIVOT_REL * max(float(values[-1]), 0.0)
    t = (vectors[:, keep] / np.sqrt(values[keep])).T  # (m', m)
    a = b[:, :, 1:] @ t.T  # (nlag, k, m')
    u = t @ b_p
    g_red = gp - np.einsum("lpt,lpt->lp", a[:, pa], a[:, pb])
    b_red = b[:, :, 0] - a @ u
    diag = np.flatnonzero(pa == pb)
    degenerate = g_red[:, diag] <= _SCHUR_REL * gp[:, diag]  # (nlag, k)
    if degenerate.any():
        rows = degenerate[:, pa] | degenerate[:, pb]
        g_red[rows] = 0.0
        b_red[degenerate] = 0.0
    return g_red, np.ascontiguousarray(b_red), c - float(u @ u), t, a, u


def scan_chi2(
    prepared: PreparedBasis,
    flux: np.ndarray,
    weights: np.ndarray,
    lags: np.ndarray,
    *,
    weighting: Weighting = "weighted",
    tol_rel: float = 1e-12,
    unweighted_gram: np.ndarray | None = None,
    correlations: np.ndarray | None = None,
    nuisance: np.ndarray | None = None,
    return_nuisance: bool = False,
) -> tuple[np.ndarray, ...]:
    """chi2 and NNLS coefficients of one spectrum at every lag (FFT Grams + warm-started exact NNLS).

    ``weighting="unweighted"`` reproduces Moose: w from the unweighted window Gram and ``b^u = xcorr(f, H)``; chi2
    is still the weighted ``c - 2 w^T b + w^T G w``.

    ``nuisance`` (m, n_obs) adds free-sign observed-frame vectors beside the non-negative basis at every lag
    (:func:`nuisance_vectors`; weighted only), eliminated by their Schur complement (:func:`_schur`) so the NNLS is
    unchanged; with ``return_nuisance`` their coefficients (nlag, m) come third. ``correlations`` must then be
    :func:`_correlate`'s output with the same ``nuisance``.

    Examples
    --------
    >>> h = np.array([[1.0, 2.0, 3.0, 0.0, 0.0, 0.0]])
    >>> chi2, omega = scan_chi2(prepare_basis(h, 3), np.array([2.0, 4.0, 6.0]), np.ones(3), np.arange(4))
    >>> int(np.argmin(chi2)), round(float(omega[0, 0]), 12)
    (0, 2.0)
    >>> chi2, omega, beta = scan_chi2(prepare_basis(h, 3), np.array([1.0, 3.0, 5.0]), np.ones(3), np.arange(4),
    ...                               nuisance=np.ones((1, 3)), return_nuisance=True)  # 2 h - 1: a pedestal
    >>> int(np.argmin(chi2)), round(float(omega[0, 0]), 9), round(float(beta[0, 0]), 9)
    (0, 2.0, -1.0)
    """
    f, w = _clean(flux, weights)
    f, w = f[0], w[0]
    if nuisance is not None:
        nuisance = np.atleast_2d(np.asarray(nuisance, dtype=np.float64))
        if weighting != "weighted":
            raise ValueError("nuisance terms need weighting='weighted' (Moose's unweighted fit has none)")
        if nuisance.shape[1] != f.shape[0]:
            raise ValueError(f"nuisance vectors have {nuisance.shape[1]} pixels, the spectrum {f.shape[0]}")
    corr = _correlate(prepared, f, w, nuisance) if correlations is None else correlations
    gp, b3, c = _at_lags(prepared, corr, f, w, lags, nuisance)
    if nuisance is not None:
        gp, b, c, t, a, u = _schur(gp, b3, c, f, w, nuisance, prepared.pair_a, prepared.pair_b)
    else:
        b = np.ascontiguousarray(b3[:, :, 0])
    if weighting == "weighted":
        gs, bs = gp, b
    elif weighting == "unweighted":
        gs = _unweighted_gram(prepared, lags) if unweighted_gram is None else unweighted_gram
        bs = _unweighted_projections(prepared, f, lags, gs)
    else:
        raise ValueError(f"unknown weighting {weighting!r}")
    n = b.shape[0]
    omega = np.zeros((n, prepared.k))
    chi2 = np.zeros(n)
    _scan_nnls(gs, bs, gp, b, c, prepared.pair_a, prepared.pair_b, float(tol_rel), omega, chi2)
    if not return_nuisance:
        return chi2, omega
    if nuisance is None:
        return chi2, omega, np.zeros((n, 0))
    beta = (u[None, :] - np.einsum("lkt,lk->lt", a, omega)) @ t  # (nlag, m)
    return chi2, omega, beta


# ---------------------------------------------------------------------------------------------------------------------
# Metrics and the block scan
# ---------------------------------------------------------------------------------------------------------------------


def chi2_metrics(chi2: np.ndarray, *, exclusion_steps: int = 25, n_minima: int = 5) -> dict[str, np.ndarray | float]:
    """B26 §3.4 metrics of one chi2 curve over the trial grid (METHODS §1.4).

    ``significance = 1 - chi2_min / Q1`` (numpy linear percentile), ``robustness = (min2 - min1) / sigma_Q1`` with
    ``sigma_Q1`` the ddof=1 std of chi2 <= Q1 (ties within 1e-9 relative of Q1 included) and ``min2`` the lowest
    chi2 outside +-``exclusion_steps`` trials of the argmin. ``minima_index`` lists up to ``n_minima`` local
    minima, lowest first, each at least
    ``exclusion_steps + 1`` trials from the ones before it (padded with -1).

    Examples
    --------
    >>> chi2 = np.full(200, 10.0); chi2[50] = 2.0; chi2[150] = 4.0; chi2[::7] += 1
    >>> m = chi2_metrics(chi2)
    >>> int(m["index"]), float(m["significance"]), m["minima_index"][:3].tolist()
    (50, 0.8, [50, 150, 1])
    """
    chi2 = np.asarray(chi2, dtype=np.float64)
    out: dict[str, np.ndarray | float] = {
        "index": -1, "chi2_min": np.nan, "significance": np.nan, "robustness": np.nan,
        "minima_index": np.full(n_minima, -1, dtype=np.int64), "minima_chi2": np.full(n_minima, np.nan),
        "minima_significance": np.full(n_minima, np.nan),
    }  # fmt: skip
    if chi2.size == 0 or not np.all(np.isfinite(chi2)):
        return out
    i1 = int(np.argmin(chi2))
    q1 = float(np.percentile(chi2, 25))
    # Curves often hold plateaus of identical chi2 (trials where no basis row meets the data, chi2 = c) sitting at
    # Q1; a rounding-level tolerance keeps such ties together, otherwise 1e-13 noise flips members of the set and
    # moves sigma_Q1 (and R) by several per cent.
    low = chi2[chi2 <= q1 + 1e-9 * abs(q1)]
    sigma = float(np.std(low, ddof=1)) if low.size > 1 else np.nan
    far = np.ones(chi2.size, dtype=bool)
    far[max(i1 - exclusion_steps, 0) : i1 + exclusion_steps + 1] = False
    min2 = float(np.min(chi2[far])) if far.any() else np.nan
    if not q1 > 0:  # a curve that is 0 on a quarter of the trials (exact fits) has no defined significance
        q1 = np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        out["significance"] = 1.0 - chi2[i1] / q1
        out["robustness"] = (min2 - chi2[i1]) / sigma if sigma > 0 else np.nan
    out["index"] = i1
    out["chi2_min"] = float(chi2[i1])
    # local minima (plateaus count once), lowest first, separated by the exclusion window
    left = np.r_[np.inf, chi2[:-1]]
    right = np.r_[chi2[1:], np.inf]
    cand = np.flatnonzero((chi2 < left) & (chi2 <= right))
    cand = cand[np.argsort(chi2[cand], kind="stable")]
    chosen: list[int] = []
    for i in cand:
        if all(abs(int(i) - j) > exclusion_steps for j in chosen):
            chosen.append(int(i))
            if len(chosen) == n_minima:
                break
    mi = out["minima_index"]
    mi[: len(chosen)] = chosen
    mc = out["minima_chi2"]
    mc[: len(chosen)] = chi2[chosen]
    with np.errstate(divide="ignore", invalid="ignore"):
        out["minima_significance"] = 1.0 - mc / q1
    return out


#: Speed of light (km/s), for Redrock's velocity windows.
_C_KMS = 299792.458


def delta_chi2(chi2: np.ndarray, z: np.ndarray, best: int, *, window_kms: float = 1000.0) -> float:
    """Redrock's DELTACHI2: chi2 of the lowest local minimum more than ``window_kms`` from the best, minus the best.

    Minima are found on the whole curve (plateaus count once) and those within ``|c (z - z_best) / (1 + z_best)| <=
    window_kms`` are dropped, as Redrock drops candidates within 1000 km/s of its best. NaN when no minimum lies
    outside the window (e.g. a one-trial grid).

    Examples
    --------
    >>> z = np.linspace(0.0, 0.1, 101)
    >>> chi2 = 100 - 60 * np.exp(-0.5 * ((z - 0.05) / 0.002) ** 2) - 20 * np.exp(-0.5 * ((z - 0.08) / 0.002) ** 2)
    >>> round(delta_chi2(chi2, z, int(np.argmin(chi2))), 6)
    40.0
    """
    chi2 = np.asarray(chi2, dtype=np.float64)
    left = np.r_[np.inf, chi2[:-1]]
    right = np.r_[chi2[1:], np.inf]
    minima = np.flatnonzero((chi2 < left) & (chi2 <= right))
    far = np.abs(_C_KMS * (np.asarray(z)[minima] - z[best]) / (1.0 + z[best])) > window_kms
    if not far.any():
        return float("nan")
    return float(np.min(chi2[minima[far]]) - chi2[best])


@dataclass
class ScanResult:
    """Per-spectrum outputs of :func:`scan_block` (leading axis: spectrum). NaN / -1 where a spectrum has no data.

    ``z`` is the quantised redshift ``10**(shift*delta) - 1`` of the best trial; ``minima_*`` have a trailing axis of
    length ``n_minima``; ``chi2`` is the full curve over the trials when requested. ``omega`` belongs to the best
    *trial* (like ``chi2_min``), so it stays consistent with the trial-grid metrics.

    With refinement (the default), ``z_refined`` is ``10**(shift*delta) - 1`` at the fractional shift of the parabola
    vertex around the best integer shift within one trial step of the best trial, ``chi2_refined`` the chi2 at that
    integer shift (never above ``chi2_min``), ``omega_refined`` its coefficients and ``zerr`` the 1-sigma width of
    that parabola in z (``Δχ² = 1``: ``ln10 delta (1+z) sqrt(2 / curvature)``, uncalibrated; NaN where the parabola is
    not convex or the best integer shift is at the grid's end); all four are None without it.
    ``nuisance_coeff`` (spectrum x m) holds the free-sign nuisance coefficients at the best trial (m = 0 without
    nuisance terms) and ``deltachi2`` Redrock's DELTACHI2 (:func:`delta_chi2`).
    """

    index: np.ndarray
    z: np.ndarray
    chi2_min: np.ndarray
    omega: np.ndarray
    significance: np.ndarray
    robustness: np.ndarray
    minima_z: np.ndarray
    minima_chi2: np.ndarray
    minima_significance: np.ndarray
    npixels: np.ndarray
    nuisance_coeff: np.ndarray
    deltachi2: np.ndarray
    chi2: np.ndarray | None = None
    z_refined: np.ndarray | None = None
    chi2_refined: np.ndarray | None = None
    omega_refined: np.ndarray | None = None
    zerr: np.ndarray | None = None


def _parabola_vertex(y_minus: float, y0: float, y_plus: float) -> float:
    """Vertex of the parabola through ``(-1, y_minus)``, ``(0, y0)``, ``(1, y_plus)``, clamped to [-0.5, 0.5].

    Returns 0 where the parabola is not convex or a value is not finite (keep the integer minimum).

    Examples
    --------
    >>> _parabola_vertex(1.5625, 0.0625, 0.5625)  # (x - 0.25)**2
    0.25
    >>> _parabola_vertex(4.0, 1.0, 0.1), _parabola_vertex(1.0, 0.0, -1.0)  # clamped; not convex
    (0.5, 0.0)
    """
    curvature = y_minus - 2.0 * y0 + y_plus
    if not (np.isfinite(curvature) and curvature > 0):
        return 0.0
    return float(np.clip(0.5 * (y_minus - y_plus) / curvature, -0.5, 0.5))


def scan_block(
    prepared: PreparedBasis,
    flux: np.ndarray,
    weights: np.ndarray,
    shifts: np.ndarray,
    delta: float,
    j0: int,
    *,
    weighting: Weighting = "weighted",
    tol_rel: float = 1e-12,
    exclusion_steps: int = 25,
    n_minima: int = 5,
    return_chi2: bool = False,
    refine: bool = True,
    nuisance: np.ndarray | None = None,
) -> ScanResult:
    """NMF redshift scan of a block of spectra on the observed grid ``gamma0 + (j0 + j) delta``.

    Parameters
    ----------
    prepared : :func:`prepare_basis` of the basis for ``n_obs = flux.shape[1]``.
    flux, weights : (nspec, n_obs) flux and inverse variance (0 = masked; NaN flux there is ignored).
    shifts : (ntrial,) integer pixel shifts of the trial grid (:func:`trial_grid`), increasing.
    delta, j0 : grid step and the observed grid's first pixel index on the rest grid.
    weighting : "weighted" (dzspec default) or "unweighted" (Moose: w from the unweighted Gram).
    return_chi2 : keep the chi2 curve over the trials (``ScanResult.chi2``, float64).
    refine : sub-pixel refinement of the best trial (METHODS §1.3, not in B26): chi2 at every integer shift from
        ``shifts[best - 1]`` to ``shifts[best + 1]`` (clipped at the grid ends), the lowest of them, then the
        3-point parabola through it and its integer neighbours (:func:`_parabola_vertex`); the parabola's width is
        ``ScanResult.zerr`` (uncalibrated: :func:`dzspec.kernels.zfind.nmf_zfind` scales it).
    nuisance : (m, n_obs) free-sign observed-frame vectors fitted beside the basis at every trial (METHODS §5.7,
        :func:`nuisance_vectors`); their coefficients at the best trial are ``ScanResult.nuisance_coeff``.

    Examples
    --------
    >>> x = np.arange(300.0)
    >>> h = np.stack([np.exp(-0.5 * ((x - 120) / 3) ** 2), np.full(300, 0.1)])
    >>> flux = 2 * h[0, 100:200] + 0.1; weights = np.ones((1, 100))
    >>> r = scan_block(prepare_basis(h, 100), flux[None], weights, np.arange(0, 60, 4), 1e-4, 100)
    >>> int(r.index[0]), bool(r.chi2_min[0] < 1e-12), int(r.npixels[0]), abs(float(r.z_refined[0])) < 1e-12
    (0, True, 100, True)
    """
    f, w = _clean(flux, weights)
    nspec = f.shape[0]
    shifts = np.asarray(shifts, dtype=np.int64)
    lags = int(j0) - shifts
    ntrial = shifts.size
    k = prepared.k
    res = ScanResult(
        index=np.full(nspec, -1, dtype=np.int64), z=np.full(nspec, np.nan), chi2_min=np.full(nspec, np.nan),
        omega=np.full((nspec, k), np.nan), significance=np.full(nspec, np.nan), robustness=np.full(nspec, np.nan),
        minima_z=np.full((nspec, n_minima), np.nan), minima_chi2=np.full((nspec, n_minima), np.nan),
        minima_significance=np.full((nspec, n_minima), np.nan), npixels=np.sum(w > 0, axis=1).astype(np.int64),
        chi2=np.full((nspec, ntrial), np.nan) if return_chi2 else None,
        z_refined=np.full(nspec, np.nan) if refine else None, chi2_refined=np.full(nspec, np.nan) if refine else None,
        omega_refined=np.full((nspec, k), np.nan) if refine else None, zerr=np.full(nspec, np.nan) if refine else None,
        nuisance_coeff=np.full((nspec, 0 if nuisance is None else np.atleast_2d(nuisance).shape[0]), np.nan),
        deltachi2=np.full(nspec, np.nan),
    )  # fmt: skip
    zq = 10.0 ** (shifts * float(delta)) - 1.0
    ug = _unweighted_gram(prepared, lags) if weighting == "unweighted" else None
    # Moose's Gram is spectrum-independent: one FFT pass over every integer shift of the grid serves all refinements
    ug_all = (_unweighted_gram(prepared, int(j0) - np.arange(shifts[0], shifts[-1] + 1))
              if refine and ntrial and weighting == "unweighted" else None)
    for i in range(nspec):
        if res.npixels[i] == 0:
            continue
        corr = _correlate(prepared, f[i], w[i], nuisance)  # once per spectrum: the refinement reads other lags of it
        chi2, omega, beta = scan_chi2(prepared, f[i], w[i], lags, weighting=weighting, tol_rel=tol_rel,
                                      unweighted_gram=ug, correlations=corr, nuisance=nuisance, return_nuisance=True)
        m = chi2_metrics(chi2, exclusion_steps=exclusion_steps, n_minima=n_minima)
        best = int(m["index"])
        if best < 0:
            continue
        res.index[i] = best
        res.z[i] = zq[best]
        res.chi2_min[i] = m["chi2_min"]
        res.omega[i] = omega[best]
        res.nuisance_coeff[i] = beta[best]
        res.deltachi2[i] = delta_chi2(chi2, zq, best)
        res.significance[i] = m["significance"]
        res.robustness[i] = m["robustness"]
        mi = np.asarray(m["minima_index"])
        res.minima_z[i] = np.where(mi >= 0, zq[np.maximum(mi, 0)], np.nan)
        res.minima_chi2[i] = m["minima_chi2"]
        res.minima_significance[i] = m["minima_significance"]
        if res.chi2 is not None:
            res.chi2[i] = chi2
        if refine:
            _refine_best(prepared, f[i], w[i], shifts, best, chi2[best], omega[best], delta, j0, weighting, tol_rel,
                         ug_all, corr, nuisance, res, i)
    return res


def _refine_best(prepared: PreparedBasis, f: np.ndarray, w: np.ndarray, shifts: np.ndarray, best: int,
                 chi2_best: float, omega_best: np.ndarray, delta: float, j0: int, weighting: Weighting,
                 tol_rel: float, ug_all: np.ndarray | None, corr: np.ndarray, nuisance: np.ndarray | None,
                 res: ScanResult, i: int) -> None:
    """Fill spectrum ``i``'s refined outputs (:func:`scan_block`, ``refine``) from its best trial ``best``."""
    lo, hi = shifts[max(best - 1, 0)], shifts[min(best + 1, shifts.size - 1)]
    # one extra pixel each side (inside the grid), so a minimum at the window's edge still has both neighbours
    fine = np.arange(max(lo - 1, shifts[0]), min(hi + 1, shifts[-1]) + 1)
    ugf = None if ug_all is None else np.ascontiguousarray(ug_all[fine - shifts[0]])
    chi2, omega = scan_chi2(prepared, f, w, int(j0) - fine, weighting=weighting, tol_rel=tol_rel,
                            unweighted_gram=ugf, correlations=corr, nuisance=nuisance)
    # the best trial's own shift is the same problem: reuse its values, so that chi2_refined <= chi2_min exactly
    # whatever the round-off of the second FFT pass and the differently warm-started NNLS
    at = int(shifts[best] - fine[0])
    chi2[at], omega[at] = chi2_best, omega_best
    window = np.flatnonzero((fine >= lo) & (fine <= hi))
    j = int(window[np.argmin(chi2[window])])
    inner = 0 < j < fine.size - 1
    offset = _parabola_vertex(chi2[j - 1], chi2[j], chi2[j + 1]) if inner else 0.0
    res.z_refined[i] = 10.0 ** ((fine[j] + offset) * float(delta)) - 1.0  # type: ignore[index]
    curvature = chi2[j - 1] - 2.0 * chi2[j] + chi2[j + 1] if inner else np.nan
    if curvature > 0:  # chi2 = chi2_min + (shift - vertex)^2 * curvature / 2: Δχ² = 1 at sqrt(2 / curvature) pixels
        res.zerr[i] = _LN10 * float(delta) * (1.0 + res.z_refined[i]) * np.sqrt(2.0 / curvature)  # type: ignore[index]
    res.chi2_refined[i] = chi2[j]  # type: ignore[index]
    res.omega_refined[i] = omega[j]  # type: ignore[index]


# ---------------------------------------------------------------------------------------------------------------------
# Straightforward reference
# ---------------------------------------------------------------------------------------------------------------------


def reference_scan(
    basis: np.ndarray, flux: np.ndarray, weights: np.ndarray, lags: np.ndarray, *, nuisance: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per lag, weighted ``scipy.optimize.nnls`` on the tall matrix ``(sqrt(w) H_window^T, sqrt(w) f)``; one spectrum.

    Slow by design: the check for the FFT scan. Pin one BLAS thread (threadpoolctl) when timing it.
    Returns chi2 (nlag,) evaluated as ``sum w (f - H_window^T w)^2`` and the coefficients (nlag, k). With
    ``nuisance`` (m, n_obs) the fit is the bounded least squares ``scipy.optimize.lsq_linear`` (BVLS) with the basis
    coefficients >= 0 and the nuisance coefficients free, the straightforward form of :func:`scan_chi2`'s.

    Examples
    --------
    >>> h = np.array([[1.0, 2.0, 3.0, 0.0, 0.0, 0.0]])
    >>> chi2, omega = reference_scan(h, np.array([2.0, 4.0, 6.0]), np.ones(3), np.arange(4))
    >>> int(np.argmin(chi2)), round(float(omega[0, 0]), 12)
    (0, 2.0)
    """
    h = np.asarray(basis, dtype=np.float64)
    f, w = _clean(flux, weights)
    f, w = f[0], w[0]
    k, n_rest = h.shape
    n_obs = f.shape[0]
    p = np.zeros((0, n_obs)) if nuisance is None else np.atleast_2d(np.asarray(nuisance, dtype=np.float64))
    padded = np.zeros((k, n_obs + n_rest + n_obs))
    padded[:, n_obs : n_obs + n_rest] = h
    sw = np.sqrt(w)
    y = sw * f
    chi2 = np.empty(len(lags))
    omega = np.zeros((len(lags), k))
    lower = np.r_[np.zeros(k), np.full(p.shape[0], -np.inf)]
    for i, s in enumerate(np.asarray(lags, dtype=np.int64)):
        window = padded[:, n_obs + s : n_obs + s + n_obs] if -n_obs < s < n_rest else np.zeros((k, n_obs))
        if p.shape[0] == 0:
            om, _ = scipy.optimize.nnls(sw[:, None] * window.T, y)
            r = f - om @ window
        else:
            design = np.vstack([window, p])
            used = np.r_[_beyond_nuisance(sw * window, sw * p), np.ones(p.shape[0], dtype=bool)]
            fit = scipy.optimize.lsq_linear(sw[:, None] * design[used].T, y, bounds=(lower[used], np.inf),
                                            method="bvls", tol=1e-14, lsmr_tol="auto")
            x = np.zeros(k + p.shape[0])
            x[used] = fit.x
            om = x[:k]
            r = f - x @ design
        chi2[i] = np.sum(w * r * r)
        omega[i] = om
    return chi2, omega


def _beyond_nuisance(rows: np.ndarray, nuisance: np.ndarray) -> np.ndarray:
    """Which (weighted) rows keep more than :data:`_SCHUR_REL` of their squared norm once projected off the span of
    the (weighted) nuisance vectors; all-zero rows never do."""
    q, _ = np.linalg.qr(nuisance.T)
    residual = rows - (rows @ q) @ q.T
    norm = np.sum(rows * rows, axis=1)
    return (norm > 0) & (np.sum(residual * residual, axis=1) > _SCHUR_REL * norm)
