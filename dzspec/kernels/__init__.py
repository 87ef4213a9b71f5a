"""Pure numerical kernels: NumPy/SciPy on in-memory blocks, vectorised over a leading spectrum axis.

Nothing here imports dask, distributed, xarray or zarr, or does I/O (a test enforces it).
"""
