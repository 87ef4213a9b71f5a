"""Ingest many input files into one store, in parallel, idempotently.

1. **Probe** (parallel): hash each file; files whose SHA-256 the store already lists as done are skipped without
   being read; the others are read once to learn their reader, grid, size and coordinates (their warnings are
   collected and re-emitted here, naming file and rows). Unreadable files are reported, never fatal to the batch;
   files that hold no spectra are skipped with a :class:`~dzspec.errors.SkippedInputWarning`.
2. **Plan** (driver): each file's rows go to the end of the group of its wavelength grid, in sorted path order;
   files left ``pending`` by an interrupted ingest keep their rows. The manifest is written (status
   ``pending``) and the arrays are resized *before* any data is written.
3. **Write** (parallel): one task per store chunk, so no two tasks ever write the same chunk; a task reads the
   slices of the files that land in its chunk and writes them.
4. **Finish** (driver): files whose every chunk task succeeded become ``done``; duplicated targetids are flagged.

Re-running the same command, or adding new files, therefore never duplicates or loses a spectrum.
"""

from __future__ import annotations

import logging
import warnings
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from distributed import Client

from dzspec._version import __version__
from dzspec.errors import BadSpectrumWarning, DzspecWarning, InputError, SkippedInputWarning, UnknownFormatError
from dzspec.io import store as zstore
from dzspec.io.registry import identify_format, read_spectra
from dzspec.parallel.core import PerBlock, map_blocks, map_bounded
from dzspec.schema import IngestWarn, file_sha256, flag_attrs

__all__ = ["IngestReport", "expand_inputs", "ingest"]

log = logging.getLogger(__name__)

#: Reader options by reader name: ``{"desi": {"keep_resolution": True}}``.
ReaderOptions = Mapping[str, Mapping[str, Any]]


@dataclass
class IngestReport:
    """What an ingest did, per file."""

    store: str
    ingested: dict[str, int] = field(default_factory=dict)  # path -> spectra written
    skipped: dict[str, str] = field(default_factory=dict)  # path -> why (already in the store, duplicate, empty)
    failed: dict[str, str] = field(default_factory=dict)  # path -> error message (which names the path)
    groups: dict[str, int] = field(default_factory=dict)  # spectra group -> total spectra after ingest

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        lines = [
            f"{self.store}: {len(self.ingested)} files ingested ({sum(self.ingested.values())} spectra), "
            f"{len(self.skipped)} skipped, {len(self.failed)} failed"
        ]
        lines += [f"  {group}: {n} spectra" for group, n in sorted(self.groups.items())]
        lines += [f"  skipped {path}: {why}" for path, why in sorted(self.skipped.items())[:20]]
        lines += [f"  FAILED {error}" for _, error in sorted(self.failed.items())]  # errors name their file
        return "\n".join(lines)


def expand_inputs(inputs: Iterable[str | PathLike[str]]) -> list[Path]:
    """Files named or found (recursively, non-hidden files) under the given paths, sorted, without repeats."""
    found: set[Path] = set()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found.update(p.resolve() for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        else:
            found.add(path.resolve())  # a missing file is reported by the probe, not dropped here
    return sorted(found)


@dataclass
class _Probe:
    path: str
    sha256: str = ""
    reader: str = ""
    grid_name: str = ""
    nrows: int = 0
    template: xr.Dataset | None = None
    warnings: list[str] = field(default_factory=list)
    skipped: bool = False
    error: InputError | None = None


def _probe_file(path: str, fmt: str | None, options: ReaderOptions, done: frozenset[str]) -> _Probe:
    probe = _Probe(path, sha256=file_sha256(path) if Path(path).is_file() else "")
    if probe.sha256 in done:
        probe.skipped = True
        return probe
    # A bad file is an expected outcome, returned as data: raising would make every worker log a traceback.
    try:
        reader = fmt or identify_format(path)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DzspecWarning)
            ds = read_spectra(path, reader, **options.get(reader, {}))
    except InputError as exc:
        probe.error = exc
        return probe
    probe.warnings = [str(w.message) for w in caught if issubclass(w.category, DzspecWarning)]
    probe.reader = reader
    probe.grid_name = ds.attrs["grid_name"]
    probe.nrows = ds.sizes["spectrum"]
    if probe.nrows:  # a file without spectra has no template; the driver skips it
        probe.template = ds.isel(spectrum=slice(0, 1)).copy(deep=True)
    return probe


def _write_chunk(block: int, start: int, stop: int, store: str, group: str,
                 pieces: list[tuple[str, str, int, int, int, int]], options: ReaderOptions) -> int:
    """Write the pieces ``(path, reader, code, file_lo, file_hi, dest_lo)`` that make up one store chunk (rows
    ``start:stop`` of the group; a block of the write stage)."""
    target = zstore.open_root(store, mode="r+")[group]
    cache: dict[str, xr.Dataset] = {}
    written = 0
    for path, reader, code, lo, hi, dest in pieces:
        if path not in cache:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DzspecWarning)  # already reported by the probe
                cache[path] = read_spectra(path, reader, **options.get(reader, {}))
        part = cache[path].isel(spectrum=slice(lo, hi))
        part = part.assign_coords(source_file=("spectrum", np.full(hi - lo, code, np.int32)))
        zstore.write_rows(target, part, dest)
        written += hi - lo
    return written


def _chunk_tasks(entries: list[dict[str, Any]], codes: dict[str, int], chunk_rows: int):
    """Split the rows of the entries to write into per-chunk lists of pieces."""
    by_chunk: dict[int, list[tuple[str, str, int, int, int, int]]] = defaultdict(list)
    for entry in entries:
        start, n = entry["row_start"], entry["nrows"]
        lo = 0
        while lo < n:
            chunk = (start + lo) // chunk_rows
            hi = min(n, (chunk + 1) * chunk_rows - start)
            by_chunk[chunk].append((entry["path"], entry["reader"], codes[entry["sha256"]], lo, hi, start + lo))
            lo = hi
    return by_chunk


def ingest(
    inputs: Iterable[str | PathLike[str]],
    store: str | PathLike[str],
    client: Client,
    *,
    format: str | None = None,
    options: ReaderOptions | None = None,
    chunk_rows: int | None = None,
    chunk_bytes: int = zstore.DEFAULT_CHUNK_BYTES,
    skip_unknown: bool = False,
    progress: bool | None = True,
) -> IngestReport:
    """Ingest files (or directories of files) into a store, one spectra group per wavelength grid.

    Parameters
    ----------
    inputs
        Files or directories (searched recursively).
    store
        The Zarr store (created if missing).
    client
        A Dask client; reading and writing run on its workers.
    format
        A reader name for every file (default: detected per file from its content).
    options
        Reader options by reader name, each applied only to the files that reader reads
        (e.g. ``{"desi": {"keep_resolution": True}, "muse_cube": {"radius": 2.0}}``).
    chunk_rows, chunk_bytes
        Spectra per chunk of a *new* group (default: from the byte budget, see
        :func:`dzspec.io.store.chunk_rows_for`).
    skip_unknown
        Report files that no reader recognises as skipped instead of failed.
    progress
        Show progress bars.

    Returns
    -------
    IngestReport
        Per-file outcome; ``report.ok`` is False if any file failed (the others are ingested regardless).
    """
    options = {name: dict(values) for name, values in (options or {}).items()}
    store = str(Path(store).resolve())
    report = IngestReport(store)
    paths = [str(p) for p in expand_inputs(inputs)]
    root = zstore.open_root(store, mode="a")
    done: dict[str, str] = {}
    for group_path in zstore.spectra_groups(root):
        for entry in zstore.manifest_of(root[group_path]):
            if entry["status"] == "done":
                done[entry["sha256"]] = entry["path"]

    log.info("probing %d files", len(paths))
    probes: list[_Probe] = []
    tasks = ((i, (path, format, options, frozenset(done))) for i, path in enumerate(paths))
    for index, probe, error in map_bounded(client, _probe_file, tasks, desc="probe", total=len(paths),
                                           progress=progress):
        error = error or probe.error
        if skip_unknown and isinstance(error, UnknownFormatError):
            report.skipped[paths[index]] = "no reader recognises it"
        elif error is not None:
            report.failed[paths[index]] = str(error) if isinstance(error, InputError) else (
                f"{paths[index]}: {type(error).__name__}: {error}")
        elif probe.skipped:
            report.skipped[probe.path] = f"already in the store (same SHA-256 as {done[probe.sha256]})"
        elif probe.nrows == 0:
            report.skipped[probe.path] = f"holds no spectra ({probe.reader} reader: 0 rows)"
            warnings.warn(SkippedInputWarning(f"{probe.path}: holds no spectra ({probe.reader} reader: 0 rows); "
                                              "skipped, the other files are ingested"), stacklevel=2)
        else:
            probes.append(probe)
    for probe in sorted(probes, key=lambda p: p.path):
        for message in probe.warnings:
            warnings.warn(BadSpectrumWarning(message), stacklevel=2)

    by_group: dict[str, list[_Probe]] = defaultdict(list)
    seen: dict[str, str] = {}
    for probe in sorted(probes, key=lambda p: p.path):
        if probe.sha256 in seen:
            report.skipped[probe.path] = f"same content (SHA-256) as {seen[probe.sha256]} in this batch"
            continue
        seen[probe.sha256] = probe.path
        by_group[f"spectra/{probe.grid_name}"].append(probe)

    for group_path, members in by_group.items():
        _ingest_group(client, root, store, group_path, members, report, options, chunk_rows, chunk_bytes,
                      progress)
    for group_path in zstore.spectra_groups(root):
        report.groups[group_path] = int(root[group_path]["flux"].shape[0])
    return report


def _ingest_group(client: Client, root: Any, store: str, group_path: str, members: list[_Probe],
                  report: IngestReport, options: ReaderOptions, chunk_rows: int | None, chunk_bytes: int,
                  progress: bool) -> None:
    first = members[0].template
    assert first is not None
    if group_path in root:
        group = root[group_path]
        stored_wave = group["wavelength"][:]
        for probe in list(members):
            wave = probe.template["wavelength"].values if probe.template is not None else None
            if wave is None or not np.array_equal(wave, stored_wave):
                report.failed[probe.path] = (f"{probe.path}: its wavelength grid is named {probe.grid_name!r} but "
                                             f"differs from the grid stored in {group_path}; not resampled")
                members.remove(probe)
        if not members:
            return
    else:
        group = zstore.create_spectra_group(root, first, chunk_rows=chunk_rows, budget_bytes=chunk_bytes)

    manifest = zstore.manifest_of(group)
    index_of = {entry["sha256"]: i for i, entry in enumerate(manifest)}
    nrows = max((e["row_start"] + e["nrows"] for e in manifest), default=0)
    to_write: list[dict[str, Any]] = []
    for probe in members:
        if probe.sha256 in index_of:  # left pending by an interrupted ingest: same rows again
            entry = manifest[index_of[probe.sha256]]
            if entry["nrows"] != probe.nrows:
                report.failed[probe.path] = (f"{probe.path}: the manifest of {group_path} reserved {entry['nrows']} "
                                             f"rows for this file but it now holds {probe.nrows} spectra")
                continue
            entry["path"] = probe.path
        else:
            attrs = probe.template.attrs
            entry = {"sha256": probe.sha256, "path": probe.path, "reader": probe.reader, "row_start": nrows,
                     "nrows": probe.nrows, "status": "pending", "medium_original": attrs.get("medium_original"),
                     "flux_scale_applied": attrs.get("flux_scale_applied"), "dzspec_version": __version__}
            index_of[probe.sha256] = len(manifest)
            manifest.append(entry)
            nrows += probe.nrows
        to_write.append(entry)
    pending_elsewhere = [e["path"] for e in manifest if e["status"] == "pending" and e not in to_write]
    if pending_elsewhere:
        log.warning("%s: %d files of an interrupted ingest are still pending (e.g. %s); pass them again",
                    group_path, len(pending_elsewhere), pending_elsewhere[0])

    for probe in members:
        template = probe.template.assign_coords(source_file=("spectrum", np.zeros(1, np.int32)))
        zstore.ensure_spectrum_arrays(group, template)
    group["source_file"].attrs["description"] = "index into the manifest attribute of this group"
    group["ingest_warn"].attrs.update(flag_attrs(IngestWarn))  # groups written before a bit was added learn it
    # Manifest and sizes first: if we die while writing, the rerun finds the same rows reserved.
    zstore.set_manifest(group, manifest)
    zstore.resize_spectra_group(group, nrows)

    codes = {entry["sha256"]: index_of[entry["sha256"]] for entry in to_write}
    chunks = _chunk_tasks(to_write, codes, int(group.attrs["chunk_rows"]))
    order = sorted(chunks)  # one block per store chunk: no two writers ever share a chunk
    rows = int(group.attrs["chunk_rows"])
    stage = map_blocks(client, _write_chunk, [(c * rows, (c + 1) * rows) for c in order],
                       args=(store, group_path, PerBlock(chunks[c] for c in order), options), retries=1,
                       name=f"write {group_path}", describe=lambda block, error: f"{type(error).__name__}: {error}",
                       progress=progress)
    failed_chunks = {order[block]: text for block, text in stage.failed.items()}
    bad_files = {piece[0]: failed_chunks[c] for c, pieces in chunks.items() if c in failed_chunks for piece in pieces}
    for entry in to_write:
        if entry["path"] in bad_files:
            report.failed[entry["path"]] = f"{entry['path']}: writing failed ({bad_files[entry['path']]}); rerun"
        else:
            entry["status"] = "done"
            report.ingested[entry["path"]] = entry["nrows"]
    zstore.set_manifest(group, manifest)
    zstore.flag_duplicate_targetids(group, store)

