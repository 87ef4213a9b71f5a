"""Shared fixtures: the real data beside the project (``../shared/data``), skipped cleanly when absent."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

SHARED_DATA = Path(os.environ.get("DZSPEC_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; the test is skipped when it is not there."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not available at {SHARED_DATA}")
    return SHARED_DATA.resolve()


def shared_file(relative: str) -> Path:
    """One file under ``../shared/data``, or skip the test."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"real data file not available: {path}")
    return path.resolve()


@pytest.fixture(scope="module")
def client():
    """A LocalCluster of two worker threads in this process (fast to start; tests needing worker processes make
    their own)."""
    from dzspec.cluster import make_client

    with make_client(n_workers=2, processes=False) as c:
        yield c


#: 4x U25's log step: 2 180 pixels keep the 8 720-pixel eigenproblems out of the unit tests; 1 130 one-pixel shifts
#: span z = 2 to ~4.04, as U25's 4 501 shifts at 5e-5.
COARSE_LAE_GRID_ARGS = (math.log10(3600.0), 2e-4, 2180)
COARSE_N_SHIFTS = 1130
DESI_GROUP = "desi-brz-3600-9824-0.8"


def small_lae_prior(client, store, *, seed, n=240, n_sky=10, chunk_rows=120, block_rows=60):
    """Simulate ``n`` DESI-like spectra into ``store`` and build the MADGICS prior of their sky fibres and LAEs on
    the coarse grid (saved as ``priors/lae``); returns the sky rows, the LAE rows, the loaded prior and its summary."""
    from dzspec.kernels.restframe import LogGrid
    from dzspec.parallel.lae import build_lae_prior, prior_rows
    from dzspec.simulate import simulate

    simulate(store, "desi", n, client, seed=seed, chunk_rows=chunk_rows, progress=False)
    sky = prior_rows(store, DESI_GROUP, ["sky_residual"])
    lae = prior_rows(store, DESI_GROUP, ["lae", "lae_double_peak"], z_name="z_true")
    loaded, summary = build_lae_prior(client, (store, DESI_GROUP, sky), (store, DESI_GROUP, lae), out=store,
                                      n_sky=n_sky, grid=LogGrid(*COARSE_LAE_GRID_ARGS), block_rows=block_rows)
    return sky, lae, loaded, summary


def slow_summary(wavelength, flux, ivar, snr_window=None, *, seconds=0.3):
    """The summary kernel, slowed so that a drill can strike (kill a worker, fill the disk) while blocks still run."""
    from dzspec.kernels.summary import spectrum_summary

    time.sleep(seconds)
    return spectrum_summary(wavelength, flux, ivar, snr_window=snr_window)


def slow_summary_kernel(seconds: float = 0.3):
    """:data:`~dzspec.kernels.summary.SUMMARY` with :func:`slow_summary` (``seconds`` per block): same name,
    version and outputs."""
    from functools import partial

    from dzspec.kernels.base import KernelSpec
    from dzspec.kernels.summary import SUMMARY

    return KernelSpec("summary", partial(slow_summary, seconds=seconds), SUMMARY.inputs, SUMMARY.outputs,
                      SUMMARY.version, SUMMARY.defaults)


def write_lae_pipeline(path: Path, cluster: str, n: int, seed: int, extra_steps: str = "") -> Path:
    """A ``dzspec run`` config at ``path``: simulate ``n`` DESI spectra into ``survey.zarr`` and scan them on the
    coarse grid with ``prior.zarr`` beside it; ``cluster`` is the body of its [cluster] table."""
    path.write_text(f"""
store = "survey.zarr"
group = "{DESI_GROUP}"
[cluster]
{cluster}
[[steps]]
kind = "simulate"
survey = "desi"
n = {n}
seed = {seed}
[[steps]]
kind = "lae"
prior = "prior.zarr"
params = {{ n_shifts = {COARSE_N_SHIFTS} }}
{extra_steps}""")
    return path


def wait_for_done_blocks(store, results: str, count: int, timeout: float = 240.0) -> int:
    """Block until ``count`` blocks of a run on ``store`` are done (or ``timeout``); the number done then."""
    from dzspec.io import store as zstore

    root = zstore.open_root(store)
    deadline = time.time() + timeout
    done = 0
    while time.time() < deadline:
        try:
            done = int(zstore.done_blocks(root[results]).sum())
        except KeyError:  # the results group is still being created
            done = 0
        if done >= count:
            break
        time.sleep(0.02)
    return done
