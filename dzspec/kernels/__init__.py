"""Pure numerical kernels shared by the engines: NumPy/SciPy on in-memory blocks, vectorised over a leading spectrum
axis. What a block kernel is (:mod:`~dzspec.kernels.base`), trial redshifts and local minima
(:mod:`~dzspec.kernels.trials`), the rest-frame grid, air/vacuum, metrics, survey statistics, the noise calibration and
the simulators, and the numba switch (:mod:`~dzspec.kernels.jit`); each engine's own kernels are in
:mod:`dzspec.engines`.

Nothing here imports dask, distributed, xarray or zarr, or does I/O (a test enforces it).
"""

from dzspec.kernels.base import KernelSpec, OutputSpec
from dzspec.kernels.summary import SUMMARY

#: Kernels the CLI can run by name (``dzspec run-kernel --kernel NAME``).
KERNELS: dict[str, KernelSpec] = {SUMMARY.name: SUMMARY}

__all__ = ["KERNELS", "KernelSpec", "OutputSpec"]
