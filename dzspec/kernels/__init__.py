"""Pure numerical kernels: NumPy/SciPy on in-memory blocks, vectorised over a leading spectrum axis.

Nothing here imports dask, distributed, xarray or zarr, or does I/O (a test enforces it).
"""

from dzspec.kernels.base import KernelSpec, OutputSpec
from dzspec.kernels.summary import SUMMARY

#: Kernels the CLI can run by name (``dzspec run-kernel --kernel NAME``).
KERNELS: dict[str, KernelSpec] = {SUMMARY.name: SUMMARY}

__all__ = ["KERNELS", "KernelSpec", "OutputSpec"]
