"""Small stores use every worker: the 1 -> 2 worker speed-up of ``zfind`` on a small store beside a large one.

A 2 000-spectrum MUSE-like store is smaller than one storage chunk (4 096 rows). Before blocks were sized by
compute it ran as one block on one worker whatever the cluster; now it is cut into at least two blocks per worker
thread. This benchmark simulates a small store (default 2 000 spectra, one chunk) and a large one (default 8 192
spectra, two chunks), runs ``dzspec zfind``'s runner with the shipped MUSE basis on one and then two worker
processes (one thread each) for each, and prints both speed-ups and the ratio small/large (goal >= 0.95). The
small store is also run on two workers with the old plan (one block per storage chunk), for contrast.

``--dz`` coarsens the trial grid for both stores alike (the speed-up, not the per-spectrum cost, is measured here;
``benchmarks/nmf_scan_speed.py`` measures the cost at the paper's grid). Writes ``summary.json`` to ``--out``.

Usage (about 14 minutes on 2 cores with ``--dz 0.002``)::

    OMP_NUM_THREADS=1 python benchmarks/small_store_speedup.py --out bench-small --dz 0.002
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from dzspec.cluster import make_client
from dzspec.models import default_model_for_store
from dzspec.parallel.zfind import run_zfind
from dzspec.simulate import simulate


def zfind_seconds(store: Path, workers: int, dz: float, results: str, block_rows: int | None = None) -> float:
    basis = default_model_for_store("basis", store)
    with make_client(n_workers=workers, threads_per_worker=1, dashboard_address=None) as client:
        t0 = time.perf_counter()
        report = run_zfind(store, basis.path, client, basis_name=basis.group, params={"dz": dz}, results=results,
                           noise_calibration="off", block_rows=block_rows, progress=False)
        seconds = time.perf_counter() - t0
    if not report.complete:
        raise SystemExit(report.summary())
    print(f"  {store.name}, {workers} worker(s){' (one block per chunk)' if block_rows else ''}: "
          f"{report.nblocks} blocks, {seconds:.1f} s", flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--large", type=int, default=8192)
    parser.add_argument("--dz", type=float, default=0.0005, help="trial step (default B26's 0.0005)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    stores = {}
    with make_client(n_workers=2, threads_per_worker=1, dashboard_address=None) as client:
        for label, n in (("small", args.small), ("large", args.large)):
            stores[label] = args.out / f"muse-{n}.zarr"
            shutil.rmtree(stores[label], ignore_errors=True)
            simulate(stores[label], "muse", n, client, seed=2027, progress=False)
    summary: dict[str, float | int] = {"small_spectra": args.small, "large_spectra": args.large, "dz": args.dz}
    for label, store in stores.items():
        print(f"{label} store ({store.name}):", flush=True)
        one = zfind_seconds(store, 1, args.dz, "results/one")
        two = zfind_seconds(store, 2, args.dz, "results/two")
        summary[f"{label}_seconds_1_worker"], summary[f"{label}_seconds_2_workers"] = one, two
        summary[f"{label}_speedup"] = one / two
    chunk = 4096
    old = zfind_seconds(stores["small"], 2, args.dz, "results/old", block_rows=chunk)
    summary["small_seconds_2_workers_one_block_per_chunk"] = old
    summary["small_speedup_one_block_per_chunk"] = summary["small_seconds_1_worker"] / old
    summary["ratio_small_to_large_speedup"] = summary["small_speedup"] / summary["large_speedup"]
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"1 -> 2 worker speed-up: small store {summary['small_speedup']:.2f} "
          f"(one block per chunk, as before: {summary['small_speedup_one_block_per_chunk']:.2f}), "
          f"large store {summary['large_speedup']:.2f}; ratio small/large "
          f"{summary['ratio_small_to_large_speedup']:.3f} (goal >= 0.95)")


if __name__ == "__main__":
    main()
