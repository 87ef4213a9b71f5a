import pytest

from dzspec.cluster import default_worker_layout, make_client

pytestmark = pytest.mark.cluster


def test_default_layout_one_thread_per_core():
    workers, threads = default_worker_layout()
    assert threads == 1 and workers >= 1
    assert default_worker_layout(threads_per_worker=2, n_workers=3) == (3, 2)


def _thread_settings():
    import os

    from threadpoolctl import threadpool_info

    return os.environ.get("OMP_NUM_THREADS"), os.environ.get("OPENBLAS_NUM_THREADS"), sorted(
        {pool["num_threads"] for pool in threadpool_info()})


def test_workers_run_one_blas_thread_each():
    import numpy as np

    np.dot(np.ones((2, 2)), np.ones((2, 2)))  # load BLAS here too (the worker imports numpy on unpickling)
    with make_client(n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
        settings = list(client.run(_thread_settings).values())
        assert client.dashboard_link is not None
    assert settings == [("1", "1", [1])]
