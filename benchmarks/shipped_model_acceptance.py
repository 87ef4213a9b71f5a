"""The shipped MUSE basis on spectra it never saw: the acceptance figures of the real-data issue, and real spectra.

Test sets (``dzspec simulate``'s kernel with a test mix: >= 50 % LAEs, 10 % false sources, blends, 5 %
negative-median spectra, depths 1-141 h), made so that the training did not shape them:

* ``sps-odd``: BC03 continua (as the training) but the sky residuals of the **odd** tiles of the cube's
  chequerboard (the shipped basis saw only the even ones) and other seeds;
* ``analytic-odd``: the same residuals with the simulator's analytic continua, a different continuum family.

Each is scanned with ``dzspec zfind``'s runner and the shipped basis (noise calibration auto, nuisance terms,
confidence), and the figures of the issue are printed: GF of the regular galaxies (every class but false sources and
blends) overall and at snr_lines >= 13, of the negative-median spectra, per class, the largest share of the failures
in one window of 0.01(1+z) of predicted z, what ``zwarn == 0`` keeps and how right it is, and the true/false source
cut at log10 significance = -2. Figures: GF by snr_lines and depth, z_pred against z_true, purity-completeness of
the confidence.

Then the real MUSE spectra with a known redshift in ``shared/data``: the six Abell 478 cluster members of
``minicube_A478`` (z = 0.086, apertures of radius 3 spaxels at the catalogue positions), each listed with z,
ZWARN and confidence; and the two UDF spectra (no redshift shipped) for the record.

Usage (about 20 minutes on 2 cores)::

    python benchmarks/shipped_model_acceptance.py --data ../shared/data --out acceptance-shipped [-n 5000]
        [--basis OTHER_MODEL_STORE]   # e.g. an earlier shipped basis, on the same test sets
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np

from dzspec.cluster import make_client
from dzspec.io import store as zstore
from dzspec.kernels.metrics import good_fraction
from dzspec.kernels.simulate.muse import MUSE_CLASSES, MUSE_GRID_NAME, MuseSimConfig, MuseSimFlags
from dzspec.models import MODELS
from dzspec.models.recipes import MUSE_INGREDIENTS
from dzspec.parallel.ingest import ingest
from dzspec.parallel.zfind import run_zfind
from dzspec.results_schema import ZWarn
from dzspec.simulate import simulate

#: passive, starforming, desert, lae, false_source, blend
TEST_MIX = (0.06, 0.20, 0.08, 0.50, 0.10, 0.06)
TOLERANCE = 0.005
RESULTS = f"results/{MUSE_GRID_NAME}/nmf_zfind"


def max_failure_window(z_pred: np.ndarray, width: float = 0.01) -> float:
    """The largest share of ``z_pred`` values in one window [z, z + width (1 + z)]."""
    z = np.sort(z_pred[np.isfinite(z_pred)])
    if z.size == 0:
        return 0.0
    ends = np.searchsorted(z, z + width * (1.0 + z), side="right")
    return float((ends - np.arange(z.size)).max() / z.size)


def evaluate(store: Path, label: str, out: Path, before: Path | None = None) -> dict[str, float]:
    root = zstore.open_root(store)
    truth = root[f"spectra/{MUSE_GRID_NAME}"]
    res = root[RESULTS]
    z_true = truth["z_true"][:].astype(np.float64)
    cls = truth["sim_class"][:]
    flags = truth["sim_flags"][:]
    snr = truth["snr_lines"][:].astype(np.float64)
    depth = truth["depth_hours"][:].astype(np.float64)
    z = res["z"][:].astype(np.float64)
    zwarn = res["zwarn"][:].astype(np.int64)
    confidence = res["confidence"][:].astype(np.float64) if "confidence" in res else np.full(z.size, np.nan)
    significance = res["nmf_significance"][:].astype(np.float64)
    regular = cls <= MUSE_CLASSES.index("lae")
    right = np.abs(z - z_true) < TOLERANCE * (1.0 + z_true)
    negative = regular & ((flags & MuseSimFlags.NEGATIVE_MEDIAN) > 0)
    ao = regular & ((flags & MuseSimFlags.AO_NOTCH) > 0)
    failures = regular & ~right
    trusted = zwarn == 0
    false = cls == MUSE_CLASSES.index("false_source")
    log_sig = np.log10(np.maximum(significance, 1e-300))
    picked = log_sig > -2
    real = ~false
    report = {
        "spectra": int(z.size),
        "gf_regular": good_fraction(z[regular], z_true[regular])[0],
        "gf_regular_snr13": good_fraction(z[regular & (snr >= 13)], z_true[regular & (snr >= 13)])[0],
        "n_snr13": int((regular & (snr >= 13)).sum()),
        "gf_regular_snr5": good_fraction(z[regular & (snr >= 5)], z_true[regular & (snr >= 5)])[0],
        # what the GF would be if every spectrum with snr_lines >= 5 were right and nothing changed below: the
        # ceiling that the faint tail of the test mix puts on gf_regular
        "gf_regular_ceiling_snr5": float(np.mean(right[regular] | (snr[regular] >= 5))),
        "gf_ao_notch": good_fraction(z[ao], z_true[ao])[0],
        "gf_negative_median": good_fraction(z[negative], z_true[negative])[0],
        "n_negative_median": int(negative.sum()),
        "max_failure_window": max_failure_window(z[failures]),
        "zwarn0_keeps_regular": float(trusted[regular].mean()),
        "zwarn0_right": float(right[regular & trusted].mean()) if (regular & trusted).any() else float("nan"),
        "true_false_completeness": float(picked[real].mean()),
        "true_false_purity": float(real[picked].mean()),
    }
    for k, name in enumerate(MUSE_CLASSES[:4]):
        sel = cls == k
        report[f"gf_{name}"] = good_fraction(z[sel], z_true[sel])[0]
    print(f"[{label}] " + json.dumps(report, indent=1), flush=True)
    z_before = None
    if before is not None and (before / f"{label}.zarr").exists():  # an earlier model's scan of the same spectra
        earlier = zstore.open_root(before / f"{label}.zarr")
        if RESULTS in earlier and earlier[RESULTS].attrs.get("status") == "complete":
            z_before = earlier[RESULTS]["z"][:].astype(np.float64)
            same_truth = earlier[f"spectra/{MUSE_GRID_NAME}"]["z_true"][:]
            if not np.array_equal(same_truth, truth["z_true"][:], equal_nan=True):
                raise ValueError(f"{before}/{label}.zarr holds other spectra than {store}")
            report["gf_regular_before"] = good_fraction(z_before[regular], z_true[regular])[0]
    for name, values, edges in (("snr_lines", snr, SNR_EDGES), ("depth", depth, DEPTH_EDGES)):
        report[f"gf_by_{name}"] = dict(zip(*_gf_by_bin(values, edges, right, regular), strict=True))
        if z_before is not None:
            right_before = np.abs(z_before - z_true) < TOLERANCE * (1.0 + z_true)
            report[f"gf_by_{name}_before"] = dict(zip(*_gf_by_bin(values, edges, right_before, regular), strict=True))
    _figures(out / label, z, z_true, right, regular, snr, depth, confidence, trusted, label, z_before)
    return report


SNR_EDGES = (0, 3, 5, 7, 10, 13, 20, 40, np.inf)
DEPTH_EDGES = (0, 1.5, 3.5, 7, 15, 40, 200)


def _gf_by_bin(values, edges, right, regular) -> tuple[list[str], list[float]]:
    """GF of the regular galaxies in each bin of ``values`` holding at least 10 of them."""
    centres, fractions = [], []
    for lo, hi in itertools.pairwise(edges):
        sel = regular & (values >= lo) & (values < hi)
        if sel.sum() >= 10:
            centres.append(f"{lo:g}-{hi:g}")
            fractions.append(float(right[sel].mean()))
    return centres, fractions


def _figures(prefix: Path, z, z_true, right, regular, snr, depth, confidence, trusted, label,
             before: np.ndarray | None = None) -> None:
    """GF by snr_lines and depth (with ``before``, the z of an earlier model on the same spectra, beside), the
    failure map and the purity-completeness curve of the confidence."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(20, 4.5))
    for ax, values, edges, name in ((axes[0], snr, SNR_EDGES, "snr_lines"), (axes[1], depth, DEPTH_EDGES, "depth (h)")):
        ax.plot(*_gf_by_bin(values, edges, right, regular), "o-", label="this model")
        if before is not None:
            ax.plot(*_gf_by_bin(values, edges, np.abs(before - z_true) < TOLERANCE * (1.0 + z_true), regular), "s--",
                    color="0.5", label="before")
            ax.legend()
        ax.set_xlabel(name)
        ax.set_ylabel("GF (regular galaxies)")
        ax.set_ylim(0, 1.02)
        ax.tick_params(axis="x", rotation=45)
    axes[2].scatter(z_true[regular], z[regular], s=2, c=np.where(right[regular], "C0", "C3"))
    axes[2].set_xlabel("z_true")
    axes[2].set_ylabel("z_pred (red: failures)")
    finite = regular & np.isfinite(confidence)
    cuts = np.linspace(0, 1, 101)
    purity = [right[finite & (confidence >= c)].mean() if (finite & (confidence >= c)).any() else np.nan
              for c in cuts]
    completeness = [(finite & (confidence >= c)).sum() / max(regular.sum(), 1) for c in cuts]
    axes[3].plot(completeness, purity, label="confidence >= cut")
    axes[3].plot([trusted[regular].mean()], [right[regular & trusted].mean()], "r*", ms=12, label="zwarn == 0")
    axes[3].set_xlabel("completeness (of regular galaxies)")
    axes[3].set_ylabel("purity (right redshifts)")
    axes[3].legend()
    fig.suptitle(f"shipped MUSE basis on {label}")
    fig.tight_layout()
    fig.savefig(f"{prefix}.png", dpi=80)
    plt.close(fig)


def real_spectra(data: Path, out: Path, client, basis_path: Path, basis_name: str) -> list[dict[str, object]]:
    """The Abell 478 members (z = 0.086) from the real cube, and the two UDF spectra."""
    cube = data / "muse_mpdaf_cubes" / "minicube_A478.fits.gz"
    rows = [line.split() for line in (data / "muse_mpdaf_cubes" / "minicube_A478_cat.txt").read_text().splitlines()[1:]]
    members = [(int(r[0]), float(r[1]), float(r[2]), float(r[3])) for r in rows if r[3] != "--"]
    store = out / "real.zarr"
    options = {"muse_cube": {"positions": [(ra, dec) for _, ra, dec, _ in members], "positions_world": True,
                             "radius": 3.0}}
    ingest([cube], store, client, format="muse_cube", options=options, progress=False)
    listed = []
    for group in zstore.spectra_groups(zstore.open_root(store)):
        run_zfind(store, basis_path, client, basis_name=basis_name, group=group, progress=False)
    for path in ("DR2_001032.fits", "mosaic_01102.fits"):
        udf = out / f"udf_{path}.zarr"
        ingest([data / "muse_udf_format" / path], udf, client, progress=False)
        for group in zstore.spectra_groups(zstore.open_root(udf)):
            run_zfind(udf, basis_path, client, basis_name=basis_name, group=group, progress=False)
    for source, known in [(store, [m[3] for m in members]), (out / "udf_DR2_001032.fits.zarr", [np.nan]),
                          (out / "udf_mosaic_01102.fits.zarr", [np.nan])]:
        root = zstore.open_root(source)
        for _, group in zstore.results_groups(root):
            for i in range(group["z"].shape[0]):
                z = float(group["z"][i])
                entry = {"source": Path(source).name, "row": i, "z_known": known[i] if i < len(known) else np.nan,
                         "z": round(z, 5), "zwarn": int(group["zwarn"][i]),
                         "zwarn_bits": [bit.name for bit in ZWarn if int(group["zwarn"][i]) & bit],
                         "confidence": float(group["confidence"][i]) if "confidence" in group else None,
                         "deltachi2": float(group["deltachi2"][i])}
                listed.append(entry)
                print("real:", json.dumps(entry), flush=True)
    return listed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the shared data folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("-n", type=int, default=5000, help="spectra of the sps-odd test set (default 5000)")
    parser.add_argument("--n-analytic", type=int, default=2500, help="spectra of the analytic-odd set (2500)")
    parser.add_argument("--workers", type=int)
    parser.add_argument("--basis", type=Path, default=MODELS["muse"].path,
                        help="basis store to measure (default: the shipped muse one), e.g. an earlier model")
    parser.add_argument("--basis-name", default=MODELS["muse"].group, help="its basis name (default nmf)")
    parser.add_argument("--before", type=Path,
                        help="the --out of a run with an earlier model: its GF by snr_lines and depth goes beside")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    config = MuseSimConfig(class_fractions=TEST_MIX)
    reports = {}
    with make_client(n_workers=args.workers) as client:
        for label, continua, seed, n in (("sps-odd", "sps", 1103, args.n),
                                         ("analytic-odd", "analytic", 1104, args.n_analytic)):
            ingredients = {k: str(args.data / v) for k, v in MUSE_INGREDIENTS.items()
                           if continua == "sps" or k != "ssp_path"}
            store = args.out / f"{label}.zarr"
            t0 = time.perf_counter()
            simulate(store, "muse", n, client, seed=seed, config=config, continua=continua, chunk_rows=512,
                     ingredient_paths={**ingredients, "residual_part": "odd"}, progress=False)
            run = run_zfind(store, args.basis, client, basis_name=args.basis_name, progress=False)
            print(f"[{label}] simulated and scanned {n} spectra in {time.perf_counter() - t0:.0f} s "
                  f"({run.summary()})", flush=True)
            reports[label] = evaluate(store, label, args.out, args.before)
        reports["real"] = real_spectra(args.data, args.out, client, args.basis, args.basis_name)
    (args.out / "report.json").write_text(json.dumps(reports, indent=1, default=float))


if __name__ == "__main__":
    main()
