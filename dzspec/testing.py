"""Public test helpers: deterministic synthetic spectra, input files and stores.

These are plumbing fixtures (a continuum, one emission line, Gaussian noise, a few masked pixels) for exercising
ingest, stores and the block runner at any scale; the realistic survey simulator is :mod:`dzspec.simulate`'s job.
Everything is a pure function of ``seed`` and the row index, whatever the chunking.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np
import xarray as xr

from dzspec.kernels.simulate.common import SimulatedBlock
from dzspec.schema import SURVEYS, code_of, make_spectra_dataset

__all__ = [
    "MUSE_LIKE_WAVELENGTH",
    "synthetic_arrays",
    "synthetic_dataset",
    "write_synthetic_files",
    "write_synthetic_store",
]



def _synthetic_wavelength(nwave: int) -> np.ndarray:
    return 4750.0 + 1.25 * np.arange(nwave)


#: A MUSE-like vacuum grid (4750-9350 Angstrom at 1.25 Angstrom, 3681 pixels).
MUSE_LIKE_WAVELENGTH = _synthetic_wavelength(3681)


def synthetic_arrays(
    rows: np.ndarray, wavelength: np.ndarray, seed: int = 0
) -> dict[str, np.ndarray]:
    """Flux, ivar, targetid and z_true for the given global row numbers; each row depends only on (seed, row).

    Examples
    --------
    >>> wave = np.linspace(5000.0, 6000.0, 100)
    >>> a = synthetic_arrays(np.arange(4), wave, seed=1)
    >>> b = synthetic_arrays(np.arange(2, 4), wave, seed=1)
    >>> bool(np.array_equal(a["flux"][2:], b["flux"]))
    True
    """
    rows = np.asarray(rows, dtype=np.int64)
    nwave = wavelength.size
    flux = np.empty((rows.size, nwave), np.float32)
    ivar = np.empty((rows.size, nwave), np.float32)
    z_true = np.empty(rows.size)
    for i, row in enumerate(rows):
        rng = np.random.default_rng([seed, int(row)])
        z = rng.uniform(0.0, 1.0)
        sigma = rng.uniform(0.5, 3.0)
        continuum = rng.uniform(0.0, 2.0) * (wavelength / wavelength[0]) ** rng.uniform(-2.0, 1.0)
        line_center = 3727.4 * (1.0 + z)  # [OII] as a visible feature
        line = rng.uniform(0.0, 30.0) * np.exp(-0.5 * ((wavelength - line_center) / 2.0) ** 2)
        ivar_row = np.full(nwave, 1.0 / sigma**2)
        ivar_row[rng.random(nwave) < 0.01] = 0.0  # cosmic rays / bad columns
        flux[i] = continuum + line + rng.normal(0.0, sigma, nwave)
        ivar[i] = ivar_row
        z_true[i] = z
    return {"flux": flux, "ivar": ivar, "targetid": 10_000_000 + rows, "z_true": z_true}


def synthetic_dataset(
    rows: np.ndarray, wavelength: np.ndarray = MUSE_LIKE_WAVELENGTH, seed: int = 0, source_file: str = "<synthetic>"
) -> xr.Dataset:
    """:func:`synthetic_arrays` as a canonical spectra Dataset (survey ``simulated``)."""
    arrays = synthetic_arrays(rows, wavelength, seed)
    code = code_of("simulated", SURVEYS)
    return make_spectra_dataset(
        wavelength,
        arrays["flux"],
        arrays["ivar"],
        source_file=source_file,
        reader="synthetic",
        coords={
            "targetid": arrays["targetid"],
            "z_true": arrays["z_true"],
            "survey": np.full(len(rows), code, np.int8),
            "instrument": np.full(len(rows), code, np.int8),
            "exptime": np.full(len(rows), 3600.0, np.float32),
        },
    )


def write_synthetic_files(
    directory: str | PathLike[str], nfiles: int, spectra_per_file: int, seed: int = 0,
    wavelength: np.ndarray = MUSE_LIKE_WAVELENGTH, first_row: int = 0,
) -> list[Path]:
    """Write ``nfiles`` generic-format ``.npz`` files (keys wave, flux, ivar, targetid, z_true).

    File ``i`` holds the synthetic rows ``first_row + i * spectra_per_file`` onwards (targetid 10000000 + row).

    Examples
    --------
    >>> import tempfile
    >>> paths = write_synthetic_files(tempfile.mkdtemp(), nfiles=2, spectra_per_file=3)
    >>> [p.name for p in paths]
    ['synthetic-0000.npz', 'synthetic-0001.npz']
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(nfiles):
        rows = first_row + np.arange(index * spectra_per_file, (index + 1) * spectra_per_file)
        arrays = synthetic_arrays(rows, wavelength, seed)
        path = directory / f"synthetic-{index:04d}.npz"
        np.savez(path, wave=wavelength, medium="vacuum", **arrays)
        paths.append(path)
    return paths


def write_synthetic_store(
    path: str | PathLike[str], nspectrum: int, nwave: int = MUSE_LIKE_WAVELENGTH.size, seed: int = 0,
    chunk_rows: int | None = None, mapper: Callable[..., Iterable[object]] = map,
) -> Path:
    """Write a spectra store of ``nspectrum`` synthetic spectra directly (no input files), chunk by chunk.

    Each chunk is written by one call ``write_synthetic_chunk(path, group, start, stop, nwave, seed)``; pass a
    parallel ``mapper`` (e.g. ``lambda f, *a: client.gather(client.map(f, *a))``) to write chunks on a cluster.
    Memory stays at one chunk per worker whatever ``nspectrum`` is. Returns the store path.
    """
    from dzspec.io import store as zstore

    root = zstore.open_root(path, mode="a")
    template = synthetic_dataset(np.arange(1), _synthetic_wavelength(nwave), seed)
    group = zstore.create_spectra_group(root, template, chunk_rows=chunk_rows)
    zstore.resize_spectra_group(group, nspectrum)
    step = int(group.attrs["chunk_rows"])
    starts = list(range(0, nspectrum, step))
    stops = [min(start + step, nspectrum) for start in starts]
    n = len(starts)
    list(mapper(write_synthetic_chunk, [str(path)] * n, [group.path] * n, starts, stops, [nwave] * n, [seed] * n))
    zstore.set_manifest(group, [{"sha256": f"synthetic-seed{seed}-n{nspectrum}", "path": "<synthetic>",
                                 "reader": "synthetic", "row_start": 0, "nrows": nspectrum, "status": "done"}])
    return Path(path)


def write_synthetic_chunk(path: str, group: str, start: int, stop: int, nwave: int, seed: int) -> int:
    """Write synthetic rows ``[start, stop)`` (one whole chunk) into an existing group; returns rows written."""
    from dzspec.io import store as zstore

    target = zstore.open_root(path, mode="r+")[group]
    dataset = synthetic_dataset(np.arange(start, stop), _synthetic_wavelength(nwave), seed)
    zstore.write_rows(target, dataset.assign_coords(source_row=("spectrum", np.arange(start, stop))), start)
    return stop - start


# --------------------------------------------------------------------------- a toy simulator for the runner tests

#: Grid name and classes of :func:`toy_simulate_block`.
TOY_GRID_NAME = "toy-4750-1.25-64"
TOY_CLASSES = ("line", "noise")


@dataclass(frozen=True)
class ToyConfig:
    """Configuration of the toy simulator: exposures per target (0: none)."""

    nexp: int = 0


def load_toy_ingredients(**paths: str) -> dict[str, str]:
    """The toy simulator's 'ingredients': the paths themselves."""
    return dict(paths)


def toy_simulate_block(rows: np.ndarray, seed: int, config: ToyConfig, ingredients: object) -> SimulatedBlock:
    """A tiny deterministic simulator (64 pixels) with the real simulators' contract, for runner tests.

    With ``config.nexp`` exposures, each target's coadd is the inverse-variance mean of its exposures.
    """
    wavelength = _synthetic_wavelength(64)
    rows = np.asarray(rows)
    arrays = synthetic_arrays(rows, wavelength, seed)
    truth = {"z_true": arrays["z_true"], "sim_class": (rows % 2).astype(np.int8),
             "exptime": np.full(rows.size, 1000.0 * max(config.nexp, 1), np.float32)}
    exposures = None
    flux, ivar = arrays["flux"], arrays["ivar"]
    if config.nexp:
        exp_rows = (rows[:, None] * config.nexp + np.arange(config.nexp)).ravel() + 10**9
        single = synthetic_arrays(exp_rows, wavelength, seed)
        exp_flux = single["flux"].reshape(rows.size, config.nexp, -1)
        exp_ivar = single["ivar"].reshape(rows.size, config.nexp, -1)
        ivar = exp_ivar.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            flux = np.where(ivar > 0, (exp_flux * exp_ivar).sum(axis=1) / ivar, 0.0).astype(np.float32)
        exposures = SimulatedBlock(wavelength, single["flux"], single["ivar"],
                                   {"expid": np.tile(np.arange(config.nexp), rows.size).astype(np.int32),
                                    "exptime": np.full(rows.size * config.nexp, 1000.0, np.float32)})
    return SimulatedBlock(wavelength, flux, ivar, truth, exposures=exposures)
