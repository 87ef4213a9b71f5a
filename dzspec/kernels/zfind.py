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

__all__ = ["ZWarn", "nmf_zfind"]


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

    Returns
    -------
    dict
        ``z`` (float64, quantised best trial), ``chi2``, ``npixels``, ``coeff`` (spectrum x rank),
        ``nmf_significance``, ``nmf_robustness``, ``cand_z``, ``cand_chi2``, ``cand_score`` (spectrum x candidate,
        ``cand_score`` the significance of each minimum), ``zwarn`` (uint32, :class:`ZWarn`).
    """
    j0, n = observed_window(wavelength, grid)
    f, w = to_log_grid(wavelength, flux, ivar, grid, window=(j0, n))
    result = scan_block(prepared, f, w, shifts, grid.step, j0, weighting=weighting,  # type: ignore[arg-type]
                        exclusion_steps=exclusion_steps, n_minima=n_candidates)
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
    return {
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
