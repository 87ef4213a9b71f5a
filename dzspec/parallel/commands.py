"""What the commands that work on a store do, shared by ``dzspec CMD`` (:mod:`dzspec.cli`) and the steps of
``dzspec run`` (:mod:`dzspec.parallel.pipeline`): one code path, the same defaults.

Each function takes the command's options as keywords named as its long options (``--max-iter`` is ``max_iter``)
with the command's defaults, reports what it did through ``echo`` (the lines the command prints) and returns
whether the work is complete (the command's exit status 0). ``client`` is a ``distributed.Client``, used and left
open, or a callable that starts one (the CLI's), called once the options and inputs have been checked and closed at
the end. Imports are lazy, so that the CLI loads only what the command it runs needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from os import PathLike
from pathlib import Path
from typing import Any

from dzspec.engines.nmf.params import BlendParams

__all__ = ["blends", "calibrate_confidence", "calibrate_noise", "calibrate_zerr", "convergence", "export",
           "parse_edges", "parse_ranks", "parse_rows", "parse_thresholds", "priors", "select_rank", "stats", "train"]

Echo = Callable[[str], None]
#: A client, or a callable that starts one (closed when the command ends).
ClientLike = Any
PathArg = str | PathLike[str]


@contextmanager
def _connected(client: ClientLike) -> Iterator[Any]:
    if client is None or hasattr(client, "submit"):
        yield client
    else:
        with client() as started:
            yield started


def _grid(name: str) -> Any:
    from dzspec.kernels.restframe import MOOSE_GRID, PAPER_GRID

    grids = {"paper": PAPER_GRID, "moose": MOOSE_GRID}
    if name not in grids:
        raise ValueError(f"grid must be one of {', '.join(grids)}, not {name!r}")
    return grids[name]


def parse_edges(edges: str | Sequence[float]) -> tuple[float, ...]:
    """Edges given as ``"5,13,30"`` (the CLI's form; ``""`` for none) or as a sequence of numbers.

    Examples
    --------
    >>> parse_edges("5,13,30"), parse_edges(""), parse_edges([1.5, 3])
    ((5.0, 13.0, 30.0), (), (1.5, 3.0))
    """
    if isinstance(edges, str):
        return tuple(float(e) for e in edges.split(",") if e.strip())
    return tuple(float(e) for e in edges)


def parse_ranks(ranks: str | Sequence[int]) -> range | list[int]:
    """``"6-13"`` (or ``"8"``) as the ranks 6 to 13; a sequence of ranks as itself.

    Examples
    --------
    >>> list(parse_ranks("6-9")), list(parse_ranks("4")), parse_ranks([2, 3])
    ([6, 7, 8, 9], [4], [2, 3])
    """
    if not isinstance(ranks, str):
        return [int(r) for r in ranks]
    lo, _, hi = ranks.partition("-")
    return range(int(lo), int(hi or lo) + 1)


def train(store: PathArg, client: ClientLike, *, out: PathArg, name: str = "nmf", rank: int = 10,
          group: str | None = None, grid: str = "paper", method: str = "nearly", max_iter: int = 1300,
          tol: float = 1e-3, max_spectra: int | None = None, block_rows: int = 256, seed: int = 100921,
          overwrite: bool = False, echo: Echo = print) -> bool:
    """``dzspec train``: an NMF basis trained on the rows of ``store`` with a finite ``z_true``, saved as
    ``out``/bases/``name`` (:func:`dzspec.parallel.train.train_and_save`; a rerun resumes from its checkpoint)."""
    from dzspec.parallel.train import train_and_save

    grid_constants = _grid(grid)
    with _connected(client) as c:
        path, result, nspectra = train_and_save(
            store, out, name, c, rank, group=group, grid=grid_constants, max_spectra=max_spectra, seed=seed,
            overwrite=overwrite, method=method, max_iter=max_iter, tol=tol, block_rows=block_rows)
    echo(f"basis {out}/{path}: rank {rank}, {nspectra} spectra, iterations {result.iterations}, "
         f"final chi2/pixel {result.chi2_history[-1]:.4g}")
    return True


def select_rank(store: PathArg, client: ClientLike, *, out: PathArg, ranks: str | Sequence[int] = "6-13",
                folds: int = 5, group: str | None = None, grid: str = "paper", max_iter: int = 1300,
                tol: float = 1e-3, max_spectra: int | None = None, seed: int = 0, echo: Echo = print) -> bool:
    """``dzspec select-rank``: K-fold cross-validation of the NMF rank
    (:func:`dzspec.parallel.rank_selection.cross_validate_ranks`), written to ``out``/rank_selection.{zarr,csv,png}."""
    from dzspec.parallel.rank_selection import cross_validate_ranks
    from dzspec.parallel.train import select_training_rows
    from dzspec.viz.nmf import plot_rank_selection

    chosen = parse_ranks(ranks)
    grid_constants = _grid(grid)
    group, rows = select_training_rows(store, group, max_spectra=max_spectra, seed=seed)
    with _connected(client) as c:
        ds = cross_validate_ranks(store, c, ranks=chosen, folds=folds, group=group, rows=rows, seed=seed,
                                  grid=grid_constants, train={"max_iter": max_iter, "tol": tol})
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    ds.to_zarr(folder / "rank_selection.zarr", mode="w", consolidated=False)
    table = ds[["gf_mean", "gf_std", "mae_mean", "mae_std"]].to_dataframe()
    table.to_csv(folder / "rank_selection.csv")
    plot_rank_selection(ds, folder / "rank_selection.png")
    echo(table.to_string(float_format=lambda v: f"{v:.4f}"))
    echo(f"chosen rank {ds.attrs['chosen_rank']} ({ds.attrs['rule']})")
    echo(f"wrote {out}/rank_selection.zarr, .csv, .png")
    return True


def priors(client: ClientLike, *, sky: PathArg, lae: PathArg, out: PathArg, sky_group: str | None = None,
           sky_class: Sequence[str] = (), lae_group: str | None = None, lae_class: Sequence[str] = (),
           max_sky: int | None = None, max_lae: int | None = None, seed: int = 0, name: str = "lae",
           rescale: str = "fit", n_sky: int = 50, n_lae: int = 2, variance_model: str = "conserve",
           overwrite: bool = False, echo: Echo = print) -> bool:
    """``dzspec priors``: the MADGICS sky-residual and LAE priors (:func:`dzspec.parallel.lae.build_lae_prior`) of
    the rows :func:`~dzspec.parallel.lae.prior_rows` picks, saved as ``out``/priors/``name``."""
    import json

    from dzspec.parallel.lae import build_lae_prior, prior_rows

    sky_rows = prior_rows(sky, sky_group, sky_class, limit=max_sky, seed=seed)
    lae_rows = prior_rows(lae, lae_group, lae_class, z_name="z_true", limit=max_lae, seed=seed)
    echo(f"priors: {sky_rows.size} sky spectra from {sky}, {lae_rows.size} LAE spectra from {lae}")
    with _connected(client) as c:
        _, summary = build_lae_prior(c, (sky, sky_group, sky_rows), (lae, lae_group, lae_rows), out=out, name=name,
                                     rescale=rescale, n_sky=n_sky, n_lae=n_lae, variance_model=variance_model,
                                     overwrite=overwrite)
    echo(json.dumps({k: v for k, v in summary.items() if not k.endswith("_source")}, indent=1))
    echo(f"priors: {out}/priors/{name}")
    return True


def blends(store: PathArg, client: ClientLike, *, basis: PathArg, name: str = "nmf", zfind_results: str | None = None,
           t_blend: float = BlendParams.t_blend, tolerance: float = BlendParams.tolerance,
           params: Mapping[str, Any] | None = None, echo: Echo = print, **runner: Any) -> bool:
    """``dzspec blends``: NMF blend detection after zfind (:func:`dzspec.parallel.blends.run_blends`); ``params``
    set the blend kernel's other parameters, ``runner`` goes to the block runner (group, resume, overwrite,
    block_rows, progress)."""
    from dzspec.io import store as zstore
    from dzspec.parallel.blends import run_blends

    with _connected(client) as c:
        report = run_blends(store, basis, c, basis_name=name, zfind_results=zfind_results,
                            params={**(params or {}), "t_blend": t_blend, "tolerance": tolerance}, **runner)
    echo(report.summary())
    if report.complete:
        flags = zstore.open_results(store, report.results).blend_flag.values
        echo(f"blend candidates (score > {t_blend:g}): {int(flags.sum())} of {flags.size}")
    return bool(report.complete)


def convergence(store: PathArg, client: ClientLike, *, prior: PathArg, name: str = "lae", exposures: str | None = None,
                n_max: int = 15, draws: int = 10, min_exposures: int | None = None, seed: int = 0,
                estimator: str = "std", flux_column: str = "flux_lya", z_min: float = 2.0, n_shifts: int = 4501,
                out: str = "stats/exposure_convergence", overwrite: bool = False, figure: PathArg | None = None,
                progress: bool | None = None, echo: Echo = print) -> bool:
    """``dzspec convergence``: exposure-time convergence of LAE redshifts from individual exposures
    (:func:`dzspec.parallel.exposure_convergence.exposure_convergence`), tables in ``store``/``out``."""
    import numpy as np

    from dzspec.parallel.exposure_convergence import exposure_convergence

    with _connected(client) as c:
        report = exposure_convergence(store, prior, c, exposures=exposures, prior_name=name, n_max=n_max,
                                      n_draws=draws, min_exposures=min_exposures, seed=seed, estimator=estimator,
                                      flux_name=flux_column, z_min=z_min, n_shifts=n_shifts, out=out,
                                      overwrite=overwrite, progress=progress)
    grid = report.grid
    echo(f"{report.ntargets} targets in {report.nblocks} blocks: {report.already_done} already done, "
         f"{report.computed} computed, {len(report.failed)} failed; tables in {store}/{out}")
    for i, threshold in enumerate(grid.flux_threshold.values):
        cells = " ".join(f"{f:4.2f}" if np.isfinite(f) else "   -" for f in grid.converged_fraction.values[i])
        echo(f"  line flux >= {threshold:g}: {cells}")
    if figure:
        from dzspec.viz.exposure import plot_exposure_convergence

        plot_exposure_convergence(grid.converged_fraction.values, grid["count"].values,
                                  np.r_[grid.exptime_lo.values, grid.exptime_hi.values[-1]],
                                  grid.flux_threshold.values, figure)
        echo(f"figure: {figure}")
    return bool(report.complete)


def calibrate_noise(store: PathArg, client: ClientLike, *, group: str | None = None, name: str = "noise",
                    window: int = 51, overwrite: bool = False, progress: bool | None = None,
                    echo: Echo = print) -> bool:
    """``dzspec calibrate-noise``: a spectra group's per-wavelength excess scatter over its pipeline variance
    (:func:`dzspec.parallel.noise_calibration.calibrate_noise`), stored for zfind's ``noise_calibration``."""
    from dzspec.parallel.noise_calibration import calibrate_noise as measure

    with _connected(client) as c:
        calibration = measure(store, group=group, name=name, window=window, overwrite=overwrite, client=c,
                              progress=progress)
    scale = calibration.scale
    echo(f"{store}: {calibration.attrs['n_spectra']} spectra, {int((scale > 1).sum())} of {scale.size} pixels "
         f"inflated (max x{scale.max():.2f}); sha256 {calibration.sha256[:12]}")
    return True


def calibrate_confidence(store: PathArg, *, results: str, basis: PathArg, name: str = "nmf", purity: float = 0.995,
                         seed: int = 0, echo: Echo = print) -> bool:
    """``dzspec calibrate-confidence``: the NMF confidence model and its LOW_CONFIDENCE cut
    (:func:`dzspec.parallel.confidence.calibrate_confidence`), stored with the basis. No cluster."""
    from dzspec.parallel.confidence import calibrate_confidence as fit

    report = fit(store, results, basis, basis_name=name, purity=purity, seed=seed)
    echo(f"{basis}/bases/{name}: confidence model stored; LOW_CONFIDENCE below {report['threshold']:.4f}: "
         f"on the {report['calibration_spectra']} calibration spectra zwarn == 0 is "
         f"{report['calibration_purity']:.4f} right (without it {report['calibration_purity_without_confidence']:.4f})"
         f" and keeps {report['calibration_kept_of_known_z']:.3f} of those with a redshift")
    return True


def calibrate_zerr(store: PathArg, *, results: str, basis: PathArg | None = None, name: str = "nmf",
                   snr: str = "snr_lines", snr_edges: str | Sequence[float] = "5,13,30",
                   z_edges: str | Sequence[float] = "1.5,2.9", check: bool = False, echo: Echo = print) -> bool:
    """``dzspec calibrate-zerr``: the NMF ZERR calibration (:func:`dzspec.parallel.confidence.calibrate_zerr`),
    stored with the basis, or with ``check`` only the pull widths reported. No cluster."""
    from dzspec.parallel.confidence import calibrate_zerr as fit

    if not check and not basis:
        raise ValueError("calibrate-zerr stores the calibration with a basis: give --basis (or --check)")
    edges, z_bounds_inner = parse_edges(snr_edges), parse_edges(z_edges)
    report = fit(store, results, basis, basis_name=name, snr=snr, edges=edges, z_edges=z_bounds_inner,
                 save=not check)
    if "zerr_scale" in report:
        z_bounds = ["0", *(str(e) for e in report["zerr_z_edges"]), "inf"]
        ranges = "; ".join(f"z {lo}-{hi}: scale {s:.4g}, floor {f:.3g}" for lo, hi, s, f in
                           zip(z_bounds[:-1], z_bounds[1:], report["zerr_scale"], report["zerr_floor"], strict=True))
        echo(f"{basis}/bases/{name}: ZERR calibration {'checked' if check else 'stored'}: zerr = "
             f"sqrt((scale sigma)^2 + (floor (1+z))^2) with {ranges}")
    bounds = ["-inf", *(str(e) for e in edges), "inf"]
    for lo, hi, width, count in zip(bounds[:-1], bounds[1:], report["pull_widths"], report["counts"], strict=True):
        echo(f"{snr} {lo}-{hi}: {count} right redshifts, pull width (IQR/1.349) {width:.3f}")
    return True


def export(store: PathArg, *, output: PathArg, group: str | None = None, results: Sequence[str] | None = None,
           overwrite: bool = False, model_spectra: str | None = None, model_where: str | None = None,
           vi: bool = False, echo: Echo = print) -> bool:
    """``dzspec export``: the store's redshifts as a Redrock-style FITS table, Parquet or CSV
    (:func:`dzspec.io.export.write_export`), with model spectra and visual inspections when asked. No cluster."""
    from dzspec.errors import StoreError
    from dzspec.io.export import primary_results, write_export

    extra = {}
    if model_spectra is not None or model_where is not None:
        from dzspec.model_spectra import model_spectra as best_fits
        from dzspec.model_spectra import models_tables, parse_rows

        paths = primary_results(store, group, results)
        if len(paths) != 1:
            raise StoreError(f"{store}: --model-spectra needs one spectra group (--group): the export holds "
                             f"{sorted(paths)}")
        rows = parse_rows(model_spectra) if model_spectra is not None else None
        extra = models_tables(best_fits(store, next(iter(paths.values())), rows, where=model_where))
    if vi:
        from astropy.table import Table

        from dzspec.io.vi import load_inspections

        columns = load_inspections(store, group=group)
        extra["VI"] = Table({key.upper(): values for key, values in columns.items()}, meta={"EXTNAME": "VI"})
    path = write_export(store, output, group=group, results=results, overwrite=overwrite, extra_tables=extra)
    echo(f"{store}: redshifts written to {path}" + (f" with {', '.join(extra)}" if extra else ""))
    return True


def parse_thresholds(text: str | None) -> Any:
    """``"LO:HI:N"`` as N thresholds from LO to HI (None for none).

    Examples
    --------
    >>> parse_thresholds("0:1:3").tolist()
    [0.0, 0.5, 1.0]
    """
    if not text:
        return None
    import numpy as np

    lo, hi, count = text.split(":")
    return np.linspace(float(lo), float(hi), int(count))


def parse_rows(text: str | None) -> slice | None:
    """``"START:STOP"`` (either may be empty) as a slice (None for all rows).

    Examples
    --------
    >>> parse_rows("5369:"), parse_rows(":10")
    (slice(5369, None, None), slice(None, 10, None))
    """
    if not text:
        return None
    start, _, stop = text.partition(":")
    return slice(int(start) if start else None, int(stop) if stop else None)


def stats(store: PathArg, client: ClientLike, *, results: str, by: Sequence[str] = (), nbins: int = 8,
          split: str | None = None, z: str = "z", truth: str = "z_true", tol: float = 0.005, form: str = "relative",
          score: str | None = None, log10: bool = False, thresholds: str | None = None, marked: float | None = None,
          positive: str = "source", false_class: Sequence[str] = ("false_source",), rows: str | None = None,
          name: str | None = None, figures: PathArg | None = None, echo: Echo = print) -> bool:
    """``dzspec stats``: survey statistics of a result group (:func:`dzspec.parallel.stats.survey_report`), tables
    in ``store``/stats/``name``."""
    from dzspec.parallel.stats import survey_report

    sweep, selected = parse_thresholds(thresholds), parse_rows(rows)
    with _connected(client):
        tables = survey_report(store, results, by=list(by), split=split, score=score, log10=log10, thresholds=sweep,
                               marked=marked, positive=positive, false_classes=list(false_class), z=z, truth=truth,
                               tol=tol, form=form, nbins=nbins, rows=selected, name=name, figures=figures)
    for key, table in tables.items():
        if key.startswith("gf_"):
            echo(f"{key} ({table.attrs['form']} tol {table.attrs['tol']}):")
            for i in range(table.sizes["bin"]):
                row = table.isel(bin=i)
                echo(f"  [{float(row.bin_lo):g}, {float(row.bin_hi):g}]  n={int(row.n)}  GF={float(row.gf):.3f} "
                     f"({float(row.gf_lo):.3f}-{float(row.gf_hi):.3f})  MAE={float(row.mae):.2e}")
        elif key.startswith("threshold_"):
            attrs = table.attrs
            line = (f"{key}: AUC {attrs['auc']:.3f}; nearest (0,1) at {attrs['best_threshold']:g} "
                    f"(TPR {attrs['best_tpr']:.3f}, FPR {attrs['best_fpr']:.3f})")
            if "marked" in attrs:
                line += (f"; at {attrs['marked']:g}: purity {attrs['purity_at_marked']:.3f}, completeness "
                         f"{attrs['completeness_at_marked']:.3f}")
            echo(line)
    echo(f"tables in {store}/stats/{name or results.rstrip('/').rsplit('/', 1)[-1]}/"
         + (f"; figures in {figures}" if figures else ""))
    return True
