"""What a block kernel is: a pure function from one block of spectra to per-spectrum outputs.

The block runner (:mod:`dzspec.parallel.runner`) only needs a :class:`KernelSpec`: which store variables the
function reads, what it returns (dtype, extra dimensions, fill value for rows never computed) and a version that
enters the run's configuration hash, so that a changed kernel refuses to resume an old run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["KernelSpec", "OutputSpec"]


@dataclass(frozen=True)
class OutputSpec:
    """One per-spectrum output of a kernel.

    Parameters
    ----------
    dtype
        NumPy dtype name of the stored array.
    dims
        Extra dimensions after ``spectrum`` (e.g. ``("quantile",)``), each a single chunk.
    sizes
        Length of each extra dimension.
    fill
        Value of rows that were never computed (NaN for floats).
    attrs
        Attributes stored with the array (units, description, CF flags).
    coords
        Values of extra dimensions that have a coordinate (e.g. the trial redshifts of ``redshift``), written once
        per results group as a 1-D array named after the dimension.
    """

    dtype: str
    dims: tuple[str, ...] = ()
    sizes: tuple[int, ...] = ()
    fill: Any = np.nan
    attrs: Mapping[str, Any] = field(default_factory=dict)
    coords: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.dims) != len(self.sizes):
            raise ValueError(f"dims {self.dims} and sizes {self.sizes} differ in length")
        for dim, values in self.coords.items():
            if dim not in self.dims or len(values) != self.sizes[self.dims.index(dim)]:
                raise ValueError(f"coordinate {dim!r} of {len(values)} values for dims {self.dims} {self.sizes}")


@dataclass(frozen=True)
class KernelSpec:
    """A block kernel and its contract with the runner.

    ``func(wavelength, **arrays, **params)`` receives the float64 wavelength grid and one NumPy array per name in
    ``inputs`` (leading axis: the block's spectra) and returns a dict with one array per output, each with the
    block's number of rows first. It must be deterministic and must not raise for one bad spectrum: bad rows get
    NaN and a warning bit instead.
    """

    name: str
    func: Callable[..., dict[str, np.ndarray]]
    inputs: tuple[str, ...]
    outputs: Callable[[Mapping[str, Any]], dict[str, OutputSpec]]
    version: str = "1"
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def output_specs(self, params: Mapping[str, Any]) -> dict[str, OutputSpec]:
        """The outputs for these parameters (defaults filled in)."""
        return self.outputs({**self.defaults, **params})
