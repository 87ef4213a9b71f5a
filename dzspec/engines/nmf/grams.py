"""FFT Gram matrices and projections of one spectrum against an NMF basis at every lag (METHODS §5.2).

On a common log-wavelength grid (METHODS §5.1) a trial redshift is an integer shift. Observed pixel ``j`` of a
spectrum on the grid ``log lambda = gamma0 + (j0 + j) delta`` meets rest pixel ``s + j`` of the basis ``H``
(``k x n_rest``, non-negative) at lag ``s = j0 - k_z``. For every lag::

    chi2(s, w) = c - 2 w^T b(s) + w^T G(s) w,     c = sum_j W_j f_j^2
    b_a(s)  = sum_j (W_j f_j) H_a(s+j)            G_ab(s) = sum_j W_j H_a(s+j) H_b(s+j)

``G`` and ``b`` at all lags come from real FFT cross-correlations (float64, 3-smooth length over only the rest pixels
that the prepared lags reach); the per-basis transforms are computed once (:func:`prepare_basis`).

A float64 FFT correlation is accurate to ~1e-16 of the *largest* terms it sums. Trained bases hold rows that are
huge over a few pixels few training spectra cover (the blue edge of the grid) and modest elsewhere; at lags whose
window misses that part, such a row's FFT Gram would be round-off. So:

- spike pixels (single towering pixels) are left out of the FFTs and summed directly;
- rows with a large dynamic range get a *segment plan*, made once per basis from the row's own windowed energy:
  their Gram rows and projections come from FFTs over only the pixels a range of lags covers, so the round-off is
  relative to the row's size there (and from direct sums for the few lags where even that is too weak);
- a last check on the spectrum's own weights recomputes any Gram row still weak (masked stretches can make one).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import scipy.fft

from dzspec.kernels.jit import njit

__all__ = [
    "Correlations",
    "MainFFTs",
    "PreparedBasis",
    "RowSegment",
    "fast_length",
    "fft_correlations",
    "gram_projections",
    "grams_at_lags",
    "lag_range",
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
#: The segment plan (:func:`prepare_basis`) predicts weakness with unit weights; it asks this much more margin, so that
#: a spectrum's uneven weights rarely leave a lag for the per-spectrum check to recompute.
_PLAN_MARGIN = 10.0
#: Lags (per row and group) at or below which the weak-row refinement sums directly instead of by FFT.
_DIRECT_LAGS = 24
#: Halvings of a group of weak lags before the remaining ones are summed directly.
_MAX_HALVINGS = 8
#: Inverse FFTs per batch in :func:`fft_correlations`.
_FFT_ROWS = 8
#: Forward FFTs of restricted pair products kept per prepared basis (~6 MB each at the paper's grid).
_RANGE_CACHE = 32


@dataclass(frozen=True)
class RowSegment:
    """The lags ``[lag_lo, lag_hi)`` of basis row ``row`` in a segment plan (:func:`prepare_basis`).

    The row's Gram entries ``G_row,b`` for ``b`` in ``partners`` (the main rows and the planned rows from ``row`` on;
    a lower planned row's segments hold the others) and its projections come from correlations with the row's pair
    products over rest pixels ``[p0, p1)`` only (the pixels these lags' windows cover): ``forward`` holds their real
    FFTs (one per partner, then the row itself) at ``length``. ``forward`` is None where the row is summed directly
    (few lags, or still too weak: the whole Gram row), and ``norm_aa`` is ``||H_row^2||_2`` over the segment (0 when
    summed directly).
    """

    row: int
    partners: np.ndarray
    lag_lo: int
    lag_hi: int
    p0: int
    p1: int
    length: int
    forward: np.ndarray | None
    norm_aa: float


@dataclass(frozen=True)
class MainFFTs:
    """The FFTs that give the Grams and projections of ``rows`` (and of the ``pairs`` among them) at every served lag:
    over rest pixels from ``p0``, at ``length`` (lag ``s`` at index ``(s - p0) mod length``).

    ``fft_hh`` holds the real FFTs of the pair products, ``fft_h`` those of the rows; ``hh_norm`` (every pair) the
    2-norms of the pair products over those pixels, the scale of the FFT round-off.
    """

    p0: int
    length: int
    pairs: np.ndarray
    rows: np.ndarray
    fft_hh: np.ndarray
    fft_h: np.ndarray
    hh_norm: np.ndarray


@dataclass(frozen=True)
class PreparedBasis:
    """Per-basis FFTs for one observed window length and one range of lags (:func:`prepare_basis`).

    Attributes
    ----------
    basis : (k, n_rest) float64 non-negative basis ``H``.
    n_obs : observed pixels per spectrum.
    lag_lo, lag_hi : the lags served, ``lag_lo <= s < lag_hi`` (lags without overlap give zeros anywhere).
    main : the main FFTs (:class:`MainFFTs`), of the rows without a segment plan.
    segments : the segment plan of the other rows, each row's segments covering every lag served where the row meets
        the window.
    pair_a, pair_b : the k(k+1)/2 index pairs a <= b of the packed Gram.
    pair_index : (k, k) position of the pair (a, b) in the packed Gram.
    support_index, support_offset : sorted non-zero pixels of row a are
        ``support_index[support_offset[a]:support_offset[a + 1]]``.
    spike_pixels : sorted rest pixels left out of every FFT and summed directly at every lag instead: the few pixels
        where a row towers over its own typical level.
    smooth : ``basis`` with the spike pixels set to 0 (what the FFTs see).
    empty_lags : per row, ``(n, 2)`` ranges ``[lo, hi)`` of lags whose windows hold none of the row (exact zeros).
    restricted_cache : forward FFTs of restricted pair products reused across spectra (:func:`_refine_row`).
    """

    basis: np.ndarray
    n_obs: int
    lag_lo: int
    lag_hi: int
    main: MainFFTs
    segments: tuple[RowSegment, ...]
    pair_a: np.ndarray
    pair_b: np.ndarray
    pair_index: np.ndarray
    support_index: np.ndarray
    support_offset: np.ndarray
    spike_pixels: np.ndarray
    smooth: np.ndarray
    empty_lags: tuple[np.ndarray, ...]
    restricted_cache: OrderedDict = field(default_factory=OrderedDict, repr=False, compare=False)

    @property
    def k(self) -> int:
        """Number of basis vectors."""
        return self.basis.shape[0]

    @property
    def n_rest(self) -> int:
        """Rest-frame pixels."""
        return self.basis.shape[1]

    @property
    def fft_points(self) -> int:
        """Inverse-FFT points per spectrum with two right-hand sides (flux, one nuisance term): the scan's main cost."""
        main = self.main.length * (self.main.pairs.size + 2 * self.main.rows.size)
        return main + sum(s.length * (s.partners.size + 2) for s in self.segments)


@dataclass(frozen=True)
class Correlations:
    """One spectrum's FFT correlations at every served lag (:func:`fft_correlations`).

    ``main`` from :class:`MainFFTs` (rows: its pair products against ``w``, then its rows against each right-hand
    side); ``segments`` one per :class:`RowSegment` (one pair product per partner against ``w``, then the row against
    each right-hand side; None for a directly summed segment).
    """

    main: np.ndarray
    segments: tuple[np.ndarray | None, ...]


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


def fast_length(n: int) -> int:
    """The smallest ``2^a 3^b >= n``: pocketfft's radix-2/3 real transforms of such lengths are the fastest near the
    paper's sizes (55 296 takes ~0.7 the time of the 5-smooth 67 500).

    Examples
    --------
    >>> fast_length(53289), fast_length(1), fast_length(100)
    (55296, 1, 108)
    """
    best = 1 << max(int(n) - 1, 0).bit_length()
    three = 1
    while three < best:
        two = three
        while two < n:
            two *= 2
        best = min(best, two)
        three *= 3
    return best


def lag_range(j0: int, shifts: np.ndarray) -> tuple[int, int]:
    """The lags ``[lo, hi)`` that a scan over the trial ``shifts`` of a window starting at rest pixel ``j0`` (and its
    sub-pixel refinement between them) reads: what :func:`prepare_basis` should serve.

    Examples
    --------
    >>> lag_range(40648, np.array([0, 10, 40013]))
    (635, 40649)
    """
    shifts = np.asarray(shifts)
    return int(j0 - shifts.max()), int(j0 - shifts.min() + 1)


def _restricted_length(lag_lo: int, lag_hi: int, p0: int, p1: int, n_obs: int) -> int:
    """FFT length at which correlating a window with pixels ``[p0, p1)`` does not wrap for lags in ``[lag_lo, lag_hi)``
    (lag ``s`` at index ``(s - p0) mod length``)."""
    return fast_length(max(lag_hi - 1 - p0 + n_obs, p1 - lag_lo, 1))


def _pixel_range(lag_lo: int, lag_hi: int, n_obs: int, n_rest: int) -> tuple[int, int]:
    """The rest pixels ``[p0, p1)`` that the windows of lags ``[lag_lo, lag_hi)`` cover."""
    return max(lag_lo, 0), max(min(lag_hi - 1 + n_obs, n_rest), max(lag_lo, 0))


def prepare_basis(basis: np.ndarray, n_obs: int, *, lags: tuple[int, int] | np.ndarray | None = None,
                  support_floor: float = 0.0) -> PreparedBasis:
    """Precompute the real FFTs of the basis rows and of their pair products (METHODS §5.2, once per basis).

    Parameters
    ----------
    basis : (k, n_rest) non-negative basis.
    n_obs : observed pixels per spectrum.
    lags : the lags the scans will ask for: ``(lag_lo, lag_hi)`` (``lag_lo <= s < lag_hi``) or an array of lags
        (its range is served). The FFTs then cover only the rest pixels these lags' windows reach (the paper's trial
        grid reaches 53 289 of the 67 193 a full correlation needs). Default: every lag with some overlap.
    support_floor : entries below ``support_floor * max(H_a)`` are set to exactly 0 in the scanned basis
        (``prepared.basis``). The default 0 scans the given basis exactly. Where a row's window holds only a faint
        tail (G_aa < 1e-6 of its FFT round-off scale), its Gram row is summed directly over the row's non-zero
        pixels: cheap for compact rows, slow (~n_obs k flops per shift) for rows whose tails never reach 0, such
        as multiplicative-update bases decaying to 1e-250. A floor such as 1e-12 restores compact support; it
        changes chi2 only at trials where the fit leans on a row at < 1e-12 of its peak (huge coefficients).

    Examples
    --------
    >>> pb = prepare_basis(np.ones((2, 100)), 30)
    >>> pb.main.length >= 129, (pb.lag_lo, pb.lag_hi)
    (True, (-29, 100))
    >>> prepare_basis(np.ones((2, 100)), 30, lags=np.array([40, 10, 25])).main.length  # pixels 10..68 only
    64
    """
    h = np.array(basis, dtype=np.float64)
    if h.ndim != 2 or np.any(h < 0) or not np.all(np.isfinite(h)):
        raise ValueError("basis must be a finite non-negative (k, n_rest) array")
    if support_floor > 0:
        h[h < support_floor * np.max(h, axis=1, keepdims=True)] = 0.0
    k, n_rest = h.shape
    n_obs = int(n_obs)
    if lags is None:
        lag_lo, lag_hi = 1 - n_obs, n_rest
    elif isinstance(lags, tuple):
        lag_lo, lag_hi = int(lags[0]), int(lags[1])
    else:
        lag_array = np.asarray(lags, dtype=np.int64)
        lag_lo, lag_hi = int(lag_array.min()), int(lag_array.max()) + 1
    lag_lo, lag_hi = max(lag_lo, 1 - n_obs), min(lag_hi, n_rest)
    if lag_hi <= lag_lo:
        raise ValueError(f"no lag in {lags} overlaps a {n_obs}-pixel window with the {n_rest}-pixel basis")
    pa, pb = np.triu_indices(k)
    pair_index = np.zeros((k, k), dtype=np.int64)
    pair_index[pa, pb] = np.arange(pa.size)
    pair_index[pb, pa] = np.arange(pa.size)
    rows, cols = np.nonzero(h)
    spikes = spike_pixels(h)
    smooth = h.copy()
    smooth[:, spikes] = 0.0
    planner = _Planner(h, smooth, n_obs, lag_lo, lag_hi, pair_index)
    main, segments = planner.build()
    return PreparedBasis(
        basis=h,
        n_obs=n_obs,
        lag_lo=lag_lo,
        lag_hi=lag_hi,
        main=main,
        segments=tuple(segments),
        pair_a=pa.astype(np.int64),
        pair_b=pb.astype(np.int64),
        pair_index=pair_index,
        support_index=cols.astype(np.int64),
        support_offset=np.r_[0, np.cumsum(np.bincount(rows, minlength=k))].astype(np.int64),
        spike_pixels=spikes,
        smooth=smooth,
        empty_lags=planner.empty_ranges(),
    )


class _RangeSums:
    """Sums of non-negative rows over pixel ranges, from prefix or suffix sums, whichever holds less beside the range:
    a trained basis's values span 1e30 in fourth powers, and a prefix sum past its bright blue edge would cancel
    every later range to round-off."""

    def __init__(self, values: np.ndarray) -> None:
        n = values.shape[-1]
        self.prefix = np.zeros((*values.shape[:-1], n + 1))
        np.cumsum(values, axis=-1, out=self.prefix[..., 1:])
        self.suffix = np.zeros_like(self.prefix)
        self.suffix[..., :-1] = np.cumsum(values[..., ::-1], axis=-1)[..., ::-1]

    def between(self, rows, start, stop) -> np.ndarray:
        """``sum(values[rows, start:stop])`` (broadcast over ``rows``, ``start`` and ``stop``), never below 0."""
        head, tail = self.prefix[rows, stop], self.suffix[rows, start]
        return np.maximum(np.where(head <= tail, head - self.prefix[rows, start], tail - self.suffix[rows, stop]), 0.0)


class _Planner:
    """The FFT plan of a prepared basis, from each row's energy in every window (unit weights).

    Pair ``(a, b)`` at lag ``s`` is accurate from an FFT over pixels ``P`` when ``sqrt(E_a(s) E_b(s))``, its
    Cauchy-Schwarz scale (``E_a``: row ``a``'s energy in the window), is at least :data:`_PLAN_MARGIN` x
    :data:`_WEAK_REL` x ``sqrt(n_obs)`` x ``||H_a H_b||_P`` (the FFT's round-off scale, with the margin for uneven
    weights). The main FFTs cover every lag served over the pixels they reach; rows whose own Gram is inaccurate
    somewhere there get a plan of their own: their lags are cut, from the first, into the longest runs accurate for
    all the row's pairs over the pixels the run covers (runs of at most :data:`_DIRECT_LAGS` lags are summed
    directly).
    """

    def __init__(self, h: np.ndarray, smooth: np.ndarray, n_obs: int, lag_lo: int, lag_hi: int,
                 pair_index: np.ndarray) -> None:
        k, n_rest = smooth.shape
        self.smooth, self.n_obs, self.n_rest, self.k = smooth, n_obs, n_rest, k
        self.lag_lo, self.lag_hi, self.pair_index = lag_lo, lag_hi, pair_index
        pa, pb = np.triu_indices(k)
        self.products = _RangeSums((smooth[pa] * smooth[pb]) ** 2)
        present = np.zeros((k, n_rest + 1), dtype=np.int64)
        np.cumsum(h > 0, axis=1, out=present[:, 1:])
        lags = np.arange(lag_lo, lag_hi)
        start, stop = np.clip(lags, 0, n_rest), np.clip(lags + n_obs, 0, n_rest)
        self.root = np.sqrt(_RangeSums(smooth * smooth).between(slice(None), start, stop))  # (k, nlag)
        self.empty = present[:, stop] == present[:, start]
        self.scale = _PLAN_MARGIN * _WEAK_REL * np.sqrt(n_obs)

    def norms(self, pairs: np.ndarray, p0: int, p1: int) -> np.ndarray:
        """``||H_a H_b||_2`` over pixels ``[p0, p1)`` for the given pairs."""
        return np.sqrt(self.products.between(pairs, p0, p1))

    def weak_rows(self, lo: int, hi: int) -> np.ndarray:
        """Rows whose own Gram an FFT over the pixels of lags ``[lo, hi)`` leaves inaccurate at some lag there."""
        p0, p1 = _pixel_range(lo, hi, self.n_obs, self.n_rest)
        diagonal = np.diagonal(self.pair_index)
        part = slice(lo - self.lag_lo, hi - self.lag_lo)
        short = self.root[:, part] ** 2 < self.scale * self.norms(diagonal, p0, p1)[:, None]
        return np.flatnonzero(np.any(short & ~self.empty[:, part], axis=1))

    def runs(self, a: int, partners: np.ndarray, lo: int, hi: int) -> list[tuple[int, int]]:
        """Row ``a``'s greedy runs of lags, accurate for its pairs with ``partners``, covering its non-empty lags in
        ``[lo, hi)``."""
        out, pos, pairs = [], lo, self.pair_index[a, partners]
        while pos < hi:
            present = np.flatnonzero(~self.empty[a, pos - self.lag_lo : hi - self.lag_lo])
            if not present.size:
                break
            pos += int(present[0])
            part = slice(pos - self.lag_lo, hi - self.lag_lo)
            # the smallest pair scale over the run so far, against the round-off scale of the run's pixels; a single
            # window is always accurate on its own pixels (||H_a H_b|| <= sqrt(E_a E_b)), and accuracy only falls
            # as the run grows
            scale = self.root[a, part][None] * self.root[partners, part]
            scale[:, self.empty[a, part]] = np.inf
            smallest = np.minimum.accumulate(scale, axis=1)
            p0 = max(pos, 0)
            p1 = np.clip(np.arange(pos, hi) + self.n_obs, p0, self.n_rest)  # pixels' end for the run [pos, s]
            round_off = np.sqrt(self.products.between(pairs[:, None], p0, p1[None, :]))
            fine = np.all(smallest >= self.scale * round_off, axis=0)
            end = hi if fine.all() else pos + max(int(np.argmin(fine)), 1)
            out.append((pos, end))
            pos = end
        return out

    def build(self) -> tuple[MainFFTs, list[RowSegment]]:
        """The main FFTs and the row segments (with their forward FFTs) over every lag served. A planned row's
        partners are the main rows and the planned rows from it on (a lower planned row's segments hold their pairs
        with it)."""
        k, smooth, n_obs, lo, hi = self.k, self.smooth, self.n_obs, self.lag_lo, self.lag_hi
        pa, pb = np.triu_indices(k)
        planned = self.weak_rows(lo, hi)
        main = np.setdiff1d(np.arange(k), planned)
        keep = np.isin(pa, main) & np.isin(pb, main)
        p0, p1 = _pixel_range(lo, hi, n_obs, self.n_rest)
        length = _restricted_length(lo, hi, p0, p1, n_obs)
        hh = smooth[pa[keep], p0:p1] * smooth[pb[keep], p0:p1]
        ffts = MainFFTs(
            p0=p0, length=length, pairs=np.flatnonzero(keep).astype(np.int64), rows=main.astype(np.int64),
            fft_hh=scipy.fft.rfft(hh, n=length, axis=-1, workers=1),
            fft_h=scipy.fft.rfft(smooth[main, p0:p1], n=length, axis=-1, workers=1),
            hh_norm=np.sqrt(self.products.between(slice(None), p0, p1)),
        )  # fmt: skip
        segments = []
        for a in (int(a) for a in planned):
            partners = np.flatnonzero(~np.isin(np.arange(k), planned) | (np.arange(k) >= a))
            for r0, r1 in self.runs(a, partners, lo, hi):
                q0, q1 = _pixel_range(r0, r1, n_obs, self.n_rest)
                if r1 - r0 <= _DIRECT_LAGS:  # a short FFT would cost more than the sums (of the whole Gram row)
                    segments.append(RowSegment(a, np.arange(k), r0, r1, q0, q1, 0, None, 0.0))
                    continue
                rows = np.vstack([smooth[a, q0:q1] * smooth[partners, q0:q1], smooth[a, q0:q1]])
                length = _restricted_length(r0, r1, q0, q1, n_obs)
                norm = float(np.sqrt(self.products.between(self.pair_index[a, a], q0, q1)))
                segments.append(RowSegment(a, partners, r0, r1, q0, q1, length,
                                           scipy.fft.rfft(rows, n=length, axis=-1, workers=1), norm))
        return ffts, segments

    def empty_ranges(self) -> tuple[np.ndarray, ...]:
        """Per row, the ``[lo, hi)`` ranges of lags whose windows hold none of it."""
        edges = np.diff(np.pad(self.empty.astype(np.int8), ((0, 0), (1, 1))), axis=1)
        return tuple(np.stack([np.flatnonzero(row == 1), np.flatnonzero(row == -1)], axis=1).astype(np.int64)
                     + self.lag_lo for row in edges)


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
                     nuisance: np.ndarray | None = None) -> Correlations:
    """The FFT cross-correlations of one (clean) spectrum with the basis at every served lag.

    The main rows are the main pair products against ``w``, then the main basis rows against each right-hand side
    (``w f``, then ``w p_j`` for each nuisance vector ``p_j``, METHODS §5.7); each planned segment adds the same for
    its row. :func:`grams_at_lags` reads Grams and projections from them.
    """
    if f.shape[0] != prepared.n_obs:
        raise ValueError(f"spectrum has {f.shape[0]} pixels, the prepared basis expects {prepared.n_obs}")
    rhs = _right_hand_sides(f, w, nuisance)
    transforms: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def spectrum_transforms(length: int) -> tuple[np.ndarray, np.ndarray]:
        if length not in transforms:
            transforms[length] = (np.conj(scipy.fft.rfft(w, n=length, workers=1)),
                                  np.conj(scipy.fft.rfft(rhs, n=length, axis=-1, workers=1)))
        return transforms[length]

    ffts = prepared.main
    fw, frhs = spectrum_transforms(ffts.length)
    main = _correlate([(ffts.fft_hh, fw)] + [(ffts.fft_h, frhs[r]) for r in range(rhs.shape[0])], ffts.length)
    segments = []
    for segment in prepared.segments:
        if segment.forward is None:
            segments.append(None)
            continue
        fw, frhs = spectrum_transforms(segment.length)
        sources = [(segment.forward[:-1], fw)] + [(segment.forward[-1:], frhs[r]) for r in range(rhs.shape[0])]
        segments.append(_correlate(sources, segment.length))
    return Correlations(main, tuple(segments))


def _correlate(sources: list[tuple[np.ndarray, np.ndarray]], length: int) -> np.ndarray:
    """``irfft(rows * factor)`` for each ``(rows, factor)`` source, rows stacked in order, :data:`_FFT_ROWS` rows at a
    time: a product and its inverse transform then stay in cache (a third faster than one batch at the paper's
    sizes)."""
    out = np.empty((sum(rows.shape[0] for rows, _ in sources), length))
    buffer = np.empty((_FFT_ROWS, length // 2 + 1), dtype=np.complex128)
    at = 0
    for rows, factor in sources:
        for start in range(0, rows.shape[0], _FFT_ROWS):
            chunk = rows[start : start + _FFT_ROWS]
            n = chunk.shape[0]
            np.multiply(chunk, factor, out=buffer[:n])
            out[at : at + n] = scipy.fft.irfft(buffer[:n], n=length, axis=-1, workers=1, overwrite_x=True)
            at += n
    return out


def _right_hand_sides(f: np.ndarray, w: np.ndarray, nuisance: np.ndarray | None) -> np.ndarray:
    """``(1 + m, n_obs)``: ``w f``, then ``w p_j`` for the ``m`` nuisance vectors."""
    if nuisance is None:
        return (w * f)[None]
    return np.vstack([w * f, w * np.asarray(nuisance, dtype=np.float64)])


def grams_at_lags(prepared: PreparedBasis, corr: Correlations, f: np.ndarray, w: np.ndarray, lags: np.ndarray,
                  nuisance: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Packed Grams ``(nlag, npair)``, projections ``(nlag, k, 1 + m)`` and ``c`` at ``lags`` from
    :func:`fft_correlations`'s output (spikes, planned rows and weak rows exact). Projection ``[..., 0]`` is ``b``,
    ``[..., 1 + j]`` the cross-Gram ``G_HP`` with nuisance vector ``j``."""
    lags = np.asarray(lags, dtype=np.int64)
    valid = (lags > -prepared.n_obs) & (lags < prepared.n_rest)
    outside = valid & ((lags < prepared.lag_lo) | (lags >= prepared.lag_hi))
    if outside.any():
        raise ValueError(f"lag {int(lags[outside][0])} is outside the prepared lags [{prepared.lag_lo}, "
                         f"{prepared.lag_hi}): prepare the basis for the lags you scan")
    k, npair = prepared.k, prepared.pair_a.size
    rhs = _right_hand_sides(f, w, nuisance)
    nrhs = rhs.shape[0]
    diagonal = np.diagonal(prepared.pair_index)
    scale = np.zeros((lags.size, k))
    gp, b = np.zeros((lags.size, npair)), np.zeros((lags.size, k, nrhs))
    ffts, idx = prepared.main, np.flatnonzero(valid)
    _scatter(corr.main, ffts.p0, ffts.length, lags, idx, gp, ffts.pairs, b, np.tile(ffts.rows, nrhs),
             np.repeat(np.arange(nrhs), ffts.rows.size))
    scale[idx[:, None], ffts.rows] = ffts.hh_norm[diagonal[ffts.rows]]
    spikes = prepared.spike_pixels
    if spikes.size:
        near = np.flatnonzero(valid & (lags <= spikes[-1]) & (lags + prepared.n_obs > spikes[0]))
        _add_spikes(prepared.basis, spikes, w, rhs, lags, near, gp, b, prepared.pair_a, prepared.pair_b,
                    prepared.n_obs)
    own = np.arange(nrhs)
    for segment, seg_corr in zip(prepared.segments, corr.segments, strict=True):
        idx = np.flatnonzero(valid & (lags >= segment.lag_lo) & (lags < segment.lag_hi))
        if not idx.size:
            continue
        a, sub = segment.row, lags[idx]
        if seg_corr is None:
            g_rows, b_rows = np.zeros((idx.size, k)), np.zeros((idx.size, nrhs))
            _direct_row(prepared.basis, w, rhs, a, sub, prepared.support_index, prepared.support_offset,
                        prepared.n_obs, g_rows, b_rows)
            gp[idx[:, None], prepared.pair_index[a][None, :]] = g_rows
            b[idx, a] = b_rows
        else:
            pairs = prepared.pair_index[a, segment.partners]
            _scatter(seg_corr, segment.p0, segment.length, lags, idx, gp, pairs, b, np.full(nrhs, a), own)
            near = idx[(sub <= spikes[-1]) & (sub + prepared.n_obs > spikes[0])] if spikes.size else idx[:0]
            if near.size:
                g_near, b_near = gp[near][:, pairs], b[near, a]
                _add_row_spikes(prepared.basis[a], prepared.basis[segment.partners], spikes, w, rhs, lags[near],
                                g_near, b_near, prepared.n_obs)
                gp[near[:, None], pairs[None, :]] = g_near
                b[near, a] = b_near
        scale[idx, a] = segment.norm_aa
    for a, ranges in enumerate(prepared.empty_lags):  # windows without the row: exact zeros, not FFT round-off
        if not ranges.size:
            continue
        at = np.searchsorted(ranges[:, 0], lags, side="right") - 1
        idx = np.flatnonzero((at >= 0) & (lags < ranges[np.maximum(at, 0), 1]))
        if idx.size:
            gp[idx[:, None], prepared.pair_index[a][None, :]] = 0.0
            b[idx, a] = 0.0
            scale[idx, a] = 0.0
    _refine_weak(prepared, w, rhs, lags, gp, b, scale)
    return gp, b, float(np.sum(w * f * f))


@njit(cache=True)
def _scatter(corr, p0, length, lags, idx, gp, pairs, b, rows, rhs):  # pragma: no cover - compiled
    """Copy correlations at ``lags[idx]`` (column ``(lag - p0) mod length``) into the packed Grams and projections:
    row ``r`` of ``corr`` to ``gp[:, pairs[r]]``, then row ``len(pairs) + r`` to ``b[:, rows[r], rhs[r]]``."""
    npair = pairs.shape[0]
    for t in range(idx.shape[0]):
        i = idx[t]
        col = (lags[i] - p0) % length
        for r in range(npair):
            gp[i, pairs[r]] = corr[r, col]
        for r in range(rows.shape[0]):
            b[i, rows[r], rhs[r]] = corr[npair + r, col]


@njit(cache=True)
def _add_spikes(h, spikes, w, rhs, lags, near, gp, b, pa, pb, n_obs):  # pragma: no cover - compiled
    """Add the direct sums over the spike pixels (left out of the FFTs) to the Grams and projections at the lags
    ``lags[near]`` (those whose windows can hold a spike)."""
    npair, k = pa.shape[0], h.shape[0]
    products = np.empty((spikes.shape[0], npair))
    for e in range(spikes.shape[0]):
        for q in range(npair):
            products[e, q] = h[pa[q], spikes[e]] * h[pb[q], spikes[e]]
    for i in near:
        s = lags[i]
        for e in range(spikes.shape[0]):
            p = spikes[e]
            j = p - s
            if j < 0 or j >= n_obs or w[j] == 0.0:
                continue
            wj = w[j]
            for q in range(npair):
                gp[i, q] += wj * products[e, q]
            for a in range(k):
                for r in range(rhs.shape[0]):
                    b[i, a, r] += rhs[r, j] * h[a, p]


def _refine_weak(prepared: PreparedBasis, w: np.ndarray, rhs: np.ndarray, lags: np.ndarray, gp: np.ndarray,
                 b: np.ndarray, scale: np.ndarray) -> None:
    """Recompute, in place, the Gram rows and projections (``b``: nlag x k x right-hand sides ``rhs``) of basis rows
    that are weakly supported at some lags: ``G_aa`` below :data:`_WEAK_REL` of ``scale`` (the norm of the pair
    product its FFT summed; 0 for exact values) times ``||w||``."""
    diag = np.diagonal(prepared.pair_index)
    weak = gp[:, diag] < _WEAK_REL * scale * np.linalg.norm(w)
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
    _add_row_spikes(prepared.basis[a], prepared.basis, prepared.spike_pixels, w, rhs, sub, g_rows, b_rows, n_obs)
    fine = g_rows[:, a] >= _WEAK_REL * norm_aa * np.linalg.norm(w)
    gp[idx[fine, None], pairs[None, :]] = g_rows[fine]
    b[idx[fine], a] = b_rows[fine]
    rest = idx[~fine]
    if rest.size:
        half = rest.size // 2
        _refine_row(prepared, w, rhs, a, rest[:half], lags, gp, b, halvings + 1, spectrum_ffts)
        _refine_row(prepared, w, rhs, a, rest[half:], lags, gp, b, halvings + 1, spectrum_ffts)


@njit(cache=True)
def _add_row_spikes(row, partners, spikes, w, rhs, lags, g_rows, b_rows, n_obs):  # pragma: no cover - compiled
    """:func:`_add_spikes` for one row (``row``: its values) against ``partners`` (their values) and its projections
    only."""
    for i in range(lags.shape[0]):
        for p in spikes:
            j = p - lags[i]
            if j < 0 or j >= n_obs or w[j] == 0.0:
                continue
            for c in range(partners.shape[0]):
                g_rows[i, c] += w[j] * row[p] * partners[c, p]
            for r in range(rhs.shape[0]):
                b_rows[i, r] += rhs[r, j] * row[p]


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


def unweighted_projections(prepared: PreparedBasis, f: np.ndarray, lags: np.ndarray) -> np.ndarray:
    """Moose's ``b^u_a(s) = sum_j f_j H_a(s+j)``: the projections of ``f`` with unit weights, exact on weakly
    supported rows (the Grams this computes beside them are Moose's spectrum-independent ones)."""
    ones = np.ones(prepared.n_obs)
    _, b, _ = grams_at_lags(prepared, fft_correlations(prepared, f, ones), f, ones, lags)
    return np.ascontiguousarray(b[:, :, 0])
