"""MADGICS priors in Zarr, with their grid, rescaling and provenance, so a prior is never used on the wrong grid.

A prior lives in ``priors/<name>`` of a store (or a store of its own): ``sky_vectors`` (pixel x sky_vector),
``sky_mask`` (pixel), ``sky_eigenvalues``, ``lae_vectors`` (window_pixel x lae_vector), ``lae_eigenvalues`` and
``rescale_y`` (pixel: the log10 variance scale every spectrum is rescaled by, U25 Eq. 7-9), ``lae_template``
(window_pixel: the median aligned LAE, unit sum, the injection profile); attributes: the grid
constants, ``window_start``, ``z_ref``, the rescaling polynomial, how many spectra built each part, the sources,
``prior_sha256`` (checked on load) and the dzspec version.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from os import PathLike
from typing import Any

import numpy as np

from dzspec._version import __version__
from dzspec.engines.madgics.priors import to_lae_grid
from dzspec.engines.madgics.scan import LAEPrior
from dzspec.errors import StoreError
from dzspec.io import store as zstore
from dzspec.io.bases import array_sha256, grid_attrs, grid_from_attrs
from dzspec.kernels.restframe import LogGrid

__all__ = ["LoadedPrior", "load_lae_prior", "save_lae_prior"]


@dataclass(frozen=True)
class LoadedPrior:
    """A prior as the scan needs it: the :class:`LAEPrior`, the grid, the rescaling per pixel and the provenance."""

    prior: LAEPrior
    grid: LogGrid
    rescale_y: np.ndarray
    template: np.ndarray | None = None  #: the median aligned LAE window, unit sum (for injections)
    attrs: dict[str, Any] = field(default_factory=dict)

    def to_grid(self, wavelength: np.ndarray, flux: np.ndarray, ivar: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Native spectra resampled and rescaled exactly as the prior was built (its grid, its rescaling and its
        variance model): what every scan with this prior must see."""
        return to_lae_grid(wavelength, flux, ivar, self.grid, y=self.rescale_y,
                           variance_model=self.attrs["variance_model"])


def save_lae_prior(path: str | PathLike[str], name: str, prior: LAEPrior, grid: LogGrid, rescale_y: np.ndarray, *,
                   sky_eigenvalues: np.ndarray, lae_eigenvalues: np.ndarray, template: np.ndarray | None = None,
                   overwrite: bool = False,
                   extra_attrs: dict[str, Any] | None = None) -> str:
    """Write ``priors/<name>``; returns the group path."""
    if prior.n_pixels != grid.size or rescale_y.shape != (grid.size,):
        raise ValueError(f"prior ({prior.n_pixels} pixels) and rescale_y {rescale_y.shape} must match the grid "
                         f"({grid.size} pixels)")
    root = zstore.open_root(path, mode="a")
    group_path = f"priors/{name}"
    if group_path in root and not overwrite:
        raise StoreError(f"{path}/{group_path} exists; pass overwrite=True to replace it")
    group = root.create_group(group_path, overwrite=True)
    mask = np.zeros(grid.size, bool) if prior.sky_mask is None else np.asarray(prior.sky_mask, bool)
    arrays = {
        "sky_vectors": (np.asarray(prior.sky_vectors, np.float64), ("pixel", "sky_vector")),
        "sky_mask": (mask, ("pixel",)),
        "sky_eigenvalues": (np.asarray(sky_eigenvalues, np.float64), ("sky_vector",)),
        "lae_vectors": (np.asarray(prior.lae_vectors, np.float64), ("window_pixel", "lae_vector")),
        "lae_eigenvalues": (np.asarray(lae_eigenvalues, np.float64), ("lae_vector",)),
        "rescale_y": (np.asarray(rescale_y, np.float64), ("pixel",)),
    }
    if template is not None:
        arrays["lae_template"] = (np.asarray(template, np.float64), ("window_pixel",))
    for array_name, (values, dims) in arrays.items():
        array = group.create_array(array_name, shape=values.shape, chunks=values.shape, dtype=values.dtype,
                                   dimension_names=dims, fill_value=0)
        array[...] = values
    group.attrs.update(zstore.jsonable({
        "name": name, **grid_attrs(grid),
        "window_start": int(prior.window_start), "z_ref": float(prior.z_ref), "delta": float(prior.delta),
        "prior_sha256": _sha256({key: values for key, (values, _) in arrays.items()}),
        "dzspec_version": __version__, **(extra_attrs or {}),
    }))
    return group_path


def load_lae_prior(path: str | PathLike[str], name: str) -> LoadedPrior:
    """Read ``priors/<name>``; raises if it is missing or its bytes do not match the stored hash."""
    root = zstore.open_root(path)
    group_path = f"priors/{name}"
    if group_path not in root:
        raise StoreError(f"{path}: no MADGICS prior {group_path!r} (build one with `dzspec priors`)")
    group = root[group_path]
    attrs = dict(group.attrs)
    arrays = {key: np.asarray(group[key][...]) for key in
              ("sky_vectors", "sky_mask", "sky_eigenvalues", "lae_vectors", "lae_eigenvalues", "rescale_y",
               "lae_template") if key in group}
    if _sha256(arrays) != attrs["prior_sha256"]:
        raise StoreError(f"{path}/{group_path}: prior bytes do not match prior_sha256 (modified or corrupt)")
    prior = LAEPrior(arrays["sky_vectors"], arrays["lae_vectors"], window_start=int(attrs["window_start"]),
                     z_ref=float(attrs["z_ref"]), sky_mask=arrays["sky_mask"].astype(bool), delta=float(attrs["delta"]))
    return LoadedPrior(prior, grid_from_attrs(attrs), arrays["rescale_y"], arrays.get("lae_template"), attrs)


def _sha256(arrays: dict[str, np.ndarray]) -> str:
    """Checksum of the prior's arrays in name order (so an optional one may be absent)."""
    return array_sha256(*(arrays[key] for key in sorted(arrays)))
