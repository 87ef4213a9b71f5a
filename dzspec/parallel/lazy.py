"""Dask arrays whose row blocks a plain function computes on demand: the lazy form of per-row products (model
spectra) that are too large to compute for a whole store at once.

Examples
--------
>>> import numpy as np
>>> def squares(rows):
...     return {"a": np.outer(rows, np.ones(3)) ** 2}
>>> arrays = from_row_blocks(squares, [np.array([0, 1]), np.array([2])], {"a": 3}, "float64")
>>> arrays["a"].chunks, arrays["a"][2].compute().tolist()
(((2, 1), (3,)), [4.0, 4.0, 4.0])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import dask
import dask.array as da
import numpy as np

__all__ = ["from_row_blocks"]


def from_row_blocks(compute: Callable[[np.ndarray], Mapping[str, np.ndarray]], blocks: Sequence[np.ndarray],
                    columns: Mapping[str, int], dtype: str) -> dict[str, da.Array]:
    """One dask array per name of ``columns`` (rows x ``columns[name]``), chunked by ``blocks``: block ``i`` of every
    array comes from one call ``compute(blocks[i])`` (a mapping of name to ``(len(blocks[i]), columns[name])``),
    made only when a chunk is computed, and once for all the names."""
    parts: dict[str, list[da.Array]] = {name: [] for name in columns}
    for rows in blocks:
        result = dask.delayed(compute, pure=True)(rows)
        for name, width in columns.items():
            parts[name].append(da.from_delayed(result[name], shape=(len(rows), width), dtype=dtype))
    return {name: da.concatenate(arrays, axis=0) if arrays else da.zeros((0, columns[name]), dtype=dtype)
            for name, arrays in parts.items()}
