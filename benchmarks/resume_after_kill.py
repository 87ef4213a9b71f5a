"""Kill-and-resume at scale: the acceptance check of the block runner.

For each store size it

1. writes a store of N synthetic MUSE-like spectra (3 681 pixels) on the cluster;
2. runs ``dzspec run-kernel`` uninterrupted into ``results/ref``;
3. runs it again into ``results/killed``, SIGKILLs the client process once half the blocks are done (then its
   orphaned workers, as when a node is lost), and resumes with ``--resume``;
4. checks that the resumed results are identical bit for bit to the reference and that the resumed run computed
   only the unfinished blocks;
5. prints the peak worker RSS of each run, and its ratio between the largest and the smallest store, to show
   that worker memory does not grow with the number of spectra.

Usage::

    python benchmarks/resume_after_kill.py --sizes 25000 100000 --workdir /tmp/dzspec-bench
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from dzspec.cluster import make_client
from dzspec.io import store as zstore
from dzspec.testing import write_synthetic_store

SUMMARY_LINE = re.compile(r"(\d+) blocks, (\d+) already done, (\d+) computed, (\d+) failed in ([\d.]+) s; "
                          r"peak worker RSS (\d+) MiB")


def _cli(store: Path, results: str, *extra: str, workers: int) -> list[str]:
    return [sys.executable, "-m", "dzspec.cli", "run-kernel", str(store), "--kernel", "summary", "--results",
            results, "--workers", str(workers), "--no-progress", *extra]


def _parse(stdout: str) -> dict[str, float]:
    match = SUMMARY_LINE.search(stdout)
    if not match:
        raise RuntimeError(f"no run summary in output:\n{stdout[-2000:]}")
    keys = ("nblocks", "already", "computed", "failed", "seconds", "rss_mib")
    return dict(zip(keys, map(float, match.groups()), strict=True))


def run_size(n: int, workdir: Path, chunk_rows: int, workers: int) -> dict[str, float]:
    store = workdir / f"store-{n}.zarr"
    shutil.rmtree(store, ignore_errors=True)
    t0 = time.perf_counter()
    with make_client(n_workers=workers, dashboard_address=None) as client:
        write_synthetic_store(store, n, seed=2026, chunk_rows=chunk_rows,
                              mapper=lambda f, *a: client.gather(client.map(f, *a, pure=False)))
    write_s = time.perf_counter() - t0

    ref = subprocess.run(_cli(store, "results/ref", workers=workers), capture_output=True, text=True, check=True)
    reference = _parse(ref.stdout + ref.stderr)

    proc = subprocess.Popen(_cli(store, "results/killed", workers=workers), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    root = zstore.open_root(store)
    nblocks = int(reference["nblocks"])
    while proc.poll() is None:
        try:
            if zstore.done_blocks(root["results/killed"]).sum() >= nblocks // 2:
                break
        except KeyError:
            pass
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1.0)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    done_at_kill = int(zstore.done_blocks(root["results/killed"]).sum())

    res = subprocess.run(_cli(store, "results/killed", "--resume", workers=workers), capture_output=True,
                         text=True, check=True)
    resumed = _parse(res.stdout + res.stderr)
    a = zstore.open_results(store, "results/ref").compute()
    b = zstore.open_results(store, "results/killed").compute()
    identical = all(a[v].values.tobytes() == b[v].values.tobytes() for v in a.data_vars)
    recomputed_only_unfinished = resumed["computed"] == nblocks - done_at_kill and resumed["already"] == done_at_kill
    ngood = int(np.asarray(a["ngood"]).size)
    shutil.rmtree(store, ignore_errors=True)
    return {"n": n, "rows": ngood, "nblocks": nblocks, "write_s": write_s, "ref_s": reference["seconds"],
            "ref_rss": reference["rss_mib"], "done_at_kill": done_at_kill, "resume_computed": resumed["computed"],
            "resume_rss": resumed["rss_mib"], "identical": identical, "only_unfinished": recomputed_only_unfinished}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[25_000, 100_000])
    parser.add_argument("--chunk-rows", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/dzspec-bench"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = [run_size(n, args.workdir, args.chunk_rows, args.workers) for n in args.sizes]
    print(f"{'spectra':>9} {'blocks':>6} {'write s':>8} {'run s':>6} {'killed at':>9} {'resumed':>7} "
          f"{'identical':>9} {'only unfinished':>15} {'peak RSS MiB (ref/resume)':>26}")
    for r in rows:
        print(f"{r['n']:>9} {r['nblocks']:>6} {r['write_s']:>8.1f} {r['ref_s']:>6.1f} {r['done_at_kill']:>9} "
              f"{int(r['resume_computed']):>7} {r['identical']!s:>9} {r['only_unfinished']!s:>15} "
              f"{r['ref_rss']:>12.0f} / {r['resume_rss']:<12.0f}")
    if len(rows) > 1:
        print(f"peak worker RSS ratio, {rows[-1]['n']} vs {rows[0]['n']} spectra: "
              f"{rows[-1]['ref_rss'] / rows[0]['ref_rss']:.2f} (spectra ratio {rows[-1]['n'] / rows[0]['n']:.1f})")
    ok = all(r["identical"] and r["only_unfinished"] for r in rows)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
