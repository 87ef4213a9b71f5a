"""MADGICS Lyman-alpha redshifts: component separation into sky + LAE + residual and the exact fast dchi2(z) scan.

U25 (METHODS §2.4-2.5, §5.4). Every spectrum ``d`` on the LAE log grid (rescaled, §2.1) is modelled as
``x_sky + x_LAE(z) + x_res`` with zero-mean Gaussian priors ``C_sky = V_sky V_skyᵀ`` (n x 50), ``C_LAE(z) = V(z) Vᵀ(z)``
(the LAE prior's few eigenvectors, non-zero only in a window of ~300 pixels that moves with z) and the diagonal
``C_res = diag(1/ivar)``. The statistic is

    dchi2(z) = chi2(sky + LAE + res) - chi2(sky + res) = -rᵀ S⁻¹ r <= 0

(the sign of the public code and of U25's figures; U25 Eq. 6 prints the opposite), with, per spectrum,
``K = I + V_skyᵀ W V_sky = L Lᵀ`` and ``a = L⁻¹ V_skyᵀ W d``, and per shift ``Q = L⁻¹ V_skyᵀ W V(z)``,
``S = I + Vᵀ(z) W V(z) - QᵀQ`` and ``r = Vᵀ(z) W d - Qᵀ a`` (U25 App. A with the Eq. A13 typo fixed).

Fast and exact: the three shift-dependent products are cross-correlations of fixed series with the unshifted window
eigenvectors, so one FFT pass gives them at every integer shift. Q is linear in ``W V_sky``, so the triangular solve
is applied to that series once (``L⁻¹ (W V_sky)ᵀ``) and its correlation with the window is Q itself; and only the
rows the shifted windows touch enter, an FFT of ``nshift + m - 1`` points (about half the grid for U25's scan) for
k_sky + 2 forward and k_sky k + k(k+1)/2 + k inverse transforms per spectrum.

What does not need a spectrum of its own is done for the block: ``K`` of every spectrum is one matrix product of
the weights with the per-pixel products of pairs of sky vectors (cached on the prior), ``V_skyᵀ W d`` another; per
spectrum, ``L⁻¹`` is formed explicitly (50 x 50) so that the whitening is a matrix product, the sky vectors go
through the FFTs a few at a time (their spectra and correlations stay in cache), and the sums over them and the
per-shift Schur solves run compiled (:mod:`dzspec.engines.madgics.compiled`). The results equal the per-spectrum
formulation to round-off (1e-14 of the largest |dchi2| on the shipped prior; ``benchmarks/lae_scan_speed.py``).

:func:`reference_lae_scan` is the straightforward per-shift, full-length evaluation (the (k+50)-column Woodbury
system solved afresh at every shift) the fast scan is checked against.

Redshift and pixel shift: the LAE prior is built with its window starting at grid pixel ``window_start`` for the
reference redshift ``z_ref`` (U25: 2.45, Lya at 4194 Å); shift ``p`` (in pixels, possibly fractional) moves it to
``1 + z = (1 + z_ref) 10^(p δ)``. The fine scan evaluates 0.1-pixel steps with sub-pixel phases of the window
(cubic interpolation of the eigenvectors) and integer moves of the window, built explicitly: no circular shifts.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import scipy.fft
import scipy.linalg
import scipy.linalg.lapack
from scipy.interpolate import make_interp_spline

from dzspec.engines.madgics.compiled import add_sky_terms, shift_dchi2, solve_shifts
from dzspec.kernels.trials import local_minima
from dzspec.results_schema import LAEWarn

__all__ = [
    "LAE_GRID_DELTA",
    "LAE_GRID_START",
    "LAEPrior",
    "LAEScan",
    "LAEWarn",
    "lae_line_flux",
    "madgics_rescale_y",
    "reference_lae_scan",
    "scan_lae",
    "sky_component",
]

LAE_GRID_DELTA = 5e-5  #: U25's log10 pixel
LAE_GRID_START = 3600.0  #: Å, first pixel of the DESI log grid (8 720 pixels to 9824 Å)
_RESCALE_COEFFS = (686.2, -10383.1, 58903.2, -148486.2, 140343.7)  # U25 Eq. 7, highest power first


def madgics_rescale_y(wavelength: np.ndarray) -> np.ndarray:
    """U25 Eq. 7: ``y(l)`` with ``l = log10(wavelength / Å)`` (the paper says log10; METHODS just "log"), the log10
    sky-variance scale; flux is divided by ``sqrt(10**y)`` and ivar multiplied by ``10**y`` (Eqs. 8-9).

    Evaluated by Horner's scheme in float64 exactly as printed: the terms reach ~9e5 while ``y`` spans -1.6 to 1.2,
    so any rounding of the coefficients or float32 arithmetic moves ``y`` by many dex.

    Examples
    --------
    >>> round(float(madgics_rescale_y(np.array([3600.0]))[0]), 3)
    1.2
    """
    ell = np.log10(np.asarray(wavelength, dtype=np.float64))
    y = np.zeros_like(ell)
    for coeff in _RESCALE_COEFFS:
        y = y * ell + coeff
    return y


@dataclass(frozen=True)
class LAEPrior:
    """The two priors of a scan on an ``n``-pixel log grid (already rescaled, U25 Eq. 8).

    Parameters
    ----------
    sky_vectors
        ``(n, k_sky)`` ``V_sky`` = eigenvectors x sqrt(eigenvalues); zero rows in the sky-line mask.
    lae_vectors
        ``(m, k_lae)`` the LAE window eigenvectors x sqrt(eigenvalues) at the reference redshift.
    window_start
        Grid pixel of the window's first row at ``z_ref``.
    z_ref
        The redshift the LAE prior is aligned to.
    sky_mask
        ``(n,)`` True where the sky-line mask sets the weight to 0 for every target (default: none).
    delta
        log10 pixel of the grid.
    """

    sky_vectors: np.ndarray
    lae_vectors: np.ndarray
    window_start: int
    z_ref: float = 2.45
    sky_mask: np.ndarray | None = None
    delta: float = LAE_GRID_DELTA
    _cache: dict[tuple, object] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.sky_vectors.ndim != 2 or self.lae_vectors.ndim != 2:
            raise ValueError("sky_vectors and lae_vectors must be 2-d (pixels x components)")
        if self.sky_mask is not None and self.sky_mask.shape != (self.sky_vectors.shape[0],):
            raise ValueError(f"sky_mask has shape {self.sky_mask.shape}, the grid has {self.sky_vectors.shape[0]} "
                             "pixels")

    @property
    def n_pixels(self) -> int:
        return self.sky_vectors.shape[0]

    def redshift_of(self, shift: np.ndarray | float) -> np.ndarray:
        """Redshift of a (fractional) pixel shift of the LAE window."""
        return (1.0 + self.z_ref) * 10.0 ** (np.asarray(shift, dtype=np.float64) * self.delta) - 1.0

    def shift_of(self, z: np.ndarray | float) -> np.ndarray:
        """Fractional pixel shift of redshift ``z``."""
        return np.log10((1.0 + np.asarray(z, dtype=np.float64)) / (1.0 + self.z_ref)) / self.delta

    def coarse_shifts(self, z_min: float = 2.0, n_shifts: int = 4501) -> np.ndarray:
        """``n_shifts`` consecutive integer shifts from the first one at or above ``z_min`` (U25: 4 501 from 2)."""
        first = int(np.ceil(self.shift_of(z_min) - 1e-9))
        return np.arange(first, first + n_shifts)

    def phase(self, tenths: int) -> np.ndarray:
        """The window eigenvectors moved redward by ``tenths``/10 pixel, on ``m + 2 * PAD`` rows (first row at
        window pixel ``-PAD``); cubic interpolation with zeros outside the window, exact at ``tenths = 0``."""
        key = ("phase", tenths)
        if key not in self._cache:
            m = self.lae_vectors.shape[0]
            padded = np.zeros((m + 2 * _PAD + 2, self.lae_vectors.shape[1]))
            padded[_PAD + 1: _PAD + 1 + m] = self.lae_vectors
            spline = make_interp_spline(np.arange(-_PAD - 1, m + _PAD + 1), padded, k=3)
            self._cache[key] = spline(np.arange(-_PAD, m + _PAD) - tenths / 10.0)
        return self._cache[key]

    def window_ffts(self, length: int) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """Conjugate real FFTs of the window eigenvectors (k, .) and of their pairwise products (pairs, .)."""
        key = ("fft", length)
        if key not in self._cache:
            u = self.lae_vectors
            pairs = np.triu_indices(u.shape[1])
            self._cache[key] = (np.conj(scipy.fft.rfft(u.T, n=length, axis=-1)),
                                np.conj(scipy.fft.rfft((u[:, pairs[0]] * u[:, pairs[1]]).T, n=length, axis=-1)), pairs)
        return self._cache[key]

    def fine_stack(self, fine_steps: int) -> tuple[np.ndarray, int]:
        """The windows at ``j/10`` pixel for ``|j| <= fine_steps`` side by side, ``(rows, (2 fine_steps + 1) k)``, row 0
        ``whole + PAD`` pixels before the unshifted window's first pixel; and ``whole``."""
        key = ("fine", fine_steps)
        if key not in self._cache:
            whole = -(-fine_steps // 10)
            m_pad, k = self.phase(0).shape
            stack = np.zeros((2 * whole + m_pad, 2 * fine_steps + 1, k))
            for i, j in enumerate(range(-fine_steps, fine_steps + 1)):
                row = j // 10 + whole
                stack[row: row + m_pad, i] = self.phase(j % 10)
            self._cache[key] = (stack.reshape(stack.shape[0], -1), whole)
        return self._cache[key]

    def fine_tables(self, fine_steps: int) -> tuple[np.ndarray, np.ndarray, int]:
        """:meth:`fine_stack` with its columns ordered ``(vector, step)``, ``(rows, k (2 fine_steps + 1))``; the
        products of each pair of vectors (:meth:`window_ffts`' pairs) at each step, ``(rows, pairs (2 fine_steps +
        1))``, whose weighted column sums are the fine scan's ``E``; and ``whole``."""
        key = ("fine_tables", fine_steps)
        if key not in self._cache:
            stack, whole = self.fine_stack(fine_steps)
            k = self.lae_vectors.shape[1]
            by_step = stack.reshape(stack.shape[0], -1, k)
            pairs = np.triu_indices(k)
            self._cache[key] = (np.ascontiguousarray(by_step.transpose(0, 2, 1)).reshape(stack.shape[0], -1),
                                np.ascontiguousarray((by_step[:, :, pairs[0]] * by_step[:, :, pairs[1]]
                                                      ).transpose(0, 2, 1)).reshape(stack.shape[0], -1), whole)
        return self._cache[key]

    def padded_sky(self, before: int, after: int) -> np.ndarray:
        """``V_skyᵀ`` (k_sky, before + n + after) with zero columns before and after the grid: the segment of a scan
        whose windows hang off the grid (U25's from z = 2 start 15 pixels before 3600 Å) is then a view."""
        key = ("padded_sky", before, after)
        if key not in self._cache:
            padded = np.zeros((self.sky_vectors.shape[1], before + self.n_pixels + after))
            padded[:, before: before + self.n_pixels] = self.sky_vectors.T
            self._cache[key] = padded
        return self._cache[key]

    def sky_products(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """``V_skyᵀ`` (k_sky, n), contiguous; the pixels where a sky vector is non-zero (outside the sky-line mask)
        and there the products of every pair of sky vectors ``(i >= j)``, ``(pixels, k_sky (k_sky + 1) / 2)``, so
        that ``V_skyᵀ W V_sky`` of a block of spectra is one matrix product with their weights; and the pairs."""
        key = ("sky_products",)
        if key not in self._cache:
            v = self.sky_vectors
            rows = np.flatnonzero(np.any(v != 0, axis=1))
            pairs = np.tril_indices(v.shape[1])
            inside = np.asfortranarray(v[rows])
            products = np.empty((rows.size, pairs[0].size), order="F")  # column by column: contiguous writes
            for column, (i, j) in enumerate(zip(*pairs, strict=True)):
                np.multiply(inside[:, i], inside[:, j], out=products[:, column])
            self._cache[key] = (np.ascontiguousarray(v.T), rows, products, pairs)
        return self._cache[key]


_PAD = 3  # window rows added each side of the sub-pixel phases (the cubic moves support by < 1 px + kernel tails)


@dataclass
class LAEScan:
    """Per-spectrum results of :func:`scan_lae` (arrays over the leading spectrum axis)."""

    z: np.ndarray  #: fine-scan best redshift
    zerr: np.ndarray  #: from the curvature of dchi2/2, times the calibration factor s
    dchi2: np.ndarray  #: signed dchi2 at the fine best (<= 0), uncalibrated
    abs_dchi2_cal: np.ndarray  #: |dchi2| / s²
    z_coarse: np.ndarray
    dchi2_coarse: np.ndarray
    z_alt: np.ndarray  #: (nspec, 2): second and third best distinct coarse minima
    dchi2_alt: np.ndarray
    chi2_null: np.ndarray  #: chi2(sky + res), the baseline of dchi2
    lae_amplitude: np.ndarray  #: (nspec, k_lae) posterior mean coefficients alpha of the LAE eigenvectors at z
    warn: np.ndarray
    dchi2_curve: np.ndarray | None = None  #: (nspec, nshift) coarse dchi2 when asked for
    components: dict[str, np.ndarray] | None = None  #: posterior means sky, lae, res (nspec, n) when asked for


def _sky_factor(sky_vectors: np.ndarray, weight: np.ndarray, data: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Cholesky factor of ``K = I + V_skyᵀ W V_sky``, ``a = L⁻¹ V_skyᵀ W d`` and ``chi2(sky + res)``."""
    root_weighted = sky_vectors * np.sqrt(weight)[:, None]
    k = scipy.linalg.blas.dsyrk(1.0, root_weighted.T, lower=1)  # the lower triangle is all potrf reads
    k[np.diag_indices_from(k)] += 1.0
    chol = scipy.linalg.cholesky(k, lower=True)
    a = scipy.linalg.solve_triangular(chol, sky_vectors.T @ (weight * data), lower=True)
    return chol, a, float(data @ (weight * data) - a @ a)


@dataclass(frozen=True)
class _Segment:
    """One spectrum's series on the grid rows ``first, first + 1, ...`` the scan can touch (zero off the grid)."""

    first: int
    sky: np.ndarray  #: (k_sky, rows) V_skyᵀ
    inverse: np.ndarray  #: L⁻¹ (lower triangular): L⁻¹ (W V_sky)ᵀ correlated with the window gives Q = L⁻¹ C
    weight: np.ndarray
    weighted_data: np.ndarray

    def whitened(self, sky: slice, rows: slice) -> np.ndarray:
        """Rows ``sky`` of ``L⁻¹ (W V_sky)ᵀ = (L⁻¹ V_skyᵀ) W`` on ``rows``; row ``i`` needs only the first ``i + 1``
        sky vectors."""
        stop = min(sky.stop, self.inverse.shape[0])
        return (self.inverse[sky, :stop] @ self.sky[:stop, rows]) * self.weight[rows]


def _segment(prior: LAEPrior, weight: np.ndarray, weighted_data: np.ndarray, inverse: np.ndarray, first: int,
             last: int) -> _Segment:
    """The series of rows ``first:last``; ``inverse`` is ``L⁻¹``, explicit: the whitening is then matrix products,
    faster than the triangular solve they replace and as accurate for the well-conditioned ``K >= I``, made a few
    sky vectors at a time where they are used (:meth:`_Segment.whitened`)."""
    lo, hi = max(first, 0), min(last, prior.n_pixels)
    before = lo - first  # columns off the grid at the start (grid pixel p is padded column p + before)
    sky = prior.padded_sky(before, last - hi)[:, first + before: last + before]
    if lo == first and hi == last:
        return _Segment(first, sky, inverse, weight[lo:hi], weighted_data[lo:hi])
    w, wd = np.zeros(last - first), np.zeros(last - first)
    if hi > lo:
        inside = slice(lo - first, hi - first)
        w[inside], wd[inside] = weight[lo:hi], weighted_data[lo:hi]
    return _Segment(first, sky, inverse, w, wd)


def _coarse_scan(prior: LAEPrior, segment: _Segment, a: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """dchi2 at consecutive integer shifts by FFT cross-correlations (METHODS §5.4) over only the rows the shifted
    windows cover: an FFT of ``len(shifts) + m - 1`` points, about half the grid for U25's scan.

    When a fast FFT length lies a few points below that span (4 800 = 2⁶ 3 5² for U25's 4 801, where the next one
    up, 4 860 = 2² 3⁵ 5, takes 10 % longer), the FFT covers the shifts whose windows fit in it and the last few
    are evaluated directly.
    """
    m, k = prior.lae_vectors.shape
    offset = prior.window_start + int(shifts[0]) - segment.first
    span = shifts.size + m - 1
    length = scipy.fft.prev_fast_len(span, real=True)
    if not 0 <= span - length <= _DIRECT_SHIFTS or length < m:
        length = scipy.fft.next_fast_len(span, real=True)
    n_fft = min(shifts.size, length - m + 1)  # shifts whose windows the FFT covers without wrapping around
    u_fft, uu_fft, pairs = prior.window_ffts(length)
    rows = slice(offset, offset + n_fft + m - 1)
    k_sky = segment.inverse.shape[0]
    qq, qa = np.zeros((len(pairs[0]), shifts.size)), np.zeros((k, shifts.size))
    # a few sky vectors at a time, whitened here: their series, spectra and correlations stay in cache
    for chunk in range(0, k_sky, _SKY_CHUNK):
        sky = slice(chunk, chunk + _SKY_CHUNK)
        sky_fft = scipy.fft.rfft(segment.whitened(sky, rows), n=length, axis=-1)
        add_sky_terms(scipy.fft.irfft(sky_fft[:, None, :] * u_fft, n=length, axis=-1), a[sky], qq, qa, n_fft)
    weight_fft = scipy.fft.rfft(np.stack([segment.weight[rows], segment.weighted_data[rows]]), n=length, axis=-1)
    eg = np.empty((len(pairs[0]) + k, shifts.size))
    eg[:, :n_fft] = scipy.fft.irfft(np.concatenate([weight_fft[0] * uu_fft, weight_fft[1] * u_fft]), n=length,
                                    axis=-1)[:, :n_fft]
    if n_fft < shifts.size:  # the last shifts, directly: products with the window at each
        n_tail, first = shifts.size - n_fft, offset + n_fft
        u = prior.lae_vectors
        uu = u[:, pairs[0]] * u[:, pairs[1]]
        sky = segment.whitened(slice(0, k_sky), slice(first, first + n_tail + m - 1))
        q_tail = np.empty((k_sky, k, n_tail))
        for t in range(n_tail):
            q_tail[:, :, t] = sky[:, t: t + m] @ u
            eg[:, n_fft + t] = np.concatenate([segment.weight[first + t: first + t + m] @ uu,
                                               segment.weighted_data[first + t: first + t + m] @ u])
        qq_tail, qa_tail = np.zeros((len(pairs[0]), n_tail)), np.zeros((k, n_tail))
        add_sky_terms(q_tail, a, qq_tail, qa_tail, n_tail)
        qq[:, n_fft:], qa[:, n_fft:] = qq_tail, qa_tail
    return solve_shifts(eg[: len(pairs[0])], eg[len(pairs[0]):], qq, qa, shifts.size)[0]


_DIRECT_SHIFTS = 16  # at most this many shifts evaluated directly to use a shorter, faster FFT
_SKY_CHUNK = 10  # sky vectors per FFT pass of the coarse scan


def _fine_scan(prior: LAEPrior, segment: _Segment, a: np.ndarray, centre: int, fine_steps: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dchi2 and alpha at ``centre + j/10`` for ``|j| <= fine_steps``: one product of the segment with the windows
    of every sub-pixel phase and integer move stacked as the columns of one matrix."""
    stack, products, whole = prior.fine_tables(fine_steps)
    rows, k = stack.shape[0], prior.lae_vectors.shape[1]
    npts = 2 * fine_steps + 1
    first = prior.window_start + centre - whole - _PAD - segment.first
    window = slice(first, first + rows)
    q = (segment.inverse @ ((segment.sky[:, window] * segment.weight[window]) @ stack)).reshape(-1, k, npts)
    e_pairs = (segment.weight[window] @ products).reshape(-1, npts)
    g = (segment.weighted_data[window] @ stack).reshape(k, npts)
    dchi2, alpha = shift_dchi2(q, a, e_pairs, g, npts)
    return centre + np.arange(-fine_steps, fine_steps + 1) / 10.0, dchi2, alpha


def _sky_factors(prior: LAEPrior, weight: np.ndarray, weighted_data: np.ndarray, rows: np.ndarray
                 ) -> Iterator[tuple[int, tuple[np.ndarray, np.ndarray, np.ndarray] | None]]:
    """For each of ``rows`` (spectra of the block), ``(L, L⁻¹, V_skyᵀ W d)`` with ``K = I + V_skyᵀ W V_sky = L Lᵀ``,
    or None where the Cholesky fails. ``K`` of a batch of spectra is one product of their weights with the
    per-pixel sky vector pairs and ``V_skyᵀ W d`` another: BLAS-3 instead of one rank-k update per spectrum."""
    _, pixels, products, (i, j) = prior.sky_products()
    k_sky = prior.sky_vectors.shape[1]
    for start in range(0, rows.size, _SKY_BATCH):
        batch = rows[start: start + _SKY_BATCH]
        packed = weight[batch][:, pixels] @ products
        projected = weighted_data[batch] @ prior.sky_vectors
        k = np.zeros((batch.size, k_sky, k_sky))
        k[:, j, i] = packed  # the lower triangle of each K in Fortran order, as potrf reads it
        k[:, np.arange(k_sky), np.arange(k_sky)] += 1.0
        for index, row in enumerate(batch):
            chol, info = scipy.linalg.lapack.dpotrf(k[index].T, lower=1, clean=1, overwrite_a=1)
            inverse, info_inverse = scipy.linalg.lapack.dtrtri(chol, lower=1) if info == 0 else (None, 1)
            yield int(row), ((chol, inverse, projected[index]) if info_inverse == 0 else None)


_SKY_BATCH = 128  # spectra per product of the sky factors (the pair table, 75 MB for U25's prior, is read once each)


def scan_lae(
    flux: np.ndarray,
    ivar: np.ndarray,
    prior: LAEPrior,
    *,
    shifts: np.ndarray | None = None,
    fine_half_width: float = 5.0,
    calibration: float = 1.0,
    exclusion: int = 10,
    return_curve: bool = False,
    return_components: bool = False,
) -> LAEScan:
    """The MADGICS LAE redshift scan of a block of rescaled spectra on the prior's grid.

    Parameters
    ----------
    flux, ivar
        ``(nspec, n)`` rescaled flux and inverse variance (U25 Eq. 8); ivar 0 (and the prior's sky mask) = no data.
    prior
        The sky and LAE priors.
    shifts
        Integer coarse shifts (default :meth:`LAEPrior.coarse_shifts`: 4 501 from z = 2).
    fine_half_width
        The fine scan covers ± this many pixels around the coarse best in 0.1-pixel steps (U25: 5).
    calibration
        The factor ``s`` of U25 §4.2.3: ``zerr`` is multiplied by it and ``|dchi2|`` divided by its square.
    exclusion
        Alternatives are the next-lowest local minima more than this many coarse pixels from better ones.
    return_curve, return_components
        Also return the coarse dchi2 curves, and the posterior means of the sky, LAE and residual components at the
        best redshift (they sum to the data exactly).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> n = 2000
    >>> sky = rng.normal(size=(n, 4)) * 0.1
    >>> line = np.exp(-0.5 * ((np.arange(40) - 20) / 2.0) ** 2)[:, None]
    >>> prior = LAEPrior(sky, 3 * line, window_start=500)
    >>> flux = rng.normal(size=(1, n))
    >>> flux[0, 700:740] += 4 * line[:, 0]  # a line at shift 200
    >>> result = scan_lae(flux, np.ones((1, n)), prior, shifts=np.arange(-400, 1400))
    >>> bool(abs(prior.shift_of(result.z[0]) - 200) < 0.5), bool(result.dchi2[0] < -25)
    (True, True)
    """
    flux = np.atleast_2d(np.asarray(flux, dtype=np.float64))
    ivar = np.atleast_2d(np.asarray(ivar, dtype=np.float64))
    if flux.shape != ivar.shape or flux.shape[1] != prior.n_pixels:
        raise ValueError(f"flux {flux.shape} and ivar {ivar.shape} must both be (nspec, {prior.n_pixels})")
    shifts = prior.coarse_shifts() if shifts is None else np.asarray(shifts, dtype=int)
    nspec, k = flux.shape[0], prior.lae_vectors.shape[1]
    fine_steps = round(fine_half_width * 10)
    if shifts.size < 3 or np.any(np.diff(shifts) != 1):
        raise ValueError("shifts must be at least 3 consecutive increasing integers")
    margin = -(-fine_steps // 10) + _PAD  # segment rows beyond the coarse windows that the fine scan reaches
    out = {name: np.full(nspec, np.nan) for name in ("z", "zerr", "dchi2", "z_coarse", "dchi2_coarse", "chi2_null")}
    z_alt, dchi2_alt = np.full((nspec, 2), np.nan), np.full((nspec, 2), np.nan)
    amplitude = np.full((nspec, k), np.nan)
    warn = np.zeros(nspec, dtype=np.int32)
    curves = np.full((nspec, shifts.size), np.nan) if return_curve else None
    components = ({name: np.full(flux.shape, np.nan) for name in ("sky", "lae", "res")}
                  if return_components else None)
    weight, weighted_data = _weights(flux, ivar, prior.sky_mask)
    weighted_data *= weight  # the data are needed one spectrum at a time only (the block's array is not kept)
    measured = np.flatnonzero(weight.any(axis=1))
    warn[np.setdiff1d(np.arange(nspec), measured)] |= LAEWarn.NODATA
    for row, factors in _sky_factors(prior, weight, weighted_data, measured):
        if factors is None:
            warn[row] |= LAEWarn.SKY_SINGULAR
            continue
        chol, inverse, projected = factors
        a = inverse @ projected
        data = np.where(weight[row] > 0, flux[row], 0.0)
        out["chi2_null"][row] = float(data @ weighted_data[row] - a @ a)
        segment = _segment(prior, weight[row], weighted_data[row], inverse,
                           prior.window_start + int(shifts[0]) - margin,
                           prior.window_start + int(shifts[-1]) + prior.lae_vectors.shape[0] + margin)
        curve = _coarse_scan(prior, segment, a, shifts)
        best = int(np.argmin(curve))
        out["z_coarse"][row], out["dchi2_coarse"][row] = prior.redshift_of(shifts[best]), curve[best]
        if best in (0, shifts.size - 1):
            warn[row] |= LAEWarn.EDGE
        # the two lowest other local minima (every point of a flat bottom counts) more than exclusion steps apart
        alternatives = local_minima(curve, plateaus="all", ends=False, exclusion=exclusion, count=2, taken=[best])
        for j, index in enumerate(alternatives):
            z_alt[row, j], dchi2_alt[row, j] = prior.redshift_of(shifts[index]), curve[index]
        if curves is not None:
            curves[row] = curve
        positions, fine, alphas = _fine_scan(prior, segment, a, int(shifts[best]), fine_steps)
        top = int(np.argmin(fine))
        out["z"][row], out["dchi2"][row], amplitude[row] = prior.redshift_of(positions[top]), fine[top], alphas[top]
        if fine[top] == 0.0:
            warn[row] |= LAEWarn.NO_SIGNAL
        if top - 5 < 0 or top + 5 >= fine.size:
            warn[row] |= LAEWarn.EDGE
        else:
            # curvature of the negative log-likelihood dchi2/2 from the points ±0.5 px (5 fine steps) away
            curvature = (fine[top - 5] - 2 * fine[top] + fine[top + 5]) / 2
            if curvature > 0:
                sigma_pixels = 0.5 / np.sqrt(curvature)
                out["zerr"][row] = calibration * (1 + out["z"][row]) * prior.delta * np.log(10) * sigma_pixels
            else:
                warn[row] |= LAEWarn.BAD_CURVATURE
        if components is not None:
            sky, lae = _posterior_means(prior, weight[row], data, positions[top], chol, alphas[top])
            components["sky"][row], components["lae"][row] = sky, lae
            components["res"][row] = flux[row] - sky - lae
    return LAEScan(z=out["z"], zerr=out["zerr"], dchi2=out["dchi2"],
                   abs_dchi2_cal=np.abs(out["dchi2"]) / calibration**2, z_coarse=out["z_coarse"],
                   dchi2_coarse=out["dchi2_coarse"], z_alt=z_alt, dchi2_alt=dchi2_alt, chi2_null=out["chi2_null"],
                   lae_amplitude=amplitude, warn=warn, dchi2_curve=curves, components=components)


def _lae_columns(prior: LAEPrior, position: float) -> np.ndarray:
    """The full-length ``(n, k)`` LAE eigenvectors at a fractional shift (zero outside the window)."""
    whole = int(np.floor(round(position * 10) / 10))
    tenths = round((position - whole) * 10)
    u = prior.phase(tenths)
    first = prior.window_start + whole - _PAD
    lo, hi = max(first, 0), min(first + u.shape[0], prior.n_pixels)
    columns = np.zeros((prior.n_pixels, u.shape[1]))
    if hi > lo:
        columns[lo:hi] = u[lo - first: hi - first]
    return columns


def lae_line_flux(prior: LAEPrior, z: np.ndarray, amplitude: np.ndarray, flux_scale: np.ndarray,
                  pixel_width: np.ndarray) -> np.ndarray:
    """Integral ``sum_i x_LAE,i flux_scale_i pixel_width_i`` of each spectrum's posterior mean LAE component at its
    redshift: the line flux in the un-rescaled unit (``flux_scale = sqrt(10**y)`` undoes U25 Eq. 8) times Å.

    ``z`` and ``amplitude`` ((nspec,), (nspec, k)) are :class:`LAEScan`'s ``z`` and ``lae_amplitude``; NaN where z is.

    Examples
    --------
    >>> line = np.exp(-0.5 * ((np.arange(40) - 20) / 2.0) ** 2)[:, None]
    >>> prior = LAEPrior(np.zeros((2000, 1)), line, window_start=500)
    >>> flux = lae_line_flux(prior, prior.redshift_of(np.array([200.0])), np.array([[3.0]]), np.ones(2000),
    ...                      np.full(2000, 0.5))
    >>> round(float(flux[0]), 3)  # 3 x sqrt(2 pi) 2 pixels x 0.5 Å
    7.52
    """
    out = np.full(np.shape(z), np.nan)
    for row, (redshift, alpha) in enumerate(zip(np.asarray(z, float), np.asarray(amplitude, float), strict=True)):
        if np.isfinite(redshift) and np.all(np.isfinite(alpha)):
            out[row] = (_lae_columns(prior, round(float(prior.shift_of(redshift)) * 10) / 10) @ alpha
                        ) @ (flux_scale * pixel_width)
    return out


def _posterior_means(prior: LAEPrior, weight: np.ndarray, data: np.ndarray, position: float, chol: np.ndarray,
                     alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``x_sky = C_sky C_tot⁻¹ d`` and ``x_LAE = C_LAE C_tot⁻¹ d = V alpha`` at one shift.

    With ``M = C_res + C_sky``, ``C_tot⁻¹ d = M⁻¹ (d - V alpha)`` and ``V_skyᵀ M⁻¹ = K⁻¹ V_skyᵀ W`` (push-through), so
    ``x_sky = V_sky K⁻¹ V_skyᵀ W (d - V alpha)``: no n x n matrix is ever formed.
    """
    lae = _lae_columns(prior, position) @ alpha
    projected = prior.sky_vectors.T @ (weight * (data - lae))
    return prior.sky_vectors @ scipy.linalg.cho_solve((chol, True), projected), lae


def sky_component(flux: np.ndarray, ivar: np.ndarray, sky_vectors: np.ndarray, sky_mask: np.ndarray | None = None
                  ) -> np.ndarray:
    """Posterior mean sky component ``C_sky (C_sky + C_res)⁻¹ d = V_sky K⁻¹ V_skyᵀ W d`` of each spectrum (the sky +
    residual model without an LAE; U25 §2.3 step 2 keeps ``d - x_sky``); 0 for a spectrum without data."""
    flux = np.atleast_2d(np.asarray(flux, dtype=np.float64))
    ivar = np.atleast_2d(np.asarray(ivar, dtype=np.float64))
    out = np.zeros_like(flux)
    for row in range(flux.shape[0]):
        weight, data = _weights(flux[row], ivar[row], sky_mask)
        if weight.any():
            chol, a, _ = _sky_factor(sky_vectors, weight, data)
            out[row] = sky_vectors @ scipy.linalg.solve_triangular(chol, a, lower=True, trans="T")
    return out


def _weights(flux: np.ndarray, ivar: np.ndarray, sky_mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel weights (ivar; 0 where missing, non-finite or sky-masked) and the data with 0 where weight is 0, of
    one spectrum or of each row of a block."""
    weight = np.where(np.isfinite(ivar) & (ivar > 0) & np.isfinite(flux), ivar, 0.0)
    if sky_mask is not None:
        weight[..., sky_mask] = 0.0
    return weight, np.where(weight > 0, flux, 0.0)


def reference_lae_scan(flux: np.ndarray, ivar: np.ndarray, prior: LAEPrior, positions: np.ndarray) -> np.ndarray:
    """Straightforward dchi2 of one spectrum at each (fractional) shift: full-length products and a fresh
    ``(k_sky + k)``-column Woodbury solve per shift, ``chi2 = dᵀWd - bᵀ (I + VᵀWV)⁻¹ b`` with ``V = [V_sky, V(z)]``.

    The check for :func:`scan_lae` (and the benchmark's reference): no FFT, no Schur complement, no windowing.
    """
    weight, data = _weights(np.asarray(flux, dtype=np.float64), np.asarray(ivar, dtype=np.float64), prior.sky_mask)
    base = data @ (weight * data)

    def chi2(vectors: np.ndarray) -> float:
        wv = vectors * weight[:, None]
        system = vectors.T @ wv + np.eye(vectors.shape[1])
        b = wv.T @ data
        return base - b @ scipy.linalg.solve(system, b, assume_a="pos")

    null = chi2(prior.sky_vectors)
    return np.array([chi2(np.hstack([prior.sky_vectors, _lae_columns(prior, p)])) - null for p in positions])
