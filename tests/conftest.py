"""Shared fixtures: the real data beside the project (``../shared/data``), skipped cleanly when absent."""

from __future__ import annotations

import os
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
