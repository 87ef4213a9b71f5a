"""Blend detection with the NMF engine (B26 §4.4) on simulated MUSE spectra: ROC, AUC, optimal threshold.

1. a basis: trained on ``--train-spectra`` simulated MUSE spectra (default mixture, blends and false sources left
   out of the training rows), or loaded with ``--basis STORE[:NAME]``;
2. an evaluation set of ``--eval-spectra`` spectra whose class mixture resembles B26's MXDF test (ZCONF >= 1: no
   false sources; ``--blend-fraction`` blends, 183/664 = 28 % in the paper);
3. ``zfind`` (first scan, z1), then the blend step (first model at z1, rescan with it, confusion rule, score);
4. the ROC of the score over thresholds 0.003-0.05 (step 0.001), the AUC (Mann-Whitney over the full ROC, and the
   trapezoid over the sweep only), the threshold nearest (0, 1) with its TPR and FPR; breakdowns by blend S/N
   ratio, by class, and blends whose second redshift the confusion rule removes; the cost per spectrum.

Outputs in ``--out``: ``summary.json``, ``roc.csv``, ``roc.png`` and ``example_*.png`` (a detected blend, a missed
blend, the highest-scoring non-blend). About 10 minutes on 2 cores at the defaults::

    OMP_NUM_THREADS=1 python benchmarks/blend_roc.py --out blend-roc
    OMP_NUM_THREADS=1 python benchmarks/blend_roc.py --out blend-roc --basis acceptance-nmf/bases.zarr:nmf
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np

from dzspec.cluster import make_client
from dzspec.engines.nmf.adapter import BLENDS
from dzspec.engines.nmf.blends import ROC_THRESHOLDS, confusion_redshifts, detect_blend, detect_blends
from dzspec.engines.nmf.grams import prepare_basis
from dzspec.engines.nmf.zfind import nmf_zfind
from dzspec.io import store as zstore
from dzspec.io.bases import load_basis, save_basis
from dzspec.kernels.restframe import PAPER_GRID, observed_window, to_log_grid
from dzspec.kernels.simulate.muse import MUSE_CLASSES, MuseSimConfig
from dzspec.kernels.survey_stats import rank_auc, roc_curve
from dzspec.parallel.blends import run_blends
from dzspec.parallel.train import select_training_rows, train_basis
from dzspec.parallel.zfind import run_zfind
from dzspec.simulate import simulate
from dzspec.viz.blends import plot_blend_example, plot_roc

BLEND = MUSE_CLASSES.index("blend")
#: B26's evaluation sample is ZCONF >= 1 MXDF sources: no false sources; LAEs and [OII] emitters dominate.
EVAL_FRACTIONS = {"passive": 0.06, "starforming": 0.26, "desert": 0.09, "lae": 0.31, "false_source": 0.0}


def _rate(flags: np.ndarray) -> dict[str, float | int]:
    return {"n": int(flags.size), "flagged": int(flags.sum()),
            "rate": float(flags.mean()) if flags.size else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("blend-roc"))
    parser.add_argument("--basis", help="STORE[:NAME] of a saved basis on the paper grid (default: train one)")
    parser.add_argument("--train-spectra", type=int, default=2048, help="spectra simulated for training")
    parser.add_argument("--rank", type=int, default=5)
    parser.add_argument("--max-iter", type=int, default=25, help="training iterations per rank stage at most")
    parser.add_argument("--eval-spectra", type=int, default=1200)
    parser.add_argument("--blend-fraction", type=float, default=0.28)
    parser.add_argument("--seed", type=int, default=2027, help="simulation seed (training uses seed + 1)")
    parser.add_argument("--t-blend", type=float, default=0.011, help="threshold stored as blend_flag")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, object] = {"settings": {**vars(args), "out": str(args.out)}}
    timings: dict[str, float] = {}
    eval_store = args.out / "eval.zarr"
    others = sum(EVAL_FRACTIONS.values())
    fractions = tuple((1 - args.blend_fraction) * EVAL_FRACTIONS[name] / others if name != "blend"
                      else args.blend_fraction for name in MUSE_CLASSES)
    start = time.perf_counter()
    with make_client(n_workers=args.workers) as client:
        if args.basis:
            basis_store, _, basis_name = args.basis.partition(":")
            basis_name = basis_name or "nmf"
        else:
            t0 = time.perf_counter()
            train_store = args.out / "train.zarr"
            simulate(train_store, "muse", args.train_spectra, client, seed=args.seed + 1, chunk_rows=256,
                     progress=False)
            group, rows = select_training_rows(train_store)
            sim_class = zstore.open_root(train_store)[group]["sim_class"][:]
            rows = rows[sim_class[rows] != BLEND]
            print(f"training a rank-{args.rank} basis on {rows.size} simulated spectra", flush=True)
            result, training = train_basis(train_store, client, args.rank, group=group, rows=rows,
                                           max_iter=args.max_iter)
            basis_store, basis_name = str(args.out / "bases.zarr"), "nmf"
            save_basis(basis_store, basis_name, result, PAPER_GRID, training_sha256=training, overwrite=True)
            timings["training_seconds"] = time.perf_counter() - t0
            summary["training"] = {"spectra": int(rows.size), "rank": args.rank, "iterations": result.iterations}
        t0 = time.perf_counter()
        # blocks of 128 spectra so that every worker has work (the default chunk holds ~4000 MUSE spectra)
        sim = simulate(eval_store, "muse", args.eval_spectra, client, seed=args.seed, chunk_rows=128,
                       config=MuseSimConfig(class_fractions=fractions), progress=False)
        timings["simulate_eval_seconds"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        zfind = run_zfind(eval_store, basis_store, client, basis_name=basis_name, group=sim.group, overwrite=True,
                          progress=False)
        timings["zfind_seconds"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        blends = run_blends(eval_store, basis_store, client, basis_name=basis_name, group=sim.group,
                            params={"t_blend": args.t_blend}, overwrite=True, progress=False)
        timings["blends_seconds"] = time.perf_counter() - t0
        print(zfind.summary(), blends.summary(), sep="\n", flush=True)
    if not (zfind.complete and blends.complete):
        raise SystemExit("a run did not complete")

    spectra = zstore.open_spectra(eval_store, sim.group)
    out = zstore.open_results(eval_store, blends.results).compute()
    sim_class = spectra.sim_class.values
    z_true, z2_true = spectra.z_true.values, spectra.z2_true.values
    ratio = spectra.blend_snr_ratio.values
    positive = sim_class == BLEND
    score = out.blend_score.values.astype(np.float64)
    z1, z2 = out.blend_z1.values, out.blend_z.values

    numbers = plot_roc(score, positive, args.out / "roc.png",
                       title=f"NMF blend detection, simulated MUSE ({positive.sum()} blends, {(~positive).sum()} "
                             "others)")
    tpr, fpr = roc_curve(score, positive, ROC_THRESHOLDS)
    np.savetxt(args.out / "roc.csv", np.c_[ROC_THRESHOLDS, tpr, fpr], delimiter=",", header="threshold,tpr,fpr",
               comments="", fmt="%.6g")
    t_best, tpr_best, fpr_best = numbers["threshold"], numbers["tpr"], numbers["fpr"]
    flagged = np.nan_to_num(score, nan=-np.inf) > t_best

    # which component z1 found, and whether z2 is the other one
    tol = 0.005 * (1 + np.nan_to_num(z_true))
    z1_primary = np.abs(z1 - z_true) < tol
    z1_secondary = np.abs(z1 - z2_true) < 0.005 * (1 + np.nan_to_num(z2_true))
    other = np.where(z1_primary, z2_true, np.where(z1_secondary, z_true, np.nan))
    z2_right = np.abs(z2 - other) < 0.005 * (1 + np.nan_to_num(other))
    lost = np.zeros(positive.size, dtype=bool)  # the other component sits where the confusion rule looks away
    wave = spectra.wavelength.values
    for i in np.flatnonzero(positive & np.isfinite(other) & np.isfinite(z1)):
        zc = confusion_redshifts(float(z1[i]), (float(wave[0]), float(wave[-1])))
        lost[i] = zc.size > 0 and np.min(np.abs(zc - other[i])) < BLENDS.defaults["tolerance"]
    ratio_bins = [0.0, 0.1, 0.25, 0.5, 1.01]
    by_ratio = {f"{lo:g}-{hi:g}": _rate(flagged[positive & (ratio >= lo) & (ratio < hi)])
                for lo, hi in itertools.pairwise(ratio_bins)}
    by_class = {name: _rate(flagged[~positive & (sim_class == c)]) for c, name in enumerate(MUSE_CLASSES)
                if c != BLEND and np.any(sim_class == c)}

    # cost per spectrum on one core, in this process (warm caches, numba compiled)
    basis = load_basis(basis_store, basis_name)
    j0, n_obs = observed_window(wave, basis.grid)
    prepared = prepare_basis(basis.basis, n_obs)
    shifts = basis.grid.shift_of(np.round(0.0005 * np.arange(13401), 10))
    rows = np.unique(np.linspace(0, positive.size - 1, 60).astype(int))  # spread over the classes
    flux, ivar = spectra.flux.values[rows], spectra.ivar.values[rows]
    detect_blends(wave, flux[:2], ivar[:2], z1[:2], prepared=prepared, grid=basis.grid, shifts=shifts)  # warm up
    t0 = time.perf_counter()
    nmf_zfind(wave, flux, ivar, prepared=prepared, grid=basis.grid, shifts=shifts)
    zfind_cost = (time.perf_counter() - t0) / rows.size
    t0 = time.perf_counter()
    detect_blends(wave, flux, ivar, z1[rows], prepared=prepared, grid=basis.grid, shifts=shifts)
    blend_cost = (time.perf_counter() - t0) / rows.size

    summary.update({
        "eval": {"spectra": int(positive.size), "blends": int(positive.sum()), "class_fractions": fractions,
                 "z1_failed_first_scan_nonblend": int(np.sum(~positive & ~z1_primary)),
                 "zfind_gf_nonblend": float(np.mean(z1_primary[~positive]))},
        "roc": {"thresholds": ROC_THRESHOLDS.tolist(), "tpr": tpr.tolist(), "fpr": fpr.tolist()},
        "auc_mann_whitney": numbers["auc"], "auc_sweep_trapezoid": numbers["auc_sweep"],
        "best": {"threshold": t_best, "tpr": tpr_best, "fpr": fpr_best},
        "paper": {"auc": 0.87, "threshold": 0.011, "tpr": 0.78, "fpr": 0.18, "sample": "664 MXDF ZCONF>=1, 183 blends"},
        "blends_at_best": {
            "z1_is_brighter_component": int(np.sum(positive & z1_primary)),
            "z1_is_fainter_component": int(np.sum(positive & z1_secondary & ~z1_primary)),
            "z1_neither": int(np.sum(positive & ~z1_primary & ~z1_secondary)),
            "flagged_with_right_z2": int(np.sum(positive & flagged & z2_right)),
            "flagged_with_wrong_z2": int(np.sum(positive & flagged & ~z2_right)),
            "other_component_inside_confusion_window": int(lost.sum()),
            "tpr_of_those": float(np.mean(flagged[lost])) if lost.any() else float("nan"),
            "tpr_by_blend_snr_ratio": by_ratio,
        },
        "fpr_by_class_at_best": by_class,
        "nonblends_with_wrong_z1": _rate(flagged[~positive & ~z1_primary]),
        # what the first scan's failures cost: the ROC of the spectra whose z1 is one of their true redshifts
        "auc_where_z1_is_right": rank_auc(score[z1_primary | z1_secondary], positive[z1_primary | z1_secondary]),
        "nonblends_with_right_z1": _rate(flagged[~positive & z1_primary]),
        "cost_seconds_per_spectrum_one_core": {"zfind": zfind_cost, "blend_step": blend_cost},
        "timings": {**timings, "total_seconds": time.perf_counter() - start},
    })

    # three examples: the best-detected blend, the highest-scoring missed blend, the highest-scoring non-blend
    picks = {}
    hit = np.flatnonzero(positive & flagged & z2_right)
    miss = np.flatnonzero(positive & ~flagged)
    false = np.flatnonzero(~positive & flagged)
    if hit.size:
        picks["detected_blend"] = int(hit[np.argmax(score[hit])])
    if miss.size:
        picks["missed_blend"] = int(miss[np.argmax(np.nan_to_num(ratio[miss]))])
    if false.size:
        picks["false_positive"] = int(false[np.argmax(score[false])])
    z_trials = basis.grid.redshift_of(shifts)
    for label, row in picks.items():
        f, w = to_log_grid(wave, spectra.flux.values[row], spectra.ivar.values[row], basis.grid, window=(j0, n_obs))
        r = detect_blend(f[0], w[0], float(z1[row]), prepared=prepared, grid=basis.grid, j0=j0, shifts=shifts,
                         wave_range=(float(wave[0]), float(wave[-1])))
        plot_blend_example(r, z_trials, args.out / f"example_{label}.png", z1=float(z1[row]),
                           title=f"{label}: row {row}, {MUSE_CLASSES[sim_class[row]]}, z_true {z_true[row]:.4f}, "
                                 f"z2_true {z2_true[row]:.4f}, snr ratio {ratio[row]:.2f}")
    summary["examples"] = picks

    (args.out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    print(f"blends {positive.sum()} / {positive.size}; AUC {numbers['auc']:.3f} (sweep trapezoid "
          f"{numbers['auc_sweep']:.3f}); best t = {t_best:.3f}: TPR {tpr_best:.3f}, FPR {fpr_best:.3f} "
          f"(paper: AUC 0.87, t = 0.011, TPR 0.78, FPR 0.18)")
    print(json.dumps({k: summary[k] for k in ("auc_where_z1_is_right", "blends_at_best", "fpr_by_class_at_best",
                                             "cost_seconds_per_spectrum_one_core", "timings")}, indent=1,
                     default=float))
    print(f"outputs in {args.out}: summary.json roc.csv roc.png " + " ".join(f"example_{k}.png" for k in picks))


if __name__ == "__main__":
    main()
