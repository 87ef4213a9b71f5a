import gc
import operator
import re
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from dzspec.cluster import client_from_config, default_worker_layout, make_client

pytestmark = pytest.mark.cluster


def test_default_layout_one_thread_per_core():
    workers, threads = default_worker_layout()
    assert threads == 1 and workers >= 1
    assert default_worker_layout(threads_per_worker=2, n_workers=3) == (3, 2)


def test_default_layout_counts_the_cores_this_process_may_use(monkeypatch):
    """dask.system.cpu_count: the affinity mask and a cgroup CPU quota (a container's --cpus, a batch job's
    allocation) count, not the host's cores."""
    import dask.system

    monkeypatch.setattr(dask.system, "cpu_count", lambda: 3)
    assert default_worker_layout() == (3, 1)
    assert default_worker_layout(threads_per_worker=2) == (1, 2)
    assert default_worker_layout(threads_per_worker=4) == (1, 4)  # never no worker
    assert default_worker_layout(n_workers=5) == (5, 1)


def _thread_settings():
    import os

    from threadpoolctl import threadpool_info

    return os.environ.get("OMP_NUM_THREADS"), os.environ.get("OPENBLAS_NUM_THREADS"), sorted(
        {pool["num_threads"] for pool in threadpool_info()})


def _mmapped_bytes_of_a_4mib_temporary():
    """Bytes glibc serves by mmap (mallinfo2's global hblkhd) while a 4 MiB NumPy temporary is alive."""
    import ctypes

    import numpy as np

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                          "fsmblks", "uordblks", "fordblks", "keepcost")]

    mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
    mallinfo2.restype = MallInfo2
    before = mallinfo2().hblkhd
    temporary = np.ones(2**19)
    during = mallinfo2().hblkhd
    del temporary
    return during - before


def test_workers_run_one_blas_thread_each_and_keep_temporaries_on_the_heap():
    import numpy as np

    np.dot(np.ones((2, 2)), np.ones((2, 2)))  # load BLAS here too (the worker imports numpy on unpickling)
    with make_client(n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
        settings = list(client.run(_thread_settings).values())
        assert client.dashboard_link is not None
        if sys.platform == "linux":
            # the nanny's MALLOC_TRIM_THRESHOLD_ alone would mmap it (and zero its pages on every use)
            assert list(client.run(_mmapped_bytes_of_a_4mib_temporary).values()) == [0]
    assert settings == [("1", "1", [1])]


def test_closing_the_client_stops_the_workers_it_started():
    """The CLI and the tests run many clusters in one process: each must take its worker processes with it."""
    import psutil

    me = psutil.Process()
    before = {child.pid for child in me.children(recursive=True)}
    with make_client(n_workers=2, threads_per_worker=1, dashboard_address=None) as client:
        started = {child.pid for child in me.children(recursive=True)} - before
        assert len(started) >= 2 and len(client.scheduler_info()["workers"]) == 2
    _, alive = psutil.wait_procs([psutil.Process(pid) for pid in started if psutil.pid_exists(pid)], timeout=10)
    assert not alive


def test_gateway_kind_without_dask_gateway_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "dask_gateway", None)  # as if not installed
    with pytest.raises(ImportError, match=re.escape("pip install 'dzspec[gateway]'")):
        client_from_config({"kind": "gateway", "address": "http://127.0.0.1:1"})


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


@pytest.fixture(scope="module")
def gateway_server(tmp_path_factory):
    """A real Dask Gateway server (dask-gateway-server) whose clusters are local processes (UnsafeLocalBackend),
    with user-name-only basic auth; yields the [cluster] keys that reach it."""
    pytest.importorskip("dask_gateway")
    pytest.importorskip("dask_gateway_server")
    pytest.importorskip("sqlalchemy", reason="dask-gateway-server's local backend: dask-gateway-server[local]")
    folder = tmp_path_factory.mktemp("gateway")
    api, http, tcp = _free_ports(3)
    (folder / "config.py").write_text(f"""
c.DaskGateway.address = "127.0.0.1:{api}"
c.Proxy.address = "127.0.0.1:{http}"
c.Proxy.tcp_address = "127.0.0.1:{tcp}"
c.DaskGateway.backend_class = "dask_gateway_server.backends.local.UnsafeLocalBackend"
c.DaskGateway.authenticator_class = "dask_gateway_server.auth.SimpleAuthenticator"
c.LocalBackend.clusters_directory = {str(folder / "clusters")!r}
# its defaults, dask-scheduler and dask-worker, are gone from distributed 2026: the dask CLI has both
c.ClusterConfig.scheduler_cmd = [{sys.executable!r}, "-m", "dask", "scheduler"]
c.ClusterConfig.worker_cmd = [{sys.executable!r}, "-m", "dask", "worker"]
c.ClusterConfig.adaptive_period = 0.5
""")
    log = (folder / "server.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "dask_gateway_server", "-f", str(folder / "config.py")],
                              cwd=folder, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/api/health", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"dask-gateway-server did not start:\n{(folder / 'server.log').read_text()}")
            time.sleep(0.2)
        yield {"address": f"http://127.0.0.1:{http}", "proxy_address": f"gateway://127.0.0.1:{tcp}"}
    finally:
        server.terminate()  # SIGTERM: the server stops its clusters, then its proxy
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


@pytest.fixture
def gateway(gateway_server):
    """A dask_gateway.Gateway on the test server."""
    from dask_gateway import Gateway

    gateway = Gateway(**gateway_server, auth="basic")
    yield gateway
    gateway.close()
    _defuse(gateway)


def _defuse(gateway):
    """Keep a closed Gateway's __del__ from closing it again, which raises with distributed 2026 (as
    dzspec.cluster works around): an exception ignored in a __del__ that the GC ran while pytest was rewriting a
    module broke CPython 3.11.7's AST constructor here ("AST constructor recursion depth mismatch"). Hence also
    the collection now, at a known place."""
    vars(gateway).pop("_loop_runner", None)
    gc.collect()


def _cluster_names(gateway, expected, timeout=10):
    """The gateway's running clusters, once they are ``expected`` (stopping one takes a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        names = sorted(cluster.name for cluster in gateway.list_clusters())
        if names == sorted(expected) or time.monotonic() > deadline:
            return names
        time.sleep(0.2)


def test_gateway_kind_starts_a_cluster_and_shuts_it_down_with_the_client(gateway_server, gateway):
    with client_from_config({"kind": "gateway", **gateway_server, "auth": "basic", "workers": 1}) as client:
        client.wait_for_workers(1, timeout=30)
        assert client.submit(operator.add, 1, 2).result() == 3
        # WorkerTuning on the workers (a lambda: these workers cannot import the tests package)
        limited = client.run(lambda dask_worker: hasattr(dask_worker, "_dzspec_threadpool_limits"))
        assert list(limited.values()) == [True]
        name = client.cluster.name
        assert _cluster_names(gateway, [name]) == [name]
    assert _cluster_names(gateway, []) == []  # dzspec started it, so closing the client shut it down


def test_gateway_kind_joins_a_running_cluster_and_leaves_it_running(gateway_server, gateway):
    running = gateway.new_cluster(shutdown_on_close=False)
    try:
        config = {"kind": "gateway", **gateway_server, "cluster_name": running.name,
                  "adapt": {"minimum": 1, "maximum": 2}}
        with client_from_config(config) as client:
            client.wait_for_workers(1, timeout=30)
            assert client.submit(operator.add, 2, 3).result() == 5
        assert _cluster_names(gateway, [running.name]) == [running.name]
    finally:
        running.shutdown()
        _defuse(running.gateway)
    assert _cluster_names(gateway, []) == []


def test_gateway_kind_refuses_options_the_gateway_does_not_offer(gateway_server, gateway):
    with pytest.raises(ValueError, match="no_such_option"):
        client_from_config({"kind": "gateway", **gateway_server, "gateway": {"no_such_option": 1}})
    assert _cluster_names(gateway, []) == []
