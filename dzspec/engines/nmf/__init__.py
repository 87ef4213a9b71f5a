"""The NMF engine (B26, METHODS §1 and §5): training a non-negative basis, the exact fast redshift scan of spectra
with it, and what is built on the scan (redshift errors, spikes, confidence, blends, model spectra).

Every module but :mod:`~dzspec.engines.nmf.adapter` is a pure kernel on in-memory arrays (NumPy, SciPy, numba); the
adapter loads models through :mod:`dzspec.io` and is what the block runner and the in-process API call. The public
names of every module are re-exported here, imported on first use (so importing one kernel module loads neither the
others nor the store layer).

* :mod:`~dzspec.engines.nmf.nnls`: the exact NNLS on the normal equations (Lawson-Hanson with Cholesky solves,
  warm-started per shift), compiled by numba.
* :mod:`~dzspec.engines.nmf.grams`: :class:`PreparedBasis` (the basis' FFTs for one observed window) and the FFT
  Gram matrices and projections of a spectrum at every lag, with spike pixels and weakly supported rows made exact.
* :mod:`~dzspec.engines.nmf.scan`: chi2 at every trial (:func:`scan_chi2`, nuisance terms by their Schur
  complement), the block scan and its :class:`ScanResult` (:func:`scan_block`), the trial grid and the
  straightforward :func:`reference_scan`.
* :mod:`~dzspec.engines.nmf.refine`: the sub-pixel refinement of the best trial (parabola vertex and width).
* :mod:`~dzspec.engines.nmf.metrics`: B26's significance, robustness and candidates of a chi2 curve, and Redrock's
  DELTACHI2.
* :mod:`~dzspec.engines.nmf.zfind`: the ``zfind`` block kernel on native spectra (:func:`nmf_zfind`): rest-grid
  transform, scan, Redrock-style outputs and ZWARN bits.
* :mod:`~dzspec.engines.nmf.zspikes`: redshift spikes of a whole set of results.
* :mod:`~dzspec.engines.nmf.zerr`: the calibration of ZERR from the refined parabola's width.
* :mod:`~dzspec.engines.nmf.confidence`: the per-spectrum confidence model (gradient-boosted trees as plain arrays).
* :mod:`~dzspec.engines.nmf.blends`: blend detection (B26 §4.4): a first model with lines, then a rescan of the
  residual.
* :mod:`~dzspec.engines.nmf.model_spectra`: the best-fit model of a scan on each spectrum's own grid.
* :mod:`~dzspec.engines.nmf.train`: weighted NMF training of a basis (with missing values and negative data).
* :mod:`~dzspec.engines.nmf.params`: the scan's and the blend detection's parameters (:class:`ZfindParams`,
  :class:`BlendParams`), the one source of their defaults and help for the kernels, the CLI and the pipeline.
* :mod:`~dzspec.engines.nmf.adapter`: the block kernels as the runner sees them (:data:`ZFIND`, :data:`BLENDS`),
  their parameters (:func:`zfind_params`), the whole-set passes (:func:`finalize_flags`) and the worker-side model
  cache (:func:`cached_basis`, :func:`cached_prepared`, :func:`cached_sky_continuum`,
  :func:`cached_first_redshifts`).
"""

from __future__ import annotations

from dzspec.reexport import lazy_reexports

_EXPORTS = {
    "HAVE_NUMBA": "dzspec.engines.nmf.nnls",
    "PIVOT_REL": "dzspec.engines.nmf.nnls",
    "nnls_gram": "dzspec.engines.nmf.nnls",
    "nnls_gram_batch": "dzspec.engines.nmf.nnls",
    "scan_nnls": "dzspec.engines.nmf.nnls",
    "scan_nnls_schur": "dzspec.engines.nmf.nnls",
    "Correlations": "dzspec.engines.nmf.grams",
    "MainFFTs": "dzspec.engines.nmf.grams",
    "PreparedBasis": "dzspec.engines.nmf.grams",
    "RowSegment": "dzspec.engines.nmf.grams",
    "fast_length": "dzspec.engines.nmf.grams",
    "fft_correlations": "dzspec.engines.nmf.grams",
    "gram_projections": "dzspec.engines.nmf.grams",
    "grams_at_lags": "dzspec.engines.nmf.grams",
    "lag_range": "dzspec.engines.nmf.grams",
    "prepare_basis": "dzspec.engines.nmf.grams",
    "spike_pixels": "dzspec.engines.nmf.grams",
    "unweighted_projections": "dzspec.engines.nmf.grams",
    "unweighted_window_gram": "dzspec.engines.nmf.grams",
    "zero_bad_pixels": "dzspec.engines.nmf.grams",
    "ScanResult": "dzspec.engines.nmf.scan",
    "Weighting": "dzspec.engines.nmf.scan",
    "nuisance_vectors": "dzspec.engines.nmf.scan",
    "reference_scan": "dzspec.engines.nmf.scan",
    "scan_block": "dzspec.engines.nmf.scan",
    "scan_chi2": "dzspec.engines.nmf.scan",
    "trial_grid": "dzspec.engines.nmf.scan",
    "parabola_vertex": "dzspec.engines.nmf.refine",
    "refined_minimum": "dzspec.engines.nmf.refine",
    "refinement_shifts": "dzspec.engines.nmf.refine",
    "chi2_metrics": "dzspec.engines.nmf.metrics",
    "delta_chi2": "dzspec.engines.nmf.metrics",
    "MIN_DELTACHI2": "dzspec.engines.nmf.zfind",
    "ZNote": "dzspec.engines.nmf.zfind",
    "ZWarn": "dzspec.engines.nmf.zfind",
    "decimate_min": "dzspec.engines.nmf.zfind",
    "nmf_zfind": "dzspec.engines.nmf.zfind",
    "sky_nuisance_vector": "dzspec.engines.nmf.zfind",
    "find_spikes": "dzspec.engines.nmf.zspikes",
    "spike_members": "dzspec.engines.nmf.zspikes",
    "trial_index": "dzspec.engines.nmf.zspikes",
    "ZerrCalibration": "dzspec.engines.nmf.zerr",
    "apply_zerr_calibration": "dzspec.engines.nmf.zerr",
    "fit_zerr_calibration": "dzspec.engines.nmf.zerr",
    "pull_widths": "dzspec.engines.nmf.zerr",
    "FEATURES": "dzspec.engines.nmf.confidence",
    "FEATURE_INPUTS": "dzspec.engines.nmf.confidence",
    "LINE_PAIR_RATIOS": "dzspec.engines.nmf.confidence",
    "ConfidenceModel": "dzspec.engines.nmf.confidence",
    "fit_confidence": "dzspec.engines.nmf.confidence",
    "scan_features": "dzspec.engines.nmf.confidence",
    "threshold_for_purity": "dzspec.engines.nmf.confidence",
    "CONFUSION_LINES": "dzspec.engines.nmf.blends",
    "FIT_ABSORPTION": "dzspec.engines.nmf.blends",
    "FIT_LINES": "dzspec.engines.nmf.blends",
    "LINE_COMPONENTS": "dzspec.engines.nmf.blends",
    "MUSE_LSF_FWHM": "dzspec.engines.nmf.params",
    "BlendParams": "dzspec.engines.nmf.params",
    "ZfindParams": "dzspec.engines.nmf.params",
    "ROC_THRESHOLDS": "dzspec.engines.nmf.blends",
    "BlendResult": "dzspec.engines.nmf.blends",
    "FirstModel": "dzspec.engines.nmf.blends",
    "blend_scan": "dzspec.engines.nmf.blends",
    "confusion_redshifts": "dzspec.engines.nmf.blends",
    "detect_blend": "dzspec.engines.nmf.blends",
    "detect_blends": "dzspec.engines.nmf.blends",
    "fit_first_model": "dzspec.engines.nmf.blends",
    "line_terms": "dzspec.engines.nmf.blends",
    "select_blend": "dzspec.engines.nmf.blends",
    "log_grid_to_native": "dzspec.engines.nmf.model_spectra",
    "nmf_model": "dzspec.engines.nmf.model_spectra",
    "nmf_model_log": "dzspec.engines.nmf.model_spectra",
    "Checkpoint": "dzspec.engines.nmf.train",
    "NMFResult": "dzspec.engines.nmf.train",
    "basis_half_step": "dzspec.engines.nmf.train",
    "basis_terms": "dzspec.engines.nmf.train",
    "chi2_per_pixel": "dzspec.engines.nmf.train",
    "coefficient_half_step": "dzspec.engines.nmf.train",
    "nearly_nmf_step": "dzspec.engines.nmf.train",
    "run_schedule": "dzspec.engines.nmf.train",
    "shift_nmf_step": "dzspec.engines.nmf.train",
    "shift_offset": "dzspec.engines.nmf.train",
    "train_nmf": "dzspec.engines.nmf.train",
    "BLENDS": "dzspec.engines.nmf.adapter",
    "ZFIND": "dzspec.engines.nmf.adapter",
    "cached_basis": "dzspec.engines.nmf.adapter",
    "cached_first_redshifts": "dzspec.engines.nmf.adapter",
    "cached_prepared": "dzspec.engines.nmf.adapter",
    "cached_sky_continuum": "dzspec.engines.nmf.adapter",
    "finalize_flags": "dzspec.engines.nmf.adapter",
    "sky_continuum_on": "dzspec.engines.nmf.adapter",
    "zfind_params": "dzspec.engines.nmf.adapter",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_reexports(__name__, _EXPORTS)
