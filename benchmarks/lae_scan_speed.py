"""Speed and exactness of the MADGICS LAE scan at U25's settings (METHODS §2.4-2.5, §5.4).

DESI log grid (3600-9824 Å, δ = 5e-5, 8 720 pixels), a 50-vector sky prior, a 2-vector LAE window of 291 pixels
(4133-4278 Å at z = 2.45), 4 501 one-pixel shifts from z = 2 plus the ±5-pixel fine scan at 0.1 pixel. Synthetic
priors (sky modes concentrated on sky lines plus a broad component; a skewed Lya profile and its partner) and
spectra (white noise with a spread of ivar, a sky-residual draw, a masked stretch, a Lya line at a random
sub-pixel shift): the cost does not depend on the priors' values. One BLAS/FFT thread throughout.

It times :func:`dzspec.engines.madgics.scan.scan_lae` per spectrum (median over ``--nspec``, each spectrum its own
call), and the straightforward evaluation :func:`~dzspec.engines.madgics.scan.reference_lae_scan` (full-length products
and a fresh 52-column Woodbury solve per shift) on ``--ref-shifts`` shifts of ``--ref-spectra`` spectra, extrapolated to
4 501 + 101 evaluations. Exactness: the coarse dchi2 at the evaluated shifts and the fine best against the reference,
relative to the spectrum's largest |dchi2|, and the same argmin over the evaluated shifts.

Usage::

    python benchmarks/lae_scan_speed.py --nspec 40 --ref-spectra 2 --ref-shifts 200
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits

from dzspec.engines.madgics.scan import LAE_GRID_DELTA, LAE_GRID_START, LAEPrior, reference_lae_scan, scan_lae

N_PIXELS = 8720
WINDOW = (4133.0, 4278.0)  # Å at z_ref = 2.45 (U25 §2.3)


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


def synthetic_spectra(prior: LAEPrior, nspec: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
    return flux, ivar, true_shift


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nspec", type=int, default=40)
    parser.add_argument("--ref-spectra", type=int, default=2)
    parser.add_argument("--ref-shifts", type=int, default=200)
    args = parser.parse_args()
    with threadpool_limits(1):
        prior = synthetic_prior()
        shifts = prior.coarse_shifts()
        print(f"grid {N_PIXELS} px, sky prior {prior.sky_vectors.shape[1]} vectors, LAE window "
              f"{prior.lae_vectors.shape[0]} px x {prior.lae_vectors.shape[1]}, {shifts.size} shifts "
              f"(z {prior.redshift_of(shifts[0]):.4f}-{prior.redshift_of(shifts[-1]):.4f}) + 101 fine")
        flux, ivar, true_shift = synthetic_spectra(prior, args.nspec)
        scan_lae(flux[:1], ivar[:1], prior)  # warm-up: the prior's FFT and fine-window caches
        times, results = [], []
        for row in range(args.nspec):
            t0 = time.perf_counter()
            results.append(scan_lae(flux[row: row + 1], ivar[row: row + 1], prior, return_curve=True))
            times.append(time.perf_counter() - t0)
        fast_ms = 1e3 * float(np.median(times))
        found = np.mean([abs(prior.shift_of(r.z[0]) - s) <= 1 for r, s in zip(results, true_shift, strict=True)])

        rng = np.random.default_rng(2)
        ref_times, worst_coarse, worst_fine, same_argmin = [], 0.0, 0.0, True
        for row in range(args.ref_spectra):
            best = int(np.argmin(results[row].dchi2_curve[0]))
            near = np.arange(max(best - 20, 0), min(best + 21, shifts.size))
            index = np.unique(np.concatenate([near, rng.choice(shifts.size, args.ref_shifts - near.size, False)]))
            t0 = time.perf_counter()
            reference = reference_lae_scan(flux[row], ivar[row], prior, shifts[index])
            ref_times.append((time.perf_counter() - t0) / index.size)
            fast = results[row].dchi2_curve[0, index]
            scale = np.max(np.abs(reference))
            worst_coarse = max(worst_coarse, float(np.max(np.abs(fast - reference)) / scale))
            same_argmin &= bool(np.argmin(fast) == np.argmin(reference))
            fine_ref = reference_lae_scan(flux[row], ivar[row], prior, [prior.shift_of(results[row].z[0])])[0]
            worst_fine = max(worst_fine, abs(results[row].dchi2[0] - fine_ref) / scale)
        ref_ms = 1e3 * float(np.median(ref_times)) * (shifts.size + 101)

    print(f"dzspec scan_lae: median {fast_ms:.1f} ms per spectrum per core "
          f"(min {1e3 * min(times):.1f}, max {1e3 * max(times):.1f}; {args.nspec} spectra)")
    print(f"reference (per-shift full-length Woodbury): {ref_ms / 1e3:.2f} s per spectrum "
          f"({ref_ms / (shifts.size + 101):.3f} ms per shift, {args.ref_spectra} spectra x {args.ref_shifts} shifts)")
    print(f"speed-up: {ref_ms / fast_ms:.0f}x; target <= 25 ms per spectrum: {'PASS' if fast_ms <= 25 else 'FAIL'}")
    print(f"exactness: max |dchi2 - reference| / max |dchi2| = {worst_coarse:.2e} (coarse), {worst_fine:.2e} "
          f"(fine best); same argmin: {same_argmin}; 1e-8 target: "
          f"{'PASS' if max(worst_coarse, worst_fine) < 1e-8 and same_argmin else 'FAIL'}")
    print(f"injected lines found within 1 px: {found:.3f}")


if __name__ == "__main__":
    main()
