"""The U25 log grid, flux rescaling and the two data-driven MADGICS priors (METHODS §2.1-2.3), as pure kernels.

* :func:`to_lae_grid`: DESI spectra (merged cameras, vacuum Å) linearly interpolated onto the log grid
  ``δ = 5e-5`` from 3600 Å (8 720 pixels), variance propagated as ``Σ w_k² var_k`` (neighbour correlations ignored,
  as METHODS §2.1 asks us to document), then the U25 Eq. 7-9 rescaling.
* Sky-residual prior: outlier cuts (:func:`sky_spectra_keep`), the sky-line mask (:func:`sky_line_counts` per block,
  :func:`sky_mask_from_counts` on their sum), the zero-mean covariance ``XXᵀ/N`` over unmasked bins from summed Gram
  matrices (:func:`gram`), and its top eigenvectors (:func:`sky_vectors_from_gram`).
* LAE prior: the sky component removed with MADGICS (:func:`dzspec.engines.madgics.scan.sky_component`), the variance
  cut, sub-pixel alignment to ``z_ref`` (:func:`align_windows`), the pairwise-count covariance ``DDᵀ ⊘ AAᵀ`` and its top
  positive eigenvectors (:func:`lae_vectors_from_windows`).

Everything is split so that the Dask layer can sum per-block pieces (counts, Gram matrices, window sums) and finish
on the driver; each piece is a plain function of in-memory arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.linalg
import scipy.sparse.linalg

from dzspec.engines.madgics.compiled import resample_rows
from dzspec.engines.madgics.scan import LAE_GRID_DELTA, LAE_GRID_START, madgics_rescale_y
from dzspec.kernels.restframe import LogGrid, linear_weights, measured_pixels

VarianceModel = Literal["conserve", "propagate"]

__all__ = [
    "LAE_GRID",
    "LAE_WINDOW",
    "RescalePolynomial",
    "align_windows",
    "gram",
    "lae_vectors_from_windows",
    "sky_line_counts",
    "sky_mask_from_counts",
    "sky_power",
    "sky_spectra_keep",
    "sky_vectors_from_gram",
    "to_lae_grid",
]

#: U25's grid: 3600-9824 Å at δ = 5e-5, 8 720 pixels.
LAE_GRID = LogGrid(math.log10(LAE_GRID_START), LAE_GRID_DELTA, 8720)
#: The LAE prior's window at z_ref = 2.45 (Å; rest 1198-1240 Å).
LAE_WINDOW = (4133.0, 4278.0)


def to_lae_grid(wavelength: np.ndarray, flux: np.ndarray, ivar: np.ndarray, grid: LogGrid = LAE_GRID, *,
                y: np.ndarray | None = None, variance_model: VarianceModel = "conserve"
                ) -> tuple[np.ndarray, np.ndarray]:
    """``(flux, ivar)`` on ``grid`` (float64, ``(nspec, grid.size)``), ivar 0 where either neighbour lacks data
    (:func:`~dzspec.kernels.restframe.measured_pixels`).

    ``variance_model``: ``"propagate"`` is METHODS §2.1's ``Σ w_k² var_k``, the variance of each interpolated value
    alone. Where log pixels are narrower than the native ones (below ~6 600 Å on DESI: 0.41 Å at 3600 Å against
    0.8 Å) neighbours share native pixels, so their errors are correlated, and ``Σ w²`` even halves the variance
    midway between natives: a diagonal C_res then counts the blue end's information up to ~4 times, and the scan
    fits noise there (simulated DESI sky fibres: median |dchi2| 33, best z piled up at 3600-4100 Å). ``"conserve"``
    (default) interpolates the variance and gives each log pixel only its width's share of the native inverse
    variance (``x min(1, width_log / width_native)``): sky fibres' median |dchi2| falls to 13, spread evenly in
    wavelength, with LAE redshifts as good.

    With ``y`` (per grid pixel, e.g. :func:`~dzspec.engines.madgics.scan.madgics_rescale_y` of the grid's wavelengths or
    a :class:`RescalePolynomial`'s values) flux is divided by ``sqrt(10**y)`` and ivar multiplied by ``10**y``
    (U25 Eqs. 8-9).

    Examples
    --------
    >>> wave = np.arange(3600.0, 9824.1, 0.8)
    >>> f, i = to_lae_grid(wave, np.ones((1, wave.size)), np.full((1, wave.size), 4.0))
    >>> f.shape, float(f[0, 100]), round(float(i[0, 101]), 2)  # a 0.42 A pixel: about half a native pixel's ivar
    ((1, 8720), 1.0, 2.1)
    >>> _, i = to_lae_grid(wave, np.ones((1, wave.size)), np.full((1, wave.size), 4.0), variance_model="propagate")
    >>> round(float(i[0, 101]), 2)  # sum w^2 var: more than the native pixel's 4
    7.48
    """
    if variance_model not in ("conserve", "propagate"):
        raise ValueError(f"variance_model must be 'conserve' or 'propagate', not {variance_model!r}")
    wavelength = np.asarray(wavelength, dtype=np.float64)
    flux, ivar = _float_rows(flux), _float_rows(ivar)
    left, right, t, inside = linear_weights(np.log10(wavelength), grid.loglam())
    good = measured_pixels(flux, ivar)  # the one rule: ivar > 0, finite, not a run of exact zeros
    if variance_model == "propagate":
        factor = np.ones(0)
    else:
        # information kept: a log pixel narrower than the native one shares it with its neighbours, so it carries
        # only its width's share of the native inverse variance (no variance dip between native pixels either)
        native_width = np.diff(wavelength)[np.clip(left, 0, wavelength.size - 2)]
        log_width = grid.wavelength() * (10**grid.step - 1)
        factor = np.minimum(1.0, log_width / native_width)
    scale = np.ones(0) if y is None else 10.0 ** np.asarray(y, dtype=np.float64)
    out_flux, out_ivar = np.empty((flux.shape[0], grid.size)), np.empty((flux.shape[0], grid.size))
    # per pixel: flux (1 - t) f_left + t f_right where both neighbours are measured, variance interpolated (or
    # propagated) and divided by the factor, ivar its inverse; then the rescaling (compiled.resample_rows)
    resample_rows(flux, ivar, good, left, right, t, inside, factor, variance_model == "propagate", np.sqrt(scale),
                  scale, out_flux, out_ivar)
    return out_flux, out_ivar


def _float_rows(array: np.ndarray) -> np.ndarray:
    """2-D C-contiguous float32 or float64 as given (other types as float: float32 blocks as read from a store are
    not copied to float64, the compiled loop widens each value exactly as that copy would)."""
    array = np.atleast_2d(np.asarray(array))
    return np.ascontiguousarray(array, dtype=np.result_type(array.dtype, np.float32))


@dataclass(frozen=True)
class RescalePolynomial:
    """U25's ``y(l)``, ``l = log10(wavelength)``: the printed Eq. 7 (:meth:`paper`) or a refit of the log10 sky
    covariance diagonal in the centred, scaled variable ``u = (l - centre) / half_width`` (:meth:`fit`), where the
    coefficients stay O(1) instead of reaching 1e5 with 11-17 dex of sensitivity to rounding."""

    coefficients: tuple[float, ...]  #: in ``u``, lowest power first (unused for the paper form)
    centre: float = 0.0
    half_width: float = 1.0
    form: str = "fit"

    @classmethod
    def paper(cls) -> RescalePolynomial:
        return cls((), form="paper")

    @classmethod
    def fit(cls, wavelength: np.ndarray, variance: np.ndarray, usable: np.ndarray, degree: int = 4, *,
            clip: float = 3.0, iterations: int = 10) -> RescalePolynomial:
        """Least-squares fit of ``log10(variance)`` over ``usable`` bins with positive variance, iteratively
        dropping bins more than ``clip`` robust sigmas above the fit (sky lines: the curve follows the continuum)."""
        ell = np.log10(np.asarray(wavelength, dtype=np.float64))
        use = usable & (variance > 0)
        if use.sum() <= degree:
            raise ValueError(f"{int(use.sum())} usable bins cannot fit a degree-{degree} rescaling polynomial")
        centre, half_width = (ell[use].max() + ell[use].min()) / 2, (ell[use].max() - ell[use].min()) / 2
        u = (ell - centre) / half_width
        target = np.log10(np.where(variance > 0, variance, 1.0))
        for _ in range(iterations):
            coefficients = np.polynomial.polynomial.polyfit(u[use], target[use], degree)
            residual = target - np.polynomial.polynomial.polyval(u, coefficients)
            sigma = 1.4826 * np.median(np.abs(residual[use] - np.median(residual[use])))
            keep = use & (residual < clip * sigma) if sigma > 0 else use
            if keep.sum() <= degree or np.array_equal(keep, use):
                break
            use = keep
        return cls(tuple(float(c) for c in coefficients), float(centre), float(half_width))

    def __call__(self, wavelength: np.ndarray) -> np.ndarray:
        if self.form == "paper":
            return madgics_rescale_y(wavelength)
        u = (np.log10(np.asarray(wavelength, dtype=np.float64)) - self.centre) / self.half_width
        return np.polynomial.polynomial.polyval(u, self.coefficients)

    def as_attrs(self) -> dict[str, object]:
        return {"form": self.form, "coefficients": list(self.coefficients), "centre": self.centre,
                "half_width": self.half_width}


def sky_spectra_keep(flux: np.ndarray, ivar: np.ndarray, *, max_sum: float = 1e6, max_masked: int = 1000
                     ) -> np.ndarray:
    """U25 §2.2 step 2 on un-rescaled log-grid spectra: drop those whose flux sums above ``max_sum`` (in the store's
    flux unit, 1e-17 erg/s/cm²/Å for DESI) or with more than ``max_masked`` pixels without data."""
    return (np.sum(np.where(ivar > 0, flux, 0.0), axis=1) <= max_sum) & (np.sum(ivar <= 0, axis=1) <= max_masked)


def sky_power(flux: np.ndarray, ivar: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per bin, the sum of squared flux over spectra with data there and their number (sum over blocks; their
    ratio is the zero-mean covariance diagonal the rescaling polynomial is fitted to)."""
    valid = ivar > 0
    x = np.where(valid, flux, 0.0)
    return (x * x).sum(axis=0), valid.sum(axis=0)


def sky_line_counts(flux: np.ndarray, ivar: np.ndarray, percentiles: tuple[float, float] = (5.0, 95.0)
                    ) -> np.ndarray:
    """Per bin, how many spectra lie outside their own ``percentiles`` there (taken over each spectrum's pixels with
    data: a per-bin percentile would always put 10 % outside, METHODS §2.2). Sum over blocks, then
    :func:`sky_mask_from_counts`."""
    valid = ivar > 0
    values = np.where(valid, flux, np.nan)
    counts = np.zeros(flux.shape[1], dtype=np.int64)
    usable = valid.any(axis=1)
    if usable.any():
        lo, hi = np.nanpercentile(values[usable], percentiles, axis=1)
        outside = valid[usable] & ((flux[usable] < lo[:, None]) | (flux[usable] > hi[:, None]))
        counts += outside.sum(axis=0)
    return counts


def sky_mask_from_counts(counts: np.ndarray, nspec: int, *, fraction: float = 1 / 3, pad: int = 3) -> np.ndarray:
    """Bins outside the percentiles in more than ``fraction`` of the spectra, plus ``pad`` pixels each side.

    Examples
    --------
    >>> sky_mask_from_counts(np.array([0, 0, 0, 0, 9, 0, 0, 0, 0, 0]), 10, pad=2).astype(int).tolist()
    [0, 0, 1, 1, 1, 1, 1, 0, 0, 0]
    """
    core = counts > fraction * nspec
    mask = core.copy()
    for offset in range(1, pad + 1):
        mask[offset:] |= core[:-offset]
        mask[:-offset] |= core[offset:]
    return mask


def gram(flux: np.ndarray, ivar: np.ndarray) -> np.ndarray:
    """``Xᵀ X`` (lower triangle only) of a block of rescaled spectra with pixels without data set to 0; the
    zero-mean sky covariance is the sum over blocks divided by the number of spectra (METHODS §2.2 step 4)."""
    x = np.where(ivar > 0, flux, 0.0)
    return scipy.linalg.blas.dsyrk(1.0, np.asfortranarray(x.T), lower=1)


def sky_vectors_from_gram(total_gram: np.ndarray, nspec: int, mask: np.ndarray, n_vectors: int = 50
                          ) -> tuple[np.ndarray, np.ndarray]:
    """``V_sky`` (n, n_vectors) = top eigenvectors x sqrt(eigenvalues) of ``XXᵀ/N`` over the unmasked bins, zero in
    masked rows, and the eigenvalues (descending)."""
    keep = np.flatnonzero(~mask)
    if keep.size < n_vectors:
        raise ValueError(f"only {keep.size} unmasked bins for {n_vectors} sky vectors")
    lower = np.tril(total_gram[np.ix_(keep, keep)]) / nspec
    if 4 * n_vectors < keep.size:
        # Lanczos: ~15x faster than LAPACK's full tridiagonalisation for 50 of 8 600 (3 s against 42 s), same
        # eigenvalues to 1e-15; v0 fixed so that the signs are deterministic
        covariance = lower + np.tril(lower, -1).T
        values, vectors = scipy.sparse.linalg.eigsh(covariance, k=n_vectors, which="LA", v0=np.ones(keep.size))
    else:
        values, vectors = scipy.linalg.eigh(lower, lower=True, subset_by_index=(keep.size - n_vectors, keep.size - 1))
    order = np.argsort(values)[::-1]
    values, vectors = np.clip(values[order], 0.0, None), vectors[:, order]
    sky = np.zeros((mask.size, n_vectors))
    sky[keep] = vectors * np.sqrt(values)
    return sky, values


def align_windows(flux: np.ndarray, ivar: np.ndarray, shift: np.ndarray, window_start: int, m: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The ``m``-pixel windows from ``window_start`` of spectra moved by ``-shift`` (fractional pixels) by linear
    interpolation: ``D[i, j] = flux[i](window_start + j + shift[i])``, and ``A`` = 1 where both neighbours have data.

    With ``shift`` = the LAE window's shift at each spectrum's redshift, every Lya lands where it would be at z_ref.
    """
    nspec, n = flux.shape
    data, covered = np.zeros((nspec, m)), np.zeros((nspec, m))
    pixels = np.arange(n, dtype=np.float64)
    for row in range(nspec):
        if not np.isfinite(shift[row]):
            continue
        left, right, t, inside = linear_weights(pixels, window_start + np.arange(m) + shift[row])
        ok = inside & (ivar[row, left] > 0) & (ivar[row, right] > 0)
        data[row] = np.where(ok, (1 - t) * flux[row, left] + t * flux[row, right], 0.0)
        covered[row] = ok
    return data, covered


def lae_vectors_from_windows(dd: np.ndarray, aa: np.ndarray, n_vectors: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Top ``n_vectors`` positive eigenpairs of ``C = DDᵀ ⊘ AAᵀ`` (0/0 = 0) as ``(m, n_vectors)`` eigenvectors x
    sqrt(eigenvalues), and the eigenvalues. C is not positive semi-definite (each pixel pair has its own count);
    negative eigenvalues are dropped (METHODS §2.3 step 6)."""
    covariance = np.divide(dd, aa, out=np.zeros_like(dd), where=aa > 0)
    values, vectors = np.linalg.eigh((covariance + covariance.T) / 2)
    order = np.argsort(values)[::-1][:n_vectors]
    values, vectors = values[order], vectors[:, order]
    if np.any(values <= 0):
        raise ValueError(f"the LAE window covariance has only {int(np.sum(values > 0))} positive eigenvalues, "
                         f"{n_vectors} asked")
    return vectors * np.sqrt(values), values
