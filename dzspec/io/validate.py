"""``dzspec validate``: report what is wrong in a store and where (group, variable, rows), without changing it."""

from __future__ import annotations

from dataclasses import dataclass
from os import PathLike
from typing import Any

import numpy as np
import zarr

from dzspec.errors import StoreError
from dzspec.io import store as zstore
from dzspec.schema import RUN_STATUS, SPECTRUM_COORDS, IngestWarn, SpecMask, duplicated_targetid_rows

__all__ = ["Problem", "validate_store"]

_REQUIRED_PIXEL = {"flux": "float32", "ivar": "float32", "mask": "uint32"}


@dataclass(frozen=True)
class Problem:
    """One finding: where (``group/variable``, optional rows) and what."""

    where: str
    message: str
    severity: str = "error"  # or "warning": data kept but flagged (e.g. empty spectra)

    def __str__(self) -> str:
        return f"{self.severity.upper()}: {self.where}: {self.message}"


def _rows(rows: np.ndarray, offset: int) -> str:
    shown = ", ".join(str(int(r) + offset) for r in rows[:5])
    return f"rows {shown}" + (f" ... ({rows.size} in all)" if rows.size > 5 else "")


def validate_store(path: str | PathLike[str], *, check_values: bool = True) -> list[Problem]:
    """Check a store against the dzspec schema; an empty list means valid.

    Parameters
    ----------
    path
        The store.
    check_values
        Also scan the pixel values chunk by chunk (memory: one chunk); False checks only structure.

    Examples
    --------
    >>> import tempfile
    >>> from dzspec.testing import write_synthetic_store
    >>> validate_store(write_synthetic_store(tempfile.mkdtemp() + "/s.zarr", nspectrum=6, nwave=20))
    []
    """
    try:
        root = zstore.open_root(path)
    except StoreError as exc:
        return [Problem(str(path), str(exc))]
    problems: list[Problem] = []
    groups = zstore.spectra_groups(root)
    if not groups:
        problems.append(Problem(str(path), "no spectra groups", "warning"))
    for group_path in groups:
        problems += _check_spectra_group(root[group_path], group_path, check_values)
    for group_path, group in zstore.results_groups(root):
        problems += _check_results_group(group, group_path)
    return problems


def _check_spectra_group(group: zarr.Group, where: str, check_values: bool) -> list[Problem]:
    problems: list[Problem] = []
    missing = [n for n in ("wavelength", *_REQUIRED_PIXEL, *SPECTRUM_COORDS) if n not in group]
    if missing:
        return [Problem(where, f"missing arrays {missing}")]
    wave = group["wavelength"][:]
    if group["wavelength"].dtype != np.float64:
        problems.append(Problem(f"{where}/wavelength", f"dtype {group['wavelength'].dtype}, expected float64"))
    if not np.all(np.isfinite(wave)) or np.any(np.diff(wave) <= 0):
        problems.append(Problem(f"{where}/wavelength", "not finite and strictly increasing"))
    nwave, nspec = wave.size, group["flux"].shape[0]
    for name, array in group.arrays():
        dims = tuple(array.metadata.dimension_names or ())
        if not dims or dims[0] != "spectrum":
            continue
        if array.shape[0] != nspec:
            problems.append(Problem(f"{where}/{name}", f"{array.shape[0]} rows but flux has {nspec}"))
        if array.chunks[1:] != array.shape[1:]:
            problems.append(Problem(f"{where}/{name}", f"chunked along {dims[1:]}; only spectrum may be chunked"))
    for name, dtype in _REQUIRED_PIXEL.items():
        array = group[name]
        if array.dtype != np.dtype(dtype):
            problems.append(Problem(f"{where}/{name}", f"dtype {array.dtype}, expected {dtype}"))
        if array.shape != (nspec, nwave):
            problems.append(Problem(f"{where}/{name}", f"shape {array.shape}, expected {(nspec, nwave)}"))
    if group.attrs.get("medium") != "vacuum":
        problems.append(Problem(where, f"medium attribute is {group.attrs.get('medium')!r}, expected 'vacuum'"))
    problems += _check_manifest(group, where, nspec)
    if problems or not check_values:
        return problems
    return _check_values(group, where, nspec)


def _check_manifest(group: zarr.Group, where: str, nspec: int) -> list[Problem]:
    problems = []
    covered = np.zeros(nspec, np.int32)
    for entry in zstore.manifest_of(group):
        lo, hi = entry["row_start"], entry["row_start"] + entry["nrows"]
        covered[lo:hi] += 1
        if entry["status"] != "done":
            problems.append(Problem(f"{where} rows {lo}:{hi}", f"{entry['path']} is {entry['status']} (interrupted "
                                    "ingest): ingest it again"))
    if (covered != 1).any():
        bad = np.flatnonzero(covered != 1)
        problems.append(Problem(where, f"{_rows(bad, 0)} belong to {covered[bad[0]]} manifest entries, expected 1"))
    return problems


def _check_values(group: zarr.Group, where: str, nspec: int) -> list[Problem]:
    problems: list[Problem] = []
    step = int(group.attrs.get("chunk_rows", 1024))
    empty_rows: list[np.ndarray] = []
    for start in range(0, nspec, step):
        stop = min(nspec, start + step)
        flux, ivar, mask = (group[n][start:stop] for n in ("flux", "ivar", "mask"))
        checks = [
            ("ivar", ~np.isfinite(ivar) | (ivar < 0), "ivar negative or not finite"),
            ("flux", (ivar > 0) & ~np.isfinite(flux), "flux not finite where ivar > 0"),
            ("mask", (ivar == 0) & ((mask & SpecMask.NODATA) == 0), "ivar == 0 without the NODATA mask bit"),
        ]
        for name, bad, message in checks:
            rows = np.flatnonzero(bad.any(axis=1))
            if rows.size:
                problems.append(Problem(f"{where}/{name} {_rows(rows, start)}", message))
        empty = np.flatnonzero(~(ivar > 0).any(axis=1))
        flagged = group["ingest_warn"][start:stop][empty] & IngestWarn.EMPTY
        if (flagged == 0).any():
            problems.append(Problem(f"{where}/ingest_warn {_rows(empty[flagged == 0], start)}",
                                    "spectra without data not flagged EMPTY"))
        empty_rows.append(empty + start)
    empty = np.concatenate(empty_rows) if empty_rows else np.zeros(0, int)
    if empty.size:
        problems.append(Problem(f"{where} {_rows(empty, 0)}", "spectra without any data (kept, flagged EMPTY)",
                                "warning"))
    duplicated = duplicated_targetid_rows(group["targetid"][:])
    if duplicated.size:
        unflagged = duplicated[(group["ingest_warn"][:][duplicated] & IngestWarn.DUPLICATE_TARGETID) == 0]
        if unflagged.size:
            problems.append(Problem(f"{where}/targetid {_rows(unflagged, 0)}", "duplicated but not flagged"))
        problems.append(Problem(f"{where}/targetid", f"{duplicated.size} spectra share a targetid", "warning"))
    return problems


def _check_results_group(group: zarr.Group, where: str) -> list[Problem]:
    plan: dict[str, Any] = dict(group.attrs.get("plan", {}))
    done = zstore.done_blocks(group)
    problems = []
    if plan.get("nblocks") != done.size:
        problems.append(Problem(where, f"block_done has {done.size} flags, plan says {plan.get('nblocks')}"))
    if not done.all():
        problems.append(Problem(f"{where}/block_done", f"{int((~done).sum())} of {done.size} blocks unfinished "
                                f"(first: {int(np.flatnonzero(~done)[0])}); run again with --resume"))
    failed = np.flatnonzero(group["run_status"][:] == RUN_STATUS.index("failed")) if "run_status" in group else []
    if len(failed):
        errors = dict(group.attrs.get("failed_blocks", {}))
        first = next(iter(errors.values()), "no error recorded")
        problems.append(Problem(f"{where}/run_status {_rows(failed, 0)}",
                                f"{len(failed)} spectra in failed blocks (first: {first}); run again with --resume"))
    return problems
