"""NMF bases in Zarr, always with the grid they were trained on, so a basis is never used on the wrong grid.

A basis lives in ``bases/<name>`` of a store (or a store of its own): ``basis`` (component x rest_pixel, float64),
``covered`` (rest_pixel, bool), ``chi2_history`` (iteration, float64), and attributes: the grid constants
(``grid_start``, ``grid_step``, ``grid_size``), rank, method, seed, iterations per stage, ``training_sha256``,
``basis_sha256`` (checked on load), ``medium`` and the dzspec version. A basis may carry the night-sky continuum
that ``zfind`` fits beside it as a nuisance term (``sky_wavelength``, ``sky_continuum``, attribute ``sky_continuum``
with its checksum and source: :func:`save_sky_continuum`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from os import PathLike
from typing import Any

import numpy as np

from dzspec._version import __version__
from dzspec.engines.nmf.train import NMFResult
from dzspec.errors import StoreError
from dzspec.io import store as zstore
from dzspec.kernels.restframe import LogGrid

__all__ = ["Basis", "array_sha256", "grid_attrs", "grid_from_attrs", "load_basis", "load_sky_continuum", "save_basis",
           "save_confidence", "save_sky_continuum", "save_zerr_calibration"]


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
    """Store a confidence model (:class:`dzspec.engines.nmf.confidence.ConfidenceModel` as attrs) with ``bases/<name>``,
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


def save_zerr_calibration(path: str | PathLike[str], name: str, calibration: dict[str, Any]) -> None:
    """Store with ``bases/<name>`` the ZERR calibration (:meth:`dzspec.engines.nmf.zerr.ZerrCalibration.as_attrs`, with
    where it was measured) that ``zfind`` applies to the chi2 parabola's width; its ``zerr_scale`` and
    ``zerr_floor`` enter the parameters of every scan using it."""
    root = zstore.open_root(path, mode="a")
    if f"bases/{name}" not in root:
        raise StoreError(f"{path}: no basis 'bases/{name}'")
    root[f"bases/{name}"].attrs["zerr_calibration"] = zstore.jsonable(calibration)


def save_sky_continuum(path: str | PathLike[str], name: str, wavelength: np.ndarray, continuum: np.ndarray, *,
                       source: str) -> str:
    """Store with ``bases/<name>`` the night-sky continuum (vacuum ``wavelength`` in Angstrom, any flux scale) that
    ``zfind`` fits as a free-sign nuisance term beside the basis (:func:`dzspec.engines.nmf.zfind.sky_nuisance_vector`);
    ``source`` says where it came from. Returns its SHA-256, which enters the configuration of every scan using it.

    Examples
    --------
    >>> import tempfile
    >>> from dzspec.engines.nmf.train import NMFResult
    >>> path = tempfile.mkdtemp() + "/b.zarr"
    >>> trained = NMFResult(basis=np.ones((2, 50)), coefficients=np.ones((1, 2)), covered=np.ones(50, bool))
    >>> _ = save_basis(path, "nmf", trained, LogGrid(3.0, 1e-4, 50), training_sha256="")
    >>> sha = save_sky_continuum(path, "nmf", np.array([5000.0, 6000.0]), np.array([1.0, 2.0]), source="test")
    >>> wave, cont = load_sky_continuum(path, "nmf")
    >>> cont.tolist(), load_sky_continuum(path, "nmf", sha256=sha)[1].tolist() == cont.tolist()
    ([1.0, 2.0], True)
    """
    wavelength = np.asarray(wavelength, dtype=np.float64)
    continuum = np.asarray(continuum, dtype=np.float64)
    if wavelength.ndim != 1 or wavelength.shape != continuum.shape or not np.all(np.diff(wavelength) > 0):
        raise ValueError("the sky continuum needs increasing wavelengths and one value per wavelength")
    root = zstore.open_root(path, mode="a")
    group_path = f"bases/{name}"
    if group_path not in root:
        raise StoreError(f"{path}: no basis {group_path!r}")
    group = root[group_path]
    for array_name, values in (("sky_wavelength", wavelength), ("sky_continuum", continuum)):
        array = group.create_array(array_name, shape=values.shape, chunks=values.shape, dtype=np.float64,
                                   dimension_names=("sky_pixel",), fill_value=0, overwrite=True)
        array[...] = values
    sha = array_sha256(wavelength, continuum)
    group.attrs["sky_continuum"] = {"sha256": sha, "source": str(source)}
    return sha


def load_sky_continuum(path: str | PathLike[str], name: str,
                       sha256: str | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """The ``(wavelength, continuum)`` stored by :func:`save_sky_continuum` with ``bases/<name>``, or None when the
    basis has none; raises when the bytes do not match their checksum (or ``sha256``, when given)."""
    group = zstore.open_root(path)[f"bases/{name}"]
    meta = group.attrs.get("sky_continuum")
    if meta is None:
        return None
    wavelength = np.asarray(group["sky_wavelength"][...], dtype=np.float64)
    continuum = np.asarray(group["sky_continuum"][...], dtype=np.float64)
    actual = array_sha256(wavelength, continuum)
    if actual != meta["sha256"] or (sha256 is not None and actual != sha256):
        raise StoreError(f"{path}/bases/{name}: the sky continuum does not match its checksum (modified or corrupt)")
    return wavelength, continuum
