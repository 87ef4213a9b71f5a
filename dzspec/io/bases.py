"""NMF bases in Zarr, always with the grid they were trained on, so a basis is never used on the wrong grid.

A basis lives in ``bases/<name>`` of a store (or a store of its own): ``basis`` (component x rest_pixel, float64),
``covered`` (rest_pixel, bool), ``chi2_history`` (iteration, float64), and attributes: the grid constants
(``grid_start``, ``grid_step``, ``grid_size``), rank, method, seed, iterations per stage, ``training_sha256``,
``basis_sha256`` (checked on load), ``medium`` and the dzspec version.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from os import PathLike
from typing import Any

import numpy as np

from dzspec._version import __version__
from dzspec.errors import StoreError
from dzspec.io import store as zstore
from dzspec.kernels.nmf_train import NMFResult
from dzspec.kernels.restframe import LogGrid

__all__ = ["Basis", "array_sha256", "grid_attrs", "grid_from_attrs", "load_basis", "save_basis", "save_confidence"]


def grid_attrs(grid: LogGrid) -> dict[str, float | int]:
    """The grid constants as stored with a basis or prior (``grid_start``, ``grid_step``, ``grid_size``)."""
    return {f"grid_{key}": value for key, value in grid.as_attrs().items()}


def grid_from_attrs(attrs: dict[str, Any]) -> LogGrid:
    """The grid stored by :func:`grid_attrs`."""
    return LogGrid(float(attrs["grid_start"]), float(attrs["grid_step"]), int(attrs["grid_size"]))


def array_sha256(*arrays: np.ndarray) -> str:
    """SHA-256 of arrays' dtypes, shapes and bytes (e.g. the training set ``X, V``)."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Basis:
    """A loaded basis: the array, its grid and its provenance."""

    basis: np.ndarray
    grid: LogGrid
    covered: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def rank(self) -> int:
        return int(self.basis.shape[0])

    def require_grid(self, grid: LogGrid) -> None:
        """Raise unless ``grid`` is the grid this basis was trained on."""
        if grid != self.grid:
            raise StoreError(f"basis {self.attrs.get('name')!r} was trained on {self.grid}, not {grid}")


def save_basis(
    path: str | PathLike[str], name: str, result: NMFResult, grid: LogGrid, *, training_sha256: str,
    medium: str = "vacuum", overwrite: bool = False, extra_attrs: dict[str, Any] | None = None,
) -> str:
    """Write a trained basis to ``bases/<name>`` of the store at ``path``; returns the group path."""
    if result.basis.shape[1] != grid.size:
        raise ValueError(f"basis has {result.basis.shape[1]} pixels, grid {grid.size}")
    root = zstore.open_root(path, mode="a")
    group_path = f"bases/{name}"
    if group_path in root and not overwrite:
        raise StoreError(f"{path}/{group_path} exists; pass overwrite=True to replace it")
    group = root.create_group(group_path, overwrite=True)
    basis = np.ascontiguousarray(result.basis, dtype=np.float64)
    for array_name, values, dims in (
        ("basis", basis, ("component", "rest_pixel")),
        ("covered", np.asarray(result.covered, dtype=bool), ("rest_pixel",)),
        ("chi2_history", np.asarray(result.chi2_history, dtype=np.float64), ("iteration",)),
    ):
        array = group.create_array(array_name, shape=values.shape, chunks=values.shape or (1,), dtype=values.dtype,
                                   dimension_names=dims, fill_value=0)
        array[...] = values
    group.attrs.update(zstore.jsonable({
        "name": name,
        **grid_attrs(grid),
        "rank": int(basis.shape[0]),
        "method": result.method,
        "seed": result.seed,
        "offset": result.offset,
        "iterations": list(result.iterations),
        "training_sha256": training_sha256,
        "basis_sha256": array_sha256(basis),
        "medium": medium,
        "dzspec_version": __version__,
        **(extra_attrs or {}),
    }))
    return group_path


def load_basis(path: str | PathLike[str], name: str) -> Basis:
    """Read ``bases/<name>``; raises if it is missing or its bytes do not match the stored hash."""
    root = zstore.open_root(path)
    group_path = f"bases/{name}"
    if group_path not in root:
        raise StoreError(f"{path}: no basis {group_path!r}")
    group = root[group_path]
    attrs = dict(group.attrs)
    basis = np.asarray(group["basis"][...], dtype=np.float64)
    if array_sha256(basis) != attrs["basis_sha256"]:
        raise StoreError(f"{path}/{group_path}: basis bytes do not match basis_sha256 (modified or corrupt)")
    return Basis(basis, grid_from_attrs(attrs), np.asarray(group["covered"][...], dtype=bool), attrs)


def save_confidence(path: str | PathLike[str], name: str, model: dict[str, Any], report: dict[str, Any]) -> str:
    """Store a confidence model (:class:`dzspec.kernels.confidence.ConfidenceModel` as attrs) with ``bases/<name>``,
    with how it was made (``report``); returns its SHA-256, which enters the configuration of every scan using it."""
    root = zstore.open_root(path, mode="a")
    group_path = f"bases/{name}"
    if group_path not in root:
        raise StoreError(f"{path}: no basis {group_path!r}")
    model = zstore.jsonable(model)
    sha = hashlib.sha256(json.dumps(model, sort_keys=True).encode()).hexdigest()
    root[group_path].attrs.update(zstore.jsonable({"confidence": {**model, "sha256": sha},
                                                  "confidence_report": report}))
    return sha
