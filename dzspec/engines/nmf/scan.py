"""The exact fast NMF redshift scan of a block of spectra: chi2 at every trial shift, the free-sign nuisance terms
beside the basis, the per-spectrum outputs, and the straightforward reference it must agree with.

Per trial the scan takes the FFT Grams and projections of :mod:`dzspec.engines.nmf.grams` (METHODS §5.2), eliminates
the nuisance coefficients by their Schur complement (METHODS §5.7) and solves the non-negative fit exactly with the
warm-started NNLS of :mod:`dzspec.engines.nmf.nnls` (METHODS §5.3). :func:`scan_block` turns the chi2 curves of a
block of spectra into the B26 per-spectrum outputs (METHODS §1.3-1.4: :mod:`dzspec.engines.nmf.metrics`, and the
sub-pixel refinement of :mod:`dzspec.engines.nmf.refine`); :func:`reference_scan` is the straightforward per-shift
weighted tall-matrix NNLS it must agree with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.optimize

from dzspec.engines.nmf.grams import (
    PreparedBasis,
    fft_correlations,
    grams_at_lags,
    unweighted_projections,
    unweighted_window_gram,
    zero_bad_pixels,
)
from dzspec.engines.nmf.metrics import chi2_metrics, delta_chi2
from dzspec.engines.nmf.nnls import PIVOT_REL, scan_nnls, scan_nnls_schur
from dzspec.engines.nmf.refine import refined_minimum, refinement_shifts
from dzspec.kernels.trials import trial_redshifts

__all__ = [
    "ScanResult",
    "Weighting",
    "nuisance_vectors",
    "reference_scan",
    "scan_block",
    "scan_chi2",
    "trial_grid",
]

Weighting = Literal["weighted", "unweighted"]

#: A basis row whose weighted norm on a window drops below this fraction (squared) once the nuisance terms are
#: projected out (METHODS §5.7) is, there, a smooth polynomial to within 0.1 %: the nuisance terms already span it, and
#: all it could add is a cancellation at absurd coefficients (1e6 against the polynomial) that float64 Grams cannot
#: resolve. Such a row is left out at that lag, in the fast scan and in :func:`reference_scan` alike.
_SCHUR_REL = 1e-6


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
    z = trial_redshifts(z_min, z_max, dz)
    shift = np.rint(np.log10(1.0 + z) / delta).astype(np.int64)
    return z, shift, int(j0) - shift



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


def _nuisance_whitening(f: np.ndarray, w: np.ndarray, nuisance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``T`` (m', m) with ``G_PP^-1 = T^T T`` and ``u = T b_P`` for the Schur elimination of the nuisance terms
    (METHODS §5.7; :func:`~dzspec.engines.nmf.nnls.scan_nnls_schur`, which drops at a lag a basis row that the
    nuisance terms reproduce on the window to within :data:`_SCHUR_REL` of its own norm). ``T`` comes from an
    eigendecomposition, so a rank-deficient ``G_PP`` keeps its range."""
    g_pp = (nuisance * w) @ nuisance.T
    b_p = nuisance @ (w * f)
    values, vectors = np.linalg.eigh(g_pp)
    keep = values > PIVOT_REL * max(float(values[-1]), 0.0)
    t = np.ascontiguousarray((vectors[:, keep] / np.sqrt(values[keep])).T)  # (m', m)
    return t, t @ b_p


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
    (:func:`nuisance_vectors`; weighted only), eliminated by their Schur complement
    (:func:`~dzspec.engines.nmf.nnls.scan_nnls_schur`) so the NNLS is
    unchanged; with ``return_nuisance`` their coefficients (nlag, m) come third. ``correlations`` must then be
    :func:`~dzspec.engines.nmf.grams.fft_correlations`'s output with the same ``nuisance``.

    Examples
    --------
    >>> from dzspec.engines.nmf.grams import prepare_basis
    >>> h = np.array([[1.0, 2.0, 3.0, 0.0, 0.0, 0.0]])
    >>> chi2, omega = scan_chi2(prepare_basis(h, 3), np.array([2.0, 4.0, 6.0]), np.ones(3), np.arange(4))
    >>> int(np.argmin(chi2)), round(float(omega[0, 0]), 12)
    (0, 2.0)
    >>> chi2, omega, beta = scan_chi2(prepare_basis(h, 3), np.array([1.0, 3.0, 5.0]), np.ones(3), np.arange(4),
    ...                               nuisance=np.ones((1, 3)), return_nuisance=True)  # 2 h - 1: a pedestal
    >>> int(np.argmin(chi2)), round(float(omega[0, 0]), 9), round(float(beta[0, 0]), 9)
    (0, 2.0, -1.0)
    """
    f, w = zero_bad_pixels(flux, weights)
    f, w = f[0], w[0]
    if nuisance is not None:
        nuisance = np.atleast_2d(np.asarray(nuisance, dtype=np.float64))
        if weighting != "weighted":
            raise ValueError("nuisance terms need weighting='weighted' (Moose's unweighted fit has none)")
        if nuisance.shape[1] != f.shape[0]:
            raise ValueError(f"nuisance vectors have {nuisance.shape[1]} pixels, the spectrum {f.shape[0]}")
    corr = fft_correlations(prepared, f, w, nuisance) if correlations is None else correlations
    gp, b3, c = grams_at_lags(prepared, corr, f, w, lags, nuisance)
    n = gp.shape[0]
    omega = np.zeros((n, prepared.k))
    chi2 = np.zeros(n)
    if nuisance is not None:
        t, u = _nuisance_whitening(f, w, nuisance)
        beta = np.zeros((n, nuisance.shape[0]))
        scan_nnls_schur(gp, b3, c, t, u, prepared.pair_a, prepared.pair_b, np.diagonal(prepared.pair_index).copy(),
                        _SCHUR_REL, float(tol_rel), omega, chi2, beta)
        return (chi2, omega, beta) if return_nuisance else (chi2, omega)
    b = np.ascontiguousarray(b3[:, :, 0])
    if weighting == "weighted":
        gs, bs = gp, b
    elif weighting == "unweighted":
        gs = unweighted_window_gram(prepared, lags) if unweighted_gram is None else unweighted_gram
        bs = unweighted_projections(prepared, f, lags)
    else:
        raise ValueError(f"unknown weighting {weighting!r}")
    scan_nnls(gs, bs, gp, b, c, prepared.pair_a, prepared.pair_b, float(tol_rel), omega, chi2)
    return (chi2, omega, np.zeros((n, 0))) if return_nuisance else (chi2, omega)



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
        ``shifts[best - 1]`` to ``shifts[best + 1]`` (clipped at the grid ends), the lowest of them, then the 3-point
        parabola through it and its integer neighbours (:func:`~dzspec.engines.nmf.refine.parabola_vertex`); the
        parabola's width is ``ScanResult.zerr`` (uncalibrated: :func:`dzspec.engines.nmf.zfind.nmf_zfind` scales it).
    nuisance : (m, n_obs) free-sign observed-frame vectors fitted beside the basis at every trial (METHODS §5.7,
        :func:`nuisance_vectors`); their coefficients at the best trial are ``ScanResult.nuisance_coeff``.

    Examples
    --------
    >>> from dzspec.engines.nmf.grams import prepare_basis
    >>> x = np.arange(300.0)
    >>> h = np.stack([np.exp(-0.5 * ((x - 120) / 3) ** 2), np.full(300, 0.1)])
    >>> flux = 2 * h[0, 100:200] + 0.1; weights = np.ones((1, 100))
    >>> r = scan_block(prepare_basis(h, 100), flux[None], weights, np.arange(0, 60, 4), 1e-4, 100)
    >>> int(r.index[0]), bool(r.chi2_min[0] < 1e-12), int(r.npixels[0]), abs(float(r.z_refined[0])) < 1e-12
    (0, True, 100, True)
    """
    f, w = zero_bad_pixels(flux, weights)
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
    ug = unweighted_window_gram(prepared, lags) if weighting == "unweighted" else None
    # Moose's Gram is spectrum-independent: one FFT pass over every integer shift of the grid serves all refinements
    ug_all = (unweighted_window_gram(prepared, int(j0) - np.arange(shifts[0], shifts[-1] + 1))
              if refine and ntrial and weighting == "unweighted" else None)
    for i in range(nspec):
        if res.npixels[i] == 0:
            continue
        # once per spectrum: the refinement reads other lags of it
        corr = fft_correlations(prepared, f[i], w[i], nuisance)
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
    fine, lo, hi = refinement_shifts(shifts, best)
    ugf = None if ug_all is None else np.ascontiguousarray(ug_all[fine - shifts[0]])
    chi2, omega = scan_chi2(prepared, f, w, int(j0) - fine, weighting=weighting, tol_rel=tol_rel,
                            unweighted_gram=ugf, correlations=corr, nuisance=nuisance)
    # the best trial's own shift is the same problem: reuse its values, so that chi2_refined <= chi2_min exactly
    # whatever the round-off of the second FFT pass and the differently warm-started NNLS
    at = int(shifts[best] - fine[0])
    chi2[at], omega[at] = chi2_best, omega_best
    j, z_refined, zerr = refined_minimum(chi2, fine, lo, hi, delta)
    res.z_refined[i] = z_refined  # type: ignore[index]
    res.zerr[i] = zerr  # type: ignore[index]
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
    f, w = zero_bad_pixels(flux, weights)
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
