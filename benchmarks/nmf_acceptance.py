"""NMF redshift engine on a simulated MUSE survey: rank by cross-validation, train, scan a held-out test set.

The acceptance run of the NMF engine (B26; METHODS §1, §3). One store of simulated MUSE spectra (all classes:
passive, star-forming, redshift-desert, LAE, false sources, blends; several depths):

1. the first ``--train-spectra`` rows with a known redshift are the training pool; every later row is the test set
   (false sources included), scanned with a basis that never saw them;
2. ``--folds``-fold cross-validation over ``--ranks`` on the training pool (one sequential training per fold,
   :func:`dzspec.parallel.rank_selection.cross_validate_ranks`), the rank chosen by the one-standard-error rule
   (skipped with ``--rank``);
3. a basis of that rank trained on the whole pool, then ``dzspec zfind``'s kernel over the store;
4. on the test set: GF (``|dz| < 0.005 (1 + z)``) overall, for ``snr_lines >= 7`` and per class, MAE with 5xMAD
   rejection, [OII]/Lya confusions, completeness and purity of the true/false source cut at log10 significance = -2;
   figures: rank selection, zp versus zt, chi2(z) curves of a few test spectra.

Usage (about 90 minutes on 2 cores at the defaults; the cross-validation is most of it)::

    python benchmarks/nmf_acceptance.py --out acceptance-nmf
    python benchmarks/nmf_acceptance.py --out acceptance-nmf --rank 10   # skip the cross-validation
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import xarray as xr

from dzspec.cluster import make_client
from dzspec.engines.nmf.grams import prepare_basis
from dzspec.engines.nmf.scan import scan_block
from dzspec.io import store as zstore
from dzspec.io.bases import load_basis, save_basis
from dzspec.kernels.metrics import good_fraction, mae_with_rejection, relative_error, wilson_interval
from dzspec.kernels.restframe import PAPER_GRID, observed_window, to_log_grid
from dzspec.parallel.rank_selection import cross_validate_ranks
from dzspec.parallel.train import select_training_rows, train_basis
from dzspec.parallel.zfind import run_zfind
from dzspec.simulate import simulate
from dzspec.viz.nmf import plot_chi2_curves, plot_rank_selection, plot_zp_zt

LYA, OII = 1215.67, 3728.48
CLASSES = ("passive", "starforming", "desert", "lae", "false_source", "blend")


def confusions(z_pred: np.ndarray, z_true: np.ndarray) -> dict[str, int]:
    """Spectra whose (1 + zp)/(1 + zt) is the [OII]/Lya wavelength ratio (either way) within the GF tolerance."""
    ratio = (1 + z_pred) / (1 + z_true)
    return {"oii_as_lya": int(np.sum(np.abs(ratio - LYA / OII) < 0.005 * LYA / OII)),
            "lya_as_oii": int(np.sum(np.abs(ratio - OII / LYA) < 0.005 * OII / LYA))}


def gf_entry(z_pred: np.ndarray, z_true: np.ndarray) -> dict[str, float]:
    gf, good, total = good_fraction(z_pred, z_true)
    centre, half = wilson_interval(good, total)
    return {"gf": gf, "n_good": good, "n": total, "wilson68_low": float(centre - half),
            "wilson68_high": float(centre + half)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("acceptance-nmf"))
    parser.add_argument("--store", type=Path,
                        help="simulated MUSE store to use as it is (default: simulate into OUT/muse.zarr)")
    parser.add_argument("-n", type=int, default=7000, help="spectra to simulate")
    parser.add_argument("--train-spectra", type=int, default=5000,
                        help="the first this many spectra with a known redshift are the training pool")
    parser.add_argument("--seed", type=int, default=2026, help="simulation seed")
    parser.add_argument("--ranks", default="6-13", help="ranks to cross-validate, e.g. 6-13")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--rank", type=int, help="skip the cross-validation and use this rank")
    parser.add_argument("--max-iter", type=int, default=40, help="training iterations per rank at most")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    store = args.store or args.out / "muse.zarr"
    train = {"max_iter": args.max_iter, "tol": 1e-3}
    summary: dict[str, object] = {"settings": {**vars(args), "out": str(args.out), "store": str(store)}}
    start = time.perf_counter()
    with make_client(n_workers=args.workers) as client:
        if args.store is None:  # resumes an interrupted simulation; nothing to do for a finished one
            simulate(store, "muse", args.n, client, seed=args.seed, progress=False)
        group, pool = select_training_rows(store)
        pool = pool[:args.train_spectra]
        first_test = int(pool[-1]) + 1
        if first_test >= zstore.open_root(store)[group]["flux"].shape[0]:
            raise SystemExit(f"{store}: no rows left for a test set after {pool.size} training spectra")
        if args.rank is None:
            lo, hi = (int(x) for x in args.ranks.split("-"))
            cv = cross_validate_ranks(store, client, group=group, rows=pool, ranks=range(lo, hi + 1),
                                      folds=args.folds, train=train)
            cv.to_zarr(args.out / "rank_selection.zarr", mode="w", consolidated=False)
            plot_rank_selection(cv, args.out / "rank_selection.png")
            table = cv[["gf_mean", "gf_std", "mae_mean", "mae_std"]].to_dataframe()
            print(table.to_string(float_format=lambda v: f"{v:.4f}"))
            rank = int(cv.attrs["chosen_rank"])
            summary["cross_validation"] = {"table": table.reset_index().to_dict("list"), "chosen_rank": rank,
                                           "rule": cv.attrs["rule"], "seconds": time.perf_counter() - start}
        else:
            rank = args.rank
        print(f"rank {rank}: training on {pool.size} spectra", flush=True)
        t0 = time.perf_counter()
        result, training = train_basis(store, client, rank, group=group, rows=pool, **train)
        summary["training"] = {"rank": rank, "spectra": int(pool.size), "iterations": result.iterations,
                               "seconds": time.perf_counter() - t0}
        basis_store = args.out / "bases.zarr"
        save_basis(basis_store, "nmf", result, PAPER_GRID, training_sha256=training, overwrite=True,
                   extra_attrs={"training_store": str(store), "training_group": group,
                                "training_spectra": int(pool.size)})
        t0 = time.perf_counter()
        report = run_zfind(store, basis_store, client, group=group, overwrite=True, progress=False)
        summary["zfind_seconds"] = time.perf_counter() - t0
    results = zstore.open_results(store, report.results).compute()
    spectra = xr.open_zarr(str(store), group=group, consolidated=False)
    test = np.arange(first_test, spectra.sizes["spectrum"])
    z_true = spectra.z_true.values[test]
    z_pred = results.z.values[test]
    sim_class = spectra.sim_class.values[test]
    snr_lines = spectra.snr_lines.values[test]
    significance = results.nmf_significance.values[test]
    known = np.isfinite(z_true)
    mae, kept = mae_with_rejection(z_pred[known], z_true[known])
    summary["test"] = {
        "rows": int(test.size), "with_redshift": int(known.sum()),
        "overall": gf_entry(z_pred, z_true),
        "snr_lines_ge_7": gf_entry(z_pred[snr_lines >= 7], z_true[snr_lines >= 7]),
        "per_class": {name: gf_entry(z_pred[sim_class == c], z_true[sim_class == c])
                      for c, name in enumerate(CLASSES) if name != "false_source"},
        "mae_5mad": mae, "mae_kept": kept,
        "confusions": confusions(z_pred[known], z_true[known]),
    }
    real = sim_class != CLASSES.index("false_source")
    with np.errstate(divide="ignore", invalid="ignore"):
        kept_source = np.log10(significance) > -2
    summary["test"]["true_false_separation"] = {
        "threshold_log10_significance": -2.0,
        "completeness": float(np.mean(kept_source[real])),
        "purity": float(np.mean(real[kept_source])) if kept_source.any() else float("nan"),
        "false_sources": int((~real).sum()),
    }
    summary["seconds"] = time.perf_counter() - start
    print(json.dumps(summary["test"], indent=1))
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    plot_zp_zt(z_pred[known], z_true[known], args.out / "zp_zt.png",
               color=np.log10(np.clip(snr_lines[known], 0.3, 300)), color_label="log10 snr_lines",
               title=f"test set: GF {summary['test']['overall']['gf']:.3f} (rank {rank})")
    chi2_figure(store, group, basis_store, test, z_pred, z_true, sim_class, args.out / "chi2_curves.png")
    print(f"wrote {args.out}/summary.json, rank_selection.png, zp_zt.png, chi2_curves.png")


def chi2_figure(store: Path, group: str, basis_store: Path, test: np.ndarray, z_pred: np.ndarray,
                z_true: np.ndarray, sim_class: np.ndarray, path: Path) -> None:
    """chi2(z) of four test spectra: a good LAE, a good [OII] emitter, a failure and a false source."""
    error = relative_error(z_pred, z_true)
    picks = []
    for label, select in (("LAE, good", (sim_class == 3) & (error < 0.005)),
                          ("star-forming, good", (sim_class == 1) & (error < 0.005)),
                          ("failure", error > 0.05), ("false source", sim_class == 4)):
        if select.any():
            picks.append((label, int(np.flatnonzero(select)[0])))
    basis = load_basis(basis_store, "nmf")
    source = zstore.open_root(store)[group]
    wavelength = source["wavelength"][:]
    j0, n_obs = observed_window(wavelength, basis.grid)
    rows = test[[i for _, i in picks]]
    flux, weights = to_log_grid(wavelength, source["flux"].oindex[rows, :], source["ivar"].oindex[rows, :],
                                basis.grid, window=(j0, n_obs))
    trials = np.arange(0.0, 6.7 + 1e-9, 0.0005)
    result = scan_block(prepare_basis(basis.basis, n_obs), flux, weights, basis.grid.shift_of(trials),
                        basis.grid.step, j0, return_chi2=True)
    labels = [f"{label}: z_true {z_true[i]:.4f}, z_pred {z_pred[i]:.4f}" for label, i in picks]
    plot_chi2_curves(trials, result.chi2, labels, path, z_true=z_true[[i for _, i in picks]])


if __name__ == "__main__":
    main()
