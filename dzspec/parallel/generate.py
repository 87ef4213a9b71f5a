"""Generate simulated spectra straight into a store, block by block on a Dask cluster, resumably.

A simulation run is an input like any file: it gets a manifest entry in the spectra group of its wavelength grid
(identity: survey, seed, size and the configuration hash), its rows are reserved before anything is written, and
each block (one store chunk, or the part of a chunk the run owns) is generated and written by one task, then its
flag in ``progress/<run>/block_done`` is set. Re-running the same command resumes; a different configuration
is a different run. Spectrum ``i`` of a run depends only on (seed, survey, i), so the output is identical
whatever the chunking or the number of workers.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import time
import warnings
from dataclasses import asdict, dataclass, is_dataclass
from functools import lru_cache
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from distributed import Client

from dzspec._version import __version__
from dzspec.errors import DzspecWarning, StoreError
from dzspec.io import store as zstore
from dzspec.kernels.simulate.common import SimulatedBlock
from dzspec.parallel.core import RunReport, map_blocks, peak_rss_bytes
from dzspec.schema import INSTRUMENTS, SURVEYS, IngestWarn, code_of, flag_attrs, make_spectra_dataset

__all__ = ["GenerateReport", "generate_to_store", "run_id"]

log = logging.getLogger(__name__)


@dataclass
class GenerateReport(RunReport):
    """What a simulation run did: the block-map report plus the run's id, size and exposures group."""

    run: str = ""
    nspectrum: int = 0
    exposures_group: str | None = None

    @property
    def group(self) -> str:
        return self.results

    def summary(self) -> str:
        rate = self.nspectrum * self.computed / max(self.nblocks, 1) / max(self.seconds, 1e-9)
        text = (f"{self.group}: run {self.run}: {self.nspectrum} spectra in {self.nblocks} blocks, "
                f"{self.already_done} already done, {self.computed} generated, {len(self.failed)} failed in "
                f"{self.seconds:.1f} s ({rate:.0f} spectra/s); peak worker RSS "
                f"{self.peak_worker_rss_bytes / 2**20:.0f} MiB")
        if self.exposures_group:
            text += f"; exposures in {self.exposures_group}"
        for block, error in sorted(self.failed.items())[:10]:
            text += f"\n  block {block}: {error}"
        return text


def _config_dict(config: Any) -> dict[str, Any]:
    return asdict(config) if is_dataclass(config) else dict(config or {})


def run_id(survey: str, seed: int, nspectrum: int, config: Any, ingredients: Any = ()) -> str:
    """Identity of a simulation run: survey, seed, size, configuration and ingredient files (16 hex digits).

    Examples
    --------
    >>> run_id("muse", 1, 10, {}) == run_id("muse", 1, 10, {})
    True
    >>> run_id("muse", 1, 10, {}) != run_id("muse", 2, 10, {})
    True
    """
    payload = json.dumps({"survey": survey, "seed": seed, "n": nspectrum, "config": _config_dict(config),
                          "ingredients": ingredients}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _block_dataset(block: SimulatedBlock, targetid: np.ndarray, survey: str, grid_name: str,
                   source: str) -> xr.Dataset:
    truth = {name: np.asarray(values) for name, values in block.truth.items()}
    n = block.flux.shape[0]
    coords = {"targetid": targetid, "survey": np.full(n, code_of(survey, SURVEYS), np.int8),
              "instrument": np.full(n, code_of(survey, INSTRUMENTS), np.int8), **truth}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DzspecWarning)  # flags stay in the data (ingest_warn, mask)
        return make_spectra_dataset(block.wavelength, block.flux, block.ivar, mask=block.mask, source_file=source,
                                    reader=f"simulate-{survey}", grid_name=grid_name, coords=coords)


@lru_cache(maxsize=4)
def _ingredients(loader: Any, paths: tuple[tuple[str, str], ...]) -> Any:
    # Loaded once per worker process and reused by every block: large inputs never travel with tasks.
    return None if loader is None else loader(**dict(paths))


def _targetids(run: str, rows: np.ndarray) -> np.ndarray:
    # Unique per run and row, positive int64: 24 bits of the run id above 32 bits of row number.
    return (np.int64(int(run[:6], 16)) << np.int64(32)) + rows.astype(np.int64)


def _generate_block(block: int, start: int, stop: int, store: str, group: str, exposures_group: str | None,
                    run: str, spec: Any, seed: int, config: Any, paths: tuple[tuple[str, str], ...], code: int,
                    run_start: int, nexp: int) -> int:
    root = zstore.open_root(store, mode="r+")
    rows = np.arange(start - run_start, stop - run_start)
    simulated = spec.simulate(rows, seed, config, _ingredients(spec.load_ingredients, paths))
    targetid = _targetids(run, rows)
    source = f"<simulate {spec.survey} run {run}>"
    target = _block_dataset(simulated, targetid, spec.survey, spec.grid_name, source)
    coords = {"source_file": ("spectrum", np.full(rows.size, code, np.int32)),
              "source_row": ("spectrum", rows.astype(np.int32))}
    if exposures_group is not None:
        exposures = simulated.exposures
        if exposures is None or exposures.flux.shape[0] != rows.size * nexp:
            raise ValueError(f"simulator returned no exposures or not {nexp} per target")
        coords["exposure_row0"] = ("spectrum", (rows * nexp).astype(np.int64))
        exp_ds = _block_dataset(exposures, np.repeat(targetid, nexp), spec.survey, spec.grid_name, source)
        # Exposures of one target share its targetid, flagged as ingest flags duplicates (per-exposure DESI files).
        flags = exp_ds["ingest_warn"].values | np.uint32(IngestWarn.DUPLICATE_TARGETID) if nexp > 1 else (
            exp_ds["ingest_warn"].values)
        exp_ds = exp_ds.assign_coords(source_row=("spectrum", np.repeat(rows, nexp).astype(np.int32)),
                                      source_file=("spectrum", np.zeros(rows.size * nexp, np.int32)),
                                      ingest_warn=("spectrum", flags))
        zstore.write_rows(root[exposures_group], exp_ds, int(rows[0] * nexp))
    zstore.write_rows(root[group], target.assign_coords(**coords), start)
    zstore.mark_block_done(root[f"progress/{run}"], block)
    return peak_rss_bytes()


def generate_to_store(
    store: str | PathLike[str],
    spec: Any,
    nspectrum: int,
    client: Client,
    *,
    seed: int = 0,
    config: Any = None,
    ingredient_paths: dict[str, str] | None = None,
    chunk_rows: int | None = None,
    max_in_flight: int | None = None,
    retries: int = 1,
    progress: bool | None = True,
) -> GenerateReport:
    """Simulate ``nspectrum`` spectra with ``spec`` (a :class:`dzspec.simulate.SimulatorSpec`) into ``store``.

    The spectra go to ``spectra/<grid>`` (shared with real spectra on the same grid), per-exposure spectra, if
    the simulator makes more than one per target, to ``spectra/<grid>-exposures-<run>``. Re-running the same call
    resumes an interrupted run and does nothing for a finished one.
    """
    config = spec.default_config() if config is None else config
    store = str(Path(store).resolve())
    paths = tuple(sorted((ingredient_paths or {}).items()))
    run = run_id(spec.survey, seed, nspectrum, config, paths)
    t0 = time.perf_counter()
    root = zstore.open_root(store, mode="a")
    # One row simulated here gives the template (grid, truth columns, exposures) without guessing.
    probe = spec.simulate(np.arange(1), seed, config, _ingredients(spec.load_ingredients, paths))
    template = _block_dataset(probe, _targetids(run, np.arange(1)), spec.survey, spec.grid_name, "<probe>")
    template = template.assign_coords(source_file=("spectrum", np.zeros(1, np.int32)))
    # One exposure per target is the coadd itself: a copy of it would double the store for nothing.
    nexp = 0 if probe.exposures is None or probe.exposures.flux.shape[0] == 1 else probe.exposures.flux.shape[0]
    if nexp:
        template = template.assign_coords(exposure_row0=("spectrum", np.zeros(1, np.int64)))
    group_path = f"spectra/{spec.grid_name}"
    if group_path in root:
        group = root[group_path]
        if not np.array_equal(group["wavelength"][:], probe.wavelength):
            raise StoreError(f"{store}/{group_path}: stored wavelengths differ from the {spec.survey} simulator's")
    else:
        group = zstore.create_spectra_group(root, template, chunk_rows=chunk_rows)
    zstore.ensure_spectrum_arrays(group, template)
    group["sim_class"].attrs.update(flag_attrs(tuple(spec.classes)))
    if spec.flags is not None and "sim_flags" in group:
        group["sim_flags"].attrs.update(flag_attrs(spec.flags))

    manifest = zstore.manifest_of(group)
    code = next((i for i, e in enumerate(manifest) if e["sha256"] == f"simulate:{run}"), None)
    if code is None:
        start = max((e["row_start"] + e["nrows"] for e in manifest), default=0)
        manifest.append({"sha256": f"simulate:{run}", "path": f"<simulate {spec.survey} seed={seed} n={nspectrum}>",
                         "reader": f"simulate-{spec.survey}", "row_start": start, "nrows": nspectrum,
                         "status": "pending", "medium_original": "vacuum", "flux_scale_applied": 1.0,
                         "dzspec_version": __version__, "seed": seed, "config": _config_dict(config),
                         "ingredients": dict(paths)})
        code = len(manifest) - 1
        zstore.set_manifest(group, manifest)  # rows reserved before anything is written
        zstore.resize_spectra_group(group, start + nspectrum)
    entry = manifest[code]
    run_start = int(entry["row_start"])

    # Blocks: the run's rows cut at the group's chunk boundaries, so no two tasks ever share a chunk.
    chunk = int(group.attrs["chunk_rows"])
    cuts = sorted({run_start, run_start + nspectrum,
                   *range((run_start // chunk + 1) * chunk, run_start + nspectrum, chunk)})
    bounds = list(itertools.pairwise(cuts))

    exposures_group = None
    if nexp:
        exposures_group = f"{group_path}-exposures-{run}"
        if exposures_group not in root:
            # Exposure chunks hold whole targets and divide every block (offset of the run in its chunk included).
            offset = run_start % chunk
            per_chunk = zstore.chunk_rows_for(probe.wavelength.size) // nexp
            per_chunk = min(1 << max(per_chunk.bit_length() - 1, 0), offset & -offset if offset else chunk)
            exp_template = _block_dataset(probe.exposures, np.zeros(nexp, np.int64), spec.survey,
                                          spec.grid_name, "<probe>")
            exp_template = exp_template.assign_coords(source_file=("spectrum", np.zeros(nexp, np.int32)))
            exp_template.attrs["grid_name"] = exposures_group.removeprefix("spectra/")
            exp_group = zstore.create_spectra_group(root, exp_template, chunk_rows=max(1, per_chunk) * nexp)
            zstore.resize_spectra_group(exp_group, nspectrum * nexp)
            zstore.set_manifest(exp_group, [{**entry, "row_start": 0, "nrows": nspectrum * nexp}])
            exp_group.attrs["coadd_group"] = group_path

    progress_path = f"progress/{run}"
    if progress_path not in root:
        flags_group = root.require_group(progress_path)
        zstore.create_block_flags(flags_group, len(bounds))
        flags_group.attrs.update({"run": run, "group": group_path, "bounds": bounds})
    done = zstore.done_blocks(root[progress_path])
    if done.size != len(bounds):
        raise StoreError(f"{store}/{progress_path}: {done.size} block flags for {len(bounds)} blocks")
    log.info("%s: run %s, %d spectra in %d blocks; %d already done", group_path, run, nspectrum, len(bounds),
             int(done.sum()))
    stage = map_blocks(client, _generate_block, bounds, done=done,
                       args=(store, group_path, exposures_group, run, spec, seed, config, paths, code, run_start, nexp),
                       name=f"simulate {spec.survey}", max_in_flight=max_in_flight, retries=retries,
                       progress=progress,
                       describe=lambda block, error: f"{type(error).__name__}: {error}")
    report = GenerateReport(group_path, stage.nblocks, stage.already_done, stage.computed, stage.failed,
                            stage.peak_worker_rss_bytes, run=run, nspectrum=nspectrum,
                            exposures_group=exposures_group)
    report.seconds = time.perf_counter() - t0
    if bool(zstore.done_blocks(root[progress_path]).all()):
        manifest = zstore.manifest_of(group)
        manifest[code]["status"] = "done"
        zstore.set_manifest(group, manifest)
        if exposures_group is not None:
            zstore.set_manifest(root[exposures_group], [{**manifest[code], "row_start": 0,
                                                         "nrows": nspectrum * nexp}])
        root[progress_path].attrs["status"] = "complete"
    return report
