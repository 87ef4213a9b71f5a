"""Redshifts out of a store, in the tables survey scientists already open: Redrock-style FITS, Parquet, CSV.

One row per input spectrum, in store order, whether or not it has a redshift (``RUN_STATUS``, a string of
:data:`dzspec.schema.RUN_STATUS`: ``ok``, ``not_run`` or ``failed``, says why not):

* ``REDSHIFTS``: Redrock's columns with Redrock's types and order (:data:`REDROCK_COLUMNS`, as in Redrock 0.20's
  ``redrock-*.fits``), then ``RUN_STATUS``, then dzspec's own columns of the primary results group, then the
  columns of any further results groups under their prefix;
* ``FIBERMAP``: the per-spectrum input coordinates (targetid, position, exposure time, survey, source file...).

The values come from the results groups through :data:`dzspec.results_schema.FIELDS` (a field's ``redrock``
attribute names its Redrock column), so a new output of an engine is exported without touching this module.

Rules, stated once here and referred to by the functions and ``dzspec export --help``:

* **Primary results.** Z, ZWARN and the other Redrock columns come from the first results group named (by default
  ``nmf_zfind``, then ``madgics_lae``: those of the two the store holds). A name is the group's name under
  ``results/<grid>/`` (``nmf_zfind``), or its full path (``results/<grid>/nmf_zfind``), which also selects its
  spectra group.
* **Further results** follow with a prefix on every column: ``NMF_`` or ``LAE_`` for an engine's default group
  (``nmf_zfind``, ``madgics_lae``), otherwise the group's name upper-cased and ``_``; a field whose name already
  starts with the prefix keeps it once (``lae_line_flux`` -> ``LAE_LINE_FLUX``, ``z`` -> ``LAE_Z``).
* **Several spectra groups.** Without ``group``, every spectra group of the store is exported into one table, group
  after group, with a ``GROUP`` column (the grid name, after the primary's columns); a results group missing for one
  spectra group leaves its rows ``not_run``. With one spectra group there is no ``GROUP`` column.
* **Rows without a result** (``RUN_STATUS`` ``not_run`` or ``failed``) hold fill values: NaN floats, ``NPIXELS`` -1,
  ``COEFF`` zeros with ``NCOEFF`` 0, empty strings, and the engine's NODATA bit in ``ZWARN``, so that
  ``ZWARN == 0`` stays the trust cut.
* **Z** is the engine's best redshift: for ``nmf_zfind`` the sub-pixel ``z_refined`` (the one ``ZERR`` belongs to,
  as Redrock's Z is refined), with the best trial of the scan's grid, ``z``, as ``Z_TRIAL``; the LAE scan's ``z``.
* **SPECTYPE** names the model the redshift belongs to, as Redrock's does: ``GALAXY`` for ``nmf_zfind``, ``LAE`` for
  ``madgics_lae`` (the Lya reading of the line), on every row with a finite Z; ZWARN says whether to trust it
  (``ZWARN == 0`` for LAEs is the selected Lya emitters). ``SUBTYPE`` is empty. ``FITMETHOD`` is Redrock's ``NMF``
  for ``nmf_zfind`` and ``MADG`` (MADGICS) for ``madgics_lae``. ``ZWARN`` holds the engine's bits
  (:class:`~dzspec.results_schema.ZWarn`, :class:`~dzspec.results_schema.LAEWarn`). Fields an engine does not write
  (ZERR of an older NMF run, CHI2/COEFF/NPIXELS of the LAE scan) hold the fill values.
* The chi-square curves over the trial redshifts (``zchi2``) are **not** exported: at 10^4 trials per spectrum they
  belong in the store.
* **Formats**, from the output's suffix: ``.fits`` (or ``.fits.gz``): a primary HDU, ``REDSHIFTS`` and ``FIBERMAP``;
  ``.parquet``: one table, ``REDSHIFTS`` joined with the ``FIBERMAP`` columns (vectors as fixed-size lists);
  ``.csv``: the same table with vectors flattened (``COEFF`` -> ``COEFF_0`` ... ``COEFF_k``) and no provenance. A
  FIBERMAP column whose name is taken in REDSHIFTS is joined as ``FIBERMAP_<NAME>``.
* **Provenance** (primary and REDSHIFTS headers, Parquet schema metadata), in Redrock's numbered style: ``DZVER``
  (this dzspec), ``STORE``, ``NRESULTS``, and per results group ``nn``: ``RESNAMnn`` (path), ``RESKERnn`` (kernel),
  ``RESPFXnn`` (column prefix), ``RESVERnn`` (dzspec that wrote it), ``PARSHAnn`` (parameters hash),
  ``MODNAMnn``/``MODSHAnn`` (model name and checksum), ``INPTIDnn`` (input identity, :func:`~dzspec.io.store.input_id`).

Examples
--------
A store of three spectra whose first block of two has NMF redshifts:

>>> import tempfile, numpy as np
>>> from dzspec.io import store as zstore
>>> from dzspec.results_schema import output_specs
>>> from dzspec.testing import write_synthetic_store
>>> path = write_synthetic_store(tempfile.mkdtemp() + "/s.zarr", nspectrum=3, nwave=20, chunk_rows=2)
>>> root = zstore.open_root(path, mode="r+")
>>> spectra = zstore.spectra_groups(root)[0]  # spectra/<grid>
>>> group = zstore.create_results_group(root, spectra.replace("spectra/", "results/") + "/nmf_zfind",
...     zstore.BlockPlan(3, 2), output_specs("nmf_zfind", ["z", "zwarn"]), {"kernel": "nmf_zfind"},
...     root[spectra]["targetid"][:])
>>> zstore.write_block(group, 0, {"z": np.array([0.5, 1.2]), "zwarn": np.array([0, 4], np.uint32)})
>>> zstore.mark_block_done(group, 0, (0, 2))
>>> table = redshift_table(path)
>>> print(table["Z", "ZWARN", "SPECTYPE", "RUN_STATUS"])
 Z  ZWARN SPECTYPE RUN_STATUS
--- ----- -------- ----------
0.5     0   GALAXY         ok
1.2     4   GALAXY         ok
nan   512             not_run
>>> write_export(path, path.parent / "z.fits").name
'z.fits'
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xarray as xr
import zarr
from astropy.io import fits
from astropy.table import Column, Table

from dzspec._version import __version__
from dzspec.errors import StoreError
from dzspec.io import store as zstore
from dzspec.results_schema import ENGINES, FIELDS, REDSHIFT_DIM, LAEWarn, ZWarn, best_redshift_name
from dzspec.schema import RUN_STATUS

__all__ = ["REDROCK_COLUMNS", "ExportFormat", "export_format", "fibermap_table", "redshift_table", "write_export"]

ExportFormat = Literal["fits", "parquet", "csv"]
_SUFFIXES: dict[str, ExportFormat] = {".fits": "fits", ".fits.gz": "fits", ".fit": "fits", ".parquet": "parquet",
                                      ".csv": "csv"}

#: Redrock's ``REDSHIFTS`` columns, in its order, with the NumPy dtypes of its FITS files (Redrock 0.20; 0.17 lacks
#: FITMETHOD). COEFF is a vector per row; the strings have Redrock's fixed widths.
REDROCK_COLUMNS: dict[str, str] = {
    "TARGETID": "int64", "Z": "float64", "ZERR": "float64", "ZWARN": "int64", "CHI2": "float64", "COEFF": "float64",
    "FITMETHOD": "U4", "NPIXELS": "int64", "SPECTYPE": "U6", "SUBTYPE": "U20", "NCOEFF": "int64",
    "DELTACHI2": "float64",
}
#: The result field of each Redrock column that has one.
_FIELD_OF_REDROCK = {field.redrock: field for field in FIELDS.values() if field.redrock is not None}
_OK = RUN_STATUS.index("ok")
#: Fill of an input coordinate missing from one of several spectra groups, by dtype kind (unsigned and bool: 0).
_FILL_OF_KIND: dict[str, Any] = {"f": np.nan, "i": -1, "U": ""}


@dataclass(frozen=True)
class _Engine:
    """How an engine's results read in Redrock's vocabulary."""

    spectype: str  #: SPECTYPE of a row with a redshift
    fitmethod: str  #: FITMETHOD (Redrock: PCA or NMF)
    prefix: str  #: column prefix of its default results group when it is not the primary
    nodata: int  #: its ZWARN bit for "no redshift", set on rows without a result


_ENGINES: dict[str, _Engine] = {
    "nmf_zfind": _Engine("GALAXY", "NMF", "NMF_", int(ZWarn.NODATA)),
    "madgics_lae": _Engine("LAE", "MADG", "LAE_", int(LAEWarn.NODATA)),
}


@dataclass
class _Column:
    """One exported column: values, the value of rows without a result, and what it means."""

    values: np.ndarray
    fill: Any
    unit: str = ""
    description: str = ""


@dataclass(frozen=True)
class _Source:
    """One named results group of an export, with its path in each spectra group that has it."""

    engine: str
    prefix: str  #: "" for the primary
    paths: Mapping[str, str]  #: spectra group -> results group path


# ----------------------------------------------------------------------------------------------- public API


def primary_results(store: str | PathLike[str], group: str | None = None,
                    results: str | Sequence[str] | None = None) -> dict[str, str]:
    """The results group that gives Z (the primary, by the rules above) in each exported spectra group:
    ``{spectra group: results group path}``."""
    _, sources = _resolve(zstore.open_root(store), str(store), group, results)
    return dict(sources[0].paths)


def export_format(output: str | PathLike[str]) -> ExportFormat:
    """The format of an output file, from its suffix.

    Examples
    --------
    >>> export_format("z.fits.gz"), export_format("Z.PARQUET")
    ('fits', 'parquet')
    """
    name = Path(output).name.lower()
    for suffix, kind in _SUFFIXES.items():
        if name.endswith(suffix):
            return kind
    raise ValueError(f"{output}: unknown export format; the output's suffix chooses it: {', '.join(_SUFFIXES)}")


def redshift_table(store: str | PathLike[str], group: str | None = None,
                   results: str | Sequence[str] | None = None) -> Table:
    """The ``REDSHIFTS`` table of a store: one row per input spectrum, Redrock's columns first.

    Parameters
    ----------
    store
        The Zarr store.
    group
        Spectra group (``<grid>`` or ``spectra/<grid>``); default: every group of the store (with a ``GROUP``
        column when there are several).
    results
        Results groups, the primary first (names under ``results/<grid>/`` or full paths); default ``nmf_zfind``
        then ``madgics_lae``, those the store holds.

    Returns
    -------
    astropy.table.Table
        Columns as in the module docstring (Redrock's, ``RUN_STATUS``, dzspec's, further results under their
        prefix; not the chi-square curves ``zchi2``); ``meta`` holds ``EXTNAME`` and the provenance keywords.

    Raises
    ------
    StoreError
        No such store or spectra group, a named results group missing or not written by a redshift engine, results
        that no longer match their spectra (rows or input identity), or nothing to export.
    """
    root = zstore.open_root(store)
    groups, sources = _resolve(root, str(store), group, results)
    return _redshifts(root, str(store), groups, sources)


def fibermap_table(store: str | PathLike[str], group: str | None = None) -> Table:
    """The ``FIBERMAP`` table of a store: the per-spectrum input coordinates, in the order of
    :func:`redshift_table`.

    Columns: (``GROUP`` with several spectra groups), ``TARGETID``, ``RA``, ``DEC``, ``EXPTIME``, ``Z_TRUE`` (where
    the group has it),
    ``SURVEY`` and ``INSTRUMENT`` as names, ``SOURCE_FILE`` (the input file's name, from the group's manifest),
    ``SOURCE_ROW``, ``INGEST_WARN``, then the reader's extra per-spectrum columns (e.g. DESI FIBERMAP columns),
    upper-cased and sorted. Codes with CF ``flag_values``/``flag_meanings`` become their names.

    Parameters
    ----------
    store
        The Zarr store.
    group
        Spectra group; default every group, as for :func:`redshift_table`.

    Returns
    -------
    astropy.table.Table
        ``meta["EXTNAME"]`` is ``FIBERMAP``.
    """
    root = zstore.open_root(store)
    groups = [zstore.resolve_spectra_group(root, group)] if group is not None else _all_groups(root, str(store))
    return _fibermap(root, groups)


def write_export(store: str | PathLike[str], output: str | PathLike[str], *, group: str | None = None,
                 results: str | Sequence[str] | None = None, overwrite: bool = False,
                 extra_tables: Mapping[str, Table] | None = None) -> Path:
    """Write the redshifts of a store to ``output``, in the format its suffix names (``.fits``, ``.fits.gz``,
    ``.parquet``, ``.csv``).

    Parameters
    ----------
    store, group, results
        As for :func:`redshift_table`.
    output
        The file to write; it is written beside under a temporary name and moved into place when complete.
    overwrite
        Replace an existing ``output``.
    extra_tables
        Further tables by name (EXTNAME): appended as HDUs after ``FIBERMAP`` in FITS, written beside the output as
        ``<stem>-<name>.<suffix>`` in Parquet and CSV.

    Returns
    -------
    pathlib.Path
        ``output``.

    Raises
    ------
    StoreError
        As :func:`redshift_table`; or an output file exists and ``overwrite`` is false.
    ValueError
        The suffix names no known format.
    """
    output = Path(output)
    kind = export_format(output)
    if not output.parent.is_dir():
        raise StoreError(f"{output.parent}: no such directory; store {store} not exported")
    siblings = {name: _sibling(output, name) for name in (extra_tables or {})} if kind != "fits" else {}
    for path in (output, *siblings.values()):
        if path.exists() and not overwrite:
            raise StoreError(f"{path} exists: pass overwrite=True (--overwrite) to replace it; store {store} "
                             "not exported")
    root = zstore.open_root(store)
    groups, sources = _resolve(root, str(store), group, results)
    redshifts, fibermap = _redshifts(root, str(store), groups, sources), _fibermap(root, groups)
    if kind == "fits":
        _atomic(output, lambda tmp: _write_fits(tmp, redshifts, fibermap, extra_tables or {}))
        return output
    joined = _join(redshifts, fibermap)
    for path, table in ((output, joined), *((siblings[n], t) for n, t in (extra_tables or {}).items())):
        _atomic(path, lambda tmp, table=table: _write_flat(tmp, table, kind))
    return output


# --------------------------------------------------------------------------------------- which groups, which rows


def _grid(spectra_path: str) -> str:
    return spectra_path.removeprefix("spectra/")


def _all_groups(root: zarr.Group, store: str) -> list[str]:
    groups = zstore.spectra_groups(root)
    if not groups:
        raise StoreError(f"{store}: no spectra groups: nothing to export")
    return groups


def _resolve(root: zarr.Group, store: str, group: str | None,
             results: str | Sequence[str] | None) -> tuple[list[str], list[_Source]]:
    """The spectra groups to export and the named results groups (the primary first) with their paths."""
    names = [results] if isinstance(results, str) else list(results or [])
    present = sorted(path for path, _ in zstore.results_groups(root))
    implied: list[str] = []  # spectra groups that full paths name
    for i, name in enumerate(names):
        if name.startswith("results/"):
            spectra = _spectra_of(root, store, name.rstrip("/"), present)
            implied.append(spectra)
            names[i] = name.rstrip("/").removeprefix(f"results/{_grid(spectra)}/")
    if group is not None:
        groups = [zstore.resolve_spectra_group(root, group)]
        if set(implied) - set(groups):
            raise StoreError(f"{store}: results of {sorted(set(implied) - set(groups))} named, but the export is of "
                             f"{groups[0]} (--group)")
    else:
        groups = sorted(set(implied)) or _all_groups(root, store)

    def paths_of(name: str) -> dict[str, str]:
        return {g: f"results/{_grid(g)}/{name}" for g in groups if f"results/{_grid(g)}/{name}" in present}

    if not names:
        names = [engine for engine in ENGINES if paths_of(engine)]
        if not names:
            raise StoreError(f"{store}: no nmf_zfind or madgics_lae results for {', '.join(groups)}: run dzspec zfind "
                             f"or dzspec lae first, or name the results with --results (the store has: "
                             f"{present or 'no results'})")
    names = list(dict.fromkeys(names))
    sources = []
    for i, name in enumerate(names):
        paths = paths_of(name)
        if not paths:
            raise StoreError(f"{store}: no results group {name!r} for {', '.join(groups)} (the store has: "
                             f"{present or 'no results'})")
        kernels = {str(root[p].attrs.get("kernel", p.rsplit("/", 1)[-1])) for p in paths.values()}
        engine = kernels.pop()
        if kernels or engine not in _ENGINES:
            raise StoreError(f"{store}: {', '.join(paths.values())} written by kernel {sorted({engine, *kernels})}, "
                             f"not by one redshift engine ({', '.join(ENGINES)}): nothing to export as redshifts")
        prefix = "" if i == 0 else _ENGINES[engine].prefix if name == engine else _sanitise(name) + "_"
        sources.append(_Source(engine, prefix, paths))
    return groups, sources


def _spectra_of(root: zarr.Group, store: str, results_path: str, present: Sequence[str]) -> str:
    """The spectra group a results group (full path) was computed from."""
    if results_path not in present:
        raise StoreError(f"{store}: no results group {results_path!r} (the store has: {present or 'no results'})")
    spectra = str(root[results_path].attrs.get("input_group", "spectra/" + results_path.split("/")[1]))
    if not results_path.startswith(f"results/{_grid(spectra)}/"):
        raise StoreError(f"{store}/{results_path}: computed from {spectra} but not under results/{_grid(spectra)}/")
    return spectra


def _sanitise(name: str) -> str:
    return re.sub(r"\W", "_", name).upper()


def _open_results(root: zarr.Group, store: str, spectra: str, path: str, targetid: np.ndarray) -> xr.Dataset:
    """The exported variables of a results group, in memory (read at once: one pass over the chunks; the chi2
    curves stay on disk), refused when its rows are not those of its spectra group."""
    ds = zstore.open_results(store, path)
    exported = [name for name in ds.variables if name in ("targetid", "run_status", "block_done")
                or (name in FIELDS and FIELDS[name].dim != REDSHIFT_DIM)]
    ds = ds[exported].compute()
    recorded = ds.attrs.get("input_id")
    if ds.sizes["spectrum"] != targetid.size or (recorded is not None and recorded != zstore.input_id(root[spectra])):
        raise StoreError(f"{store}/{path}: computed from another state of {spectra} ({ds.sizes['spectrum']} rows then, "
                         f"{targetid.size} now, or other input files): run the engine again with --overwrite")
    if not np.array_equal(ds["targetid"].values, targetid):
        raise StoreError(f"{store}/{path}: targetids differ from those of {spectra}: run the engine again with "
                         "--overwrite")
    return ds


def _run_status(ds: xr.Dataset) -> np.ndarray:
    """Per-row run status codes; results written before ``run_status`` existed take it from their block flags."""
    if "run_status" in ds:
        return np.asarray(ds["run_status"].values)
    done = np.repeat(np.asarray(ds["block_done"].values), int(ds.attrs["plan"]["block_rows"]))
    return np.where(done[: ds.sizes["spectrum"]], _OK, RUN_STATUS.index("not_run")).astype(np.uint8)


# ------------------------------------------------------------------------------------------------- the columns


def _redshifts(root: zarr.Group, store: str, groups: Sequence[str], sources: Sequence[_Source]) -> Table:
    """:func:`redshift_table` of resolved groups and results."""
    parts = []
    for path in groups:
        targetid = np.asarray(root[path]["targetid"][:])
        part = {"TARGETID": _Column(targetid, -1)}
        for i, source in enumerate(sources):
            if path in source.paths:
                ds = _open_results(root, store, path, source.paths[path], targetid)
                part.update(_results_columns(ds, source, targetid.size))
            if i == 0 and len(groups) > 1:  # after the primary's columns, so that Redrock's stay first
                part["GROUP"] = _Column(np.full(targetid.size, _grid(path)), "")
        parts.append(part)
    table = _table(_concat(parts))
    table.meta.update({"EXTNAME": "REDSHIFTS", **_provenance(root, store, sources, groups)})
    return table


def _fibermap(root: zarr.Group, groups: Sequence[str]) -> Table:
    """:func:`fibermap_table` of resolved groups."""
    parts = []
    for path in groups:
        n = int(root[path]["targetid"].shape[0])
        part = {"GROUP": _Column(np.full(n, _grid(path)), "")} if len(groups) > 1 else {}
        part.update(_fibermap_columns(root[path], n))
        parts.append(part)
    table = _table(_concat(parts))
    table.meta["EXTNAME"] = "FIBERMAP"
    return table


def _results_columns(ds: xr.Dataset, source: _Source, n: int) -> dict[str, _Column]:
    """The columns of one results group for one spectra group: for the primary, Redrock's (less TARGETID, the
    caller's) in Redrock's order and types, then RUN_STATUS, then the other fields; for the others, RUN_STATUS and
    every field under the prefix. Rows without a result hold each column's fill."""
    engine = _ENGINES[source.engine]
    status = _run_status(ds)
    ok = status == _OK
    columns: dict[str, _Column] = {}
    fields = [f for f in FIELDS.values() if f.name in ds and f.dim != REDSHIFT_DIM]
    if not source.prefix:
        refined = best_redshift_name(ds.data_vars) != "z"  # NMF: Z is the sub-pixel z, ZERR's; the trial: Z_TRIAL
        has_z = ok & np.isfinite(np.asarray(ds["z"].values, np.float64))
        labels = {"SPECTYPE": engine.spectype, "FITMETHOD": engine.fitmethod, "SUBTYPE": ""}
        for name, dtype in list(REDROCK_COLUMNS.items())[1:]:
            if name == "Z" and refined:
                columns[name] = _field_column(ds, "z_refined", n, dtype, engine)
            elif name in _FIELD_OF_REDROCK:
                columns[name] = _field_column(ds, _FIELD_OF_REDROCK[name].name, n, dtype, engine)
            elif name in labels:
                columns[name] = _Column(np.where(has_z, labels[name], "").astype(dtype), "")
            else:  # NCOEFF
                columns[name] = _Column(np.full(n, ds["coeff"].shape[1] if "coeff" in ds else 0, dtype), 0)
        fields = [f for f in fields if f.redrock is None and not (refined and f.name == "z_refined")]
    status_name = source.prefix + "RUN_STATUS"
    columns[status_name] = _Column(np.asarray(RUN_STATUS)[status], "not_run")
    if not source.prefix and refined:
        columns["Z_TRIAL"] = _field_column(ds, "z", n, None, engine)
        columns["Z_TRIAL"].description = "best trial redshift of the scan's grid (quantised)"
    for field in fields:
        columns[_prefixed(source.prefix, field.name)] = _field_column(ds, field.name, n, None, engine)
    for name, column in columns.items():
        if name != status_name:
            column.values[~ok] = column.fill
    return columns


def _field_column(ds: xr.Dataset, name: str, n: int, dtype: str | None, engine: _Engine) -> _Column:
    """A result field as a column (cast to ``dtype`` if given); all fill values where the group lacks it."""
    field = FIELDS[name]
    fill = engine.nodata if name == "zwarn" else 0 if name == "coeff" else field.fill  # Redrock pads COEFF with 0
    if name in ds:
        values = np.array(ds[name].values, dtype=dtype or ds[name].dtype)
    else:
        values = np.full(n if field.dim is None else (n, 1), fill, dtype=dtype or field.dtype)
    unit = "" if field.units in ("", "1") else field.units
    return _Column(values, np.asarray(fill).astype(values.dtype).item(), unit, field.description)


def _prefixed(prefix: str, name: str) -> str:
    upper = name.upper()
    return upper if prefix and upper.startswith(prefix) else prefix + upper


def _fibermap_columns(spectra: zarr.Group, n: int) -> dict[str, _Column]:
    """The input coordinates of one spectra group (``source_file`` as the file's name)."""
    arrays = {name: array for name, array in spectra.arrays()
              if tuple(array.metadata.dimension_names or ()) == ("spectrum",)}
    first = ["targetid", "ra", "dec", "exptime", "z_true", "survey", "instrument", "source_file", "source_row",
             "ingest_warn"]
    columns = {}
    for name in [*first, *sorted(set(arrays) - set(first))]:
        if name == "source_file":
            columns["SOURCE_FILE"] = _Column(_source_files(spectra, arrays.get(name), n), "")
        elif name in arrays:
            values, attrs = np.asarray(arrays[name][:]), arrays[name].attrs
            if "flag_values" in attrs and "flag_meanings" in attrs:  # a category code: its names
                names = np.array([*str(attrs["flag_meanings"]).split(), ""])
                index = np.searchsorted(attrs["flag_values"], values)  # CF flag_values are increasing
                known = np.isin(values, attrs["flag_values"])
                values = names[np.where(known, index, -1)]
            fill = _FILL_OF_KIND.get(values.dtype.kind, 0)
            columns[name.upper()] = _Column(values, fill, str(attrs.get("units", "")))
    return columns


def _source_files(spectra: zarr.Group, codes: zarr.Array | None, n: int) -> np.ndarray:
    """The input file name of every row: the ``source_file`` code into the manifest, or the manifest's row ranges
    where the group has no codes (stores written without ingest)."""
    names = [Path(str(entry["path"])).name for entry in zstore.manifest_of(spectra)]
    index = np.full(n, -1)
    if codes is not None:
        index = np.asarray(codes[:], np.int64)
    else:
        for i, entry in enumerate(zstore.manifest_of(spectra)):
            index[int(entry["row_start"]): int(entry["row_start"]) + int(entry["nrows"])] = i
    table = np.array([*names, ""])  # -1 (no entry) reads the empty name
    return table[np.where((index >= 0) & (index < len(names)), index, -1)]


# -------------------------------------------------------------------------------------------- tables and files


def _concat(parts: Sequence[Mapping[str, _Column]]) -> dict[str, _Column]:
    """Stack the columns of several spectra groups: a column one group lacks holds its fill there, vectors are
    padded with their fill to the widest, and the columns keep the order they have in each group."""
    order: list[str] = []
    for part in parts:  # merge the groups' column orders (each a subsequence of one full order)
        at = 0
        for name in part:
            if name not in order:
                order.insert(at, name)
            at = order.index(name) + 1
    nrows = [len(next(iter(part.values())).values) for part in parts]
    out = {}
    for name in order:
        present = [part[name] for part in parts if name in part]
        dtype = np.result_type(*(c.values.dtype for c in present))  # the widest string of all groups
        width = max(c.values.shape[1:] for c in present)
        pieces = []
        for part, n in zip(parts, nrows, strict=True):
            piece = np.full((n, *width), present[0].fill, dtype)
            if name in part:
                values = part[name].values
                piece[(slice(None), *(slice(0, w) for w in values.shape[1:]))] = values
            pieces.append(piece)
        out[name] = _Column(np.concatenate(pieces), present[0].fill, present[0].unit, present[0].description)
    return out


def _table(columns: Mapping[str, _Column]) -> Table:
    return Table([Column(c.values, name=name, unit=c.unit or None, description=c.description or None)
                  for name, c in columns.items()])


def _provenance(root: zarr.Group, store: str | PathLike[str], sources: Sequence[_Source],
                groups: Sequence[str]) -> dict[str, Any]:
    """FITS-style provenance keywords (8 characters, numbered per results group as Redrock's TEMNAMnn)."""
    meta: dict[str, Any] = {"DZVER": __version__, "STORE": str(Path(store).resolve())}
    entries = [(source, source.paths[g]) for g in groups for source in sources if g in source.paths]
    meta["NRESULTS"] = len(entries)
    for i, (source, path) in enumerate(entries):
        attrs = root[path].attrs
        params = dict(attrs.get("params", {}))
        model = "basis" if "basis_sha256" in params else "prior"  # the NMF basis or the MADGICS prior
        meta.update({
            f"RESNAM{i:02d}": path,
            f"RESKER{i:02d}": source.engine,
            f"RESPFX{i:02d}": source.prefix,
            f"RESVER{i:02d}": str(attrs.get("dzspec_version", "")),
            f"PARSHA{i:02d}": str(attrs.get("config_sha256", "")),
            f"MODNAM{i:02d}": str(params.get(f"{model}_name", "")),
            f"MODSHA{i:02d}": str(params.get(f"{model}_sha256", "")),
            f"INPTID{i:02d}": str(attrs.get("input_id", "")),
        })
    return meta


def _join(redshifts: Table, fibermap: Table) -> Table:
    """REDSHIFTS with the FIBERMAP columns after it (same rows; a taken name gets ``FIBERMAP_``)."""
    joined = redshifts.copy(copy_data=False)
    for name in fibermap.colnames:
        if name in ("TARGETID", "GROUP"):  # the same values in both
            continue
        joined[f"FIBERMAP_{name}" if name in joined.colnames else name] = fibermap[name]
    return joined


def _write_fits(path: Path, redshifts: Table, fibermap: Table, extra: Mapping[str, Table]) -> None:
    provenance = {key: value for key, value in redshifts.meta.items() if key != "EXTNAME"}
    hdus = fits.HDUList([fits.PrimaryHDU(header=fits.Header(list(provenance.items())))])
    for name, table in (("REDSHIFTS", redshifts), ("FIBERMAP", fibermap), *extra.items()):
        table = table.copy(copy_data=False)
        for column in table.itercols():  # astropy writes int8 as FITS logical: widen
            if column.dtype == np.int8:
                table.replace_column(column.name, column.astype(np.int16))
        hdu = fits.table_to_hdu(table)
        hdu.header["EXTNAME"] = name
        hdus.append(hdu)
    hdus.writeto(path)


def _write_flat(path: Path, table: Table, kind: ExportFormat) -> None:
    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        arrays, fields = [], []
        for column in table.itercols():
            values = np.asarray(column)
            if values.ndim == 2:
                array = pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), values.shape[1])
            else:
                array = pa.array(values.tolist() if values.dtype.kind == "U" else values)
            described = {"unit": column.unit, "description": column.description}
            arrays.append(array)
            fields.append(pa.field(column.name, array.type,
                                   metadata={key: str(value) for key, value in described.items() if value} or None))
        meta = {key: str(value) for key, value in table.meta.items()}
        pq.write_table(pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=meta)), path)
        return
    flat = Table()
    for column in table.itercols():
        values = np.asarray(column)
        if values.ndim == 2:
            for k in range(values.shape[1]):
                flat[f"{column.name}_{k}"] = values[:, k]
        else:
            flat[column.name] = values
    flat.write(path, format="ascii.csv")


def _sibling(output: Path, name: str) -> Path:
    suffix = next(s for s in _SUFFIXES if output.name.lower().endswith(s))
    return output.with_name(f"{output.name[: -len(suffix)]}-{name.lower()}{output.name[-len(suffix):]}")


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` beside ``path`` under a temporary name (same suffix), then move it into place: a crash never
    leaves a truncated file under the output's name."""
    tmp = path.with_name(f".partial-{os.getpid()}-{path.name}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
