"""The only layer that imports dask and distributed: block planning, submission, retries, progress."""
