"""Speed and exactness of the MADGICS LAE scan at U25's settings (METHODS §2.4-2.5, §5.4), with the shipped prior.

DESI log grid (3600-9824 Å, δ = 5e-5, 8 720 pixels), 4 501 one-pixel shifts from z = 2 plus the ±5-pixel fine scan
at 0.1 pixel. One BLAS/FFT thread throughout; every timing is a median over interleaved repeats, beside the
reference timed in the same process, so that the ratio holds on a shared machine where absolute times do not.

1. **Kernel, shipped prior** (``desi_lae``: 50 sky + 2 LAE vectors, what ``dzspec lae`` uses without ``--prior``):
   :func:`~dzspec.engines.madgics.scan.scan_lae` on ``--nspec`` simulated DESI spectra (the simulator's coadds,
   resampled and rescaled as a run does) as one block, against the previous per-spectrum implementation, dzspec's
   ``scan.py`` at commit ``--previous`` read from git (one Cholesky, one triangular solve and one FFT pass per
   spectrum, NumPy solves per shift). Exactness over every spectrum: the same coarse and fine argmins, alternatives
   and flags, and every dchi2 (coarse curve, best, alternatives) within 1e-8 of the spectrum's largest |dchi2|.
2. **Kernel, synthetic prior** (sky modes on sky lines plus a broad component; a skewed Lya profile and its
   partner; white-noise spectra with a sky draw, a masked stretch and a line): the same two timings, for
   comparison with the figures before the prior was shipped.
3. **Straightforward reference**: :func:`~dzspec.engines.madgics.scan.reference_lae_scan` (full-length products
   and a fresh 52-column Woodbury solve per shift) on ``--ref-shifts`` shifts of ``--ref-spectra`` spectra of the
   shipped set, extrapolated to 4 501 + 101 evaluations; exactness: dchi2 at the evaluated shifts and at the fine
   best within 1e-8 of the largest |dchi2|, and the same argmin over the evaluated shifts.
4. With ``--runner STORE``: ``dzspec lae`` through the runner (:func:`dzspec.parallel.lae.run_lae` with the shipped
   prior on a LocalCluster of ``--workers`` single-threaded worker processes, reading, resampling, scan,
   interloper tests and writing), ``--runs`` times; the first run is cold (worker imports and caches), the others
   warm. ms per spectrum per core = the run's wall time x workers x threads / spectra. With
   ``--runner-previous`` the previous commit's code (extracted with ``git archive``) runs the same store in
   another process, alternating with the current one.

``--out DIR`` writes ``summary.json`` and the printed text (``output.txt``) there.

Usage::

    python benchmarks/lae_scan_speed.py --nspec 200 --out benchmarks/results/lae_scan_speed
    dzspec simulate --survey desi -n 1200 --store /tmp/lae/desi.zarr --seed 5 --continua sps \\
        --ingredient templates_path=../shared/data/sps/bc03_miles_subset.npz
    python benchmarks/lae_scan_speed.py --runner /tmp/lae/desi.zarr --group spectra/desi-brz-3600-9824-0.8 \\
        --runner-previous
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import types
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from dzspec.engines.madgics.scan import LAE_GRID_DELTA, LAE_GRID_START, LAEPrior, reference_lae_scan, scan_lae

ROOT = Path(__file__).resolve().parents[1]
N_PIXELS = 8720
WINDOW = (4133.0, 4278.0)  # Å at z_ref = 2.45 (U25 §2.3)
PREVIOUS = "0cebd1b"  # the last commit with the per-spectrum scan
TOLERANCE = 1e-8


def synthetic_prior(k_sky: int = 50, seed: int = 0) -> LAEPrior:
    rng = np.random.default_rng(seed)
    pixels = np.arange(N_PIXELS)
    sky = 0.05 * rng.normal(size=(N_PIXELS, k_sky)) * np.linspace(2.0, 0.5, N_PIXELS)[:, None]
    for line in rng.choice(np.arange(3000, N_PIXELS), 120, replace=False):
        profile = np.exp(-0.5 * ((pixels - line) / 1.2) ** 2)
        sky += np.outer(profile, rng.normal(0, 3.0, k_sky) * (rng.random(k_sky) < 0.3))
    start = round(np.log10(WINDOW[0] / LAE_GRID_START) / LAE_GRID_DELTA)
    m = round(np.log10(WINDOW[1] / LAE_GRID_START) / LAE_GRID_DELTA) - start + 1
    i = np.arange(m, dtype=float)
    centre = np.log10(4194.0 / WINDOW[0]) / LAE_GRID_DELTA
    core = np.exp(-0.5 * ((i - centre) / np.where(i < centre, 2.0, 5.0)) ** 2)
    return LAEPrior(sky, np.column_stack([2.0 * core, 0.7 * np.gradient(core)]), window_start=start)


def synthetic_spectra(prior: LAEPrior, nspec: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ivar = 1 / rng.uniform(0.2, 0.5, size=(nspec, N_PIXELS)) ** 2
    flux = rng.normal(size=(nspec, N_PIXELS)) / np.sqrt(ivar)
    flux += (prior.sky_vectors @ rng.normal(size=(prior.sky_vectors.shape[1], nspec))).T
    shifts = prior.coarse_shifts()
    true_shift = np.round(rng.uniform(shifts[20], shifts[-20], nspec), 1)
    for row, shift in enumerate(true_shift):
        whole = int(np.floor(shift))
        window = prior.phase(round((shift - whole) * 10))[:, 0]
        first = prior.window_start + whole - 3
        flux[row, first: first + window.size] += rng.uniform(1, 4) * window
        masked = rng.integers(0, N_PIXELS - 40)
        ivar[row, masked: masked + 40] = 0.0
    return flux, ivar


def shipped_spectra(nspec: int, seed: int = 5) -> tuple[LAEPrior, np.ndarray, np.ndarray]:
    """The shipped prior and ``nspec`` simulated DESI coadds on its grid, resampled and rescaled as a run does
    (with the prior's instrument noise calibration, what ``dzspec lae`` falls back to on a small store)."""
    from dzspec.engines.madgics.adapter import cached_prior, lae_params
    from dzspec.io.noise import load_noise_calibration
    from dzspec.kernels.simulate.desi import desi_wavelength, simulate_desi_block
    from dzspec.models import default_prior_path

    path = str(default_prior_path("desi_lae"))
    params = lae_params(path)
    loaded = cached_prior(params["prior_store"], params["prior_name"], params["prior_sha256"])
    block = simulate_desi_block(np.arange(nspec), seed=seed)
    ivar = block.ivar
    with contextlib.suppress(Exception):  # no default stored: the pipeline variances
        ivar = ivar / load_noise_calibration(path, "spectra/desi-brz-3600-9824-0.8").scale ** 2
    flux, ivar = loaded.to_grid(desi_wavelength(), block.flux, ivar)
    return loaded.prior, flux, ivar


def previous_scan_module(commit: str) -> types.ModuleType | None:
    """dzspec's ``scan.py`` at ``commit`` as a module of its own (None without git or that commit)."""
    try:
        text = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:dzspec/engines/madgics/scan.py"],
                              capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    module = types.ModuleType("lae_scan_previous")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(text, f"{commit}:dzspec/engines/madgics/scan.py", "exec"), module.__dict__)
    return module


def as_previous(module: types.ModuleType, prior: LAEPrior) -> object:
    return module.LAEPrior(prior.sky_vectors, prior.lae_vectors, window_start=prior.window_start,
                           z_ref=prior.z_ref, sky_mask=prior.sky_mask, delta=prior.delta)


def compare(fast: object, slow: object) -> dict[str, object]:
    """Exactness of one scan against another on the same spectra (both with their curves)."""
    scale = np.nanmax(np.abs(slow.dchi2_curve), axis=1)
    scale = np.where(scale > 0, scale, 1.0)

    def worst(a: np.ndarray, b: np.ndarray, per_row: np.ndarray) -> float:
        a, b = np.asarray(a, float), np.asarray(b, float)
        diff = np.abs(a - b).reshape(a.shape[0], -1) / per_row[:, None]
        return float(np.nanmax(diff, initial=0.0))

    def same(a: np.ndarray, b: np.ndarray) -> bool:
        return bool(np.array_equal(a, b, equal_nan=True))

    ones = np.ones(len(scale))
    report = {
        "spectra": len(scale),
        "same_coarse_argmin": same(np.argmin(fast.dchi2_curve, axis=1), np.argmin(slow.dchi2_curve, axis=1)),
        "same_z_coarse": same(fast.z_coarse, slow.z_coarse), "same_z": same(fast.z, slow.z),
        "same_alternatives": same(fast.z_alt, slow.z_alt), "same_warn": same(fast.warn, slow.warn),
        "curve_max_rel": worst(fast.dchi2_curve, slow.dchi2_curve, scale),
        "dchi2_max_rel": max(worst(fast.dchi2, slow.dchi2, scale), worst(fast.dchi2_coarse, slow.dchi2_coarse, scale),
                             worst(fast.dchi2_alt, slow.dchi2_alt, scale)),
        "chi2_null_max_rel": worst(fast.chi2_null, slow.chi2_null, np.abs(slow.chi2_null)),
        "zerr_max_rel": worst(fast.zerr, slow.zerr, np.where(np.isfinite(slow.zerr), np.abs(slow.zerr), 1.0) * ones),
    }
    report["exact"] = bool(all(report[key] for key in report if key.startswith("same"))
                           and report["curve_max_rel"] <= TOLERANCE and report["dchi2_max_rel"] <= TOLERANCE)
    return report


def time_kernels(prior: LAEPrior, flux: np.ndarray, ivar: np.ndarray, previous: types.ModuleType | None,
                 repeats: int) -> dict[str, object]:
    """Medians (ms per spectrum) of the block scan and of the previous implementation, interleaved."""
    old_prior = as_previous(previous, prior) if previous else None
    scan_lae(flux[:2], ivar[:2], prior)  # warm-up: compiled loops, the prior's tables and FFT plans
    if previous:
        previous.scan_lae(flux[:2], ivar[:2], old_prior)
    times: dict[str, list[float]] = {"current": [], "previous": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        scan_lae(flux, ivar, prior)
        times["current"].append(1e3 * (time.perf_counter() - t0) / flux.shape[0])
        if previous:
            t0 = time.perf_counter()
            previous.scan_lae(flux, ivar, old_prior)
            times["previous"].append(1e3 * (time.perf_counter() - t0) / flux.shape[0])
    out: dict[str, object] = {"current_ms": float(np.median(times["current"])), "repeats": repeats,
                              "current_all_ms": times["current"]}
    if previous:
        out |= {"previous_ms": float(np.median(times["previous"])), "previous_all_ms": times["previous"],
                "ratio": float(np.median(np.array(times["previous"]) / np.array(times["current"]))),
                "exactness": compare(scan_lae(flux, ivar, prior, return_curve=True),
                                     previous.scan_lae(flux, ivar, old_prior, return_curve=True))}
    return out


def time_reference(prior: LAEPrior, flux: np.ndarray, ivar: np.ndarray, nspec: int, nshift: int
                   ) -> dict[str, object]:
    """The per-shift full-length Woodbury on ``nshift`` shifts (the 41 around the best and random ones) of
    ``nspec`` spectra, extrapolated to the full scan; exactness of the fast scan there and at its fine best."""
    shifts = prior.coarse_shifts()
    rng = np.random.default_rng(2)
    fast = scan_lae(flux[:nspec], ivar[:nspec], prior, return_curve=True)
    per_shift, worst_coarse, worst_fine, same_argmin = [], 0.0, 0.0, True
    for row in range(nspec):
        best = int(np.argmin(fast.dchi2_curve[row]))
        near = np.arange(max(best - 20, 0), min(best + 21, shifts.size))
        others = rng.choice(np.setdiff1d(np.arange(shifts.size), near), max(nshift - near.size, 0), replace=False)
        index = np.unique(np.concatenate([near, others]))
        t0 = time.perf_counter()
        reference = reference_lae_scan(flux[row], ivar[row], prior, shifts[index])
        per_shift.append((time.perf_counter() - t0) / index.size)
        curve = fast.dchi2_curve[row, index]
        scale = np.max(np.abs(reference))
        worst_coarse = max(worst_coarse, float(np.max(np.abs(curve - reference)) / scale))
        same_argmin &= bool(np.argmin(curve) == np.argmin(reference))
        fine_ref = reference_lae_scan(flux[row], ivar[row], prior, [prior.shift_of(fast.z[row])])[0]
        worst_fine = max(worst_fine, abs(fast.dchi2[row] - fine_ref) / scale)
    return {"ms": 1e3 * float(np.median(per_shift)) * (shifts.size + 101), "ms_per_shift": 1e3 * float(np.median(
        per_shift)), "spectra": nspec, "shifts": nshift, "coarse_max_rel": worst_coarse, "fine_max_rel": worst_fine,
        "same_argmin": same_argmin,
        "exact": bool(same_argmin and max(worst_coarse, worst_fine) <= TOLERANCE)}


def runner_child(store: str, group: str | None, workers: int, runs: int, block_rows: int | None) -> None:
    """Run ``dzspec lae`` with the shipped prior ``runs`` times on one cluster; one JSON line per run."""
    import dzspec
    from dzspec.cluster import make_client
    from dzspec.io import store as zstore
    from dzspec.models import default_prior_path
    from dzspec.parallel.lae import run_lae

    nspec = int(zstore.open_root(store)[zstore.resolve_spectra_group(zstore.open_root(store), group)]["flux"].shape[0])
    with make_client(n_workers=workers, threads_per_worker=1) as client:
        for run in range(runs):
            t0 = time.perf_counter()
            report = run_lae(store, default_prior_path("desi_lae"), client, group=group, overwrite=True,
                             progress=False, block_rows=block_rows)
            print(json.dumps({"run": run, "seconds": report.seconds, "wall": time.perf_counter() - t0,
                              "spectra": nspec, "dzspec": str(Path(dzspec.__file__).parent)}), flush=True)


def time_runner(args: argparse.Namespace) -> dict[str, object]:
    """Alternate the current code and (with --runner-previous) the previous commit's, each in its own process."""
    command = [sys.executable, str(Path(__file__).resolve()), "--runner-child", args.runner, "--workers",
               str(args.workers), "--runs", str(args.runs)]
    if args.group:
        command += ["--group", args.group]
    if args.block_rows:
        command += ["--block-rows", str(args.block_rows)]
    sides = {"current": (dict(os.environ), str(ROOT))}
    with tempfile.TemporaryDirectory() as tmp:
        if args.runner_previous:
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.previous, "dzspec"],
                                     capture_output=True, check=True).stdout
            with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
                tar.extractall(tmp, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
            # the extracted package must win over the editable install of the current one, in every process
            Path(tmp, "sitecustomize.py").write_text(
                "import sys\nsys.meta_path[:] = [f for f in sys.meta_path if '__editable__' not in str(f)]\n")
            sides["previous"] = ({**os.environ, "PYTHONPATH": tmp}, tmp)
        results: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
        for _ in range(args.rounds):
            for side, (env, cwd) in sides.items():
                done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)
                if done.returncode:
                    raise RuntimeError(f"runner ({side}) failed:\n{done.stderr[-3000:]}")
                lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
                if side == "previous" and not lines[0]["dzspec"].startswith(tmp):
                    raise RuntimeError(f"the previous run imported {lines[0]['dzspec']}, not the extracted code")
                results[side] += lines
    out: dict[str, object] = {"store": args.runner, "workers": args.workers, "threads_per_worker": 1,
                              "runs_per_process": args.runs, "rounds": args.rounds}
    for side, lines in results.items():
        per_core = [1e3 * line["seconds"] * args.workers / line["spectra"] for line in lines]
        cold = [v for line, v in zip(lines, per_core, strict=True) if line["run"] == 0]
        warm = [v for line, v in zip(lines, per_core, strict=True) if line["run"] > 0]
        out[side] = {"spectra": lines[0]["spectra"], "cold_ms_per_spectrum_per_core": float(np.median(cold)),
                     "warm_ms_per_spectrum_per_core": float(np.median(warm)) if warm else None,
                     "all_ms_per_spectrum_per_core": per_core}
    if "previous" in out:
        for kind in ("cold", "warm"):
            key = f"{kind}_ms_per_spectrum_per_core"
            if out["current"][key] and out["previous"][key]:
                out[f"{kind}_ratio"] = out["previous"][key] / out["current"][key]
    return out


def runner_text(runner: dict[str, object], args: argparse.Namespace) -> str:
    def figures(side: dict[str, object]) -> str:
        text = f"{side['cold_ms_per_spectrum_per_core']:.2f} ms per spectrum per core cold"
        if side["warm_ms_per_spectrum_per_core"] is not None:
            text += f", {side['warm_ms_per_spectrum_per_core']:.2f} warm"
        return text

    current = runner["current"]
    text = (f"dzspec lae through the runner ({current['spectra']} spectra, {args.workers} worker(s) x 1 thread, "
            f"median of {args.rounds} process(es) x {args.runs} runs): {figures(current)}")
    if "previous" in runner:
        text += f"; previous ({args.previous}) {figures(runner['previous'])}"
        text += "; ratio " + ", ".join(f"{runner[f'{kind}_ratio']:.2f}x {kind}" for kind in ("cold", "warm")
                                       if f"{kind}_ratio" in runner)
    warm = current["warm_ms_per_spectrum_per_core"] or current["cold_ms_per_spectrum_per_core"]
    return text + f"; target <= 5 ms: {'PASS' if warm <= 5 else 'FAIL'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nspec", type=int, default=200, help="simulated DESI spectra for the shipped prior")
    parser.add_argument("--synthetic-nspec", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timing repeats")
    parser.add_argument("--ref-spectra", type=int, default=2)
    parser.add_argument("--ref-shifts", type=int, default=200)
    parser.add_argument("--previous", default=PREVIOUS, help="commit of the previous implementation")
    parser.add_argument("--skip-kernels", action="store_true", help="only the runner measurement")
    parser.add_argument("--runner", metavar="STORE", help="also time dzspec lae through the runner on STORE")
    parser.add_argument("--group", help="spectra group of STORE")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3, help="runs per cluster (the first cold)")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of current and previous")
    parser.add_argument("--block-rows", type=int)
    parser.add_argument("--runner-previous", action="store_true", help="also run the previous commit's code")
    parser.add_argument("--runner-child", metavar="STORE", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help="write summary.json and output.txt here")
    args = parser.parse_args()
    if args.runner_child:
        runner_child(args.runner_child, args.group, args.workers, args.runs, args.block_rows)
        return

    lines: list[str] = []

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    summary: dict[str, object] = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                                  "previous_commit": args.previous, "tolerance": TOLERANCE,
                                  "cores": os.cpu_count(), "load_average_start": os.getloadavg()[0]}
    say(f"$ python benchmarks/{summary['command']}  ({os.cpu_count()} cores, load average "
        f"{summary['load_average_start']:.2f}: a loaded machine slows both sides of each ratio)")
    if not args.skip_kernels:
        previous = previous_scan_module(args.previous)
        if previous is None:
            say(f"previous implementation ({args.previous}) not readable from git: current code only")
        with threadpool_limits(1):
            prior, flux, ivar = shipped_spectra(args.nspec)
            shifts = prior.coarse_shifts()
            say(f"shipped prior desi_lae: {prior.n_pixels} px, {prior.sky_vectors.shape[1]} sky vectors, LAE window "
                f"{prior.lae_vectors.shape[0]} px x {prior.lae_vectors.shape[1]}; {shifts.size} shifts (z "
                f"{prior.redshift_of(shifts[0]):.4f}-{prior.redshift_of(shifts[-1]):.4f}) + 101 fine; "
                f"{args.nspec} simulated DESI coadds")
            shipped = time_kernels(prior, flux, ivar, previous, args.repeats)
            reference = time_reference(prior, flux, ivar, args.ref_spectra, args.ref_shifts)
            sprior = synthetic_prior()
            sflux, sivar = synthetic_spectra(sprior, args.synthetic_nspec)
            synthetic = time_kernels(sprior, sflux, sivar, previous, args.repeats)
        summary |= {"shipped": shipped, "reference": reference, "synthetic": synthetic}
        for name, result in (("shipped prior", shipped), ("synthetic prior", synthetic)):
            text = f"{name}: scan_lae (block) median {result['current_ms']:.2f} ms per spectrum per core"
            if "previous_ms" in result:
                exact = result["exactness"]
                equal = all(exact[key] for key in exact if key.startswith("same"))
                worst = max(exact["curve_max_rel"], exact["dchi2_max_rel"])
                text += (f"; previous per-spectrum path ({args.previous}) {result['previous_ms']:.2f} ms; ratio "
                         f"{result['ratio']:.2f}x; exactness over {exact['spectra']} spectra: argmins, alternatives "
                         f"and flags equal: {equal}, max |dchi2 - previous| / max |dchi2| = {worst:.1e} "
                         f"({'PASS' if exact['exact'] else 'FAIL'} at {TOLERANCE:.0e})")
            say(text)
        say(f"straightforward reference (per-shift full-length Woodbury, shipped prior): {reference['ms'] / 1e3:.2f} s "
            f"per spectrum ({reference['ms_per_shift']:.3f} ms per shift, {reference['spectra']} spectra x "
            f"{reference['shifts']} shifts); ratio {reference['ms'] / shipped['current_ms']:.0f}x; max |dchi2 - "
            f"reference| / max |dchi2| = {reference['coarse_max_rel']:.1e} (coarse), {reference['fine_max_rel']:.1e} "
            f"(fine best); same argmin: {reference['same_argmin']} ({'PASS' if reference['exact'] else 'FAIL'})")
    if args.runner:
        runner = time_runner(args)
        summary["runner"] = runner
        say(runner_text(runner, args))
    summary["load_average_end"] = os.getloadavg()[0]
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        (args.out / "output.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
