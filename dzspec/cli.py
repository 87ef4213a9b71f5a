"""The ``dzspec`` command line, one subcommand per job (``dzspec --help`` lists them all; each has its own ``--help``
with every option and its default).

Imports are lazy so that ``dzspec --help`` answers at once; the CLI owns cluster creation (scripts that create
clusters need a ``__main__`` guard, the console script has one).
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dzspec.engines.madgics.params import LaeScanParams
from dzspec.engines.nmf.params import BlendParams, ZfindParams
from dzspec.params import add_flags, from_args

__all__ = ["main"]

log = logging.getLogger("dzspec")


def _add_cluster_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("cluster")
    group.add_argument("--scheduler", metavar="ADDRESS", help="connect to a running scheduler (tcp://host:port or "
                       "a scheduler JSON file) instead of starting a LocalCluster")
    group.add_argument("--workers", type=int, help="LocalCluster worker processes (default: one per core)")
    group.add_argument("--threads-per-worker", type=int, default=1, help="threads per worker (default 1)")
    _add_progress_args(group)


def _add_progress_args(parser: Any) -> None:
    bars = parser.add_mutually_exclusive_group()
    bars.add_argument("--no-progress", action="store_true", help="no progress bars")
    bars.add_argument("--progress", action="store_true",
                      help="progress bars even when stderr is no terminal (default: only on a terminal)")


def _progress(args: argparse.Namespace) -> bool | None:
    """--progress: True, --no-progress: False, neither: None (bars only when stderr is a terminal)."""
    return True if args.progress else False if args.no_progress else None


def _add_runner_args(parser: argparse.ArgumentParser) -> None:
    """The block runner's options, shared by every command that writes per-spectrum results."""
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="compute only the blocks not yet done")
    mode.add_argument("--overwrite", action="store_true", help="discard existing results and start again")
    parser.add_argument("--block-rows", type=int, help="spectra per task (default: sized by compute, two blocks "
                        "per worker thread at least, one storage chunk at most)")


def _runner_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """What :func:`_add_runner_args` and :func:`_add_cluster_args` parsed, as the runner's keyword arguments."""
    return {"group": args.group, "resume": args.resume, "overwrite": args.overwrite, "block_rows": args.block_rows,
            "progress": _progress(args)}


def _client(args: argparse.Namespace) -> Any:
    from dzspec.cluster import make_client

    client = make_client(args.scheduler, n_workers=args.workers, threads_per_worker=args.threads_per_worker)
    print(f"dask dashboard: {client.dashboard_link}", flush=True)
    return client


def _command(args: argparse.Namespace, name: str, **extra: Any) -> int:
    """Run :mod:`dzspec.parallel.commands`' ``name`` (what ``dzspec run``'s step of that kind runs too) with the
    options ``args`` holds under its keywords' names, a cluster started once it asks for one, and ``extra``."""
    import inspect

    from dzspec.parallel import commands

    function = getattr(commands, name)
    keywords = inspect.signature(function).parameters
    options = {key: value for key, value in vars(args).items() if key in keywords}
    if "progress" in keywords:
        options["progress"] = _progress(args)
    if "client" in keywords:
        options["client"] = lambda: _client(args)
    return 0 if function(**options, **extra) else 1


def _cmd_ingest(args: argparse.Namespace) -> int:
    from dzspec.parallel.ingest import ingest

    options = {"desi": {"keep_resolution": True}} if args.keep_resolution else {}
    with _client(args) as client:
        report = ingest(args.inputs, args.store, client, format=args.format, options=options,
                        chunk_bytes=int(args.chunk_mb * 2**20), skip_unknown=args.skip_unknown,
                        progress=_progress(args))
    print(report.summary())
    return 0 if report.ok else 1


def _cmd_validate(args: argparse.Namespace) -> int:
    from dzspec.io.validate import validate_store

    problems = validate_store(args.store, check_values=not args.structure_only)
    for problem in problems:
        print(problem)
    errors = [p for p in problems if p.severity == "error"]
    print(f"{args.store}: {'INVALID' if errors else 'valid'} ({len(errors)} errors, "
          f"{len(problems) - len(errors)} warnings)")
    return 1 if errors else 0


def _cmd_status(args: argparse.Namespace) -> int:
    from dzspec.io import store as zstore

    root = zstore.open_root(args.store)
    for group_path in zstore.spectra_groups(root):
        group = root[group_path]
        manifest = zstore.manifest_of(group)
        pending = sum(e["status"] != "done" for e in manifest)
        print(f"{group_path}: {group['flux'].shape[0]} spectra x {group['wavelength'].shape[0]} wavelengths, "
              f"chunk {group.attrs['chunk_rows']}; {len(manifest)} input files ({pending} pending)")
    for path, group in zstore.results_groups(root):
        done = zstore.done_blocks(group)
        print(f"{path}: {int(done.sum())}/{done.size} blocks done, status {group.attrs.get('status')}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    return _command(args, "export")


def _cmd_run_kernel(args: argparse.Namespace) -> int:
    from dzspec.kernels import KERNELS
    from dzspec.parallel.runner import run_kernel

    with _client(args) as client:
        report = run_kernel(args.store, KERNELS[args.kernel], client, results=args.results,
                            max_in_flight=args.max_in_flight, retries=args.retries, **_runner_kwargs(args))
    print(report.summary())
    return 0 if report.complete else 1


def _cmd_simulate(args: argparse.Namespace) -> int:
    from dzspec.simulate import simulate

    paths = dict(item.split("=", 1) for item in args.ingredient or [])
    with _client(args) as client:
        report = simulate(args.store, args.survey, args.n, client, seed=args.seed, ingredient_paths=paths,
                          chunk_rows=args.chunk_rows, progress=_progress(args), continua=args.continua)
    print(report.summary())
    return 0 if report.complete else 1


def _cmd_train(args: argparse.Namespace) -> int:
    return _command(args, "train")


def _cmd_select_rank(args: argparse.Namespace) -> int:
    return _command(args, "select_rank")


def _cmd_zfind(args: argparse.Namespace) -> int:
    from dzspec.parallel.zfind import run_zfind

    if args.chi2_decimate < 1:  # before a cluster starts
        raise ValueError(f"--chi2-decimate must be at least 1, not {args.chi2_decimate}")
    params = {"z_min": args.z_min, "z_max": args.z_max, **from_args(args, ZfindParams)}
    if args.nuisance_order is not None:
        params["nuisance_order"] = args.nuisance_order
    basis, name = (args.basis, args.name) if args.basis else _shipped("basis", args.store, args.group)
    with _client(args) as client:
        report = run_zfind(args.store, basis, client, basis_name=name, params=params,
                           noise_calibration=args.noise_calibration, sky_nuisance=args.sky_nuisance,
                           **_runner_kwargs(args))
    print(report.summary())
    return 0 if report.complete else 1


def _cmd_calibrate_noise(args: argparse.Namespace) -> int:
    return _command(args, "calibrate_noise")


def _cmd_calibrate_confidence(args: argparse.Namespace) -> int:
    return _command(args, "calibrate_confidence")


def _cmd_calibrate_zerr(args: argparse.Namespace) -> int:
    return _command(args, "calibrate_zerr")


def _cmd_run(args: argparse.Namespace) -> int:
    from dzspec.cluster import client_from_config
    from dzspec.parallel.pipeline import load_config, run_pipeline

    config = load_config(args.config)  # a bad config is reported before any cluster starts
    with client_from_config(config.cluster) as client:
        print(f"dask dashboard: {client.dashboard_link}")
        run_pipeline(config, client, resume=args.resume, overwrite=args.overwrite, progress=_progress(args),
                     report=args.report)
    return 0


def _cmd_blends(args: argparse.Namespace) -> int:
    return _command(args, "blends", **_runner_kwargs(args))


def _cmd_priors(args: argparse.Namespace) -> int:
    return _command(args, "priors")


def _cmd_lae(args: argparse.Namespace) -> int:
    from dzspec.engines.madgics.interlopers import INTERLOPER_BITS, select_lae
    from dzspec.io import store as zstore
    from dzspec.parallel.lae import run_lae

    params = from_args(args, LaeScanParams)
    prior, name = (args.prior, args.name) if args.prior else _shipped("prior", args.store, args.group)
    with _client(args) as client:
        report = run_lae(args.store, prior, client, prior_name=name, params=params,
                         noise_calibration=args.noise_calibration, **_runner_kwargs(args))
    print(report.summary())
    if report.complete:
        results = zstore.open_results(args.store, report.results)
        score, warn = results.lae_abs_dchi2_cal.values, results.zwarn.values
        vetoed = (score > args.threshold) & ((warn.astype("int64") & INTERLOPER_BITS) != 0)
        print(f"LAE candidates (calibrated |dchi2| > {args.threshold:g}, no interloper flag): "
              f"{int(select_lae(score, warn, args.threshold).sum())} of {score.size}; "
              f"{int(vetoed.sum())} above the threshold flagged (low-z interloper or no line); zwarn == 0 (trust): "
              f"{int((warn == 0).sum())}")
    return 0 if report.complete else 1


def _cmd_stats(args: argparse.Namespace) -> int:
    return _command(args, "stats")


def _cmd_convergence(args: argparse.Namespace) -> int:
    return _command(args, "convergence")


def _cmd_gallery(args: argparse.Namespace) -> int:
    from importlib import import_module

    module = import_module(f"dzspec.viz.gallery_{args.survey}")
    shared = Path(args.shared_data) if args.shared_data else None
    getattr(module, f"{args.survey}_gallery")(Path(args.out), shared, seed=args.seed)
    print(f"gallery: {args.out}")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from dzspec.viz.inspector import serve_inspector

    serve_inspector(args.store, group=args.group, results=args.results, who=args.who, where=args.where,
                    port=args.port, address=args.address, show=args.show,
                    allow_websocket_origin=args.allow_websocket_origin,
                    announce=lambda url: print(f"dzspec inspect: {args.store} at {url} (Ctrl-C stops)", flush=True))
    return 0


def _cmd_formats(args: argparse.Namespace) -> int:
    from dzspec.io.registry import readers

    for name, reader in readers().items():
        print(f"{name:10s} priority {reader.priority:4d}  {reader.description}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from dzspec.models import MODELS, models_dir

    if args.action == "list":
        for model in MODELS.values():
            print(f"{model.name:12s} {model.kind:6s} {model.survey:5s} {model.checksum[:12]}  {model.path}  "
                  f"--name {model.group}\n{'':12s} {model.description}")
        if not MODELS:
            print(f"no shipped models in {models_dir()}")
        return 0
    from dzspec.models.recipes import RECIPES, install_model, make_model

    if args.name not in RECIPES:
        raise ValueError(f"dzspec models remake NAME: NAME is one of {', '.join(RECIPES)}")
    if args.data is None or args.work is None:
        raise ValueError("dzspec models remake needs --data (the folder of real ingredients) and --work")
    with _client(args) as client:
        path, entry = make_model(args.name, args.data, args.work, client)
    shipped = MODELS.get(args.name)
    same = shipped is not None and shipped.checksum == entry["checksum"]
    print(f"{args.name}: {path} checksum {entry['checksum']}; "
          + ("identical to the shipped one" if same else "differs from the shipped one" if shipped else "new"))
    if args.install:
        print(f"installed into {install_model(args.name, path, entry)}")
    return 0


def _shipped(kind: str, store: str, group: str | None) -> tuple[str, str]:
    """The shipped model of ``kind`` for the spectra of ``store`` (by their grid): its store path and name."""
    from dzspec.models import default_model_for_store

    model = default_model_for_store(kind, store, group)
    print(f"no --{kind} given: the shipped {model.name!r} {kind} ({model.path}, {model.checksum[:12]})", flush=True)
    return str(model.path), model.group


def _cmd_demo(args: argparse.Namespace) -> int:
    from dzspec.demo import run_demo

    with _client(args) as client:
        return run_demo(Path(args.out), client, nfiles=args.files, spectra_per_file=args.spectra_per_file,
                        progress=_progress(args))


def build_parser() -> argparse.ArgumentParser:
    from dzspec._version import __version__
    from dzspec.kernels import KERNELS

    parser = argparse.ArgumentParser(prog="dzspec", description="Survey-scale redshifts on Zarr and Dask.")
    parser.add_argument("--version", action="version", version=f"dzspec {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ingest", help="read spectra files (DESI, MUSE, SDSS, generic) into a Zarr store")
    p.add_argument("inputs", nargs="+", help="files or directories (searched recursively)")
    p.add_argument("--store", required=True, help="the Zarr store (created if missing)")
    p.add_argument("--format", help="reader name for every file (default: detected from each file's content)")
    p.add_argument("--keep-resolution", action="store_true", help="keep DESI resolution matrices")
    p.add_argument("--skip-unknown", action="store_true", help="report files no reader recognises as skipped, "
                   "not failed (for directories holding catalogues, READMEs...)")
    p.add_argument("--chunk-mb", type=float, default=64.0, help="flux bytes per chunk of a new group (MiB)")
    _add_cluster_args(p)
    p.set_defaults(func=_cmd_ingest)

    p = sub.add_parser("validate", help="report what is wrong in a store, and where")
    p.add_argument("store", help="the Zarr store")
    p.add_argument("--structure-only", action="store_true", help="skip the chunk-by-chunk scan of values")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("status", help="spectra groups, input files and results progress of a store")
    p.add_argument("store", help="the Zarr store")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser(
        "export", help="write a store's redshifts as a Redrock-style FITS table, Parquet or CSV",
        description="One row per input spectrum, in store order, with its RUN_STATUS (ok, not_run, failed). FITS: "
        "REDSHIFTS (Redrock's columns and types, then dzspec's) and FIBERMAP HDUs with provenance keywords; "
        "Parquet: one table, FIBERMAP columns joined; CSV: the same with vector columns flattened (COEFF_0 ...). "
        "Rows without a result hold NaN, ZWARN NODATA and SPECTYPE ''. The chi2(z) curves are not exported. "
        "See dzspec.io.export for every rule.")
    p.add_argument("store", help="the Zarr store")
    p.add_argument("-o", "--output", required=True,
                   help="output file; its suffix chooses the format: .fits, .fits.gz, .parquet or .csv")
    p.add_argument("--group", help="spectra group, <grid> or spectra/<grid> (default: every group of the store, in "
                   "one table with a GROUP column when there are several)")
    p.add_argument("--results", nargs="+", metavar="R",
                   help="results groups, by name under results/<grid>/ (nmf_zfind, madgics_lae) or full path: the "
                   "first gives Z, ZWARN and Redrock's columns, the others follow with the prefix NMF_ or LAE_ "
                   "(a group of another name: its name upper-cased) (default: nmf_zfind then madgics_lae, those "
                   "present)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file (default: refuse)")
    p.add_argument("--model-spectra", metavar="ROWS",
                   help="also write the best-fit model of these rows of the primary results (all, start:stop, or "
                   "3,5,8; all is opt-in): MODELS (ROW, TARGETID, MODEL, MODEL_NUISANCE or MODEL_SKY and MODEL_LAE "
                   "on the spectra's own grid) and MODEL_WAVELENGTH tables; FITS HDUs, beside the output in "
                   "Parquet/CSV (default: none)")
    p.add_argument("--model-where", metavar="EXPR",
                   help="model spectra of the rows (of --model-spectra, else all) where EXPR holds over the results' "
                   "per-spectrum columns, e.g. 'zwarn == 0 and z > 3' (default: none)")
    p.add_argument("--vi", action="store_true",
                   help="also write the visual inspections of dzspec inspect (the store's vi group) as a VI table "
                   "(default: no)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("run-kernel", help="run a block kernel over a store through the block runner")
    p.add_argument("store", help="the Zarr store")
    p.add_argument("--kernel", default="summary", choices=sorted(KERNELS), help="kernel (default: summary)")
    p.add_argument("--group", help="spectra group (default: the store's only one)")
    p.add_argument("--results", help="results group path (default: results/<grid>/<kernel>)")
    _add_runner_args(p)
    p.add_argument("--max-in-flight", type=int, help="tasks submitted at once (default: 2 per worker thread)")
    p.add_argument("--retries", type=int, default=2, help="retries per block for transient errors")
    _add_cluster_args(p)
    p.set_defaults(func=_cmd_run_kernel)

    p = sub.add_parser("simulate", help="simulate a MUSE-like or DESI-like survey with known truth into a store")
    p.add_argument("--survey", choices=("muse", "desi"), required=True, help="which survey to simulate")
    p.add_argument("-n", "--n", type=int, required=True, help="number of spectra (targets)")
    p.add_argument("--store", required=True, help="the Zarr store (created if missing)")
    p.add_argument("--seed", type=int, default=0, help="spectrum i depends only on (seed, survey, i)")
    p.add_argument("--ingredient", action="append", metavar="NAME=PATH",
                   help="optional ingredient file for the survey's loader, e.g. sky_path=sky-uves.fits")
    p.add_argument("--chunk-rows", type=int, help="spectra per chunk of a new group (default: 64 MiB of flux)")
    p.add_argument("--continua", choices=("analytic", "sps"), default="analytic",
                   help="galaxy continua: the built-in analytic shape (default) or stellar populations, which need "
                        "the grid as an ingredient (MUSE ssp_path=, DESI templates_path=, e.g. "
                        "sps/bc03_miles_subset.npz)")
    _add_cluster_args(p)
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser("train", help="train an NMF basis (nearly-NMF, sequential ranks) on spectra with known z")
    p.add_argument("store", help="spectra store whose training rows have a finite z_true")
    p.add_argument("--out", required=True, help="store to write the basis into (bases/<name>)")
    p.add_argument("--name", default="nmf", help="basis name (default: nmf)")
    p.add_argument("--rank", type=int, default=10, help="number of basis vectors (default: 10, B26)")
    p.add_argument("--group", help="spectra group (default: the store's only one)")
    p.add_argument("--grid", choices=("paper", "moose"), default="paper", help="rest-frame grid constants")
    p.add_argument("--method", choices=("nearly", "shift"), default="nearly", help="nearly-NMF (default) or Shift-NMF "
                   "(Green & Bailey 2024; about twice the iterations)")
    p.add_argument("--max-iter", type=int, default=1300, help="iterations per rank at most")
    p.add_argument("--tol", type=float, default=1e-3, help="stop when the relative chi2 decrease is below this")
    p.add_argument("--max-spectra", type=int, help="train on a random subset of this size")
    p.add_argument("--block-rows", type=int, default=256, help="spectra per worker-resident block")
    p.add_argument("--seed", type=int, default=100921, help="seed of the initial basis (default: 100921)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing basis of that name")
    _add_cluster_args(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("select-rank", help="choose the NMF rank by K-fold cross-validation (B26 3.5: GF and MAE)")
    p.add_argument("store", help="spectra store whose rows have a finite z_true")
    p.add_argument("--out", type=Path, required=True, help="folder for rank_selection.{zarr,csv,png}")
    p.add_argument("--ranks", default="6-13", help="ranks to compare, e.g. 6-13 (B26)")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds (default: 5)")
    p.add_argument("--group", help="spectra group (default: the store's only one)")
    p.add_argument("--grid", choices=("paper", "moose"), default="paper", help="rest-frame grid constants")
    p.add_argument("--max-iter", type=int, default=1300, help="training iterations per rank at most")
    p.add_argument("--tol", type=float, default=1e-3, help="stop a rank when the relative chi2 decrease is below this")
    p.add_argument("--max-spectra", type=int, help="cross-validate on a random subset of this size")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset and the fold assignment")
    _add_cluster_args(p)
    p.set_defaults(func=_cmd_select_rank)

    p = sub.add_parser("zfind", help="NMF redshifts of every spectrum of a store (exact fast chi2(z) scan)")
    p.add_argument("store", help="the Zarr store")
    p.add_argument("--basis", help="store holding the basis (bases/<name>); default: the shipped basis for the "
                                    "store's survey (dzspec models)")
    p.add_argument("--name", default="nmf", help="basis name (default: nmf)")
    p.add_argument("--group", help="spectra group (default: the store's only one)")
    p.add_argument("--z-min", type=float, help="first trial redshift (default: the basis's scan range, else 0)")
    p.add_argument("--z-max", type=float, help="last trial redshift (default: the basis's scan range, else 6.7; "
                   "the shipped desi_galaxy basis: 0-1.7)")
    add_flags(p, ZfindParams)  # --dz, --weighting, --no-refine, --store-chi2, --chi2-decimate
    p.add_argument("--nuisance-order", type=int, metavar="N",
                   help="free-sign Legendre terms P0..PN over the observed window beside the basis: P0 absorbs sky "
                        "pedestals (default 0, or -1 = none with --weighting unweighted); 1-2 also absorb tilts but "
                        "let bright continua be fitted by the polynomial at an empty high z; -1 scans the basis "
                        "alone as B26")
    p.add_argument("--sky-nuisance", choices=("auto", "off"), default="auto",
                   help="auto (default): also fit the basis's night-sky continuum with a free sign (sky over- and "
                        "under-subtraction; the shipped muse basis has one); off: the Legendre terms only")
    p.add_argument("--noise-calibration", default="auto", metavar="auto|off|NAME",
                   help="per-wavelength variance inflation at sky-residual pixels (dzspec calibrate-noise); auto "
                        "(default): the store's own, measured first when missing and the group has >= 300 spectra")
    _add_runner_args(p)
    _add_cluster_args(p)
    p.set_defaults(func=_cmd_zfind)

    p = sub.add_parser("calibrate-noise", help="measure a spectra group's per-wavelength excess scatter over its "
                                               "pipeline variance (sky-subtraction residuals) for zfind")
    p.add_argument("store", help="the Zarr store")
    p.add_argument("--group", help="spectra group (default: the store's only one)")
    p.add_argument("--name", default="noise", help="calibration name (default: noise, the one zfind's auto uses)")
    p.add_argument("--window", type=int, default=51, help="running-median width standing for the continuum (px)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing calibration of that name")
    _add_cluster_args(p)
    p.set_defaults(func=_cmd_calibrate_noise)

    p = sub.add_parser("calibrate-confidence", help="learn the NMF confidence model (and the LOW_CONFIDENCE cut) "
                                                    "from a scanned simulated store, stored with its basis")
    p.add_argument("store", help="a store with known redshifts (z_true), already scanned by zfind with --basis")
    p.add_argument("--results", required=True, help="its zfind results group, e.g. results/<grid>/nmf_zfind")
    p.add_argument("--basis", required=True, help="store holding the basis the scan used (bases/<name>)")
    p.add_argument("--name", default="nmf", help="basis name (default: nmf)")
    p.add_argument("--purity", type=float, default=0.995,
                   help="purity of zwarn == 0 on the calibration half (default 0.995)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fit/calibration split (default 0)")
    p.set_defaults(func=_cmd_calibrate_confidence)

    p = sub.add_parser("calibrate-zerr", help="calibrate the NMF ZERR (the chi2 parabola's width) on a scanned "
                                              "simulated store and store it with its basis, or --check it on another")
    p.add_argument("store", help="a store with known redshifts (z_true and --snr), already scanned by zfind")
    p.add_argument("--results", required=True, help="its zfind results group, e.g. results/<grid>/nmf_zfind")
    p.add_argument("--basis", help="store holding the basis the scan used (bases/<name>); with --check, the pulls "
                   "use its stored calibration instead of the scan's own zerr (default: none)")
    p.add_argument("--name", default="nmf", help="basis name (default: nmf)")
    p.add_argument("--snr", default="snr_lines", help="the per-spectrum S/N to bin by (default: snr_lines)")
    p.add_argument("--snr-edges", default="5,13,30", help="inner S/N bin edges (default: 5,13,30)")
    p.add_argument("--z-edges", default="1.5,2.9",
                   help="inner edges of the redshift ranges calibrated apart, by the measured z: optical lines, the "
                   "rest-UV of the redshift desert, Lya (default: 1.5,2.9; '' for one range)")
    p.add_argument("--check", action="store_true",
                   help="store nothing: report the pull widths on a store the calibration did not see (default: "
                   "calibrate and store)")
    p.set_defaults(func=_cmd_calibrate_zerr)

    p = sub.add_parser("run", help="run a pipeline config: store, cluster and steps (any command that works on a "
                                   "store: ingest, simulate, train, zfind, lae, blends, stats, export...) in one "
                                   "TOML file")
    p.add_argument("config", help="the TOML config (see dzspec.parallel.pipeline and deploy/)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="compute only the blocks not yet done in every step, "
                      "keep the outputs steps made already")
    mode.add_argument("--overwrite", action="store_true", help="discard existing results and start again")
    p.add_argument("--report", help="Dask performance report (default: <store>.report.html beside the store)")
    _add_progress_args(p)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("blends", help="NMF blend detection after zfind: rescan with the first galaxy's fit fixed "
                                      "(B26 4.4)")
    p.add_argument("store", help="the Zarr store")
    p.add_argument("--basis", required=True, help="store holding the basis zfind used (bases/<name>)")
    p.add_argument("--name", default="nmf", help="basis name (default: nmf)")
    p.add_argument("--group", help="spectra group (default: the store's only one)")
    p.add_argument("--zfind-results", help="the first scan (default: results/<grid>/nmf_zfind)")
    add_flags(p, BlendParams)  # --t-blend, --tolerance
    _add_runner_args(p)
    _add_cluster_args(p)
    p.set_defaults(func=_cmd_blends)

    p = sub.add_parser("priors", help="MADGICS sky-residual and LAE priors from spectra stores (U25 2.2-2.3)")
    p.add_argument("--sky", required=True, help="store of sky-residual spectra (e.g. sky fibres)")
    p.add_argument("--sky-group", help="its spectra group (default: the only one)")
    p.add_argument("--sky-class", nargs="*", default=[], metavar="CLASS",
                   help="use only rows of these sim_class values (simulated stores: sky_residual)")
    p.add_argument("--lae", required=True, help="store of LAE spectra with z_true")
    p.add_argument("--lae-group", help="its spectra group (default: the only one)")
    p.add_argument("--lae-class", nargs="*", default=[], metavar="CLASS",
                   help="use only rows of these sim_class values (simulated stores: lae lae_double_peak)")
    p.add_argument("--max-sky", type=int, help="at most this many sky spectra (random, --seed)")
    p.add_argument("--max-lae", type=int, help="at most this many LAE spectra (random, --seed)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --max-sky/--max-lae subsets (default: 0)")
    p.add_argument("--out", required=True, help="store to write priors/<name> to (e.g. the survey store)")
    p.add_argument("--name", default="lae", help="prior name, priors/<name> (default: lae)")
    p.add_argument("--rescale", choices=("fit", "paper"), default="fit",
                   help="flux rescaling y(l): refit to these sky spectra (default) or U25 Eq. 7 as printed")
    p.add_argument("--n-sky", type=int, default=50, help="sky eigenvectors (U25: 50)")
    p.add_argument("--n-lae", type=int, default=2, help="LAE eigenvectors (U25: 2)")
    p.add_argument("--variance-model", choices=("conserve", "propagate"), default="conserve",
                   help="ivar on the log grid: each pixel's share of the native information (default), or "
                        "sum w^2 var as METHODS 2.1 (over-counts the blue end); every scan with the prior follows it")
    p.add_argument("--overwrite", action="store_true", help="replace an existing prior of that name")
    _add_cluster_args(p)
    p.set_defaults(func=_cmd_priors)

    p = sub.add_parser("lae", help="MADGICS Lya-emitter redshifts of every spectrum of a store (U25)")
    p.add_argument("store", help="the Zarr store")
    p.add_argument("--prior", help="store holding the priors (priors/<name>, from dzspec priors); default: the "
                                    "shipped DESI priors (dzspec models)")
    p.add_argument("--name", default="lae", help="prior name (default: lae)")
    p.add_argument("--group", help="spectra group (default: the store's only one)")
    add_flags(p, LaeScanParams)  # --z-min, --n-shifts, ..., --threshold (dchi2_min)
    p.add_argument("--noise-calibration", default="auto", metavar="auto|off|NAME",
                   help="per-wavelength variance inflation at sky-residual pixels, as for zfind (default auto)")
    _add_runner_args(p)
    _add_cluster_args(p)
    p.set_defaults(func=_cmd_lae)

    p = sub.add_parser("stats", help="survey statistics of a result group: GF/MAE by bins, purity, completeness, ROC")
    p.add_argument("store", help="the Zarr store")
    p.add_argument("--results", required=True, help="result group, e.g. results/<grid>/nmf_zfind")
    p.add_argument("--by", nargs="*", default=[], metavar="COLUMN[:EDGES]",
                   help="GF/MAE binned by per-spectrum columns, e.g. z_true:0,1,3,7 snr_lines:0,3,5,7,10,inf mag_f775w")
    p.add_argument("--nbins", type=int, default=8, help="equal bins for a --by column given without edges")
    p.add_argument("--split", metavar="COLUMN[:EDGES]",
                   help="repeat every table per value (or per bin) of this column, e.g. depth_hours:0,5,20,200")
    p.add_argument("--z", default="z", help="predicted redshift column (default z)")
    p.add_argument("--truth", default="z_true", help="true redshift column (default z_true)")
    p.add_argument("--tol", type=float, default=0.005, help="good if |dz| < tol (1+z) (default 0.005, B26)")
    p.add_argument("--form", choices=("relative", "absolute"), default="relative",
                   help="'absolute': good if |dz| < tol (U25)")
    p.add_argument("--score", help="detection score column for purity/completeness/ROC (e.g. nmf_significance)")
    p.add_argument("--log10", action="store_true", help="sweep log10 of the score (B26 true/false sources)")
    p.add_argument("--thresholds", metavar="LO:HI:N", help="threshold sweep (default: the score's range, 101)")
    p.add_argument("--marked", type=float, help="report purity and completeness at this threshold (B26: -2)")
    p.add_argument("--positive", choices=("source", "correct"), default="source",
                   help="what the score should select: real sources (sim_class not --false-class) or correct z")
    p.add_argument("--false-class", nargs="*", default=["false_source"], help="sim_class values that are not sources")
    p.add_argument("--rows", metavar="START:STOP", help="only these rows (e.g. a held-out test set: 5369:)")
    p.add_argument("--name", help="tables go to stats/<name>/ (default: the result group's name)")
    p.add_argument("--figures", help="write PNG figures to this folder")
    _add_cluster_args(p)
    p.set_defaults(func=_cmd_stats)

    p = sub.add_parser("convergence", help="exposure-time convergence of LAE redshifts from individual exposures "
                                           "(U25 4.3, Fig. 9)")
    p.add_argument("store", help="store holding the individual exposures")
    p.add_argument("--prior", required=True, help="store holding the MADGICS prior (dzspec priors)")
    p.add_argument("--name", default="lae", help="prior name (default: lae)")
    p.add_argument("--exposures", help="exposures group (default: the store's only *-exposures-* group)")
    p.add_argument("--n-max", type=int, default=15, help="subsets of 1..N exposures (U25: 15)")
    p.add_argument("--draws", type=int, default=10, help="bootstrap sets per n (U25: 10)")
    p.add_argument("--min-exposures", type=int, help="targets with fewer get NaN and a flag (default: --n-max)")
    p.add_argument("--seed", type=int, default=0, help="seed of the exposure draws (default: 0)")
    p.add_argument("--estimator", choices=("std", "iqr"), default="std", help="sigma_z of the draws (U25: std)")
    p.add_argument("--flux-column", default="flux_lya", help="line flux column of the coadds (Fig. 9 rows)")
    p.add_argument("--z-min", type=float, default=2.0, help="redshift of the first shift (U25: 2)")
    p.add_argument("--n-shifts", type=int, default=4501, help="one-pixel shifts scanned (U25: 4501)")
    p.add_argument("--out", default="stats/exposure_convergence", help="output group in the store")
    p.add_argument("--overwrite", action="store_true", help="replace an output made with other parameters")
    p.add_argument("--figure", help="write the Fig. 9 grid as this PNG")
    _add_cluster_args(p)
    p.set_defaults(func=_cmd_convergence)

    p = sub.add_parser("gallery", help="figure of simulated spectra of each class beside real ones")
    p.add_argument("--survey", choices=("muse", "desi"), required=True, help="which survey's gallery")
    p.add_argument("--out", required=True, help="PNG file")
    p.add_argument("--shared-data", help="folder of real spectra to show beside (e.g. ../shared/data)")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulated examples (default: 0)")
    p.set_defaults(func=_cmd_gallery)

    p = sub.add_parser("models", help="list the shipped default models, or remake one from its recipe")
    p.add_argument("action", nargs="?", choices=("list", "remake"), default="list",
                   help="list the shipped models (default) or remake one")
    p.add_argument("name", nargs="?", help="with remake: the model (muse, desi_lae, desi_galaxy)")
    p.add_argument("--data", type=Path, help="with remake: the folder of real ingredients (shared/data)")
    p.add_argument("--work", type=Path, help="with remake: folder for the simulations and the new model")
    p.add_argument("--install", action="store_true", help="with remake: replace the shipped model and its entry")
    _add_cluster_args(p)
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser(
        "inspect", help="look at spectra with their fit and chi2(z) in the browser, and record visual inspections",
        description="Serves a page (Bokeh server) that steps through the spectra of one spectra group with the fit "
        "of one results group: flux with its 1-sigma band, the best-fit model (MADGICS: its sky-residual and LAE "
        "components), rest-frame lines at z, chi2(z) or the LAE delta-chi2(z) with the candidates (recomputed with "
        "the run's own model when the run did not store it). Filters: ZWARN, class and truth (when the store has "
        "them), a score range, a z range, inspected or not. Keys: j/right next, k/left previous, 1-4, 0, 6 save "
        "with that quality flag (MARZ QOP: 4 certain, 3 probable, 2 possible, 1 no redshift, 0 none, 6 star) and go "
        "on, s save, c next candidate as z; a click on the chi2 plot takes the candidate there as z. Inspections "
        "(flag, z override, comment, who, when) are saved in the store's vi/<grid>/<kernel> group "
        "(dzspec.io.vi.load_inspections reads them).")
    p.add_argument("store", help="the Zarr store")
    p.add_argument("--group", help="spectra group, <grid> or spectra/<grid> (default: the results' input, or the "
                   "store's only one)")
    p.add_argument("--results", help="results group, by name under results/<grid>/ (nmf_zfind, madgics_lae) or full "
                   "path (default: nmf_zfind, else madgics_lae, of the spectra group)")
    p.add_argument("--where", metavar="EXPR", help="only rows for which this expression over the results' "
                   "per-spectrum fields holds, e.g. \"zwarn == 0 and z > 3\" (default: every row)")
    p.add_argument("--who", help="inspector name saved with each inspection (default: the login name)")
    p.add_argument("--port", type=int, default=5006, help="TCP port of the page (default 5006; 0: a free port)")
    p.add_argument("--address", default="localhost",
                   help="address to listen on (default localhost; from a cluster, tunnel it with ssh -L)")
    p.add_argument("--allow-websocket-origin", action="append", metavar="HOST[:PORT]",
                   help="further host the page may be opened from, with an --address other than localhost "
                   "(repeatable; default: none)")
    p.add_argument("--show", action=argparse.BooleanOptionalAction, default=True,
                   help="open the page in the default browser (default: --show)")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("formats", help="list the registered readers")
    p.set_defaults(func=_cmd_formats)

    p = sub.add_parser("demo",
                       help="simulate and ingest spectra, train an NMF basis, measure redshifts, plot")
    p.add_argument("--out", default="demo-output", help="output directory (default: demo-output)")
    p.add_argument("--files", type=int, default=8, help="simulated input files")
    p.add_argument("--spectra-per-file", type=int, default=500, help="spectra per simulated file (default: 500)")
    _add_cluster_args(p)
    p.set_defaults(func=_cmd_demo)
    for command in sub.choices.values():  # `dzspec CMD --help` opens with what the command does
        command.description = command.description or next(
            (a.help for a in sub._choices_actions if a.dest == command.prog.split()[-1]), None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dzspec`` console script."""
    args = build_parser().parse_args(argv)
    # Our own stage messages only; distributed keeps its own handlers and levels.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("dzspec: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    log.propagate = False
    warnings.formatwarning = lambda message, category, *_, **__: f"dzspec: {category.__name__}: {message}\n"
    from dzspec.errors import InputError, StoreError

    try:
        return int(args.func(args))
    except (InputError, StoreError, ValueError, ImportError) as exc:
        print(f"dzspec {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
