"""Exposure-time convergence of MADGICS Lya redshifts on simulated DESI LAEs with many exposures (U25 §4.3, Fig. 9).

1. A prior store: simulated DESI coadds of every class (sky fibres and LAEs build the sky and LAE priors,
   ``dzspec priors``);
2. a separate LAE-only store whose targets have ``--nexp`` individual exposures each (``exptime`` ~1000 s each);
3. :func:`dzspec.parallel.exposure_convergence.exposure_convergence`: for n = 1 … ``--n-max`` exposures,
   ``--draws`` bootstrap sets per n, inverse-variance coadds, MADGICS scan; per target and n, sigma_z (sample std of
   the draws' redshifts) and the mean total exposure time; the fraction of (target, n) with sigma_z < 0.001 per
   exposure-time bin and per line-flux threshold (the simulation's true ``flux_lya``, 1e-17 erg/s/cm2).

Writes ``summary.json`` and ``exposure_convergence.png`` to ``--out``.

Usage (about 5 minutes on 2 cores with the defaults: 120 targets x 12 exposures, 14 520 scans on U25's grid)::

    OMP_NUM_THREADS=1 python benchmarks/exposure_convergence.py --out bench-convergence
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from dzspec.cluster import make_client
from dzspec.engines.madgics.priors import LAE_GRID
from dzspec.io import store as zstore
from dzspec.kernels.restframe import LogGrid
from dzspec.kernels.simulate.desi import DesiSimConfig
from dzspec.parallel.exposure_convergence import exposure_convergence
from dzspec.parallel.lae import build_lae_prior, prior_rows
from dzspec.simulate import simulate
from dzspec.viz.exposure import plot_exposure_convergence

GROUP = "desi-brz-3600-9824-0.8"
#: 4x U25's step: 2 180 pixels, shifts from z = 2 to ~4.04 in 1 130 steps (as in the unit tests)
COARSE = (LogGrid(math.log10(3600.0), 2e-4, 2180), 1130)
U25 = (LAE_GRID, 4501)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench-convergence"))
    parser.add_argument("--prior-n", type=int, default=2000, help="simulated coadds (all classes) for the priors")
    parser.add_argument("-n", "--targets", type=int, default=120, help="simulated LAE targets with exposures")
    parser.add_argument("--nexp", type=int, default=12, help="exposures per target")
    parser.add_argument("--n-max", type=int, default=12, help="largest subset size")
    parser.add_argument("--draws", type=int, default=10, help="bootstrap sets per n (U25: 10)")
    parser.add_argument("--grid", choices=["coarse", "u25"], default="u25",
                        help="coarse: 4x U25's log step (fast); u25: U25's grid (8 720 px, 4 501 shifts)")
    parser.add_argument("--n-sky", type=int, default=50)
    parser.add_argument("--seed", type=int, default=2027)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--block-targets", type=int, default=4)
    parser.add_argument("--flux-thresholds", type=float, nargs="+", default=[0, 1, 2, 5, 10, 20],
                        help="line-flux lower limits (1e-17 erg/s/cm2); the simulated LAEs stay below ~30")
    parser.add_argument("--max-hours", type=float, default=4.0, help="exposure-time bins of 0.5 h up to this")
    parser.add_argument("--resume", action="store_true",
                        help="keep the targets already scanned with the same parameters (e.g. to redo only the "
                             "grid with other bins); default: start over")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    grid, n_shifts = COARSE if args.grid == "coarse" else U25
    timings = {}
    with make_client(n_workers=args.workers) as client:
        t0 = time.perf_counter()
        prior_store = args.out / "prior.zarr"
        simulate(prior_store, "desi", args.prior_n, client, seed=args.seed, progress=False)
        store = args.out / "exposures.zarr"
        simulate(store, "desi", args.targets, client, seed=args.seed + 1, progress=False,
                 config=DesiSimConfig(nexp=args.nexp, class_fractions=(1, 0, 0, 0, 0)))
        timings["simulate_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        sky = prior_rows(prior_store, GROUP, ["sky_residual"])
        lae = prior_rows(prior_store, GROUP, ["lae", "lae_double_peak"], z_name="z_true")
        _, prior_summary = build_lae_prior(client, (prior_store, GROUP, sky), (prior_store, GROUP, lae),
                                           out=prior_store, n_sky=args.n_sky, grid=grid, overwrite=True)
        timings["prior_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        report = exposure_convergence(store, prior_store, client, n_max=args.n_max, n_draws=args.draws,
                                      min_exposures=args.n_max, seed=args.seed, n_shifts=n_shifts,
                                      block_targets=args.block_targets, overwrite=not args.resume,
                                      flux_thresholds=args.flux_thresholds,
                                      exptime_edges=np.arange(0.0, args.max_hours * 3600 + 1, 1800.0),
                                      progress=False)
        timings["convergence_s"] = time.perf_counter() - t0
    table, grid_ds = report.targets.compute(), report.grid
    scans = int(table.sizes["spectrum"]) * (args.n_max * args.draws + 1)
    coadds = zstore.open_root(store)[f"spectra/{GROUP}"]
    z_true = dict(zip(coadds["targetid"][:], coadds["z_true"][:], strict=True))
    truth = np.array([z_true[t] for t in table.targetid.values])
    ok_all = np.abs(table.z_all.values - truth) < 0.005

    plot_exposure_convergence(grid_ds.converged_fraction.values, grid_ds["count"].values,
                              np.r_[grid_ds.exptime_lo.values, grid_ds.exptime_hi.values[-1]],
                              grid_ds.flux_threshold.values, args.out / "exposure_convergence.png",
                              sigma_z=table.sigma_z.values, exptime=table.exptime_mean.values,
                              line_flux=table.line_flux.values,
                              title=f"{table.sizes['spectrum']} simulated LAEs, {args.nexp} exposures, "
                                    f"{args.draws} draws per n ({args.grid} grid)")
    flux = table.line_flux.values
    summary = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "targets": int(table.sizes["spectrum"]), "scans": scans, "timings_s": timings,
        "blocks": {"total": report.nblocks, "already_done": report.already_done, "computed": report.computed},
        "scans_per_s": scans * report.computed / max(report.nblocks, 1) / timings["convergence_s"],
        "complete": report.complete,
        "prior": {k: prior_summary[k] for k in ("sky_kept", "sky_masked_bins", "lae_kept", "window_pixels")},
        "line_flux_quantiles_1e-17": np.nanquantile(flux, [0.1, 0.25, 0.5, 0.75, 0.9]).round(3).tolist(),
        "z_all_within_0.005": float(ok_all.mean()),
        "warn_counts": {int(v): int(c) for v, c in zip(*np.unique(table.convergence_warn.values,
                                                                   return_counts=True), strict=True)},
        "per_n": {"n": grid_ds.n.values.tolist(),
                  "exptime_mean_h": (grid_ds.exptime_mean.values / 3600).round(3).tolist(),
                  "sigma_z_q16": grid_ds.sigma_z_q16.values.tolist(),
                  "sigma_z_median": grid_ds.sigma_z_median.values.tolist(),
                  "sigma_z_q84": grid_ds.sigma_z_q84.values.tolist(),
                  "converged_fraction": grid_ds.converged_fraction_n.values.round(3).tolist()},
        "grid": {"exptime_edges_h": (np.r_[grid_ds.exptime_lo.values, grid_ds.exptime_hi.values[-1]] / 3600
                                     ).tolist(),
                 "flux_thresholds_1e-17": grid_ds.flux_threshold.values.tolist(),
                 "converged_fraction": np.where(np.isfinite(grid_ds.converged_fraction.values),
                                                grid_ds.converged_fraction.values.round(3), None).tolist(),
                 "count": grid_ds["count"].values.tolist()},
        "store": str(store),
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: summary[k] for k in ("targets", "scans", "timings_s", "z_all_within_0.005", "per_n")},
                     indent=1))


if __name__ == "__main__":
    main()
