"""Golden outputs of every engine on small fixed stores, to prove that a redesign changes no result.

``python -m tests.golden --record`` writes ``tests/data/golden.npz`` (values) and ``tests/data/golden.json`` (the
SHA-256 of each array's bytes); :mod:`tests.test_golden` recomputes them and compares: integers and flags exactly,
floats to 1e-9 relative (a BLAS or FFT library update may move the last bits; the hashes say whether a change was
bit-identical on the machine that recorded them: ``python -m tests.golden --compare``).

The stores: a real DESI coadd and a real MUSE spectrum ingested; 16 MUSE-like and 24 DESI-like simulated spectra;
zfind with the shipped MUSE and DESI-galaxy bases; blends; the LAE scan with the shipped prior (and its noise
calibration); survey statistics.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import zarr

DATA = Path(__file__).resolve().parent / "data"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL_INPUTS = ("desi_fastspecfit/coadd-4-80613-thru20210324.fits",)
#: Arrays of the run's bookkeeping, not results: the done flags follow the block plan, which follows the cluster.
SKIP = {"block_done"}


def _collect(group: zarr.Group, prefix: str, out: dict[str, np.ndarray]) -> None:
    for name, array in sorted(group.arrays()):
        if name in SKIP:
            continue
        out[f"{prefix}/{name}"] = np.asarray(array[...])
    for name, sub in sorted(group.groups()):
        _collect(sub, f"{prefix}/{name}", out)


def golden_outputs(workdir: Path, client) -> dict[str, np.ndarray]:  # client: a distributed.Client
    """Run every engine on the fixed stores under ``workdir`` and return every stored array by path."""
    from dzspec.models import default_model_for_store
    from dzspec.parallel.blends import run_blends
    from dzspec.parallel.ingest import ingest
    from dzspec.parallel.lae import run_lae
    from dzspec.parallel.noise_calibration import calibrate_noise
    from dzspec.parallel.stats import survey_report
    from dzspec.parallel.zfind import run_zfind
    from dzspec.simulate import simulate

    out: dict[str, np.ndarray] = {}
    real = workdir / "real.zarr"
    ingest([SHARED / name for name in REAL_INPUTS], real, client, progress=False)
    basis = default_model_for_store("basis", real)
    run_zfind(real, basis.path, client, basis_name=basis.group, progress=False)

    muse = workdir / "muse.zarr"
    simulate(muse, "muse", 16, client, seed=7, chunk_rows=8, progress=False)
    basis = default_model_for_store("basis", muse)
    run_zfind(muse, basis.path, client, basis_name=basis.group, progress=False)
    run_blends(muse, basis.path, client, basis_name=basis.group, progress=False)
    grid = next(iter(zarr.open_group(str(muse), mode="r")["results"].group_keys()))
    survey_report(muse, f"results/{grid}/nmf_zfind", by=["snr_lines:0,5,10,inf"], name="golden")

    desi = workdir / "desi.zarr"
    simulate(desi, "desi", 24, client, seed=8, chunk_rows=12, progress=False)
    group = "desi-brz-3600-9824-0.8"  # beside it: the simulated individual exposures
    with client.as_current():
        calibrate_noise(desi, group=group, min_spectra=4)
    prior = default_model_for_store("prior", desi, group)
    run_lae(desi, prior.path, client, prior_name=prior.group, group=group, progress=False)
    basis = default_model_for_store("basis", desi, group)
    run_zfind(desi, basis.path, client, basis_name=basis.group, group=group, progress=False)

    for store in (real, muse, desi):
        root = zarr.open_group(str(store), mode="r")
        for top in ("spectra", "results", "calibration", "stats"):
            if top in root:
                _collect(root[top], f"{store.stem}/{top}", out)
    return out


#: Arrays larger than this are compared through their per-row sums (and their exact hash), to keep the file small.
LARGE = 4096


def condensed(array: np.ndarray) -> np.ndarray:
    """The array itself, or for a large numeric one its sums over all but the first axis (NaN-aware)."""
    if array.size <= LARGE or array.dtype.kind not in "fiub" or array.ndim < 2:
        return array
    return np.nansum(array.astype(np.float64), axis=tuple(range(1, array.ndim)))


def digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def main(argv: list[str]) -> int:
    from dzspec.cluster import make_client

    with tempfile.TemporaryDirectory() as tmp, make_client(n_workers=2, processes=False) as client:
        outputs = golden_outputs(Path(tmp), client)
    if "--record" in argv:
        DATA.mkdir(exist_ok=True)
        np.savez_compressed(DATA / "golden.npz", **{k: condensed(v) for k, v in outputs.items()})
        (DATA / "golden.json").write_text(json.dumps({k: digest(v) for k, v in outputs.items()}, indent=0) + "\n")
        print(f"recorded {len(outputs)} arrays")
        return 0
    recorded = json.loads((DATA / "golden.json").read_text())
    same = [k for k in recorded if k in outputs and digest(outputs[k]) == recorded[k]]
    print(f"{len(same)} of {len(recorded)} recorded arrays bit-identical; new: {sorted(set(outputs) - set(recorded))}")
    for key in sorted(set(recorded) - set(same)):
        print("  differs:", key)
    return 0 if len(same) == len(recorded) == len(outputs) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
