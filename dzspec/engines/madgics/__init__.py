"""The MADGICS engine (U25, METHODS §2 and §5.4): Lyman-alpha emitter redshifts from a component separation of each
spectrum into sky, LAE line and residual with data-driven Gaussian priors, and what is built on the scan.

Every module but :mod:`~dzspec.engines.madgics.adapter` is a pure kernel on in-memory arrays (NumPy, SciPy, numba); the
adapter loads priors through :mod:`dzspec.io` and is what the block runner and the in-process API call. The public
names of every module are re-exported here, imported on first use (so importing one kernel module loads neither the
others nor the store layer).

* :mod:`~dzspec.engines.madgics.scan`: the prior (:class:`LAEPrior`), the exact fast dchi2(z) scan of a block
  (:func:`scan_lae`, :class:`LAEScan`) with its straightforward reference, the sky component and the line flux.
* :mod:`~dzspec.engines.madgics.priors`: the U25 log grid and rescaling, and the pieces that build the sky and LAE
  priors from spectra (cuts, Gram matrices, sky-line mask, eigenvectors, aligned windows).
* :mod:`~dzspec.engines.madgics.interlopers`: telling LAEs from low-redshift interlopers (equivalent width,
  companion lines) and the trust cut :func:`select_lae`.
* :mod:`~dzspec.engines.madgics.injection`: injection-recovery and the calibration of the scan's significance.
* :mod:`~dzspec.engines.madgics.exposure_convergence`: how redshifts converge with exposure time (U25 Fig. 9).
* :mod:`~dzspec.engines.madgics.compiled`: the compiled inner loops (numba): the per-shift solve of the scan and the
  resampling onto the LAE grid.
* :mod:`~dzspec.engines.madgics.params`: the scan's parameters (:class:`LaeScanParams`), the one source of their
  defaults and help for the kernel, ``dzspec lae`` and the pipeline.
* :mod:`~dzspec.engines.madgics.adapter`: the block kernel as the runner sees it (:data:`LAE_SCAN`), its parameters
  (:func:`lae_params`), the scan as a run makes it (:func:`scan_as_run`), the per-block pieces of the prior build and
  the worker-side prior cache (:func:`cached_prior`).
"""

from __future__ import annotations

from dzspec.reexport import lazy_reexports

_EXPORTS = {
    "LaeScanParams": "dzspec.engines.madgics.params",
    "LAE_GRID_DELTA": "dzspec.engines.madgics.scan",
    "LAE_GRID_START": "dzspec.engines.madgics.scan",
    "LAEPrior": "dzspec.engines.madgics.scan",
    "LAEScan": "dzspec.engines.madgics.scan",
    "LAEWarn": "dzspec.engines.madgics.scan",
    "lae_line_flux": "dzspec.engines.madgics.scan",
    "madgics_rescale_y": "dzspec.engines.madgics.scan",
    "reference_lae_scan": "dzspec.engines.madgics.scan",
    "scan_lae": "dzspec.engines.madgics.scan",
    "sky_component": "dzspec.engines.madgics.scan",
    "LAE_GRID": "dzspec.engines.madgics.priors",
    "LAE_WINDOW": "dzspec.engines.madgics.priors",
    "RescalePolynomial": "dzspec.engines.madgics.priors",
    "align_windows": "dzspec.engines.madgics.priors",
    "gram": "dzspec.engines.madgics.priors",
    "lae_vectors_from_windows": "dzspec.engines.madgics.priors",
    "sky_line_counts": "dzspec.engines.madgics.priors",
    "sky_mask_from_counts": "dzspec.engines.madgics.priors",
    "sky_power": "dzspec.engines.madgics.priors",
    "sky_spectra_keep": "dzspec.engines.madgics.priors",
    "sky_vectors_from_gram": "dzspec.engines.madgics.priors",
    "to_lae_grid": "dzspec.engines.madgics.priors",
    "INTERLOPER_BITS": "dzspec.engines.madgics.interlopers",
    "LOWZ_HYPOTHESES": "dzspec.engines.madgics.interlopers",
    "InterloperTests": "dzspec.engines.madgics.interlopers",
    "clipped_continuum": "dzspec.engines.madgics.interlopers",
    "interloper_tests": "dzspec.engines.madgics.interlopers",
    "line_amplitudes": "dzspec.engines.madgics.interlopers",
    "select_lae": "dzspec.engines.madgics.interlopers",
    "calibration_factor": "dzspec.engines.madgics.injection",
    "injection_snr": "dzspec.engines.madgics.injection",
    "lae_template": "dzspec.engines.madgics.injection",
    "matched_filter_snr": "dzspec.engines.madgics.injection",
    "place_profile": "dzspec.engines.madgics.injection",
    "recovery_by_snr": "dzspec.engines.madgics.injection",
    "zscore_sigma": "dzspec.engines.madgics.injection",
    "SIGMA_Z_CONVERGED": "dzspec.engines.madgics.exposure_convergence",
    "ConvergenceWarn": "dzspec.engines.madgics.exposure_convergence",
    "TargetConvergence": "dzspec.engines.madgics.exposure_convergence",
    "coadd_subsets": "dzspec.engines.madgics.exposure_convergence",
    "converged_counts": "dzspec.engines.madgics.exposure_convergence",
    "converged_fraction_grid": "dzspec.engines.madgics.exposure_convergence",
    "redshift_spread": "dzspec.engines.madgics.exposure_convergence",
    "subset_counts": "dzspec.engines.madgics.exposure_convergence",
    "subset_draws": "dzspec.engines.madgics.exposure_convergence",
    "target_convergence": "dzspec.engines.madgics.exposure_convergence",
    "HAVE_NUMBA": "dzspec.engines.madgics.compiled",
    "add_sky_terms": "dzspec.engines.madgics.compiled",
    "resample_rows": "dzspec.engines.madgics.compiled",
    "shift_dchi2": "dzspec.engines.madgics.compiled",
    "solve_shifts": "dzspec.engines.madgics.compiled",
    "LAE_SCAN": "dzspec.engines.madgics.adapter",
    "cached_prior": "dzspec.engines.madgics.adapter",
    "lae_params": "dzspec.engines.madgics.adapter",
    "prior_lae_windows": "dzspec.engines.madgics.adapter",
    "prior_sky_gram": "dzspec.engines.madgics.adapter",
    "prior_sky_power": "dzspec.engines.madgics.adapter",
    "scan_as_run": "dzspec.engines.madgics.adapter",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_reexports(__name__, _EXPORTS)
