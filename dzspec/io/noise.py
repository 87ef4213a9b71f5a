"""Per-wavelength noise calibrations in Zarr, beside the spectra group they were measured on.

A calibration lives in ``calibration/<grid>/<name>`` of a store: ``scale`` (wavelength, float64, the factor
``c >= 1`` by which the scans multiply sigma: they use ``ivar / c**2``), ``n_residuals`` (wavelength, int64, how
many spectra had data at each pixel), ``wavelength`` (the group's vacuum wavelengths, so that an instrument default
can be resampled to another grid of the same instrument) and attributes: the spectra group, its ``input_id`` when
measured, the number of spectra, the method and its settings, ``scale_sha256`` (checked on load and hashed into
every result that used it) and the dzspec version. See :mod:`dzspec.kernels.noise_calibration` for the measurement.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from dzspec._version import __version__
from dzspec.errors import StoreError
from dzspec.io import store as zstore
from dzspec.io.bases import array_sha256

__all__ = ["NoiseCalibration", "calibration_path", "copy_noise_calibration", "load_noise_calibration",
           "save_noise_calibration"]


@dataclass(frozen=True)
class NoiseCalibration:
    """A loaded calibration: ``scale`` and ``n_residuals`` per pixel of the spectra group's grid, its attrs and the
    store it was read from (the spectra's own, or a basis store's instrument default)."""

    scale: np.ndarray
    n_residuals: np.ndarray
    attrs: dict[str, Any]
    path: str = ""
    #: vacuum wavelengths of the pixels (Angstrom); None for a calibration written before dzspec stored them
    wavelength: np.ndarray | None = None

    @property
    def sha256(self) -> str:
        return str(self.attrs["scale_sha256"])


def calibration_path(spectra_group: str, name: str = "noise") -> str:
    """``calibration/<grid>/<name>`` for the spectra group ``spectra/<grid>``.

    Examples
    --------
    >>> calibration_path("spectra/lin-4750.0-9350.0-3681-abcd")
    'calibration/lin-4750.0-9350.0-3681-abcd/noise'
    """
    return f"calibration/{spectra_group.removeprefix('spectra/')}/{name}"


def save_noise_calibration(path: str | PathLike[str], spectra_group: str, scale: np.ndarray, n_residuals: np.ndarray,
                           *, name: str = "noise", overwrite: bool = False,
                           attrs: dict[str, Any] | None = None) -> str:
    """Write a calibration of ``spectra_group`` into the store at ``path``; returns its group path."""
    root = zstore.open_root(path, mode="a")
    nwave = root[spectra_group]["wavelength"].shape[0]
    scale = np.ascontiguousarray(scale, dtype=np.float64)
    if scale.shape != (nwave,) or np.shape(n_residuals) != (nwave,):
        raise ValueError(f"a calibration of {spectra_group} needs {nwave} values per array, got {scale.shape}")
    if not np.all(np.isfinite(scale) & (scale >= 1.0)):
        raise ValueError("calibration scale must be finite and >= 1 everywhere")
    group_path = calibration_path(spectra_group, name)
    if group_path in root and not overwrite:
        raise StoreError(f"{path}/{group_path} exists; pass overwrite=True to replace it")
    group = root.create_group(group_path, overwrite=True)
    wavelength = np.asarray(root[spectra_group]["wavelength"][...], dtype=np.float64)
    for array_name, values in (("scale", scale), ("n_residuals", np.asarray(n_residuals, dtype=np.int64)),
                               ("wavelength", wavelength)):
        array = group.create_array(array_name, shape=values.shape, chunks=values.shape, dtype=values.dtype,
                                   dimension_names=("wavelength",), fill_value=0)
        array[...] = values
    group.attrs.update(zstore.jsonable({
        **dict(attrs or {}), "name": name, "spectra_group": spectra_group, "scale_sha256": array_sha256(scale),
        "input_id": zstore.input_id(root[spectra_group]), "dzspec_version": __version__,
    }))
    return group_path


def load_noise_calibration(path: str | PathLike[str], spectra_group: str, name: str = "noise") -> NoiseCalibration:
    """Read ``calibration/<grid>/<name>``; raises if it is missing or its bytes do not match the stored hash."""
    root = zstore.open_root(path)
    group_path = calibration_path(spectra_group, name)
    if group_path not in root:
        raise StoreError(f"{path}: no noise calibration {group_path!r} (make one with dzspec calibrate-noise)")
    group = root[group_path]
    attrs = dict(group.attrs)
    scale = np.asarray(group["scale"][...], dtype=np.float64)
    if array_sha256(scale) != attrs["scale_sha256"]:
        raise StoreError(f"{path}/{group_path}: scale bytes do not match scale_sha256 (modified or corrupt)")
    wavelength = np.asarray(group["wavelength"][...], dtype=np.float64) if "wavelength" in group else None
    return NoiseCalibration(scale, np.asarray(group["n_residuals"][...]), attrs, str(Path(path).resolve()),
                            wavelength)


def copy_noise_calibration(source: str | PathLike[str], spectra_group: str, target: str | PathLike[str],
                           name: str = "noise") -> str:
    """Copy ``calibration/<grid>/<name>`` of a (local) store into another, e.g. a survey's calibration into a model
    store as its instrument default; the parent groups are created, so the copy can be listed as well as read."""
    relative = calibration_path(spectra_group, name)
    zstore.open_root(target, mode="a").require_group(relative.rsplit("/", 1)[0])
    shutil.rmtree(Path(target) / relative, ignore_errors=True)
    shutil.copytree(Path(source) / relative, Path(target) / relative)
    return relative
