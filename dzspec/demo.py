"""The embedded default job behind ``dzspec demo``, needing no data beyond what it simulates:

1. synthetic input files -> parallel ingest -> validate -> summary kernel through the block runner -> plot;
2. a simulated MUSE-like survey written straight into the same store -> summary kernel -> gallery of its classes;
3. the NMF redshift engine on that survey: a small basis trained on its first spectra, ``zfind`` over all of them,
   the good fraction on the spectra the basis never saw and the zp-versus-zt figure.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["run_demo"]


def run_demo(out: Path, client: Any, *, nfiles: int = 8, spectra_per_file: int = 500, muse_spectra: int = 2048,
             nmf_rank: int = 5, nmf_iterations: int = 25, progress: bool = True) -> int:
    """Run the demo into ``out`` (replaced if it exists) on ``client``; return a process exit code."""
    from dzspec.io.store import open_results, open_spectra
    from dzspec.io.validate import validate_store
    from dzspec.kernels.summary import SUMMARY
    from dzspec.parallel.ingest import ingest
    from dzspec.parallel.runner import run_kernel
    from dzspec.simulate import simulate
    from dzspec.testing import write_synthetic_files
    from dzspec.viz.gallery_muse import muse_gallery

    if out.exists():
        shutil.rmtree(out)
    inputs = write_synthetic_files(out / "inputs", nfiles=nfiles, spectra_per_file=spectra_per_file, seed=42)
    print(f"simulated {nfiles} input files of {spectra_per_file} spectra in {out / 'inputs'}")
    store = out / "spectra.zarr"
    # Chunks of 512 spectra (8 MB of flux) rather than the production 64 MB, so that the runner has several
    # blocks to spread over the workers even in this small demo.
    report = ingest(inputs, store, client, chunk_rows=512, progress=progress)
    print(report.summary())
    problems = [p for p in validate_store(store) if p.severity == "error"]
    for problem in problems:
        print(problem)
    print(f"validate: {store} is {'INVALID' if problems else 'valid'}")
    group = next(iter(report.groups))
    run = run_kernel(store, SUMMARY, client, group=group, progress=progress)
    print(run.summary())
    spectra = open_spectra(store, group)
    results = open_results(store, run.results).compute()
    figure = _plot(spectra, results, out / "summary.png")
    snr = results["median_snr"].values
    print(f"median S/N per pixel: median {np.nanmedian(snr):.3f}, 90th percentile {np.nanpercentile(snr, 90):.3f}")

    simulated = simulate(store, "muse", muse_spectra, client, seed=42, chunk_rows=512, progress=progress)
    print(simulated.summary())
    muse_run = run_kernel(store, SUMMARY, client, group=simulated.group, progress=progress)
    print(muse_run.summary())
    muse = open_spectra(store, simulated.group)
    classes = muse.sim_class.attrs["flag_meanings"].split()
    snr_cont = muse.snr_cont.values
    for code, name in enumerate(classes):
        members = muse.sim_class.values == code
        print(f"  simulated {name:13s}: {int(members.sum()):5d} spectra, median snr_cont "
              f"{np.nanmedian(snr_cont[members]) if members.any() else float('nan'):.2f}")
    gallery = muse_gallery(out / "muse_gallery.png", None, seed=42)
    zfind, zp_zt = _nmf_redshifts(store, simulated.group, client, out / "nmf_zp_zt.png", rank=nmf_rank,
                                  iterations=nmf_iterations, progress=progress)
    print(f"outputs: {store} ({group} + {run.results}; {simulated.group} + {muse_run.results} + {zfind.results}), "
          f"plots {figure} {gallery} {zp_zt}")
    ok = report.ok and run.complete and simulated.complete and muse_run.complete and zfind.complete
    return 0 if ok and not problems else 1


def _nmf_redshifts(store: Path, group: str, client: Any, figure: Path, *, rank: int, iterations: int,
                   progress: bool) -> tuple[Any, Path]:
    """Train on the first three quarters of the spectra with a known redshift, scan all, score the rest."""
    from dzspec.io.bases import save_basis
    from dzspec.io.store import open_results, open_spectra
    from dzspec.kernels.metrics import good_fraction
    from dzspec.kernels.restframe import PAPER_GRID
    from dzspec.parallel.train import select_training_rows, train_basis
    from dzspec.parallel.zfind import run_zfind
    from dzspec.viz.nmf import plot_zp_zt

    _, known = select_training_rows(store, group)
    pool = known[: 3 * known.size // 4]
    result, training = train_basis(store, client, rank, group=group, rows=pool, max_iter=iterations)
    print(f"nmf: rank-{rank} basis trained on {pool.size} spectra in {sum(result.iterations)} iterations "
          f"(per rank stage: {result.iterations})")
    save_basis(store, "nmf", result, PAPER_GRID, training_sha256=training, overwrite=True)
    report = run_zfind(store, store, client, group=group, overwrite=True, progress=progress)
    print(report.summary())
    spectra = open_spectra(store, group)
    z_pred = open_results(store, report.results)["z"].values
    test = np.arange(int(pool[-1]) + 1, spectra.sizes["spectrum"])
    z_true = spectra.z_true.values[test]
    known_test = np.isfinite(z_true)
    gf, good, total = good_fraction(z_pred[test][known_test], z_true[known_test])
    print(f"nmf: good fraction {gf:.3f} ({good}/{total}) on held-out spectra with a true redshift "
          f"(|dz| < 0.005 (1 + z))")
    plot_zp_zt(z_pred[test][known_test], z_true[known_test], figure,
               title=f"dzspec demo: NMF rank {rank}, held-out GF {gf:.3f}")
    return report, figure


def _plot(spectra: Any, results: Any, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, left, right) = plt.subplots(3, 1, figsize=(9, 10), constrained_layout=True)
    brightest = np.argsort(results["wmean_flux"].values)[-3:]
    for row in brightest:
        spectrum = spectra.isel(spectrum=int(row)).compute()
        top.plot(spectrum.wavelength, spectrum.flux, lw=0.5,
                 label=f"targetid {int(spectrum.targetid)} (z_true {float(spectrum.z_true):.3f})")
    top.set(xlabel="vacuum wavelength [Å]", ylabel=f"flux [{spectra.flux.attrs.get('units', '')}]",
            title="three brightest simulated spectra")
    top.legend(fontsize=8)
    left.hist(results["median_snr"].values, bins=60, color="C0")
    left.set(xlabel="median S/N per pixel", ylabel="spectra", title="summary kernel: median S/N")
    right.scatter(spectra.z_true.values, results["wmean_flux"].values, s=2, alpha=0.5)
    right.set(xlabel="z_true", ylabel="inverse-variance weighted mean flux", title="summary kernel: mean flux")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
