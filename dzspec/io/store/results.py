"""Results groups: the block plan, pre-sized output arrays, per-block done flags and failed rows.

A results group ``results/<grid>/<kernel>`` has the spectrum dimension and chunks of the block plan::

    <outputs> (spectrum, ...)   targetid (spectrum)   run_status (spectrum): not_run | ok | failed
    block_done (block,) bool, chunk 1, written last   attrs: plan, status, failed_blocks (block -> error)

Each block writes whole chunks (:func:`write_block`) and then sets its own flag (:func:`mark_block_done`); a rerun
finds the flags (:func:`done_blocks`) and redoes only the blocks that are not done.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from os import PathLike
from typing import Any

import numpy as np
import xarray as xr
import zarr

from dzspec._version import __version__
from dzspec.errors import StoreError
from dzspec.io.store.spectra import create_array, groups_holding, jsonable, open_root
from dzspec.results_schema import CANDIDATE_DIM, FIELDS, REDSHIFT_DIM, ZNote, output_specs, upgrade_names
from dzspec.schema import RUN_STATUS, flag_attrs

__all__ = [
    "BlockPlan",
    "create_block_flags",
    "create_results_group",
    "done_blocks",
    "mark_block_done",
    "mark_rows_failed",
    "open_results",
    "results_groups",
    "upgrade_results",
    "write_block",
]


@dataclass(frozen=True)
class BlockPlan:
    """A partition of ``nspectrum`` rows into blocks of ``block_rows`` (the last may be shorter).

    Examples
    --------
    >>> plan = BlockPlan(10, 4)
    >>> plan.nblocks, plan.bounds(2)
    (3, (8, 10))
    """

    nspectrum: int
    block_rows: int

    def __post_init__(self) -> None:
        if self.block_rows < 1:
            raise ValueError(f"block_rows must be >= 1, got {self.block_rows}")

    @property
    def nblocks(self) -> int:
        return max(1, math.ceil(self.nspectrum / self.block_rows)) if self.nspectrum else 0

    def bounds(self, block: int) -> tuple[int, int]:
        start = block * self.block_rows
        return start, min(start + self.block_rows, self.nspectrum)

    @property
    def blocks(self) -> list[tuple[int, int]]:
        """The ``(start, stop)`` rows of every block, as the execution core's stages take them."""
        return [self.bounds(block) for block in range(self.nblocks)]

    def as_dict(self) -> dict[str, int]:
        return {"nspectrum": self.nspectrum, "block_rows": self.block_rows, "nblocks": self.nblocks}



def results_groups(root: zarr.Group) -> list[tuple[str, zarr.Group]]:
    """``(path, group)`` of every results group (a group holding ``block_done``) under ``results/``."""
    return groups_holding(root, "results", "block_done")




def open_results(path: str | PathLike[str], results: str) -> xr.Dataset:
    """Open a results group (``results/<grid>/<kernel>``) lazily as an xarray Dataset, in today's vocabulary.

    Results written before :mod:`dzspec.results_schema` open under its names: renamed variables and dimensions
    (:func:`~dzspec.results_schema.upgrade_names`), the LAE scan's ``z_coarse`` + ``z_alt`` as ``candidate_z`` (and
    their Δχ² as ``candidate_lae_dchi2``), and the NMF ``zwarn`` bit 12 as ``znote`` NEGATIVE_MEDIAN_FLUX.
    """
    open_root(path)
    ds = xr.open_zarr(str(path), group=results, consolidated=False)
    return upgrade_results(ds, str(ds.attrs.get("kernel", results.rstrip("/").split("/")[-1])))


def upgrade_results(ds: xr.Dataset, engine: str) -> xr.Dataset:
    """``ds`` (results of ``engine``) in today's vocabulary; unchanged when it already is (lazy, nothing computed)."""
    variables, dims = upgrade_names(engine, ds.data_vars)
    ds = ds.rename_dims(dims).rename_vars(variables) if variables else ds
    if engine == "madgics_lae" and "candidate_z" not in ds and {"z_coarse", "z_alt"} <= set(ds.data_vars):
        for new, first, rest in (("candidate_z", "z_coarse", "z_alt"),
                                 ("candidate_lae_dchi2", "lae_dchi2_coarse", "lae_dchi2_alt")):
            stacked = xr.concat([ds[first].expand_dims(alternative=1), ds[rest]], dim="alternative")
            ds[new] = stacked.transpose("spectrum", "alternative").rename(alternative=CANDIDATE_DIM)
            ds[new].attrs = FIELDS[new].attrs()
        ds = ds.drop_vars(["z_coarse", "z_alt", "lae_dchi2_coarse", "lae_dchi2_alt"])
        ds["deltachi2"] = ds["candidate_lae_dchi2"][:, 1] - ds["candidate_lae_dchi2"][:, 0]
        ds["deltachi2"].attrs = FIELDS["deltachi2"].attrs()
    if engine == "nmf_zfind" and "zchi2" in ds and REDSHIFT_DIM not in ds.coords and "trial_z" in ds.zchi2.attrs:
        ds = ds.assign_coords({REDSHIFT_DIM: np.asarray(ds.zchi2.attrs["trial_z"], dtype=np.float64)})  # pre-coordinate
    if engine == "nmf_zfind" and "zwarn" in ds and "znote" not in ds:  # bit 12 was NEGATIVE_MEDIAN_FLUX
        old_bit = np.uint32(1 << 12)
        ds["znote"] = xr.where((ds["zwarn"] & old_bit) != 0, np.uint32(ZNote.NEGATIVE_MEDIAN_FLUX), np.uint32(0))
        ds["znote"].attrs = FIELDS["znote"].attrs()
        attrs = ds["zwarn"].attrs
        ds["zwarn"] = ds["zwarn"] & ~old_bit
        ds["zwarn"].attrs = {**attrs, **output_specs(engine, ["zwarn"])["zwarn"].attrs}
    return ds




def create_results_group(
    root: zarr.Group,
    path: str,
    plan: BlockPlan,
    outputs: Mapping[str, Any],
    attrs: Mapping[str, Any],
    targetid: np.ndarray,
) -> zarr.Group:
    """Create a pre-sized results group: one array per output, ``targetid``, ``run_status`` (all not_run) and
    ``block_done`` (all False). Every input row has its output row from the start.

    ``outputs`` maps names to :class:`dzspec.kernels.base.OutputSpec`. Output chunks equal the plan's block, so
    each block's region write covers whole chunks and no two tasks ever touch one chunk.
    """
    group = root.create_group(path, overwrite=True)
    n = plan.nspectrum
    rows = max(1, min(plan.block_rows, max(n, 1)))
    for name, spec in outputs.items():
        create_array(group, name, (n, *spec.sizes), (rows, *spec.sizes), spec.dtype, spec.fill,
                ("spectrum", *spec.dims), spec.attrs)
    for spec in outputs.values():
        for dim, values in getattr(spec, "coords", {}).items():
            if dim not in group:  # the dimension's coordinate, once per group (xarray reads it as the index)
                values = np.asarray(values, dtype=np.float64)
                create_array(group, dim, values.shape, values.shape, "float64", np.nan, (dim,))[...] = values
    tid = create_array(group, "targetid", (n,), (rows,), "int64", -1, ("spectrum",))
    tid[:] = targetid
    create_array(group, "run_status", (n,), (rows,), "uint8", 0, ("spectrum",),
            {**flag_attrs(RUN_STATUS), "description": "whether the spectrum's outputs were computed; failed: "
             "its block failed (the group's failed_blocks attribute gives the error), run again with --resume"})
    create_block_flags(group, plan.nblocks)
    for name in (*outputs, "run_status"):
        group[name].attrs["coordinates"] = "targetid"
    group.attrs.update(jsonable({**attrs, "plan": plan.as_dict(), "status": "running",
                                  "dzspec_version": __version__}))
    return group


def create_block_flags(group: zarr.Group, nblocks: int) -> zarr.Array:
    """The ``block_done`` array of a group: bool, all False, chunk 1 and never sharded, so that setting one
    flag rewrites one tiny object and no two tasks ever share one."""
    return create_array(group, "block_done", (nblocks,), (1,), "bool", False, ("block",),
                   {"description": "True once the block's outputs are completely written"})


def write_block(group: zarr.Group, start: int, values: Mapping[str, np.ndarray]) -> None:
    """Write one block's outputs (whole chunks) into a results group."""
    for name, array in values.items():
        target = group[name]
        stop = start + array.shape[0]
        if array.shape[1:] != target.shape[1:]:
            raise StoreError(f"{group.path}/{name}: block of shape {array.shape} for array {target.shape}")
        target[start:stop] = array.astype(target.dtype, copy=False)


def mark_block_done(group: zarr.Group, block: int, rows: tuple[int, int] | None = None) -> None:
    """Set a block's done flag; called only after every output of the block is written. With ``rows``, the
    block's ``run_status`` becomes ok first."""
    if rows is not None:
        group["run_status"][rows[0]:rows[1]] = RUN_STATUS.index("ok")
    group["block_done"][block] = True


def mark_rows_failed(group: zarr.Group, rows: tuple[int, int]) -> None:
    """Flag rows whose block failed (``run_status`` failed); their block stays not-done, so a resume retries it."""
    group["run_status"][rows[0]:rows[1]] = RUN_STATUS.index("failed")


def done_blocks(group: zarr.Group) -> np.ndarray:
    """Boolean done flags of all blocks."""
    return np.asarray(group["block_done"][:], dtype=bool)
