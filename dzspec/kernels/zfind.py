"""NMF redshifts of a block of observed spectra: rest-grid transform, exact fast scan, Redrock-style outputs.

The block kernel behind ``dzspec zfind``: it puts each spectrum once on the basis grid's observed-frame pixels
(same step and phase, so a trial redshift is an integer shift), runs :func:`dzspec.kernels.nmf_scan.scan_block`
over the trial grid, and returns per-spectrum columns named as in Redrock's REDSHIFTS table where they mean the
same thing, plus the B26 metrics under their own names and a ``zwarn`` bitmask (:class:`ZWarn`).
"""

from __future__ import annotations

import enum

import numpy as np

from dzspec.kernels.nmf_scan import PreparedBasis, scan_block
from dzspec.kernels.restframe import LogGrid, observed_window, to_log_grid

__all__ = ["ZWarn", "decimate_min", "nmf_zfind"]


class ZWarn(enum.IntFlag):
    """``zwarn`` bits: 0-11 keep Redrock's meanings, 16-23 are reserved downstream, dzspec's own in 12-15, 24-31."""

    SKY = 1 << 0
    LITTLE_COVERAGE = 1 << 1  #: fewer than half of the observed pixels have data
    SMALL_DELTA_CHI2 = 1 << 2
    NEGATIVE_MODEL = 1 << 3
    MANY_OUTLIERS = 1 << 4
    Z_FITLIMIT = 1 << 5  #: the best trial is the first or last of the grid
    NEGATIVE_EMISSION = 1 << 6
    UNPLUGGED = 1 << 7
    BAD_TARGET = 1 << 8
    NODATA = 1 << 9  #: no pixel with data: z = NaN
    BAD_MINFIT = 1 << 10
    POORDATA = 1 << 11
    NEGATIVE_MEDIAN_FLUX = 1 << 12  #: median flux < 0 (sky over-subtraction): NNLS is unreliable (B26 4.1)
    LOW_SIGNIFICANCE = 1 << 13  #: log10 nmf_significance < -2 (B26 4.3: likely a false source)
    LOW_ROBUSTNESS = 1 << 14  #: nmf_robustness < 3 (B26 4.1)


def nmf_zfind(
    wavelength: np.ndarray,
    flux: np.ndarray,
    ivar: np.ndarray,
    *,
    prepared: PreparedBasis,
    grid: LogGrid,
    shifts: np.ndarray,
    weighting: str = "weighted",
    exclusion_steps: int = 25,
    n_candidates: int = 5,
    min_coverage: float = 0.5,
    refine: bool = True,
    store_chi2: bool = False,
    chi2_decimate: int = 1,
) -> dict[str, np.ndarray]:
    """Redshifts of a block of spectra with an NMF basis.

    Parameters
    ----------
    wavelength, flux, ivar
        Observed vacuum grid (Angstrom) and ``(nspec, nwave)`` arrays in the store's flux unit.
    prepared
        The basis prepared for this observed window (:func:`dzspec.kernels.nmf_scan.prepare_basis`).
    grid
        The basis grid.
    shifts
        Integer pixel shifts of the trial redshifts (``grid.shift_of(z_trials)``).
    weighting
        ``"weighted"`` NNLS (default) or ``"unweighted"`` (the authors' code).
    exclusion_steps, n_candidates
        Robustness exclusion window in trial steps, and number of minima kept.
    min_coverage
        Fraction of observed pixels with data below which LITTLE_COVERAGE is set.
    refine
        Sub-pixel refinement of the best trial (:func:`dzspec.kernels.nmf_scan.scan_block`): adds ``z_refined``
        and ``chi2_refined``.
    store_chi2, chi2_decimate
        Also return the chi2 curve over the trials, reduced to every ``chi2_decimate``-th trial by
        :func:`decimate_min` (the minimum over each group, so minima survive).

    Returns
    -------
    dict
        ``z`` (float64, quantised best trial), ``chi2``, ``npixels``, ``coeff`` (spectrum x rank),
        ``nmf_significance``, ``nmf_robustness``, ``cand_z``, ``cand_chi2``, ``cand_score`` (spectrum x candidate,
        ``cand_score`` the significance of each minimum), ``zwarn`` (uint32, :class:`ZWarn`); with ``refine``
        ``z_refined`` (float64, sub-pixel) and ``chi2_refined`` (float64, chi2 at the best integer shift near the
        best trial, <= ``chi2``); with ``store_chi2`` ``chi2_curve`` (float32, spectrum x ``ceil(ntrial /
        chi2_decimate)``). ``coeff`` stays that of the best trial. No-data spectra are NaN.
    """
    if int(chi2_decimate) != chi2_decimate or chi2_decimate < 1:
        raise ValueError(f"chi2_decimate must be a positive integer, not {chi2_decimate!r}")
    j0, n = observed_window(wavelength, grid)
    f, w = to_log_grid(wavelength, flux, ivar, grid, window=(j0, n))
    result = scan_block(prepared, f, w, shifts, grid.step, j0, weighting=weighting,  # type: ignore[arg-type]
                        exclusion_steps=exclusion_steps, n_minima=n_candidates, return_chi2=store_chi2,
                        refine=refine)
    nspec = f.shape[0]
    zwarn = np.zeros(nspec, np.uint32)
    good = np.asarray(ivar) > 0
    nodata = ~good.any(axis=1)
    zwarn[nodata] |= np.uint32(ZWarn.NODATA)
    coverage = good.sum(axis=1) / max(1, good.shape[1])
    zwarn[coverage < min_coverage] |= np.uint32(ZWarn.LITTLE_COVERAGE)
    median = np.array([np.median(row[g]) if g.any() else np.nan for row, g in zip(flux, good, strict=True)])
    zwarn[median < 0] |= np.uint32(ZWarn.NEGATIVE_MEDIAN_FLUX)
    edge = (result.index == 0) | (result.index == len(shifts) - 1)
    zwarn[edge & ~nodata] |= np.uint32(ZWarn.Z_FITLIMIT)
    with np.errstate(invalid="ignore", divide="ignore"):
        low_significance = ~(np.log10(result.significance) > -2)
    zwarn[low_significance & ~nodata] |= np.uint32(ZWarn.LOW_SIGNIFICANCE)
    zwarn[~(result.robustness >= 3) & ~nodata] |= np.uint32(ZWarn.LOW_ROBUSTNESS)
    out = {
        "z": result.z.astype(np.float64),
        "chi2": result.chi2_min.astype(np.float64),
        "npixels": result.npixels.astype(np.int32),
        "coeff": result.omega.astype(np.float32),
        "nmf_significance": result.significance.astype(np.float32),
        "nmf_robustness": result.robustness.astype(np.float32),
        "cand_z": result.minima_z.astype(np.float64),
        "cand_chi2": result.minima_chi2.astype(np.float64),
        "cand_score": result.minima_significance.astype(np.float32),
        "zwarn": zwarn,
    }
    if refine:
        out["z_refined"] = result.z_refined.astype(np.float64)  # type: ignore[union-attr]
        out["chi2_refined"] = result.chi2_refined.astype(np.float64)  # type: ignore[union-attr]
    if store_chi2:
        out["chi2_curve"] = decimate_min(result.chi2, int(chi2_decimate)).astype(np.float32)  # type: ignore[arg-type]
    return out


def decimate_min(chi2: np.ndarray, n: int) -> np.ndarray:
    """Reduce chi2 curves (spectrum x trial) to groups of ``n`` consecutive trials, keeping each group's minimum.

    Column ``i`` is the minimum over trials ``i*n`` to ``i*n + n - 1`` (the last group may be shorter), so every
    minimum of the curve, the global one included, survives with its exact value; only its position is known to
    ``n`` trials. A row with a NaN gives NaN in its group.

    Examples
    --------
    >>> decimate_min(np.array([[5.0, 3.0, 4.0, 1.0, 2.0]]), 2).tolist()
    [[3.0, 1.0, 2.0]]
    """
    chi2 = np.atleast_2d(np.asarray(chi2))
    if n == 1:
        return chi2
    ngroup = -(-chi2.shape[1] // n)
    padded = np.full((chi2.shape[0], ngroup * n), np.inf, dtype=chi2.dtype)  # inf never wins a group's minimum
    padded[:, : chi2.shape[1]] = chi2
    return padded.reshape(chi2.shape[0], ngroup, n).min(axis=2)
