"""deploy/: every example config is valid and the job scripts dask-jobqueue would submit match their snapshots (the
config checks and `dzspec run` itself: tests/parallel/test_pipeline.py)."""

import importlib.util
import os
import re
import sys
import tomllib
from pathlib import Path

import pytest

from dzspec.cluster import jobqueue_cluster
from dzspec.parallel.pipeline import ConfigError, load_config

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
SNAPSHOTS = Path(__file__).resolve().parent / "snapshots"


@pytest.mark.parametrize(("target", "kind"), [("local", "local"), ("slurm", "slurm"), ("pbs", "pbs"),
                                             ("kubernetes", "env"), ("mpi", "mpi"), ("gateway", "gateway")])
def test_deploy_configs_are_valid(target, kind):
    config = load_config(DEPLOY / target / "pipeline.toml")
    assert config.cluster["kind"] == kind and config.steps
    assert (DEPLOY / target / "README.md").exists()


def test_every_deploy_folder_with_a_config_is_checked():
    checked = {"local", "slurm", "pbs", "kubernetes", "mpi", "gateway"}  # the parametrisation above
    assert {path.parent.name for path in DEPLOY.glob("*/pipeline.toml")} == checked


def test_kubernetes_daskjob_runs_the_pipeline_on_the_operator_cluster():
    yaml = pytest.importorskip("yaml")
    job = yaml.safe_load((DEPLOY / "kubernetes" / "daskjob.yaml").read_text())
    assert job["apiVersion"] == "kubernetes.dask.org/v1" and job["kind"] == "DaskJob"
    (container,) = job["spec"]["job"]["spec"]["containers"]
    assert container["args"][:3] == ["dzspec", "run", "/config/pipeline.toml"] and "--resume" in container["args"]
    (worker,) = job["spec"]["cluster"]["spec"]["worker"]["spec"]["containers"]
    assert worker["args"][worker["args"].index("--nthreads") + 1] == "1"  # one BLAS thread per worker thread
    images = {container["image"], worker["image"],
              job["spec"]["cluster"]["spec"]["scheduler"]["spec"]["containers"][0]["image"]}
    assert images == {_image_tag()}  # every role from the image deploy/container builds


def _image_tag():
    return re.search(r"-t (\S+) ", (DEPLOY / "container" / "Dockerfile").read_text()).group(1)


def test_kubernetes_daskcluster_is_the_daskjob_cluster_kept_running():
    yaml = pytest.importorskip("yaml")
    cluster, autoscaler = yaml.safe_load_all((DEPLOY / "kubernetes" / "daskcluster.yaml").read_text())
    assert cluster["apiVersion"] == autoscaler["apiVersion"] == "kubernetes.dask.org/v1"
    assert (cluster["kind"], autoscaler["kind"]) == ("DaskCluster", "DaskAutoscaler")
    name = cluster["metadata"]["name"]
    assert autoscaler["spec"]["cluster"] == name and autoscaler["spec"]["minimum"] <= autoscaler["spec"]["maximum"]
    (worker,) = cluster["spec"]["worker"]["spec"]["containers"]
    (scheduler,) = cluster["spec"]["scheduler"]["spec"]["containers"]
    assert worker["args"][:2] == ["dask", "worker"] and scheduler["args"][:2] == ["dask", "scheduler"]
    assert worker["args"][worker["args"].index("--nthreads") + 1] == "1"
    one_thread = {var: "1" for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                       "NUMEXPR_NUM_THREADS")}
    assert {env["name"]: env["value"] for env in worker["env"]} == one_thread  # like the image's ENV
    assert worker["resources"]["requests"]["cpu"] == worker["resources"]["limits"]["cpu"] == "1"
    job = yaml.safe_load((DEPLOY / "kubernetes" / "daskjob.yaml").read_text())
    assert {worker["image"], scheduler["image"]} == {job["spec"]["job"]["spec"]["containers"][0]["image"]}
    # the config beside it reaches the scheduler through the service the operator names <cluster>-scheduler
    service = cluster["spec"]["scheduler"]["service"]
    assert service["selector"]["dask.org/cluster-name"] == name
    port = next(p["port"] for p in service["ports"] if p["name"] == "tcp-comm")
    config = load_config(DEPLOY / "kubernetes" / "daskcluster.toml")
    assert config.cluster["kind"] == "address"
    assert re.fullmatch(rf"tcp://{name}-scheduler\.[a-z0-9-]+\.svc\.cluster\.local:{port}", config.cluster["address"])


def test_container_pins_every_dependency_within_its_range():
    from packaging.requirements import Requirement

    pins = {}
    for line in (DEPLOY / "container" / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower()] = version
    project = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    for text in project["dependencies"] + extras["hpc"] + extras["gateway"]:
        requirement = Requirement(text)
        assert requirement.name.lower() in pins, f"{requirement.name} is not pinned in the image"
        assert requirement.specifier.contains(pins[requirement.name.lower()]), text


def test_env_cluster_kind_connects_to_the_scheduler_in_the_environment(client, monkeypatch):
    from dzspec.cluster import client_from_config

    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", client.scheduler.address)
    with client_from_config({"kind": "env"}) as other:
        assert other.scheduler_info()["id"] == client.scheduler_info()["id"]
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS")
    with pytest.raises(ValueError, match="DASK_SCHEDULER_ADDRESS"):
        client_from_config({"kind": "env"})
    with pytest.raises(ValueError, match=re.escape("python -m dzspec.parallel.mpi")):
        client_from_config({"kind": "mpi"})


def test_mpi_batch_mode_checks_its_config_before_starting(tmp_path):
    from dzspec.parallel.mpi import main

    with pytest.raises(ConfigError, match="must be 'mpi'"):
        main([str(DEPLOY / "local" / "pipeline.toml")])
    if importlib.util.find_spec("dask_mpi") is None:
        with pytest.raises(ImportError, match="dask-mpi and mpi4py"):
            main([str(DEPLOY / "mpi" / "pipeline.toml")])


@pytest.mark.parametrize("target", ["slurm", "pbs"])
def test_job_scripts_match_their_snapshots(target):
    """The script a run would submit (nothing is submitted). The snapshot has this interpreter and the scheduler
    address replaced; the config's network interface is left out because this machine has no ib0."""
    pytest.importorskip("dask_jobqueue")
    options = {k: v for k, v in load_config(DEPLOY / target / "pipeline.toml").cluster["jobqueue"].items()
               if k != "interface"}
    cluster = jobqueue_cluster(target, options)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    script = re.sub(r"tcp://[^ ]+", "SCHEDULER", script.replace(sys.executable, "PYTHON"))
    assert "export OMP_NUM_THREADS=1" in script
    snapshot = SNAPSHOTS / f"{target}_job.sh"
    if os.environ.get("DZSPEC_UPDATE_SNAPSHOTS"):
        snapshot.write_text(script)
    assert script == snapshot.read_text(), "job script changed; rerun with DZSPEC_UPDATE_SNAPSHOTS=1 if intended"
