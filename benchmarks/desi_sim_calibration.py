"""Calibration of the DESI-like simulator against real DESI coadds: recomputes the effective throughput table
``_THROUGHPUT`` of :mod:`dzspec.kernels.simulate.desi` and prints how simulated blank fibres compare with real ones.

References (``shared/data``):

* the 8 blank fibres of the everest SV1 coadd ``desi_quasarnp_everest/coadd-0-80605-first25fibers.fits`` (median
  flux ~0 in every camera; the file has no FIBERMAP, so its exposure time is unknown);
* the special/dark coadd ``desi_fastspecfit/coadd-special-dark-27247.fits`` of a faint target (COADD_EXPTIME 23916 s
  in 20 exposures), sky-noise dominated.

Method: per camera and 50 A window, the 75th percentile of ivar (pixels between sky lines) of each reference. The
ratio everest/special-per-second gives each camera an apparent everest exposure time k_c (b 8.0, r 14.5, z 10.2 ks);
their geometric mean K (10.5 ks) is taken as the everest exposure time. The target ivar per second is the geometric
mean of the two references, ``everest / sqrt(K k_c)``, so that the simulator sits between them (within sqrt(k_c/K),
i.e. 0.87-1.17, of each). Per window the throughput is solved (bisection) so that a 1000 s exposure at mean
transparency and sky level reaches the target through the DESI model dark sky, then median-filtered over 5 windows
(250 A), except the two edge windows of each camera.

Usage::

    python benchmarks/desi_sim_calibration.py --shared-data ../shared/data [--sky sky/sky-uves.fits]
"""

from __future__ import annotations

import argparse
import textwrap
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits
from scipy.ndimage import median_filter

import dzspec.kernels.simulate.desi as desi
from dzspec.io.desi_ingredients import load_desi_ingredients

EVEREST = "desi_quasarnp_everest/coadd-0-80605-first25fibers.fits"
SPECIAL = "desi_fastspecfit/coadd-special-dark-27247.fits"
BLANK = (0, 2, 6, 7, 10, 14, 17, 18)
WINDOW, PERCENTILE = 50.0, 75.0


def _windows(wave: np.ndarray) -> list[np.ndarray]:
    edges = np.arange(np.floor(wave[0] / WINDOW) * WINDOW, wave[-1] + WINDOW, WINDOW)
    return [m for a in edges if (m := (wave >= a) & (wave < a + WINDOW)).sum() >= 20]


def calibrate(shared: Path, sky_file: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    sky = load_desi_ingredients(shared / sky_file).sky
    config = desi.DesiSimConfig()
    tau = float(np.mean(config.transparency_range))
    sky_level = config.sky_scale * float(np.exp(config.sky_scale_spread**2 / 2))
    with fits.open(shared / EVEREST) as everest, fits.open(shared / SPECIAL) as special:
        exptime = float(special["FIBERMAP"].data["COADD_EXPTIME"][0])
        refs = {}
        for cam in "brz":
            wave = np.asarray(everest[f"{cam.upper()}_WAVELENGTH"].data, float)
            q = np.asarray(everest[f"{cam.upper()}_IVAR"].data, float)[list(BLANK)]
            s = np.asarray(special[f"{cam.upper()}_IVAR"].data[0], float) / exptime * 1000.0
            good = np.asarray(special[f"{cam.upper()}_MASK"].data[0]) == 0
            wins = _windows(wave)
            qw = np.array([np.percentile(q[:, m], PERCENTILE) for m in wins])
            sw = np.array([np.percentile(s[m & good], PERCENTILE) if (m & good).sum() > 10 else np.nan
                           for m in wins])
            refs[cam] = (wave, wins, qw, sw)
    k = {cam: float(np.nanmedian(qw / sw)) for cam, (_, _, qw, sw) in refs.items()}
    big_k = float(np.exp(np.mean(np.log(list(k.values())))))
    print("apparent everest exposure per camera (ks):", {c: round(v, 2) for c, v in k.items()},
          f"-> taken as {big_k:.2f} ks")
    flat = {cam: ((3000.0, 11000.0), (1.0, 1.0)) for cam in "brz"}
    saved = dict(desi._THROUGHPUT)
    desi._THROUGHPUT.update(flat)
    desi._INSTRUMENT_CACHE.clear()
    inst = desi._instrument(config, sky)
    desi._THROUGHPUT.update(saved)
    desi._INSTRUMENT_CACHE.clear()
    table = {}
    for cam, (wave, wins, qw, _) in refs.items():
        off, n = inst.offsets[cam], desi.CAMERAS[cam][1]
        conv1, sky_flux, read_var = (a[off : off + n] for a in (inst.conv, inst.sky_flux, inst.read_var))
        target = qw / np.sqrt(big_k * k[cam])
        solved = []
        for m, goal in zip(wins, target, strict=True):
            lo, hi = 1e-4, 2.0
            for _ in range(60):
                t = np.sqrt(lo * hi)
                gain = conv1[m] * t * tau * 1000.0
                ivar = gain**2 / (sky_flux[m] * conv1[m] * t * 1000.0 * sky_level + read_var[m])
                lo, hi = (lo, t) if np.percentile(ivar, PERCENTILE) > goal else (t, hi)
            solved.append(t)
        solved = np.asarray(solved)
        smooth = np.exp(median_filter(np.log(solved), size=5, mode="nearest"))
        smooth[:2], smooth[-2:] = solved[:2], solved[-2:]  # keep the steep camera edges
        centers = np.array([wave[m].mean() for m in wins])
        table[cam] = (np.concatenate([[wave[0]], centers, [wave[-1]]]),
                      np.concatenate([[smooth[0]], smooth, [smooth[-1]]]))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared-data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--sky", default="sky/eboss-spec-sky.dat")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    table = calibrate(args.shared_data, args.sky)
    print("_THROUGHPUT = {")
    for cam, (knots, values) in table.items():
        print(f'    "{cam}": (')
        for what in (knots, values):
            text = ", ".join(f"{v:.1f}" if what is knots else f"{v:.4f}" for v in what)
            print("        (" + "\n         ".join(textwrap.wrap(text, 108)) + "),")
        print("    ),")
    print("}")
    for cam, (knots, values) in table.items():
        old_knots, old_values = desi._THROUGHPUT[cam]
        ratio = values / np.interp(knots, old_knots, old_values)
        print(f"{cam}: recomputed / current throughput: {ratio.min():.3f}-{ratio.max():.3f}")


if __name__ == "__main__":
    main()
