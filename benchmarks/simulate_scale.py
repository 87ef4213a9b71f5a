"""Simulated surveys at scale through the block runner: throughput per core and peak worker memory.

For each size N it generates N spectra of a survey into a fresh store on a LocalCluster, then prints the
spectra per second per core (wall time of the run x cores) and the peak worker RSS. Running two sizes shows
that worker memory does not grow with N (the ratio is printed). The stores are deleted unless --keep.

Usage::

    python benchmarks/simulate_scale.py --survey muse --sizes 100000 1000000 --workers 2
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from dzspec.cluster import make_client
from dzspec.io import store as zstore
from dzspec.simulate import simulate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--survey", default="muse", choices=("muse", "desi"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/dzspec-simulate-bench"))
    parser.add_argument("--keep", action="store_true", help="keep the stores")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    with make_client(n_workers=args.workers, dashboard_address=None) as client:
        for n in args.sizes:
            store = args.workdir / f"{args.survey}-{n}.zarr"
            shutil.rmtree(store, ignore_errors=True)
            t0 = time.perf_counter()
            report = simulate(store, args.survey, n, client, seed=2026, progress=False)
            wall = time.perf_counter() - t0
            group = zstore.open_root(store)[report.group]
            stored = int(group["flux"].shape[0])
            disk = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
            rows.append((n, report, wall, stored, disk))
            print(report.summary(), flush=True)
            if not args.keep:
                shutil.rmtree(store, ignore_errors=True)
    cores = args.workers
    header = (f"{'spectra':>9} {'blocks':>6} {'wall s':>8} {'spectra/s/core':>15} {'peak RSS MiB':>13} "
              f"{'GB on disk':>10}")
    print("\n" + header)
    for n, report, wall, _, disk in rows:
        print(f"{n:>9} {report.nblocks:>6} {wall:>8.1f} {n / wall / cores:>15.0f} "
              f"{report.peak_worker_rss_bytes / 2**20:>13.0f} {disk / 1e9:>10.2f}")
    if len(rows) > 1:
        ratio = rows[-1][1].peak_worker_rss_bytes / max(rows[0][1].peak_worker_rss_bytes, 1)
        print(f"peak worker RSS ratio {rows[-1][0]} vs {rows[0][0]} spectra: {ratio:.2f}")
    ok = all(r.complete and stored == n for n, r, _, stored, _ in rows)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
