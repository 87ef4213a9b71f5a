"""The I/O layer: readers (FITS/npz/HDF5 -> canonical Datasets) and the Zarr store. No scheduling here."""
