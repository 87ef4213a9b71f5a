"""Spectra groups: opening a store, one group per wavelength grid, rows, the ingest manifest, the input id.

A spectra group ``spectra/<grid>`` holds spectra that share one wavelength grid (never resampled into another)::

    flux ivar mask (spectrum, wavelength)   wavelength (wavelength)   per-spectrum coords (spectrum)
    attrs: manifest of ingested files (sha256, path, rows, status), chunk_rows, store_uid, provenance

Arrays are created directly with zarr-python (:func:`create_array`), carrying ``dimension_names`` and the
``coordinates`` attribute so that :func:`xarray.open_zarr` reads them lazily as a normal Dataset. The ingest writes
(:func:`write_rows`) go to chunks owned by exactly one task each (see :mod:`dzspec.parallel.ingest`).
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
import warnings
from collections.abc import Iterable, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr
from zarr.codecs import BloscCodec

from dzspec._version import __version__
from dzspec.errors import BadSpectrumWarning, SchemaError, StoreError
from dzspec.schema import SCHEMA_VERSION, SPECTRUM_COORDS, IngestWarn, duplicated_targetid_rows

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "chunk_rows_for",
    "create_array",
    "create_spectra_group",
    "ensure_spectrum_arrays",
    "flag_duplicate_targetids",
    "groups_holding",
    "input_id",
    "jsonable",
    "manifest_of",
    "open_root",
    "open_spectra",
    "read_rows",
    "resize_spectra_group",
    "resolve_spectra_group",
    "set_manifest",
    "spectra_groups",
    "write_rows",
]

#: Byte budget of one flux chunk; 64 MiB gives 2048 DESI or 4096 MUSE spectra per chunk.
DEFAULT_CHUNK_BYTES = 64 * 2**20
_COMPRESSORS = (BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"),)
_PIXEL_VARS = ("flux", "ivar", "mask")
_PIXEL_FILL = {"flux": np.nan, "ivar": 0.0, "mask": 0}
_PIXEL_DTYPE = {"flux": "float32", "ivar": "float32", "mask": "uint32"}


def chunk_rows_for(nwave: int, budget_bytes: int = DEFAULT_CHUNK_BYTES, itemsize: int = 4) -> int:
    """Spectra per chunk: the largest power of two whose float32 flux chunk fits the byte budget.

    Powers of two make every smaller chunk divide every larger one, so block plans stay chunk-aligned.

    Examples
    --------
    >>> chunk_rows_for(7781), chunk_rows_for(3681), chunk_rows_for(10**7)
    (2048, 4096, 1)
    """
    rows = max(1, budget_bytes // max(1, nwave * itemsize))
    return 1 << (rows.bit_length() - 1)


# --------------------------------------------------------------------------------------------- opening


def open_root(path: str | PathLike[str], mode: str = "r") -> zarr.Group:
    """Open (or, with ``mode="a"``, create) a dzspec store and check its schema version.

    Raises
    ------
    StoreError
        The path is not a dzspec store (``mode="r"``/``"r+"``).
    SchemaError
        The store was written by a newer dzspec schema than this one reads.
    """
    path = Path(path)
    if mode in ("r", "r+") and not path.exists():
        raise StoreError(f"{path}: no such store")
    try:
        root = zarr.open_group(str(path), mode=mode)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
        raise StoreError(f"{path}: not a Zarr store ({exc})") from exc
    version = root.attrs.get("dzspec_schema_version")
    if version is None:
        if mode in ("r", "r+"):
            raise StoreError(f"{path}: a Zarr store but not a dzspec store (no dzspec_schema_version attribute)")
        root.attrs.update({"dzspec_schema_version": SCHEMA_VERSION, "dzspec_version": __version__})
    elif int(version) > SCHEMA_VERSION:
        raise SchemaError(
            f"{path}: written with dzspec schema version {version}, but this dzspec ({__version__}) reads "
            f"versions up to {SCHEMA_VERSION}; upgrade dzspec to read it"
        )
    return root


def spectra_groups(root: zarr.Group) -> list[str]:
    """Paths (``spectra/<grid>``) of the spectra groups of a store, sorted."""
    if "spectra" not in root:
        return []
    return sorted(f"spectra/{name}" for name, _ in root["spectra"].groups())


def groups_holding(root: zarr.Group, top: str, marker: str) -> list[tuple[str, zarr.Group]]:
    """``(path, group)`` of every group under ``top`` that holds ``marker`` (its nested groups are not searched),
    sorted by path."""

    def walk(group: zarr.Group, prefix: str) -> list[tuple[str, zarr.Group]]:
        found = []
        for name, child in sorted(group.groups()):
            path = f"{prefix}/{name}"
            found += [(path, child)] if marker in child else walk(child, path)
        return found

    return walk(root[top], top) if top in root else []


def resolve_spectra_group(root: zarr.Group, group: str | None) -> str:
    """The spectra group to use: the given one (``<grid>`` or ``spectra/<grid>``), or the only one."""
    groups = spectra_groups(root)
    if group is not None:
        path = group if group.startswith("spectra/") else f"spectra/{group}"
        if path not in groups:
            raise StoreError(f"{root.store}: no spectra group {path!r}; the store has {groups}")
        return path
    if len(groups) != 1:
        raise StoreError(
            f"{root.store}: holds {len(groups)} spectra groups {groups}; choose one with --group"
        )
    return groups[0]


def open_spectra(path: str | PathLike[str], group: str | None = None) -> xr.Dataset:
    """Open a spectra group lazily as an xarray Dataset (dask-backed, one dask chunk per Zarr chunk).

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from dzspec.testing import write_synthetic_store
    >>> store = write_synthetic_store(tempfile.mkdtemp() + "/s.zarr", nspectrum=10, nwave=50, chunk_rows=4)
    >>> ds = open_spectra(store)
    >>> ds.sizes["spectrum"], ds.flux.chunks[0]
    (10, (4, 4, 2))
    """
    root = open_root(path)
    return xr.open_zarr(str(path), group=resolve_spectra_group(root, group), consolidated=False)


# ------------------------------------------------------------------------------------ spectra groups


def _coords_attr(group: zarr.Group) -> str:
    return " ".join(sorted(name for name, arr in group.arrays() if _dims(arr) == ("spectrum",)))


def _dims(array: zarr.Array) -> tuple[str, ...]:
    return tuple(array.metadata.dimension_names or ())


def create_array(group: zarr.Group, name: str, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: str,
                 fill: Any, dims: tuple[str, ...], attrs: Mapping[str, Any] | None = None) -> zarr.Array:
    """A new array of a dzspec group: named dimensions, the store's compressors, JSON-safe attributes."""
    return group.create_array(
        name,
        shape=shape,
        chunks=chunks,
        dtype=dtype,
        fill_value=fill,
        compressors=_COMPRESSORS,
        dimension_names=dims,
        attributes=jsonable(dict(attrs or {})),
    )


def jsonable(value: Any) -> Any:
    """Attributes as plain JSON types (NumPy scalars and arrays are not JSON)."""
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


def create_spectra_group(
    root: zarr.Group, template: xr.Dataset, chunk_rows: int | None = None, budget_bytes: int = DEFAULT_CHUNK_BYTES
) -> zarr.Group:
    """Create an empty (zero-spectrum) spectra group shaped like ``template``'s wavelength grid and variables."""
    grid = template.attrs["grid_name"]
    nwave = template.sizes["wavelength"]
    chunk_rows = chunk_rows or chunk_rows_for(nwave, budget_bytes)
    group = root.require_group("spectra").create_group(grid)
    wave = create_array(group, "wavelength", (nwave,), (nwave,), "float64", np.nan, ("wavelength",),
                   template["wavelength"].attrs)
    wave[:] = template["wavelength"].values
    group.attrs.update(
        jsonable(
            {
                "schema_version": SCHEMA_VERSION,
                "dzspec_version": __version__,
                "grid_name": grid,
                "chunk_rows": chunk_rows,
                "store_uid": uuid.uuid4().hex,
                "flux_unit": template.attrs["flux_unit"],
                "medium": "vacuum",
                "manifest": [],
            }
        )
    )
    ensure_spectrum_arrays(group, template)
    return group


def ensure_spectrum_arrays(group: zarr.Group, ds: xr.Dataset) -> None:
    """Create any per-spectrum array of ``ds`` the group lacks (filled for rows already there)."""
    nspec = _nspectrum(group)
    chunk_rows = int(group.attrs["chunk_rows"])
    nwave = group["wavelength"].shape[0]
    created = False
    for name, var in ds.variables.items():
        if name in group or "spectrum" not in var.dims:
            continue
        if var.dims[0] != "spectrum":
            raise StoreError(f"{group.store}/{group.path}: variable {name!r} must have spectrum as first dim")
        if name in _PIXEL_VARS:
            dtype, fill = _PIXEL_DTYPE[name], _PIXEL_FILL[name]
        elif name in SPECTRUM_COORDS:
            dtype, fill = SPECTRUM_COORDS[name]
        else:
            dtype = var.dtype.name
            fill = np.nan if var.dtype.kind == "f" else (-1 if var.dtype.kind == "i" else 0)
        extra = tuple(var.shape[1:])
        if "wavelength" in var.dims and var.sizes["wavelength"] != nwave:
            raise StoreError(f"{group.path}: {name!r} has {var.sizes['wavelength']} wavelengths, group {nwave}")
        # Per-pixel arrays wider than flux (e.g. DESI resolution) get proportionally fewer rows per chunk,
        # still a power of two so that they divide the flux chunk.
        width = max(1, math.ceil(math.prod(extra) / max(1, nwave)))
        rows = max(1, chunk_rows >> (width - 1).bit_length())
        create_array(group, name, (nspec, *extra), (rows, *extra), dtype, fill, tuple(var.dims), var.attrs)
        created = True
    if created:
        coords = _coords_attr(group)
        for name in ds.data_vars:
            group[name].attrs["coordinates"] = coords


def _nspectrum(group: zarr.Group) -> int:
    if "flux" in group:
        return int(group["flux"].shape[0])
    return 0


def resize_spectra_group(group: zarr.Group, nspectrum: int) -> None:
    """Grow every spectrum-dim array of a group to ``nspectrum`` rows (new rows hold fill values)."""
    for _, array in group.arrays():
        dims = _dims(array)
        if dims and dims[0] == "spectrum" and array.shape[0] != nspectrum:
            array.resize((nspectrum, *array.shape[1:]))


def write_rows(group: zarr.Group, ds: xr.Dataset, start: int) -> None:
    """Write all spectrum-dim variables of ``ds`` into rows ``[start, start + n)`` of the group.

    The caller guarantees that no other process writes a chunk these rows touch (zarr-python 3 has no locks).
    """
    stop = start + ds.sizes["spectrum"]
    if stop > _nspectrum(group):
        raise StoreError(f"{group.path}: rows {start}:{stop} beyond the group's {_nspectrum(group)} spectra")
    for name, var in ds.variables.items():
        if "spectrum" in var.dims:
            group[name][start:stop] = np.asarray(var.values).astype(group[name].dtype, copy=False)


def read_rows(group: zarr.Group, start: int, stop: int, names: Iterable[str]) -> dict[str, np.ndarray]:
    """Read rows ``[start, stop)`` of the named arrays of a group into NumPy."""
    return {name: group[name][start:stop] for name in names}


def manifest_of(group: zarr.Group) -> list[dict[str, Any]]:
    """The ingest manifest of a spectra group (one entry per input file)."""
    return list(group.attrs.get("manifest", []))


def set_manifest(group: zarr.Group, manifest: Sequence[Mapping[str, Any]]) -> None:
    group.attrs["manifest"] = jsonable(list(manifest))


def flag_duplicate_targetids(group: zarr.Group, path: str) -> None:
    """Flag the rows of a spectra group whose known targetid occurs more than once (``ingest_warn``
    DUPLICATE_TARGETID) and warn once, naming an example; nothing is said when they were flagged before. The last
    step of every write of spectra into a store (:func:`dzspec.ingest`, :func:`dzspec.io.from_specutils`)."""
    targetid = group["targetid"][:]
    rows = duplicated_targetid_rows(targetid)
    if not rows.size:
        return
    duplicated = np.unique(targetid[rows])
    flags = group["ingest_warn"][:]
    if np.all(flags[rows] & IngestWarn.DUPLICATE_TARGETID):
        return  # flagged by an earlier ingest; nothing new to say
    flags[rows] |= np.uint32(IngestWarn.DUPLICATE_TARGETID)
    group["ingest_warn"][:] = flags
    warnings.warn(
        BadSpectrumWarning(
            f"{path}/{group.path}: {duplicated.size} targetids occur more than once ({rows.size} spectra, e.g. "
            f"targetid {int(duplicated[0])} at rows {np.flatnonzero(targetid == duplicated[0])[:5].tolist()}); "
            "all kept, flagged DUPLICATE_TARGETID in ingest_warn"
        ),
        stacklevel=3,
    )


def input_id(group: zarr.Group) -> str:
    """Identity of a spectra group's content: its uid, size and manifest (changes when files are added)."""
    payload = json.dumps(
        [group.attrs["store_uid"], _nspectrum(group), [m["sha256"] for m in manifest_of(group)]]
    )
    return hashlib.sha256(payload.encode()).hexdigest()
