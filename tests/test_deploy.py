"""deploy/: every example config is valid, the job scripts dask-jobqueue would submit match their snapshots, bad
configs are refused naming the key, and `dzspec run` runs a config end to end on a LocalCluster and resumes."""

import importlib.util
import os
import re
import sys
import tomllib
from pathlib import Path

import pytest
import xarray as xr

from dzspec.cluster import jobqueue_cluster
from dzspec.io import store as zstore
from dzspec.parallel.pipeline import ConfigError, load_config
from tests.conftest import DESI_GROUP as GROUP
from tests.conftest import small_lae_prior, write_lae_pipeline

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


@pytest.mark.parametrize(("text", "message"), [
    ('store = "s"\nsteps = []\nworkers = 2\n', "unknown key 'workers'; the top level takes"),
    ('store = "s"\n[cluster]\nkind = "k8s"\n[[steps]]\nkind = "lae"\nprior = "p"\n', "'cluster.kind' must be one of"),
    ('store = "s"\n[cluster]\nkind = "address"\n[[steps]]\nkind = "lae"\nprior = "p"\n', "needs 'cluster.address'"),
    ('store = "s"\n[[steps]]\nkind = "lae"\nprior_nam = "p"\n', "steps[0] (lae): unknown key 'prior_nam'"),
    ('store = "s"\n[[steps]]\nkind = "zfind"\nbasis = 3\n', "'basis' must be a string, not int 3"),
    ('store = "s"\n[[steps]]\nkind = "train"\n', "unknown kind 'train'"),
    ('[[steps]]\nkind = "lae"\nprior = "p"\n', "missing key 'store'"),
    ('store = "s"\n[cluster]\nworkers = "many"\n[[steps]]\nkind = "lae"\nprior = "p"\n',
     "'cluster.workers' must be an integer"),
    ('store = "s"\n[[steps]\n', "not valid TOML"),
    ('store = "s"\n[cluster]\nkind = "gateway"\n[[steps]]\nkind = "lae"\nprior = "p"\n',
     "cluster.kind = 'gateway' needs 'cluster.address'"),
    ('store = "s"\n[cluster]\nkind = "local"\ncluster_name = "c"\n[[steps]]\nkind = "lae"\nprior = "p"\n',
     "'cluster.cluster_name' is only for cluster.kind = 'gateway', not 'local'"),
    ('store = "s"\n[cluster]\nkind = "gateway"\naddress = "http://g"\nadapt = {max = 4}\n[[steps]]\nkind = "lae"\n'
     'prior = "p"\n', "unknown key 'cluster.adapt.max'; it takes minimum, maximum"),
    ('store = "s"\n[cluster]\nkind = "gateway"\naddress = "http://g"\nadapt = {minimum = "1"}\n[[steps]]\n'
     'kind = "lae"\nprior = "p"\n', "'cluster.adapt.minimum' must be an integer"),
    ('store = "s"\n[cluster]\nkind = "gateway"\naddress = "http://g"\nworkers = 2\nadapt = {maximum = 4}\n'
     '[[steps]]\nkind = "lae"\nprior = "p"\n', "'cluster.workers' (a fixed count) and 'cluster.adapt' exclude"),
    ('store = "s"\n[cluster]\nkind = "gateway"\naddress = "http://g"\ncluster_name = "c"\n[cluster.gateway]\n'
     'worker_cores = 1\n[[steps]]\nkind = "lae"\nprior = "p"\n', "give one of them"),
    ('store = "s"\n[cluster]\nkind = "gateway"\naddress = "http://g"\nauth = 1\n[[steps]]\nkind = "lae"\n'
     'prior = "p"\n', "'cluster.auth' must be a string"),
])
def test_bad_configs_name_the_key(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_gateway_address_may_come_from_the_dask_config(tmp_path):
    """Inside a JupyterHub with Dask Gateway, DASK_GATEWAY__ADDRESS (dask's gateway.address) names the gateway."""
    import dask

    path = tmp_path / "hub.toml"
    path.write_text('store = "s"\n[cluster]\nkind = "gateway"\n[[steps]]\nkind = "lae"\nprior = "p"\n')
    with dask.config.set({"gateway.address": "https://hub.example.org/services/dask-gateway"}):
        assert load_config(path).cluster == {"kind": "gateway"}


def test_dzspec_run_end_to_end_and_resume(tmp_path, client, capsys):
    from dzspec.cli import main

    small_lae_prior(client, tmp_path / "prior.zarr", seed=41)
    config = write_lae_pipeline(tmp_path / "run.toml", 'kind = "local"\nworkers = 1', 160, 42, f"""[[steps]]
kind = "stats"
results = "results/{GROUP}/madgics_lae"
score = "lae_abs_dchi2_cal"
positive = "correct"
form = "absolute"
marked = 25
""")
    assert main(["run", str(config), "--overwrite", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "step 3/3: stats" in out and "dask dashboard:" in out
    results = zstore.open_results(tmp_path / "survey.zarr", f"results/{GROUP}/madgics_lae")
    assert results.sizes["spectrum"] == 160
    assert (tmp_path / "survey.zarr.report.html").stat().st_size > 10_000
    table = xr.open_zarr(tmp_path / "survey.zarr", group="stats/madgics_lae/threshold_lae_abs_dchi2_cal",
                         consolidated=False)
    assert table.attrs["marked"] == 25
    assert main(["run", str(config), "--resume", "--no-progress"]) == 0
    assert "1 blocks, 1 already done, 0 computed" in capsys.readouterr().out
    assert main(["run", str(tmp_path / "missing.toml")]) == 2
    assert "no such config file" in capsys.readouterr().err
