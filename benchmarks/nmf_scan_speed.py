"""Speed and exactness of the fast NMF redshift scan at the paper's settings (B26; METHODS §5.2-5.5).

Rest grid gamma0 = log10(4600/7.7), delta = 2.215525e-5, N = 53 918; a synthetic non-negative k = 10 basis
(smooth continua + Gaussian emission/absorption-like lines); MUSE-like observed spectra of ~13 300 log pixels
(4750-9350 A); 13 401 trial z from 0 to 6.7 step 0.0005. One BLAS/FFT thread throughout (threadpoolctl).

It times :func:`dzspec.engines.nmf.scan.scan_block` per spectrum (median over ``--nspec`` spectra, after a warm-up
that compiles the numba kernels), and the straightforward per-trial weighted ``scipy.optimize.nnls`` on the tall
matrix on ``--ref-trials`` trials of ``--ref-spectra`` spectra, extrapolated to 13 401 trials. On the evaluated trials
it checks the same argmin and chi2 within 1e-8 relative.

It times the synthetic basis and, beside it in the same run, a trained one: the shipped ``muse`` basis (rank 10,
trained to convergence by ``dzspec models remake muse``), or ``--basis STORE:NAME`` (trained bases are harder than the
synthetic one: spikes and rows bright over part of the grid). With ``--spectra STORE`` the trained basis scans
spectra of a store (e.g. ``dzspec simulate --survey muse``) instead of spectra made from the basis.
``--zfind STORE`` also times ``dzspec zfind`` as a user runs it (shipped basis, every default: sky continuum term,
noise calibration, confidence), and ``--baseline TREE`` the same command with an older dzspec (a git worktree) in
the same run, for the ratio.

``--nuisance-order`` (default 0, as ``dzspec zfind``) adds the free-sign Legendre terms; ``-1`` times B26's basis-only
scan.

Usage::

    python benchmarks/nmf_scan_speed.py --nspec 10 --ref-spectra 2 --ref-trials 300
    python benchmarks/nmf_scan_speed.py --spectra muse.zarr --nspec 30 --zfind muse.zarr --baseline /tmp/old \
        --out r.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from dzspec.engines.nmf.grams import prepare_basis
from dzspec.engines.nmf.scan import nuisance_vectors, reference_scan, scan_block, scan_chi2, trial_grid

GAMMA0 = np.log10(4600 / 7.7)
DELTA = 2.215525e-5
N_REST = round((np.log10(9350) - GAMMA0) / DELTA) + 1


def synthetic_basis(k: int = 10, seed: int = 0) -> np.ndarray:
    """Non-negative basis on the rest grid: a continuum (2 rows in 3) plus Gaussian lines cut to 0 beyond 5 sigma."""
    rng = np.random.default_rng(seed)
    loglam = GAMMA0 + DELTA * np.arange(N_REST)
    x = (loglam - loglam[0]) / (loglam[-1] - loglam[0])
    rows = []
    for a in range(k):
        cont = np.exp(rng.normal(0, 0.5) * (x - 0.5)) * rng.uniform(0.2, 1.0) * (a % 3 != 2)
        lines = np.zeros(N_REST)
        for c in rng.uniform(0.02, 0.98, size=rng.integers(3, 9)):
            sig = rng.uniform(20, 200)  # rest pixels
            p = (np.arange(N_REST) - c * N_REST) / sig
            lines += rng.uniform(0.5, 5.0) * np.where(np.abs(p) < 5, np.exp(-0.5 * p * p), 0.0)
        rows.append(cont + lines)
    return np.array(rows)


def observed_spectra(h: np.ndarray, j0: int, n_obs: int, shifts: np.ndarray, seed: int = 1):
    """Spectra on the observed grid gamma0 + (j0 + j) delta, made from the basis at the given shifts, with noise."""
    rng = np.random.default_rng(seed)
    flux, weights = [], []
    for shift in shifts:
        s = j0 - shift
        window = np.zeros((h.shape[0], n_obs))
        lo, hi = max(s, 0), min(s + n_obs, h.shape[1])
        window[:, lo - s : hi - s] = h[:, lo:hi]
        model = rng.uniform(0, 1, h.shape[0]) * (rng.random(h.shape[0]) < 0.6) @ window
        sigma = 0.05 * np.max(model) * rng.uniform(0.5, 2.0, n_obs)
        w = 1 / sigma**2
        w[rng.integers(0, n_obs - 200) :][:200] = 0.0  # a masked stretch (sky line)
        flux.append(np.where(w > 0, model + rng.normal(0, sigma), 0.0))
        weights.append(w)
    return np.array(flux), np.array(weights)


def store_window(path: str) -> tuple[int, int]:
    """``(j0, n_obs)`` of the paper grid inside the wavelengths of a store's only spectra group."""
    from dzspec.io import store as zstore
    from dzspec.kernels.restframe import PAPER_GRID, observed_window

    root = zstore.open_root(path)
    j0, n_obs = observed_window(root[zstore.resolve_spectra_group(root, None)]["wavelength"][:], PAPER_GRID)
    if n_obs < 0.9 * 13275:
        raise SystemExit(f"{path}: spectra cover {n_obs} paper-grid pixels, not a MUSE-like 4750-9350 A window")
    return j0, n_obs


def store_spectra(path: str, nspec: int, j0: int, n_obs: int, z: np.ndarray):
    """``nspec`` random rows of a store on its observed log grid, and the trial index nearest their ``z_true``."""
    from dzspec.io import store as zstore
    from dzspec.kernels.restframe import PAPER_GRID, to_log_grid

    root = zstore.open_root(path)
    source = root[zstore.resolve_spectra_group(root, None)]
    wavelength = source["wavelength"][:]
    rows = np.sort(np.random.default_rng(3).choice(source["flux"].shape[0], nspec, replace=False))
    flux, weights = to_log_grid(wavelength, source["flux"].oindex[rows, :], source["ivar"].oindex[rows, :],
                                PAPER_GRID, window=(j0, n_obs))
    z_true = source["z_true"].oindex[rows] if "z_true" in source else np.full(nspec, np.nan)
    nearest = np.array([np.argmin(np.abs(z - zt)) if np.isfinite(zt) else -10 for zt in z_true])
    return flux, weights, nearest


def measure_kernel(h: np.ndarray, label: str, args: argparse.Namespace, *, store_spectra_: bool) -> dict:
    """Kernel figures of one basis: median ms per spectrum per core (one call per spectrum and a block), the
    per-trial reference extrapolated to the whole grid, and the exactness checks on the evaluated trials. The
    spectra come from ``--spectra`` when ``store_spectra_`` (else they are made from the basis)."""
    use_store = bool(args.spectra) and store_spectra_
    j0 = round((np.log10(4750.0) - GAMMA0) / DELTA)
    n_obs = round((np.log10(9350.0) - GAMMA0) / DELTA) - j0 + 1
    if use_store:  # the store's own observed window (vacuum MUSE spectra start at 4751.3 A, not 4750)
        j0, n_obs = store_window(args.spectra)
    z, shifts, lags = trial_grid(DELTA, j0)
    print(f"\n== {label}: rest grid N = {N_REST}, observed n_obs = {n_obs} (j0 = {j0}), trials = {z.size}, "
          f"k = {h.shape[0]}")
    t0 = time.perf_counter()
    prepared = prepare_basis(h, n_obs, lags=lags)
    prepare_s = time.perf_counter() - t0
    print(f"prepare_basis: {prepare_s:.3f} s, {prepared.fft_points / 1e6:.2f} M inverse-FFT points per spectrum "
          f"({len(prepared.segments)} row segments)")
    nuisance = nuisance_vectors(n_obs, args.nuisance_order)
    print(f"nuisance terms: {0 if nuisance is None else nuisance.shape[0]} (order {args.nuisance_order})")
    rng = np.random.default_rng(7)
    true_idx = rng.integers(0, z.size, args.nspec)
    if use_store:
        flux, weights, true_idx = store_spectra(args.spectra, args.nspec, j0, n_obs, z)
    else:
        flux, weights = observed_spectra(h, j0, n_obs, shifts[true_idx])
    scan_block(prepared, flux[:1], weights[:1], shifts, DELTA, j0, nuisance=nuisance)  # warm-up (numba compile)
    times, results = [], []
    for i in range(args.nspec):
        t0 = time.perf_counter()
        results.append(scan_block(prepared, flux[i : i + 1], weights[i : i + 1], shifts, DELTA, j0,
                                  nuisance=nuisance))
        times.append(time.perf_counter() - t0)
    fast_ms = 1e3 * float(np.median(times))
    t0 = time.perf_counter()
    block = scan_block(prepared, flux, weights, shifts, DELTA, j0, nuisance=nuisance)
    block_ms = 1e3 * (time.perf_counter() - t0) / args.nspec
    recovered = float(np.mean(np.abs(block.index - true_idx) <= 1))
    print(f"scan_block: median {fast_ms:.1f} ms/spectrum/core (block of {args.nspec}: {block_ms:.1f} ms/spectrum);"
          f" true trial recovered (+-1) for {recovered:.0%}")
    ref_times, max_rel, same_argmin = [], 0.0, True
    for i in range(args.ref_spectra):
        sub = np.unique(np.r_[np.linspace(0, z.size - 1, args.ref_trials - 1).astype(int), results[i].index[0]])
        chi2, _ = scan_chi2(prepared, flux[i], weights[i], lags[sub], nuisance=nuisance)
        t0 = time.perf_counter()
        ref, _ = reference_scan(h, flux[i], weights[i], lags[sub], nuisance=nuisance)
        ref_times.append((time.perf_counter() - t0) / sub.size * z.size)
        max_rel = max(max_rel, float(np.max(np.abs(chi2 - ref) / ref)))
        same_argmin &= bool(np.argmin(chi2) == np.argmin(ref)) and bool(sub[np.argmin(ref)] == results[i].index[0])
    ref_ms = 1e3 * float(np.median(ref_times))
    form = "nnls" if nuisance is None else "lsq_linear (BVLS)"
    print(f"reference (per-trial weighted scipy {form}, extrapolated to {z.size} trials): "
          f"{ref_ms:.0f} ms/spectrum/core")
    print(f"speed-up: {ref_ms / fast_ms:.0f}x; same argmin on the evaluated trials: {same_argmin}; "
          f"max chi2 relative difference: {max_rel:.2e} ({'within' if max_rel <= 1e-8 else 'NOT within'} 1e-8)")
    return {"basis": label, "k": int(h.shape[0]), "n_obs": int(n_obs), "trials": int(z.size),
            "prepare_s": round(prepare_s, 3), "fft_points_per_spectrum": int(prepared.fft_points),
            "row_segments": len(prepared.segments), "median_ms_per_spectrum": round(fast_ms, 2),
            "block_ms_per_spectrum": round(block_ms, 2), "reference_ms_per_spectrum": round(ref_ms, 1),
            "speed_up": round(ref_ms / fast_ms, 1), "same_argmin": same_argmin, "max_chi2_rel_diff": max_rel,
            "recovered": recovered}


def time_zfind(store: str, code: str | None) -> dict:
    """``dzspec zfind STORE --workers 1`` (shipped basis, every default) in a subprocess on a fresh copy of the store,
    with the dzspec at ``code`` (a git worktree) when given: its stage time per spectrum per core, and the wall time
    with the cluster start."""
    import re
    import shutil
    import subprocess
    import sys
    import tempfile

    from dzspec.io import store as zstore

    root = zstore.open_root(store)
    n = int(root[zstore.resolve_spectra_group(root, None)]["flux"].shape[0])
    with tempfile.TemporaryDirectory() as tmp:
        copy = f"{tmp}/spectra.zarr"
        shutil.copytree(store, copy)
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=code or "")
        t0 = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "dzspec.cli", "zfind", copy, "--workers", "1", "--no-progress"],
                             capture_output=True, text=True, env=env, cwd=code or None, check=True)
        wall = time.perf_counter() - t0
    stage = re.search(r"nmf_zfind: .* computed, 0 failed in ([0-9.]+) s", run.stdout + run.stderr)
    seconds = float(stage.group(1)) if stage else float("nan")
    label = code or "this checkout"
    print(f"dzspec zfind ({label}) on {n} spectra, 1 worker: {1e3 * seconds / n:.1f} ms/spectrum/core in the zfind "
          f"stage, {1e3 * wall / n:.1f} ms/spectrum with cluster start, noise calibration and writing")
    return {"code": label, "spectra": n, "stage_s": seconds, "wall_s": round(wall, 1),
            "stage_ms_per_spectrum": round(1e3 * seconds / n, 2), "wall_ms_per_spectrum": round(1e3 * wall / n, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nspec", type=int, default=10)
    parser.add_argument("--ref-spectra", type=int, default=2)
    parser.add_argument("--ref-trials", type=int, default=300)
    parser.add_argument("--k", type=int, default=10, help="rank of the synthetic basis")
    parser.add_argument("--basis", metavar="STORE:NAME",
                        help="the trained basis timed beside the synthetic one (paper grid; default: the shipped muse "
                             "basis)")
    parser.add_argument("--spectra", metavar="STORE", help="scan --nspec random spectra of this store's only group")
    parser.add_argument("--nuisance-order", type=int, default=0,
                        help="free-sign Legendre terms beside the basis, as zfind's default (-1: the basis alone); "
                             "the reference is then scipy.optimize.lsq_linear with the nuisance coefficients free")
    parser.add_argument("--zfind", metavar="STORE", help="also time `dzspec zfind STORE --workers 1` (>= 2 000 "
                                                         "spectra for #18's figure)")
    parser.add_argument("--baseline", metavar="TREE", help="with --zfind: time the dzspec of this git worktree (e.g. "
                                                           "`git worktree add /tmp/old <commit>`) in the same run")
    parser.add_argument("--out", metavar="JSON", help="write the figures here")
    args = parser.parse_args()
    from dzspec.io.bases import load_basis
    from dzspec.models import shipped_model

    if args.basis:
        store, _, name = args.basis.rpartition(":")
    else:
        model = shipped_model("muse")
        store, name = str(model.path), model.group
    trained = load_basis(store, name)
    if (trained.grid.size, trained.grid.step) != (N_REST, DELTA):
        raise SystemExit(f"{store}:{name}: basis grid {trained.grid} is not the paper grid")
    report: dict = {"kernel": []}
    with threadpool_limits(1):
        report["kernel"].append(measure_kernel(synthetic_basis(args.k), f"synthetic rank {args.k}", args,
                                               store_spectra_=False))
        report["kernel"].append(measure_kernel(trained.basis, f"trained {store}:{name}", args, store_spectra_=True))
    if args.zfind:
        report["zfind"] = [time_zfind(args.zfind, None)]
        if args.baseline:
            report["zfind"].append(time_zfind(args.zfind, args.baseline))
            ratio = report["zfind"][1]["stage_s"] / report["zfind"][0]["stage_s"]
            report["zfind_speedup_over_baseline"] = round(ratio, 2)
            print(f"zfind stage: {ratio:.2f}x faster than {args.baseline}")
    fastest = report["kernel"][1]["median_ms_per_spectrum"]
    print(f"\ntrained basis: {fastest:.1f} ms/spectrum/core in the kernel; target <= 30: "
          f"{'met' if fastest <= 30 else 'NOT met'}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
