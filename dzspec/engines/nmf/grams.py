"""FFT Gram matrices and projections of one spectrum against an NMF basis at every lag (METHODS §5.2).

On a common log-wavelength grid (METHODS §5.1) a trial redshift is an integer shift. Observed pixel ``j`` of a
spectrum on the grid ``log lambda = gamma0 + (j0 + j) delta`` meets rest pixel ``s + j`` of the basis ``H``
(``k x n_rest``, non-negative) at lag ``s = j0 - k_z``. For every lag::

    chi2(s, w) = c - 2 w^T b(s) + w^T G(s) w,     c = sum_j W_j f_j^2
    b_a(s)  = sum_j (W_j f_j) H_a(s+j)            G_ab(s) = sum_j W_j H_a(s+j) H_b(s+j)

``G`` and ``b`` at all lags come from real FFT cross-correlations (float64, 5-smooth length); the per-basis
transforms are computed once (:func:`prepare_basis`). Spike pixels of the basis are summed directly and weakly
supported rows recomputed over the pixels their windows cover, so that no lag loses its accuracy to the FFT's
round-off.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import scipy.fft

from dzspec.engines.nmf.nnls import njit

__all__ = [
    "PreparedBasis",
    "fft_correlations",
    "gram_projections",
    "grams_at_lags",
    "prepare_basis",
    "spike_pixels",
    "unweighted_projections",
    "unweighted_window_gram",
    "zero_bad_pixels",
]

#: A basis row is "weakly supported" at a lag when its FFT ``G_aa`` is below this fraction of its Cauchy-Schwarz bound
#: ``||H_a^2||_2 ||w||_2`` (the scale of the FFT round-off, ~1e-16 of it). Its Gram row and projection are then
#: recomputed by FFTs restricted to the pixels those lags' windows cover (round-off relative to the row's size
#: *there*), halving the set of lags while some stay weak, and by direct sums for the last few (:func:`_refine_row`).
_WEAK_REL = 1e-6
#: Lags (per row and group) at or below which the weak-row refinement sums directly instead of by FFT.
_DIRECT_LAGS = 24
#: Halvings of a group of weak lags before the remaining ones are summed directly.
_MAX_HALVINGS = 8
#: Forward FFTs of restricted pair products kept per prepared basis (~6 MB each at the paper's grid).
_RANGE_CACHE = 32


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



def zero_bad_pixels(flux: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``flux`` and ``weights`` as 2-D float64 arrays, both 0 wherever either is not finite or the weight is not
    positive (masked pixels carry no weight, and their NaN flux does not spread through the FFTs)."""
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
    f, w = zero_bad_pixels(flux, weights)
    f, w = f[0], w[0]
    gp, b, c = grams_at_lags(prepared, fft_correlations(prepared, f, w), f, w, lags)
    return gp, np.ascontiguousarray(b[:, :, 0]), c


def fft_correlations(prepared: PreparedBasis, f: np.ndarray, w: np.ndarray,
                     nuisance: np.ndarray | None = None) -> np.ndarray:
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


def grams_at_lags(prepared: PreparedBasis, corr: np.ndarray, f: np.ndarray, w: np.ndarray, lags: np.ndarray,
                  nuisance: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Packed Grams ``(nlag, npair)``, projections ``(nlag, k, 1 + m)`` and ``c`` at ``lags`` from
    :func:`fft_correlations`'s output (spikes and weak rows exact). Projection ``[..., 0]`` is ``b``,
    ``[..., 1 + j]`` the cross-Gram ``G_HP`` with nuisance vector ``j``."""
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


def unweighted_window_gram(prepared: PreparedBasis, lags: np.ndarray) -> np.ndarray:
    """Packed Gram over the whole observed window (all weights 1), Moose's spectrum-independent Gram."""
    gp, _, _ = gram_projections(prepared, np.zeros(prepared.n_obs), np.ones(prepared.n_obs), lags)
    return gp


def unweighted_projections(prepared: PreparedBasis, f: np.ndarray, lags: np.ndarray, ug: np.ndarray) -> np.ndarray:
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

