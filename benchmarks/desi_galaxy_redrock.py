"""DESI-like galaxies: the shipped ``desi_galaxy`` basis through ``dzspec zfind`` beside Redrock 0.21, same spectra,
one run.

What it measures (#15's DESI galaxy acceptance, #18's comparison):

* two test sets of simulated DESI coadds of galaxies (passive and star-forming, 0 < z < 1.6, r = 19.5-23) and
  [O II] emitters that the basis and its confidence were not made from: ``sps`` (BC03 continua, the training's
  family, another seed) and ``analytic`` (the simulator's analytic continua, a family the basis never saw);
* ``mixed``: the simulator's whole DESI mix (LAEs at 2 < z < 4, [O II] emitters, galaxies, empty sky fibres; BC03):
  the galaxies' figures as above, and how many of the spectra that no galaxy fit describes get ``ZWARN == 0``;
* the real DESI coadds of ../shared/data (two with the DESI pipeline's own Redrock redshift, 25 SV1 fibres without
  one, where only the agreement of the two codes is reported);
* per code: the good fraction (|dz| < 1000 km/s, as DESI counts a redshift right; 0.005 (1 + z) beside it), by
  class and r magnitude; the share of spectra with ``ZWARN == 0`` and how many of those are right; the time per
  spectrum per core.

dzspec runs as a user runs it: ``dzspec zfind STORE --group COADDS --workers 1`` in a subprocess (cluster start,
reading and writing counted), with the shipped basis unless ``--basis`` names another. Redrock runs in this
process, one process and one BLAS thread, spectra in memory: its galaxy template only
(``templates-dzspec-galaxy-only.txt``: the 2016 5-eigenvector galaxy PCA stands in for the v2.6 basis that
../shared/data lacks) on every spectrum, and its full set (``templates-dzspec-cpu.txt``: galaxy, QSOs, stars) on
the first ``--n-all-templates``. Redrock sees each coadd on the merged b+r+z lattice with a Gaussian resolution
matrix of the simulator's LSF (the real files' own matrices are not used, so both codes read the same arrays).

``--reuse-redrock DIR`` takes Redrock's fits from an earlier run on the same sets (to remeasure dzspec alone).

Needs ``pip install -e '.[benchmark]'`` (redrock 0.21) and ../shared/data. Writes ``report.json``, ``zp_zt.png``
and the per-spectrum redshifts (``<set>-fits.npz``) to ``--out``.

Usage (about 50 minutes at the defaults, most of it Redrock on one core)::

    OMP_NUM_THREADS=1 python benchmarks/desi_galaxy_redrock.py --data ../shared/data --out /tmp/desi-rr
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from dzspec.io import store as zstore
from dzspec.kernels.simulate.desi import (
    CAMERAS,
    DESI_GRID_NAME,
    DESI_SIM_CLASSES,
    DesiSimConfig,
    desi_camera_fwhm,
    desi_wavelength,
)
from dzspec.models.recipes import DESI_INGREDIENTS, DesiGalaxyBasisRecipe
from dzspec.parallel.confidence import right_redshifts

C_KMS = 299792.458
RIGHT_KMS = 1000.0  # DESI's "right redshift" (|dv| < 1000 km/s), also Redrock's DELTACHI2 exclusion
GALAXY_CLASSES = (DESI_SIM_CLASSES.index("galaxy"), DESI_SIM_CLASSES.index("oii_interloper"))
REAL_FILES = ("desi_fastspecfit/coadd-4-80613-thru20210324.fits", "desi_fastspecfit/coadd-special-dark-27247.fits",
              "desi_quasarnp_everest/coadd-0-80605-first25fibers.fits")
REAL_REDROCK = {"coadd-4-80613-thru20210324.fits": "desi_fastspecfit/redrock-4-80613-thru20210324.fits",
                "coadd-special-dark-27247.fits": "desi_fastspecfit/redrock-special-dark-27247.fits"}


def lsf_resolution(wave: np.ndarray, half_width: int = 5):
    """A Redrock resolution matrix (``scipy.sparse.dia_matrix``, 2 half_width + 1 diagonals) of Gaussians with the
    simulator's LSF on the merged lattice: each pixel takes the camera whose range holds it (overlaps split at
    their middle), each column sums to 1."""
    import scipy.sparse

    config = DesiSimConfig()
    edges = {"b": 5780.0, "r": 7570.0}
    camera = np.where(wave < edges["b"], "b", np.where(wave < edges["r"], "r", "z"))
    fwhm = np.empty_like(wave)
    for name in CAMERAS:
        here = camera == name
        fwhm[here] = desi_camera_fwhm(name, wave[here], getattr(config, f"resolution_{name}"))
    sigma_pix = fwhm / 2.3548 / np.median(np.diff(wave))
    offsets = np.arange(-half_width, half_width + 1)
    kernel = np.exp(-0.5 * (offsets[:, None] / sigma_pix[None, :]) ** 2)
    kernel /= kernel.sum(axis=0, keepdims=True)
    return scipy.sparse.dia_matrix((kernel, offsets), shape=(wave.size, wave.size))


def run_redrock(wave: np.ndarray, flux: np.ndarray, ivar: np.ndarray, templates: Path) -> dict[str, np.ndarray]:
    """Redrock's ``zfind`` on spectra in memory (one process); best fit per spectrum and the seconds it took,
    template rebinning included."""
    from redrock.targets import DistTargetsCopy, Spectrum, Target
    from redrock.templates import load_dist_templates
    from redrock.zfind import zfind

    resolution = lsf_resolution(wave)
    csr = resolution.tocsr()
    targets = [Target(i, [Spectrum(wave, flux[i].astype(np.float64), ivar[i].astype(np.float64), resolution, csr,
                                   band="brz")]) for i in range(flux.shape[0])]
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # Redrock prints its progress
        distributed = DistTargetsCopy(targets)
        dtemplates = load_dist_templates(distributed.wavegrids(), templates=str(templates), mp_procs=1)
        _, zfit = zfind(distributed, dtemplates, 1, nminima=3)
    seconds = time.perf_counter() - start
    best = zfit[zfit["znum"] == 0]
    best.sort("targetid")
    return {"z": np.asarray(best["z"], float), "zwarn": np.asarray(best["zwarn"], np.int64),
            "spectype": np.asarray(best["spectype"]).astype(str), "seconds": seconds}


def run_dzspec(store: Path, group: str, basis: str | None) -> dict[str, np.ndarray]:
    """``dzspec zfind`` in a subprocess on one worker; its results and the wall seconds it took."""
    command = ["dzspec", "zfind", str(store), "--group", group, "--workers", "1", "--threads-per-worker", "1",
               "--no-progress", "--overwrite"]
    if basis:
        command += ["--basis", basis, "--name", "nmf"]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    results = zstore.open_root(store)[f"results/{group.removeprefix('spectra/')}/nmf_zfind"]
    return {"z": np.asarray(results["z"][...], float), "zwarn": np.asarray(results["zwarn"][...], np.int64),
            "confidence": np.asarray(results["confidence"][...], float), "seconds": seconds}


def right(z: np.ndarray, z_true: np.ndarray) -> np.ndarray:
    """|z - z_true| < 1000 km/s / c (1 + z_true)."""
    return right_redshifts(z, z_true, RIGHT_KMS / C_KMS)


def scores(fit: dict[str, np.ndarray], z_true: np.ndarray, masks: dict[str, np.ndarray],
           seconds_per_spectrum: float) -> dict[str, object]:
    """Good fractions overall and per mask, ZWARN == 0 kept and right."""
    good = right(fit["z"], z_true)
    trusted = fit["zwarn"] == 0
    out: dict[str, object] = {
        "n": int(z_true.size), "gf": round(float(good.mean()), 4),
        "gf_0.005(1+z)": round(float(right_redshifts(fit["z"], z_true).mean()), 4),
        "zwarn0_kept": round(float(trusted.mean()), 4),
        "zwarn0_right": round(float(good[trusted].mean()), 4) if trusted.any() else None,
        "seconds_per_spectrum": round(seconds_per_spectrum, 4),
    }
    out["gf_by"] = {name: [int(mask.sum()), round(float(good[mask].mean()), 4) if mask.any() else None]
                    for name, mask in masks.items()}
    return out


def outsiders(fit: dict[str, np.ndarray], z_true: np.ndarray, galaxy: np.ndarray) -> dict[str, object]:
    """What ZWARN == 0 does with the spectra a galaxy fit cannot describe (LAEs, empty sky fibres)."""
    trusted = fit["zwarn"] == 0
    return {"n": int((~galaxy).sum()), "zwarn0": round(float(trusted[~galaxy].mean()), 4),
            "zwarn0_right_over_all": round(float(right(fit["z"], z_true)[trusted].mean()), 4)}


SETS = {  # name: (seed, continua, class fractions of DESI_SIM_CLASSES)
    "sps": (4001, "sps", DesiGalaxyBasisRecipe().class_fractions),
    "analytic": (4002, "analytic", DesiGalaxyBasisRecipe().class_fractions),
    "mixed": (4003, "sps", DesiSimConfig().class_fractions),  # the simulator's whole mix: LAEs and sky fibres too
}


def simulate_set(path: Path, data: Path, n: int, name: str) -> None:
    from dzspec.cluster import make_client
    from dzspec.simulate import simulate

    seed, continua, fractions = SETS[name]
    paths = {key: str(data / value) for key, value in DESI_INGREDIENTS.items()}
    if continua == "analytic":
        paths.pop("templates_path")
    with make_client(n_workers=2, threads_per_worker=1) as client:
        simulate(path, "desi", n, client, seed=seed, config=DesiSimConfig(class_fractions=fractions),
                 ingredient_paths=paths, continua=continua, chunk_rows=256, progress=False)


def measure_set(name: str, store: Path, args: argparse.Namespace) -> dict[str, object]:
    import xarray as xr

    group = f"spectra/{DESI_GRID_NAME}"
    ds = xr.open_zarr(store, group=group, consolidated=False)
    z_true = ds["z_true"].values.astype(float)
    sim_class = ds["sim_class"].values
    galaxy = np.isin(sim_class, GALAXY_CLASSES)
    passive = np.isnan(ds["oii_ew_rest"].values) & (sim_class == GALAXY_CLASSES[0])
    mag = ds["mag_r"].values
    masks = {"passive": passive, "star_forming": (sim_class == GALAXY_CLASSES[0]) & ~passive,
             "oii_emitter": sim_class == GALAXY_CLASSES[1]}
    for lo, hi in ((19.5, 21.0), (21.0, 22.0), (22.0, 23.0)):
        masks[f"r_{lo}-{hi}"] = (mag >= lo) & (mag < hi)
    wave = desi_wavelength()
    flux = ds["flux"].values
    ivar = np.where(ds["mask"].values == 0, ds["ivar"].values, 0.0)
    n, n_all = flux.shape[0], min(args.n_all_templates, flux.shape[0])
    dz = run_dzspec(store, group, args.basis)
    earlier = args.reuse_redrock / f"{name}-fits.npz" if args.reuse_redrock else None
    if earlier is not None and earlier.exists():  # the same spectra, the same Redrock: its fits of that run
        fits, before = np.load(earlier), json.loads((args.reuse_redrock / "report.json").read_text())[name]
        rr = {"z": fits["redrock_z"], "zwarn": fits["redrock_zwarn"],
              "seconds": before["redrock_galaxy"]["seconds_per_spectrum"] * n}
        rr_all_scores = before["redrock_all_templates"]
    else:
        rr = run_redrock(wave, flux, ivar, args.data / "redrock-templates/templates-dzspec-galaxy-only.txt")
        rr_all = run_redrock(wave, flux[:n_all], ivar[:n_all],
                             args.data / "redrock-templates/templates-dzspec-cpu.txt")
        first = galaxy[:n_all]
        rr_all_scores = scores({k: v[first] for k, v in rr_all.items() if k != "seconds"}, z_true[:n_all][first],
                               {k: v[:n_all][first] for k, v in masks.items()}, rr_all["seconds"] / n_all)
    np.savez(args.out / f"{name}-fits.npz", z_true=z_true, galaxy=galaxy, dzspec_z=dz["z"], dzspec_zwarn=dz["zwarn"],
             redrock_z=rr["z"], redrock_zwarn=rr["zwarn"])
    on_galaxies = {k: v[galaxy] for k, v in masks.items()}
    report = {"dzspec": scores({k: v[galaxy] for k, v in dz.items() if k != "seconds"}, z_true[galaxy],
                               on_galaxies, dz["seconds"] / n),
              "redrock_galaxy": scores({k: v[galaxy] for k, v in rr.items() if k != "seconds"}, z_true[galaxy],
                                       on_galaxies, rr["seconds"] / n),
              "redrock_all_templates": rr_all_scores}
    if not galaxy.all():
        report["not_galaxies"] = {"dzspec": outsiders(dz, z_true, galaxy),
                                  "redrock_galaxy": outsiders(rr, z_true, galaxy)}
    report["speed_ratio_redrock_galaxy_over_dzspec"] = round(
        report["redrock_galaxy"]["seconds_per_spectrum"] / report["dzspec"]["seconds_per_spectrum"], 2)
    report["speed_ratio_redrock_all_over_dzspec"] = round(
        report["redrock_all_templates"]["seconds_per_spectrum"] / report["dzspec"]["seconds_per_spectrum"], 2)
    report["trials"] = {"dzspec": "0-1.7 step 0.0005 (3 401) + sub-pixel refinement",
                        "redrock_galaxy": "Redrock's GALAXY zscan (log-spaced, 0.005-1.7) + zmin fit"}
    print(f"{name}: galaxies: dzspec GF {report['dzspec']['gf']}, Redrock galaxy {report['redrock_galaxy']['gf']}, "
          f"Redrock all templates (first {n_all}) {report['redrock_all_templates']['gf']}; "
          f"{report['dzspec']['seconds_per_spectrum'] * 1e3:.1f} vs "
          f"{report['redrock_galaxy']['seconds_per_spectrum'] * 1e3:.1f} ms per spectrum"
          + (f"; not galaxies: {report['not_galaxies']}" if "not_galaxies" in report else ""), flush=True)
    return report


def plot_fits(out: Path, names: list[str]) -> Path:
    """z_pred against z_true of the galaxies, one row per test set, dzspec and Redrock (galaxy templates) side by
    side; the spectra with ZWARN == 0 in colour, the others grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(names), 2, figsize=(9, 4.3 * len(names)), squeeze=False, constrained_layout=True)
    for row, name in zip(axes, names, strict=True):
        fits = np.load(out / f"{name}-fits.npz")
        galaxy = fits["galaxy"]
        z_true = fits["z_true"][galaxy]
        for ax, code in zip(row, ("dzspec", "redrock"), strict=True):
            z, trusted = fits[f"{code}_z"][galaxy], fits[f"{code}_zwarn"][galaxy] == 0
            good = right(z, z_true)
            ax.scatter(z_true[~trusted], z[~trusted], s=4, c="0.6", label="ZWARN != 0")
            ax.scatter(z_true[trusted], z[trusted], s=4, c="C0", label="ZWARN == 0")
            ax.set(xlabel="z_true", ylabel="z_pred", xlim=(0, 1.75), ylim=(-0.05, 1.75),
                   title=f"{name}: {'dzspec desi_galaxy' if code == 'dzspec' else 'Redrock 0.21 galaxy'}, "
                         f"GF {good.mean():.3f}")
            ax.legend(fontsize=8, loc="upper left")
    path = out / "zp_zt.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def measure_real(store: Path, args: argparse.Namespace) -> dict[str, object]:
    """The real DESI coadds: both codes; the pipeline's own Redrock z where the data folder has it."""
    import xarray as xr
    from astropy.io import fits

    shutil.rmtree(store, ignore_errors=True)
    subprocess.run(["dzspec", "ingest", *[str(args.data / f) for f in REAL_FILES], "--store", str(store),
                    "--workers", "1", "--no-progress"], check=True, capture_output=True, text=True)
    group = zstore.resolve_spectra_group(zstore.open_root(store), None)
    ds = xr.open_zarr(store, group=group, consolidated=False)
    wave = ds["wavelength"].values
    flux = np.nan_to_num(ds["flux"].values)
    ivar = np.where(ds["mask"].values == 0, np.nan_to_num(ds["ivar"].values), 0.0) if "mask" in ds else \
        np.nan_to_num(ds["ivar"].values)
    dz = run_dzspec(store, group, args.basis)
    rr = run_redrock(wave, flux, ivar, args.data / "redrock-templates/templates-dzspec-cpu.txt")
    manifest = zstore.open_root(store)[group].attrs["manifest"]  # source_file indexes it
    sources = [Path(manifest[int(index)]["path"]).name for index in ds["source_file"].values]
    rows = []
    for i, source in enumerate(sources):
        pipeline = None
        if source in REAL_REDROCK:
            with fits.open(args.data / REAL_REDROCK[source]) as hdus:
                table = hdus["REDSHIFTS"].data
                pipeline = float(table["Z"][table["TARGETID"] == ds["targetid"].values[i]][0])
        rows.append({"file": source, "row": i, "dzspec_z": round(float(dz["z"][i]), 5),
                     "dzspec_zwarn": int(dz["zwarn"][i]),
                     "dzspec_confidence": round(float(dz["confidence"][i]), 3),
                     "redrock_z": round(float(rr["z"][i]), 5), "redrock_zwarn": int(rr["zwarn"][i]),
                     "redrock_spectype": str(rr["spectype"][i]), "desi_pipeline_z": pipeline})
    agree = right(dz["z"], rr["z"])
    both = (dz["zwarn"] == 0) & (rr["zwarn"] == 0)
    return {"rows": rows, "agree": round(float(agree.mean()), 4), "both_zwarn0": int(both.sum()),
            "agree_when_both_zwarn0": round(float(agree[both].mean()), 4) if both.any() else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n", type=int, default=400, help="spectra per simulated test set")
    parser.add_argument("--n-all-templates", type=int, default=100,
                        help="spectra of each set that Redrock also fits with all its templates")
    parser.add_argument("--basis", help="basis store (bases/nmf) instead of the shipped desi_galaxy one")
    parser.add_argument("--sets", nargs="+", default=[*SETS, "real"], choices=(*SETS, "real"))
    parser.add_argument("--reuse-redrock", type=Path,
                        help="an earlier --out of this benchmark on the same sets: take Redrock's fits from it")
    args = parser.parse_args(argv)
    if os.environ.get("OMP_NUM_THREADS") != "1":
        print("note: set OMP_NUM_THREADS=1 for one BLAS thread per process", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, object] = {"n": args.n, "basis": args.basis or "shipped desi_galaxy"}
    simulated = [name for name in SETS if name in args.sets]
    for name in simulated:
        store = args.out / f"test-{name}.zarr"
        if not store.exists():
            simulate_set(store, args.data, args.n, name)
        report[name] = measure_set(name, store, args)
    if simulated:
        print(f"wrote {plot_fits(args.out, simulated)}")
    if "real" in args.sets:
        report["real"] = measure_real(args.out / "real.zarr", args)
        print("real:", json.dumps(report["real"]["rows"][:2]), f"agree {report['real']['agree']}")
    (args.out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out / 'report.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
