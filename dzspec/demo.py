"""The embedded default job behind ``dzspec demo``, needing no data beyond what it simulates:

1. synthetic input files -> parallel ingest -> validate -> summary kernel through the block runner -> plot;
2. a simulated MUSE-like survey written straight into the same store -> summary kernel -> gallery of its classes;
3. the NMF redshift engine on that survey with the shipped MUSE basis (no training): ``zfind`` over all of it, the
   good fraction, what ``zwarn == 0`` keeps, and the zp-versus-zt figure;
4. the MADGICS LAE engine with the shipped DESI priors on a simulated DESI-like survey: ``lae``, the candidates,
   their purity and accuracy;
5. the NMF engine on the galaxies of that DESI survey with the shipped DESI galaxy basis: ``zfind`` over 0-1.7.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["run_demo"]


def run_demo(out: Path, client: Any, *, nfiles: int = 8, spectra_per_file: int = 500, muse_spectra: int = 2048,
             desi_spectra: int = 512, progress: bool = True) -> int:
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
    zfind, zp_zt = _nmf_redshifts(store, simulated.group, client, out / "nmf_zp_zt.png", progress=progress)
    lae = _lae_redshifts(store, client, desi_spectra, progress=progress)
    galaxies = _desi_galaxy_redshifts(store, client, progress=progress)
    print(f"outputs: {store} ({group} + {run.results}; {simulated.group} + {muse_run.results} + {zfind.results}; "
          f"{lae.results} + {galaxies.results}), plots {figure} {gallery} {zp_zt}")
    ok = (report.ok and run.complete and simulated.complete and muse_run.complete and zfind.complete
          and lae.complete and galaxies.complete)
    return 0 if ok and not problems else 1


def _shipped_zfind(store: Path, group: str, client: Any, model: str, scored: Any, *, label: str, what: str,
                   progress: bool) -> tuple[Any, np.ndarray, np.ndarray, float]:
    """``zfind`` over ``group`` with the shipped basis ``model`` (which never saw these spectra), scored on the rows
    ``scored(spectra)`` selects, and what ``zwarn == 0`` keeps of them; returns the run report, the predicted and
    true redshifts of those rows and their good fraction."""
    from dzspec.io.store import open_results, open_spectra
    from dzspec.kernels.metrics import good_fraction
    from dzspec.models import MODELS
    from dzspec.parallel.zfind import run_zfind

    basis = MODELS[model]
    print(f"{label}: the shipped {basis.name!r} basis ({basis.description})")
    report = run_zfind(store, basis.path, client, basis_name=basis.group, group=group, overwrite=True,
                       progress=progress)
    print(report.summary())
    spectra, results = open_spectra(store, group), open_results(store, report.results)
    z_pred, z_true, zwarn = results["z"].values, spectra.z_true.values, results["zwarn"].values
    rows = scored(spectra)
    gf, good, total = good_fraction(z_pred[rows], z_true[rows])
    trusted = rows & (zwarn == 0)
    gf_trusted, _, kept = good_fraction(z_pred[trusted], z_true[trusted])
    print(f"{label}: good fraction {gf:.3f} ({good}/{total}) of {what}; zwarn == 0 keeps {kept} of them, "
          f"{gf_trusted:.3f} right")
    return report, z_pred[rows], z_true[rows], gf


def _nmf_redshifts(store: Path, group: str, client: Any, figure: Path, *, progress: bool) -> tuple[Any, Path]:
    """``zfind`` with the shipped MUSE basis over the survey, scored on every spectrum with a true redshift."""
    from dzspec.viz.nmf import plot_zp_zt

    report, z_pred, z_true, gf = _shipped_zfind(
        store, group, client, "muse", lambda spectra: np.isfinite(spectra.z_true.values), label="nmf",
        what="the spectra with a true redshift (|dz| < 0.005 (1 + z))", progress=progress)
    plot_zp_zt(z_pred, z_true, figure, title=f"dzspec demo: shipped NMF basis, GF {gf:.3f}")
    return report, figure


def _lae_redshifts(store: Path, client: Any, nspectra: int, *, progress: bool) -> Any:
    """A simulated DESI-like survey scanned by ``lae`` with the shipped MADGICS priors."""
    from dzspec.engines.madgics.interlopers import select_lae
    from dzspec.io.store import open_results, open_spectra
    from dzspec.kernels.metrics import good_fraction
    from dzspec.models import MODELS
    from dzspec.parallel.lae import run_lae
    from dzspec.simulate import simulate

    simulated = simulate(store, "desi", nspectra, client, seed=42, progress=progress)
    print(simulated.summary())
    prior = MODELS["desi_lae"]
    print(f"lae: the shipped {prior.name!r} priors ({prior.description})")
    report = run_lae(store, prior.path, client, prior_name=prior.group, group=simulated.group, overwrite=True,
                     progress=progress)
    print(report.summary())
    spectra = open_spectra(store, simulated.group)
    results = open_results(store, report.results)
    classes = spectra.sim_class.attrs["flag_meanings"].split()
    lae = np.isin(spectra.sim_class.values, [classes.index("lae"), classes.index("lae_double_peak")])
    selected = select_lae(results["lae_abs_dchi2_cal"].values, results["zwarn"].values)
    z_pred, z_true = results["z"].values, spectra.z_true.values
    gf, good, _ = good_fraction(z_pred[lae & selected], z_true[lae & selected], form="absolute")
    print(f"lae: {int(selected.sum())} LAE candidates among {nspectra} targets ({int(lae.sum())} simulated LAEs); "
          f"{int((lae & selected).sum())} are LAEs, {good} of them within 0.005 of z_true ({gf:.3f}); purity "
          f"{(lae & selected).sum() / max(selected.sum(), 1):.3f}")
    return report


def _desi_galaxy_redshifts(store: Path, client: Any, *, progress: bool) -> Any:
    """The DESI survey's coadds scanned by ``zfind`` with the shipped DESI galaxy basis; GF of its galaxies."""
    from dzspec.kernels.simulate.desi import DESI_GRID_NAME

    def galaxies(spectra: Any) -> np.ndarray:
        classes = spectra.sim_class.attrs["flag_meanings"].split()
        return np.isin(spectra.sim_class.values, [classes.index("galaxy"), classes.index("oii_interloper")])

    report, *_ = _shipped_zfind(store, f"spectra/{DESI_GRID_NAME}", client, "desi_galaxy", galaxies,
                                label="zfind (DESI)", what="the galaxies and [O II] emitters", progress=progress)
    return report


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
