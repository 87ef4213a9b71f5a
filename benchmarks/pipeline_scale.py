"""Scale drill of the whole LAE pipeline: simulate -> MADGICS scan -> survey statistics, at growing N.

For each N (default 10^4 and 10^5; ``--full`` adds 10^6: about 2.5 h of scan and 46 GB on 2 cores) a fresh
DESI-like store is simulated and scanned with one MADGICS prior (built once from a separate 2 000-spectrum store,
50 + 2 vectors on U25's grid), one exposure per target and 512-spectrum chunks (each a scan block), then reduced by
``survey_report``. Per N: wall time of each stage, spectra per second per core of the scan, peak worker RSS and
bytes written. The smallest N is also scanned on one worker, before the larger sizes, for the 1 -> 2 worker speed-up
(goal >= 1.8 on 2 cores; time-shared machines read low). Writes ``summary.json`` and ``scale.png`` (cost and
memory against N: linear cost means a flat per-spectrum cost) to ``--out``.

Usage (about 12 minutes on 2 cores with the defaults; 1 h 45 min with --full)::

    OMP_NUM_THREADS=1 python benchmarks/pipeline_scale.py --out bench-scale
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from dzspec.cluster import make_client
from dzspec.kernels.simulate.desi import DesiSimConfig
from dzspec.parallel.lae import build_lae_prior, prior_rows, run_lae
from dzspec.parallel.stats import survey_report
from dzspec.simulate import simulate
from dzspec.viz import pyplot

GROUP = "desi-brz-3600-9824-0.8"


def _bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _check_disk(out: Path, n: int, rows: list[dict]) -> None:
    """Refuse a size whose store would not fit before spending hours on it (bytes per spectrum of the last size)."""
    if not rows:
        return
    need = 1.1 * rows[-1]["bytes_store"] / rows[-1]["n"] * n
    free = shutil.disk_usage(out).free
    if need > free:
        raise SystemExit(f"{n} spectra need about {need / 1e9:.0f} GB in {out}, which has {free / 1e9:.0f} GB free; "
                         "point --out at a larger filesystem")


def run_size(client, n: int, prior: Path, workdir: Path, workers: int, keep: bool, chunk_rows: int
             ) -> dict[str, float]:
    store = workdir / f"desi-{n}.zarr"
    shutil.rmtree(store, ignore_errors=True)
    t0 = time.perf_counter()
    # one exposure per target: the drill times the coadd pipeline (and no exposures group doubles the store)
    generated = simulate(store, "desi", n, client, seed=2026, config=DesiSimConfig(nexp=1), chunk_rows=chunk_rows,
                         progress=False)
    t1 = time.perf_counter()
    before = _bytes(store)
    scan = run_lae(store, prior, client, group=GROUP, progress=False)
    t2 = time.perf_counter()
    survey_report(store, scan.results, by=["snr_lya:0,3,5,7,10,inf"], score="lae_abs_dchi2_cal", marked=25.0,
                  positive="correct", form="absolute")
    t3 = time.perf_counter()
    row = {"n": n, "workers": workers, "simulate_s": t1 - t0, "scan_s": t2 - t1, "stats_s": t3 - t2,
           "scan_spectra_per_s_per_core": n / (t2 - t1) / workers, "complete": scan.complete and generated.complete,
           "peak_worker_rss_mib": max(scan.peak_worker_rss_bytes, generated.peak_worker_rss_bytes) / 2**20,
           "bytes_written_scan": _bytes(store) - before, "bytes_store": _bytes(store), "scan_blocks": scan.nblocks}
    print(json.dumps(row), flush=True)
    if not keep:
        shutil.rmtree(store, ignore_errors=True)
    return row


def write_summary(out: Path, rows: list[dict], single: dict, workers: int) -> dict:
    """``summary.json`` and ``scale.png`` from the sizes run so far (rewritten after each, so a long run that is
    stopped keeps its finished sizes)."""
    speedup = single["scan_s"] / rows[0]["scan_s"]
    per_spectrum = [r["scan_s"] / r["n"] for r in rows]
    summary = {"sizes": rows, "one_worker": single, "speedup_1_to_2_workers_scan": speedup,
               "scan_cost_per_spectrum_ratio_largest_to_smallest": per_spectrum[-1] / per_spectrum[0],
               "peak_rss_ratio_largest_to_smallest": rows[-1]["peak_worker_rss_mib"] / rows[0]["peak_worker_rss_mib"]}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    plt = pyplot()
    fig, (cost, memory) = plt.subplots(1, 2, figsize=(9.6, 4), constrained_layout=True)
    ns = [r["n"] for r in rows]
    for key, label in (("simulate_s", "simulate"), ("scan_s", "MADGICS scan"), ("stats_s", "statistics")):
        cost.plot(ns, [r[key] for r in rows], "o-", label=label)
    cost.plot(ns, [rows[0]["scan_s"] * n / ns[0] for n in ns], ":", color="0.5", label="linear from the smallest")
    cost.set(xscale="log", yscale="log", xlabel="spectra", ylabel="wall time (s)",
             title=f"{workers} workers; 1 -> {workers} speed-up {speedup:.2f}")
    cost.legend(fontsize=8)
    memory.plot(ns, [r["peak_worker_rss_mib"] for r in rows], "o-")
    memory.set(xscale="log", xlabel="spectra", ylabel="peak worker RSS (MiB)", ylim=(0, None))
    fig.savefig(out / "scale.png", dpi=120)
    plt.close(fig)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench-scale"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--full", action="store_true", help="add 10^6 spectra")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the stores")
    parser.add_argument("--chunk-rows", type=int, default=512,
                        help="spectra per store chunk and scan block (default 512: enough blocks for every worker)")
    args = parser.parse_args()
    sizes = sorted(set(args.sizes + ([1_000_000] if args.full else [])))
    args.out.mkdir(parents=True, exist_ok=True)
    prior = args.out / "prior.zarr"
    with make_client(n_workers=args.workers) as client:
        if not (prior / "priors" / "lae").exists():
            simulate(prior, "desi", 2000, client, seed=7, progress=False)
            build_lae_prior(client, (prior, GROUP, prior_rows(prior, GROUP, ["sky_residual"])),
                            (prior, GROUP, prior_rows(prior, GROUP, ["lae", "lae_double_peak"], z_name="z_true")),
                            out=prior, overwrite=True)
        rows = [run_size(client, sizes[0], prior, args.out, args.workers, args.keep, args.chunk_rows)]
    with make_client(n_workers=1) as client:  # the speed-up first: the largest size takes hours
        single = run_size(client, sizes[0], prior, args.out, 1, args.keep, args.chunk_rows)
    summary = write_summary(args.out, rows, single, args.workers)
    with make_client(n_workers=args.workers) as client:
        for n in sizes[1:]:
            _check_disk(args.out, n, rows)
            rows.append(run_size(client, n, prior, args.out, args.workers, args.keep, args.chunk_rows))
            summary = write_summary(args.out, rows, single, args.workers)
    print(json.dumps({k: v for k, v in summary.items() if k != "sizes"}, indent=1))


if __name__ == "__main__":
    main()
