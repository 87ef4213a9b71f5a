"""Visual inspections (VI) of redshifts, kept in the store beside the results they judge.

An inspector (``dzspec inspect``) looks at a spectrum with the fit of one results group and records a quality flag,
optionally a redshift of their own, and a comment. The flags are MARZ's QOP scale (Hinton et al. 2016, and MARZ's
usage notes), which OzDES and MUSE teams already use:

====  =========================================================================================
flag  meaning
====  =========================================================================================
4     certain: a very confident redshift (~99 %), several clear features
3     probable: a good redshift (~90 %)
2     possible: an uncertain redshift (~50 %); not for science
1     no redshift can be assigned (bad data, no features); not for science
0     looked at but no quality given (MARZ's default for an unjudged spectrum)
6     a star (MARZ gives 6 to what a 3 or 4 stellar match would be)
====  =========================================================================================

Layout: one group per results group, ``vi/<grid>/<kernel>`` for ``results/<grid>/<kernel>`` (``vi/<name>`` for a
results group ``results/<name>``), pre-sized to the spectra group's rows like the results themselves, so that a row
of ``vi`` is the row of the spectra and of the results (the store is the checkpoint; nothing appends)::

    vi/<grid>/<kernel>/   attrs: results, input_group, flag meanings
      targetid    int64    (spectrum)   copied from the results group
      flag        int8     (spectrum)   -1: never saved, else one of :data:`VI_FLAGS`
      z_override  float64  (spectrum)   the inspector's redshift, NaN: they accept the results' z
      z_results   float64  (spectrum)   the results' z when the inspection was saved (so a rerun is noticed)
      comment     string   (spectrum)
      who         string   (spectrum)   the inspector's name
      when        string   (spectrum)   ISO 8601 UTC time of the save

Each spectrum keeps its latest inspection (who and when included); earlier ones are overwritten, not kept. The
visual-inspection redshift is ``z_override`` where given, else ``z_results``. A save rewrites the chunk of its row
under the store's lock file ``<store>/vi/.../<kernel>.lock``, so two inspectors working on one store at once do not
lose each other's saves (zarr-python has no locks of its own).

Examples
--------
>>> import tempfile, numpy as np
>>> from dzspec.io import store as zstore
>>> from dzspec.testing import write_synthetic_store
>>> path = write_synthetic_store(tempfile.mkdtemp() + "/s.zarr", nspectrum=4, nwave=20)
>>> root = zstore.open_root(path, mode="r+")
>>> spectra = zstore.spectra_groups(root)[0]
>>> plan = zstore.BlockPlan(4, 4)
>>> from dzspec.results_schema import output_specs
>>> group = zstore.create_results_group(root, "results/toy/nmf_zfind", plan, output_specs("nmf_zfind", ["z"]),
...                                     {"kernel": "nmf_zfind", "input_group": spectra}, root[spectra]["targetid"][:])
>>> zstore.write_block(group, 0, {"z": np.array([0.1, 0.2, 0.3, 0.4])})
>>> record = save_inspection(path, results="results/toy/nmf_zfind", row=2, flag=3, z=0.31, comment="[OII]",
...                          who="ada")
>>> table = load_inspections(path)
>>> table["row"].tolist(), table["flag"].tolist(), table["z_vi"].tolist(), table["who"].tolist()
([2], [3], [0.31], ['ada'])
"""

from __future__ import annotations

import contextlib
import getpass
import math
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from os import PathLike
from typing import Any

import numpy as np
import zarr

from dzspec._version import __version__
from dzspec.errors import StoreError
from dzspec.io import store as zstore
from dzspec.results_schema import best_redshift_name

__all__ = [
    "VI_COLUMNS",
    "VI_FLAGS",
    "default_inspector",
    "inspection_flags",
    "inspection_of",
    "load_inspections",
    "save_inspection",
    "vi_path",
]

#: The quality flags (MARZ's QOP): value -> name. Stored as CF ``flag_values``/``flag_meanings`` of ``flag``.
VI_FLAGS: dict[int, str] = {0: "unset", 1: "no_redshift", 2: "possible", 3: "probable", 4: "certain", 6: "star"}

#: Columns of :func:`load_inspections`, in order.
VI_COLUMNS: tuple[str, ...] = ("group", "results", "row", "targetid", "flag", "z_vi", "z_override", "z_results",
                               "comment", "who", "when")

#: Rows per chunk of a vi group: one save rewrites one chunk of each array (a few kB compressed).
_CHUNK_ROWS = 4096
_STRINGS = ("comment", "who", "when")
_DESCRIPTIONS = {
    "flag": "visual-inspection quality (MARZ QOP): 4 certain, 3 probable, 2 possible, 1 no redshift, 0 no quality "
            "given, 6 star; -1: never inspected",
    "z_override": "redshift given by the inspector; NaN: the results' z is accepted",
    "z_results": "z of the results group when the inspection was saved",
    "comment": "the inspector's comment",
    "who": "name of the inspector",
    "when": "time of the save, ISO 8601 UTC",
}
#: How long a save waits for another inspector's save of the same vi group to finish.
_LOCK_WAIT_S = 10.0


def vi_path(results: str) -> str:
    """The vi group of a results group: ``vi/<grid>/<kernel>`` for ``results/<grid>/<kernel>``.

    Examples
    --------
    >>> vi_path("results/muse-4750-1.25/nmf_zfind")
    'vi/muse-4750-1.25/nmf_zfind'
    """
    name = results.strip("/").removeprefix("results/")
    if not name or name == "results":
        raise ValueError(f"not a results group path: {results!r}")
    return f"vi/{name}"


def default_inspector() -> str:
    """The login name of the user (the default ``who`` of an inspection), ``"unknown"`` when there is none."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in some containers
        return "unknown"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@contextlib.contextmanager
def _locked(store: str | PathLike[str], path: str) -> Iterator[None]:
    """Hold the store's lock file of ``path`` for one save, waiting a little for another inspector's save."""
    deadline = time.monotonic() + _LOCK_WAIT_S
    while True:
        try:
            with zstore.run_lock(store, path):
                yield
            return
        except StoreError as exc:
            if "being written by another run" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _results_group(root: zarr.Group, store: str | PathLike[str], results: str) -> zarr.Group:
    if results not in root or "targetid" not in root[results]:
        raise StoreError(f"{store}: no results group {results!r}")
    return root[results]


def _create_vi_group(root: zarr.Group, path: str, results: str, input_group: str,
                     targetid: np.ndarray) -> zarr.Group:
    n = int(targetid.size)
    rows = max(1, min(n, _CHUNK_ROWS))
    group = root.require_group(path)
    create = zstore.create_array  # the store's array factory: dims, compressors and JSON attrs as everywhere else
    create(group, "targetid", (n,), (rows,), "int64", -1, ("spectrum",))[:] = targetid
    create(group, "flag", (n,), (rows,), "int8", -1, ("spectrum",),
           {"description": _DESCRIPTIONS["flag"], "flag_values": list(VI_FLAGS),
            "flag_meanings": " ".join(VI_FLAGS.values()), "units": ""})
    for name in ("z_override", "z_results"):
        create(group, name, (n,), (rows,), "float64", np.nan, ("spectrum",),
               {"description": _DESCRIPTIONS[name], "units": "1"})
    for name in _STRINGS:
        # "str": zarr's variable-length UTF-8 strings (any length, any language)
        create(group, name, (n,), (rows,), "str", "", ("spectrum",), {"description": _DESCRIPTIONS[name]})
    for name in ("flag", "z_override", "z_results", *_STRINGS):
        group[name].attrs["coordinates"] = "targetid"
    group.attrs.update(zstore.jsonable({
        "results": results, "input_group": input_group, "dzspec_version": __version__,
        "description": "visual inspections of the redshifts of " + results + ": the latest per spectrum"}))
    return group


def save_inspection(store: str | PathLike[str], *, results: str, row: int, flag: int, z: float | None = None,
                    comment: str = "", who: str | None = None, group: str | None = None,
                    z_results: float | None = None, when: str | None = None) -> dict[str, Any]:
    """Record the inspection of one spectrum (it replaces that spectrum's earlier one).

    Parameters
    ----------
    store
        The store.
    results
        The results group whose fit was inspected (``results/<grid>/<kernel>``).
    row
        The spectrum's row (of the spectra group and of the results group).
    flag
        Quality, one of :data:`VI_FLAGS` (MARZ's QOP: 4 certain ... 1 no redshift, 0 none, 6 star).
    z
        The inspector's redshift; None or NaN: the results' z is accepted.
    comment
        Free text.
    who
        The inspector (default: the login name, :func:`default_inspector`).
    group
        The spectra group, checked against the results' ``input_group`` when given.
    z_results
        The results' z the inspector saw (default: read from the results group now).
    when
        ISO 8601 time of the inspection (default: now, UTC).

    Returns
    -------
    dict
        The saved record (the columns of :func:`load_inspections`).

    Raises
    ------
    ValueError
        An unknown flag, a row outside the group, a redshift that is not a number.
    StoreError
        No such results group, a spectra group that is not the results' input, or the store is locked by another
        save for longer than 10 s.
    """
    if int(flag) != flag or int(flag) not in VI_FLAGS:
        raise ValueError(f"flag must be one of {sorted(VI_FLAGS)} (MARZ QOP), not {flag!r}")
    z_override = math.nan if z is None else float(z)
    if math.isinf(z_override):
        raise ValueError(f"the redshift must be finite (or None), not {z!r}")
    results = results.strip("/")
    root = zstore.open_root(store, mode="r+")
    source = _results_group(root, store, results)
    input_group = str(source.attrs.get("input_group", ""))
    if group is not None and input_group:
        wanted = group if group.startswith("spectra/") else f"spectra/{group}"
        if wanted != input_group:
            raise StoreError(f"{store}/{results} was computed on {input_group}, not on {wanted}")
    n = int(source["targetid"].shape[0])
    if not 0 <= int(row) < n:
        raise ValueError(f"{store}/{results}: row {row} outside 0..{n - 1}")
    row = int(row)
    if z_results is None:
        best = best_redshift_name(name for name, _ in source.arrays())  # z_refined for NMF, as the export's Z
        z_results = float(source[best][row]) if best in source else math.nan
    record = {"flag": int(flag), "z_override": z_override, "z_results": float(z_results), "comment": str(comment),
              "who": who or default_inspector(), "when": when or _now()}
    path = vi_path(results)
    with _locked(store, path):
        if path in root and "flag" in root[path]:
            target = root[path]
            if target["flag"].shape[0] != n:
                raise StoreError(f"{store}/{path} has {target['flag'].shape[0]} rows, {results} {n}: the results "
                                 "were rewritten for other spectra; move the old inspections away")
        else:
            target = _create_vi_group(root, path, results, input_group, np.asarray(source["targetid"][:]))
        for name, value in record.items():
            target[name][row] = value
    targetid = int(target["targetid"][row])
    z_vi = z_override if math.isfinite(z_override) else float(z_results)
    return {"group": input_group, "results": results, "row": row, "targetid": targetid, **record, "z_vi": z_vi}


def _strings(array: zarr.Array, rows: np.ndarray) -> np.ndarray:
    # variable-length strings read as NumPy's StringDType, which does not cast to fixed-width unicode (what astropy
    # and FITS take) directly; through Python strings it does
    values = np.asarray(array[:])[rows]
    return np.array(values.tolist(), dtype=str) if values.size else np.zeros(0, "<U1")


def load_inspections(store: str | PathLike[str], group: str | None = None, *, results: str | None = None,
                     inspected_only: bool = True) -> dict[str, np.ndarray]:
    """The inspections of a store, as columns (``astropy.table.Table(load_inspections(store))`` makes a table).

    Parameters
    ----------
    store
        The store.
    group
        Only inspections of results computed on this spectra group (``<grid>`` or ``spectra/<grid>``).
    results
        Only those of this results group.
    inspected_only
        Rows ever saved (default); False gives every row of each vi group (``flag`` -1 where never inspected).

    Returns
    -------
    dict of numpy.ndarray
        :data:`VI_COLUMNS`: ``group`` and ``results`` (the spectra and results group of the inspection), ``row``,
        ``targetid``, ``flag``, ``z_vi`` (``z_override`` where given, else ``z_results``), ``z_override``,
        ``z_results``, ``comment``, ``who``, ``when``; sorted by results group, then row. Empty columns when the
        store has no inspections.
    """
    root = zstore.open_root(store)
    wanted_group = None if group is None else (group if group.startswith("spectra/") else f"spectra/{group}")
    wanted_path = None if results is None else vi_path(results)
    parts: list[dict[str, np.ndarray]] = []
    for path, vi in zstore.groups_holding(root, "vi", "flag"):
        if wanted_path is not None and path != wanted_path:
            continue
        input_group = str(vi.attrs.get("input_group", ""))
        if wanted_group is not None and input_group != wanted_group:
            continue
        flag = np.asarray(vi["flag"][:])
        rows = np.flatnonzero(flag >= 0) if inspected_only else np.arange(flag.size)
        part: dict[str, np.ndarray] = {
            "group": np.full(rows.size, input_group), "results": np.full(rows.size, str(vi.attrs["results"])),
            "row": rows.astype(np.int64), "targetid": np.asarray(vi["targetid"][:])[rows], "flag": flag[rows]}
        for name in ("z_override", "z_results"):
            part[name] = np.asarray(vi[name][:])[rows]
        part["z_vi"] = np.where(np.isfinite(part["z_override"]), part["z_override"], part["z_results"])
        for name in _STRINGS:
            part[name] = _strings(vi[name], rows)
        parts.append(part)
    if not parts:
        empty = {"group": "<U1", "results": "<U1", "row": "int64", "targetid": "int64", "flag": "int8",
                 "z_vi": "float64", "z_override": "float64", "z_results": "float64", "comment": "<U1", "who": "<U1",
                 "when": "<U1"}
        return {name: np.zeros(0, empty[name]) for name in VI_COLUMNS}
    return {name: np.concatenate([part[name] for part in parts]) for name in VI_COLUMNS}


def inspection_of(store: str | PathLike[str], results: str, row: int) -> dict[str, Any] | None:
    """The saved inspection of one row of a results group (the columns of :func:`load_inspections`), or None."""
    root = zstore.open_root(store)
    path = vi_path(results.strip("/"))
    if path not in root or "flag" not in root[path]:
        return None
    vi = root[path]
    row = int(row)
    if not 0 <= row < vi["flag"].shape[0] or int(vi["flag"][row]) < 0:
        return None
    record: dict[str, Any] = {"group": str(vi.attrs.get("input_group", "")), "results": str(vi.attrs["results"]),
                              "row": row, "targetid": int(vi["targetid"][row]), "flag": int(vi["flag"][row]),
                              "z_override": float(vi["z_override"][row]), "z_results": float(vi["z_results"][row])}
    record["z_vi"] = record["z_override"] if math.isfinite(record["z_override"]) else record["z_results"]
    record.update({name: str(vi[name][row]) for name in _STRINGS})
    return record


def inspection_flags(store: str | PathLike[str], results: str) -> np.ndarray:
    """The ``flag`` of every row of a results group (int8, -1: never inspected), without the text columns."""
    root = zstore.open_root(store)
    results = results.strip("/")
    path = vi_path(results)
    if path in root and "flag" in root[path]:
        return np.asarray(root[path]["flag"][:], dtype=np.int8)
    return np.full(int(_results_group(root, store, results)["targetid"].shape[0]), -1, np.int8)
