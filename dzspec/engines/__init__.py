"""The redshift engines, each a package that owns its numerical kernels and its block adapter.

* :mod:`dzspec.engines.nmf`: the NMF engine (B26): basis training, the exact fast chi2 scan, redshift errors,
  spikes, confidence, blends.
* :mod:`dzspec.engines.madgics`: the MADGICS engine (U25): Lyman-alpha emitter redshifts from a component separation
  with data-driven priors.
* :mod:`dzspec.engines.cache`: the worker-side model cache both engines' adapters load their models through.
* :mod:`dzspec.engines.adapter`: what both engines' adapters share (the noise calibration of the inverse variance).

Kernel modules import only numerical libraries and :mod:`dzspec.kernels` (the pieces both engines share); only the
``adapter`` modules reach the store, through the loaders of :mod:`dzspec.io`. No engine imports dask, distributed or
xarray: submitting work to a cluster is :mod:`dzspec.parallel`'s.
"""

__all__: list[str] = []
