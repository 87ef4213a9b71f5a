"""The Zarr store: spectra groups, the ingest manifest, and pre-sized results groups with per-block done flags.

Layout of a store (Zarr v3 by default)::

    store.zarr/                      root attrs: dzspec_schema_version, dzspec_version
      spectra/<grid>/                one group per wavelength grid (never resampled into another)
        flux ivar mask (spectrum, wavelength)   wavelength (wavelength)   per-spectrum coords (spectrum)
        attrs: manifest of ingested files (sha256, path, rows, status), chunk_rows, store_uid, provenance
      results/<grid>/<kernel>/       same spectrum dim and chunking as the block plan
        <outputs> (spectrum, ...)   targetid (spectrum)   run_status (spectrum): not_run | ok | failed
        block_done (block,) bool, chunk 1, written last   attrs: failed_blocks (block -> error)

One module per concern, every public name re-exported here (callers write ``from dzspec.io import store as
zstore`` and ``zstore.<name>``):

* :mod:`~dzspec.io.store.spectra`: opening a store, spectra groups, rows, manifests, the input id, chunk sizing;
* :mod:`~dzspec.io.store.results`: the block plan, results groups, block and done flags, failed rows, and
  :func:`upgrade_results` (older results in today's vocabulary);
* :mod:`~dzspec.io.store.lock`: :func:`run_lock`, one run at a time per results group.

Examples
--------
>>> from dzspec.io import store as zstore
>>> zstore.BlockPlan(10, 4).nblocks, zstore.chunk_rows_for(7781)
(3, 2048)
"""

from __future__ import annotations

from dzspec.io.store.lock import run_lock
from dzspec.io.store.results import (
    BlockPlan,
    create_block_flags,
    create_results_group,
    done_blocks,
    mark_block_done,
    mark_rows_failed,
    open_results,
    results_groups,
    upgrade_results,
    write_block,
)
from dzspec.io.store.spectra import (
    DEFAULT_CHUNK_BYTES,
    chunk_rows_for,
    create_array,
    create_spectra_group,
    ensure_spectrum_arrays,
    flag_duplicate_targetids,
    groups_holding,
    input_id,
    jsonable,
    manifest_of,
    open_root,
    open_spectra,
    read_rows,
    resize_spectra_group,
    resolve_spectra_group,
    set_manifest,
    spectra_groups,
    write_rows,
)

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "BlockPlan",
    "chunk_rows_for",
    "create_array",
    "create_block_flags",
    "create_results_group",
    "create_spectra_group",
    "done_blocks",
    "ensure_spectrum_arrays",
    "flag_duplicate_targetids",
    "groups_holding",
    "input_id",
    "jsonable",
    "manifest_of",
    "mark_block_done",
    "mark_rows_failed",
    "open_results",
    "open_root",
    "open_spectra",
    "read_rows",
    "resize_spectra_group",
    "resolve_spectra_group",
    "results_groups",
    "run_lock",
    "set_manifest",
    "spectra_groups",
    "upgrade_results",
    "write_block",
    "write_rows",
]
