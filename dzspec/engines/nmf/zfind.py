"""NMF redshifts of a block of observed spectra: rest-grid transform, exact fast scan, Redrock-style outputs.

The block kernel behind ``dzspec zfind``: it puts each spectrum once on the basis grid's observed-frame pixels
(same step and phase, so a trial redshift is an integer shift), runs :func:`dzspec.engines.nmf.scan.scan_block`
over the trial grid, and returns per-spectrum columns named as in Redrock's REDSHIFTS table where they mean the
same thing, plus the B26 metrics under their own names, a ``zwarn`` bitmask (:class:`ZWarn`: reasons not to trust
``z``) and a ``znote`` bitmask (:class:`ZNote`: findings that leave ``z`` usable); names and units are those of
:mod:`dzspec.results_schema`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dzspec.engines.nmf.grams import PreparedBasis
from dzspec.engines.nmf.scan import nuisance_vectors, scan_block
from dzspec.engines.nmf.zerr import apply_zerr_calibration
from dzspec.kernels.restframe import LogGrid, measured_pixels, observed_window, to_log_grid
from dzspec.results_schema import ZNote, ZWarn

__all__ = ["MIN_DELTACHI2", "ZNote", "ZWarn", "decimate_min", "nmf_zfind", "sky_nuisance_vector"]

#: Redrock's SMALL_DELTA_CHI2 threshold (``redrock.constants.min_deltachi2``).
MIN_DELTACHI2 = 9.0


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
    nuisance_order: int = 0,
    sky_continuum: np.ndarray | None = None,
    zerr_scale: float | Sequence[float] = 1.0,
    zerr_floor: float | Sequence[float] = 0.0,
    zerr_z_edges: Sequence[float] = (),
) -> dict[str, np.ndarray]:
    """Redshifts of a block of spectra with an NMF basis.

    Parameters
    ----------
    wavelength, flux, ivar
        Observed vacuum grid (Angstrom) and ``(nspec, nwave)`` arrays in the store's flux unit.
    prepared
        The basis prepared for this observed window (:func:`dzspec.engines.nmf.grams.prepare_basis`).
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
        Sub-pixel refinement of the best trial (:func:`dzspec.engines.nmf.scan.scan_block`): adds ``z_refined``
        and ``chi2_refined``.
    store_chi2, chi2_decimate
        Also return the chi2 curve over the trials, reduced to every ``chi2_decimate``-th trial by
        :func:`decimate_min` (the minimum over each group, so minima survive).
    nuisance_order
        Free-sign Legendre terms ``P_0 .. P_order`` over the observed window fitted beside the basis at every trial
        (METHODS §5.7: a sky pedestal, flat-field tilts); -1 scans the basis alone (B26).
    sky_continuum
        The night-sky continuum on ``wavelength`` (any scale; e.g. a model's ``bases/<name>/sky_continuum``): one
        more free-sign nuisance term, last in ``nuisance_coeff``, which absorbs a sky over- or under-subtraction
        of any depth (:func:`sky_nuisance_vector`). Needs ``nuisance_order >= 0``.
    zerr_scale, zerr_floor, zerr_z_edges
        The calibration of ``zerr`` (stored with a basis by ``dzspec calibrate-zerr``): ``zerr = sqrt((zerr_scale
        sigma)**2 + (zerr_floor (1 + z))**2)``, with ``sigma`` the width of the refined chi2 parabola at Δχ² = 1 and
        one scale and floor per range of z between ``zerr_z_edges``
        (:func:`~dzspec.engines.nmf.zerr.apply_zerr_calibration`).

    Returns
    -------
    dict
        ``z`` (float64, quantised best trial), ``chi2``, ``deltachi2`` (Redrock's), ``npixels``, ``coeff``
        (spectrum x rank), ``nuisance_coeff`` (spectrum x nuisance, with ``nuisance_order >= 0``),
        ``nmf_significance``, ``nmf_robustness``, ``candidate_z``, ``candidate_chi2``, ``candidate_significance``
        (spectrum x candidate), ``zwarn`` (uint32, :class:`ZWarn`), ``znote`` (uint32, :class:`ZNote`); with
        ``refine`` ``z_refined`` (float64, sub-pixel), its ``zerr`` (NaN where the chi2 parabola is not convex) and
        ``chi2_refined`` (float64, chi2 at the best integer shift
        near the best trial, <= ``chi2``); with ``store_chi2`` ``zchi2`` (float32, spectrum x ``ceil(ntrial /
        chi2_decimate)``). ``coeff`` stays that of
        the best trial. No-data spectra are NaN.
    """
    if int(chi2_decimate) != chi2_decimate or chi2_decimate < 1:
        raise ValueError(f"chi2_decimate must be a positive integer, not {chi2_decimate!r}")
    j0, n = observed_window(wavelength, grid)
    f, w = to_log_grid(wavelength, flux, ivar, grid, window=(j0, n))
    nuisance = nuisance_vectors(n, nuisance_order)
    if sky_continuum is not None:
        if nuisance is None:
            raise ValueError("a sky_continuum nuisance term needs nuisance_order >= 0")
        nuisance = np.vstack([nuisance, sky_nuisance_vector(wavelength, sky_continuum, grid, (j0, n))])
    result = scan_block(prepared, f, w, shifts, grid.step, j0, weighting=weighting,  # type: ignore[arg-type]
                        exclusion_steps=exclusion_steps, n_minima=n_candidates, return_chi2=store_chi2,
                        refine=refine, nuisance=nuisance)
    nspec = f.shape[0]
    zwarn = np.zeros(nspec, np.uint32)
    good = measured_pixels(flux, ivar)
    nodata = ~good.any(axis=1)
    zwarn[nodata] |= np.uint32(ZWarn.NODATA)
    coverage = good.sum(axis=1) / max(1, good.shape[1])
    zwarn[coverage < min_coverage] |= np.uint32(ZWarn.LITTLE_COVERAGE)
    znote = np.zeros(nspec, np.uint32)
    median = np.array([np.median(row[g]) if g.any() else np.nan for row, g in zip(flux, good, strict=True)])
    znote[median < 0] |= np.uint32(ZNote.NEGATIVE_MEDIAN_FLUX)
    edge = (result.index == 0) | (result.index == len(shifts) - 1)
    zwarn[edge & ~nodata] |= np.uint32(ZWarn.Z_FITLIMIT)
    with np.errstate(invalid="ignore", divide="ignore"):
        low_significance = ~(np.log10(result.significance) > -2)
    zwarn[low_significance & ~nodata] |= np.uint32(ZWarn.LOW_SIGNIFICANCE)
    zwarn[~(result.robustness >= 3) & ~nodata] |= np.uint32(ZWarn.LOW_ROBUSTNESS)
    with np.errstate(invalid="ignore"):  # NaN: no other minimum on the grid, nothing to confuse z with
        zwarn[result.deltachi2 < MIN_DELTACHI2] |= np.uint32(ZWarn.SMALL_DELTA_CHI2)
    out = {
        "z": result.z.astype(np.float64),
        "chi2": result.chi2_min.astype(np.float64),
        "deltachi2": result.deltachi2.astype(np.float64),
        "npixels": result.npixels.astype(np.int32),
        "coeff": result.omega.astype(np.float32),
        "nmf_significance": result.significance.astype(np.float32),
        "nmf_robustness": result.robustness.astype(np.float32),
        "candidate_z": result.minima_z.astype(np.float64),
        "candidate_chi2": result.minima_chi2.astype(np.float64),
        "candidate_significance": result.minima_significance.astype(np.float32),
        "zwarn": zwarn,
        "znote": znote,
    }
    if nuisance_order >= 0:
        out["nuisance_coeff"] = result.nuisance_coeff.astype(np.float32)
    if refine:
        out["z_refined"] = result.z_refined.astype(np.float64)  # type: ignore[union-attr]
        out["chi2_refined"] = result.chi2_refined.astype(np.float64)  # type: ignore[union-attr]
        out["zerr"] = apply_zerr_calibration(result.zerr, result.z_refined, zerr_scale, zerr_floor,  # type: ignore[arg-type]
                                             zerr_z_edges)
    if store_chi2:
        out["zchi2"] = decimate_min(result.chi2, int(chi2_decimate)).astype(np.float32)  # type: ignore[arg-type]
    return out


def sky_nuisance_vector(wavelength: np.ndarray, sky_continuum: np.ndarray, grid: LogGrid,
                        window: tuple[int, int]) -> np.ndarray:
    """The sky continuum as a nuisance vector of the scan: on the basis grid's observed ``window`` (``(j0, n)``),
    in the unit the spectra take there (:func:`to_log_grid`), scaled to median 1 (0 outside the sky's range).

    A sky over-subtraction removes a multiple of the sky's continuum, which rises and falls across MUSE's range
    (the O2 bands, the OH pseudo-continuum in the red): a constant cannot absorb it, and what it leaves looks like
    broad absorption to a non-negative basis. Fitted with a free sign, the term absorbs any such pedestal.

    Examples
    --------
    >>> grid = LogGrid(np.log10(3000.0), 1e-4, 4000)
    >>> wave = np.linspace(4800.0, 9300.0, 3000)
    >>> j0, n = observed_window(wave, grid)
    >>> v = sky_nuisance_vector(wave, np.ones(wave.size), grid, (j0, n))
    >>> v.shape == (n,), round(float(np.median(v[v > 0])), 6)
    (True, 1.0)
    """
    sky = np.asarray(sky_continuum, np.float64)
    values = np.nan_to_num(sky, nan=0.0, posinf=0.0, neginf=0.0)
    known = (np.isfinite(sky) & (values != 0)).astype(np.float64)
    vector = to_log_grid(wavelength, values[None], known[None], grid, window=window)[0][0]
    covered = vector != 0
    if not covered.any():
        raise ValueError("the sky continuum is 0 or undefined over the whole observed window")
    return vector / np.median(np.abs(vector[covered]))


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
