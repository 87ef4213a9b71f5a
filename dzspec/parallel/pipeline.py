"""``dzspec run CONFIG``: one TOML file names the store, the cluster and the steps, run in order.

A config (every key is checked; an unknown or mistyped one is an error that names it)::

    store = "survey.zarr"             # the store every step reads and writes
    group = "muse-air2vac-4750-1.25-3681"   # optional: its spectra group when it holds several

    [cluster]                         # optional; default a LocalCluster with one worker per core
    kind = "local"                    # local | address | env | slurm | pbs | gateway | mpi
    workers = 2                       # local: worker processes; slurm/pbs: jobs; gateway: workers
    # address = "tcp://host:8786"     # kind = "address" (or a scheduler JSON file); kind = "gateway": its URL
    #                                 # kind = "env": DASK_SCHEDULER_ADDRESS (Dask operator DaskJob)
    #                                 # kind = "mpi": python -m dzspec.parallel.mpi CONFIG under srun/mpirun
    #                                 # kind = "gateway": a new Dask Gateway cluster, shut down at the end;
    # auth = "jupyterhub"             #   basic | kerberos | jupyterhub; address, proxy_address and auth
    # proxy_address = "gateway://gateway.example.org:80"   #   default to dask's gateway.* config
    # adapt = { minimum = 2, maximum = 64 }   # gateway: follow the load instead of a fixed `workers`
    # cluster_name = "..."            # gateway: join a running cluster instead (left running)
    # [cluster.jobqueue]              # kind = "slurm" / "pbs": keyword arguments of dask-jobqueue's cluster
    # cores = 32, memory = "128GB", processes = 32, walltime = "04:00:00", queue = "regular", account = "m1234"
    # [cluster.gateway]               # kind = "gateway": options of the new cluster (Gateway().cluster_options())
    # worker_cores = 1, worker_memory = 4

    [[steps]]
    kind = "ingest"                   # ingest | simulate | zfind | lae | stats
    inputs = ["raw/*.fits"]

    [[steps]]
    kind = "zfind"
    basis = "bases.zarr"              # store holding bases/<basis_name> (default: the shipped one)
    basis_name = "nmf"
    noise_calibration = "auto"        # auto | off | a stored calibration's name
    sky_nuisance = "auto"             # auto (the basis's sky continuum, when it has one) | off

    [[steps]]
    kind = "stats"
    results = "results/muse-air2vac-4750-1.25-3681/nmf_zfind"
    by = ["snr_lines:0,3,5,7,10,20,inf"]

Relative paths are relative to the config file. Each step goes through the resumable block runner, so
``dzspec run CONFIG --resume`` after an interruption computes only what is missing; a Dask performance report
(HTML) of the whole run is written beside the store.
"""

from __future__ import annotations

import glob
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ConfigError", "PipelineConfig", "Step", "load_config", "run_pipeline"]


class ConfigError(ValueError):
    """An invalid pipeline config; the message names the file and the key."""


#: Keys each step kind accepts (besides ``kind``), with their types; required keys have no default.
STEP_KEYS: dict[str, dict[str, tuple[type | tuple[type, ...], bool]]] = {
    "ingest": {"inputs": (list, True), "skip_unknown": (bool, False)},
    "simulate": {"survey": (str, True), "n": (int, True), "seed": (int, False), "ingredients": (dict, False),
                 "continua": (str, False)},
    "zfind": {"basis": (str, False), "basis_name": (str, False), "params": (dict, False),
              "noise_calibration": (str, False), "sky_nuisance": (str, False)},
    "lae": {"prior": (str, False), "prior_name": (str, False), "params": (dict, False),
            "noise_calibration": (str, False)},
    "stats": {"results": (str, True), "by": (list, False), "split": (str, False), "score": (str, False),
              "log10": (bool, False), "marked": ((int, float), False), "positive": (str, False),
              "form": (str, False), "name": (str, False), "figures": (str, False)},
}
CLUSTER_KINDS = ("local", "address", "env", "slurm", "pbs", "gateway", "mpi")
_CLUSTER_KEYS = {"kind": str, "workers": int, "threads_per_worker": int, "address": str, "jobqueue": dict,
                 "proxy_address": str, "auth": str, "cluster_name": str, "adapt": dict, "gateway": dict}
#: [cluster] keys only kind = "gateway" reads, and the keys of its ``adapt`` table.
_GATEWAY_KEYS = ("proxy_address", "auth", "cluster_name", "adapt", "gateway")
_ADAPT_KEYS = {"minimum": int, "maximum": int}
_TOP_KEYS = {"store": str, "group": str, "cluster": dict, "steps": list, "block_rows": int}


@dataclass(frozen=True)
class Step:
    """One pipeline step: its kind and its checked options."""

    kind: str
    options: dict[str, Any]


@dataclass(frozen=True)
class PipelineConfig:
    """A checked config (:func:`load_config`)."""

    path: Path
    store: Path
    steps: tuple[Step, ...]
    cluster: dict[str, Any] = field(default_factory=dict)
    group: str | None = None
    block_rows: int | None = None


def _check(where: str, key: str, value: Any, expected: type | tuple[type, ...]) -> None:
    if isinstance(value, bool) and expected in (int, (int, float)):
        raise ConfigError(f"{where}: '{key}' must be {_name(expected)}, not {value!r}")
    if not isinstance(value, expected):
        raise ConfigError(f"{where}: '{key}' must be {_name(expected)}, not {type(value).__name__} {value!r}")


def _name(expected: type | tuple[type, ...]) -> str:
    names = {list: "a list", dict: "a table", str: "a string", int: "an integer", bool: "true or false"}
    return " or ".join(names.get(t, t.__name__) for t in (expected if isinstance(expected, tuple) else (expected,)))


def _check_gateway(where: str, kind: str, cluster: dict[str, Any]) -> None:
    """The [cluster] keys of kind = "gateway": only there, with an address (or dask's), adapt XOR workers."""
    if kind != "gateway":
        for key in _GATEWAY_KEYS:
            if key in cluster:
                raise ConfigError(f"{where}: 'cluster.{key}' is only for cluster.kind = 'gateway', not {kind!r}")
        return
    import dask

    if "address" not in cluster and not dask.config.get("gateway.address", None):
        raise ConfigError(f"{where}: cluster.kind = 'gateway' needs 'cluster.address' (or dask's gateway.address, "
                          "as a JupyterHub with Dask Gateway sets it)")
    for key, value in cluster.get("adapt", {}).items():
        if key not in _ADAPT_KEYS:
            raise ConfigError(f"{where}: unknown key 'cluster.adapt.{key}'; it takes {', '.join(_ADAPT_KEYS)}")
        _check(where, f"cluster.adapt.{key}", value, _ADAPT_KEYS[key])
    if "adapt" in cluster and "workers" in cluster:
        raise ConfigError(f"{where}: 'cluster.workers' (a fixed count) and 'cluster.adapt' exclude each other")
    if "cluster_name" in cluster and "gateway" in cluster:
        raise ConfigError(f"{where}: 'cluster.gateway' options start a new cluster; 'cluster.cluster_name' "
                          "connects to a running one: give one of them")


def load_config(path: str | Path) -> PipelineConfig:
    """Read and check a pipeline config; :class:`ConfigError` names the file and the offending key.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "run.toml").write_text('store = "s.zarr"\\n[[steps]]\\nkind = "zfind"\\nbasis = "b.zarr"\\n')
    >>> config = load_config(folder / "run.toml")
    >>> config.steps[0].kind, config.store.name
    ('zfind', 's.zarr')
    >>> _ = (folder / "bad.toml").write_text('store = "s.zarr"\\n[[steps]]\\nkind = "zfind"\\nbasis_nam = "x"\\n')
    >>> load_config(folder / "bad.toml")
    Traceback (most recent call last):
    ...
    dzspec.parallel.pipeline.ConfigError: ...bad.toml: steps[0] (zfind): unknown key 'basis_nam'; it takes basis, ...
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    where = str(path)
    for key, value in raw.items():
        if key not in _TOP_KEYS:
            raise ConfigError(f"{where}: unknown key '{key}'; the top level takes {', '.join(_TOP_KEYS)}")
        _check(where, key, value, _TOP_KEYS[key])
    for key in ("store", "steps"):
        if key not in raw:
            raise ConfigError(f"{where}: missing key '{key}'")
    cluster = dict(raw.get("cluster", {}))
    for key, value in cluster.items():
        if key not in _CLUSTER_KEYS:
            raise ConfigError(f"{where}: unknown key 'cluster.{key}'; [cluster] takes {', '.join(_CLUSTER_KEYS)}")
        _check(where, f"cluster.{key}", value, _CLUSTER_KEYS[key])
    kind = cluster.get("kind", "local")
    if kind not in CLUSTER_KINDS:
        raise ConfigError(f"{where}: 'cluster.kind' must be one of {', '.join(CLUSTER_KINDS)}, not {kind!r}")
    if kind == "address" and "address" not in cluster:
        raise ConfigError(f"{where}: cluster.kind = 'address' needs 'cluster.address'")
    _check_gateway(where, kind, cluster)
    if not raw["steps"]:
        raise ConfigError(f"{where}: 'steps' is empty")
    base = path.parent
    steps = []
    for i, step in enumerate(raw["steps"]):
        label = f"{where}: steps[{i}]"
        if not isinstance(step, dict) or "kind" not in step:
            raise ConfigError(f"{label}: each step is a table with a 'kind'")
        if step["kind"] not in STEP_KEYS:
            raise ConfigError(f"{label}: unknown kind {step['kind']!r}; kinds are {', '.join(STEP_KEYS)}")
        allowed = STEP_KEYS[step["kind"]]
        label = f"{label} ({step['kind']})"
        for key, value in step.items():
            if key == "kind":
                continue
            if key not in allowed:
                raise ConfigError(f"{label}: unknown key '{key}'; it takes {', '.join(allowed)}")
            _check(label, key, value, allowed[key][0])
        for key, (_, required) in allowed.items():
            if required and key not in step:
                raise ConfigError(f"{label}: missing key '{key}'")
        options = {k: v for k, v in step.items() if k != "kind"}
        for key in ("basis", "prior", "figures"):
            if key in options:
                options[key] = str(base / options[key])
        if "inputs" in options:
            options["inputs"] = [str(base / pattern) for pattern in options["inputs"]]
        steps.append(Step(step["kind"], options))
    return PipelineConfig(path=path, store=base / raw["store"], steps=tuple(steps), cluster=cluster,
                          group=raw.get("group"), block_rows=raw.get("block_rows"))


def _ingest(config: PipelineConfig, step: Step, client: Any, runner: Mapping[str, Any]) -> str:
    from dzspec.parallel.ingest import ingest

    paths = sorted({p for pattern in step.options["inputs"] for p in glob.glob(pattern, recursive=True)})
    if not paths:
        raise ConfigError(f"{config.path}: ingest inputs {step.options['inputs']} match no file")
    report = ingest(paths, config.store, client, skip_unknown=step.options.get("skip_unknown", False),
                    progress=runner["progress"])
    return report.summary()


def _simulate(config: PipelineConfig, step: Step, client: Any, runner: Mapping[str, Any]) -> str:
    from dzspec.simulate import simulate

    return simulate(config.store, step.options["survey"], step.options["n"], client,
                    seed=step.options.get("seed", 0), progress=runner["progress"],
                    ingredient_paths={key: str(value) for key, value in step.options.get("ingredients", {}).items()},
                    continua=step.options.get("continua")).summary()


def _zfind(config: PipelineConfig, step: Step, client: Any, runner: Mapping[str, Any]) -> str:
    from dzspec.parallel.zfind import run_zfind

    basis, name = _model(config, step, "basis", runner)
    return run_zfind(config.store, basis, client, basis_name=name, params=step.options.get("params"),
                     noise_calibration=step.options.get("noise_calibration", "auto"),
                     sky_nuisance=step.options.get("sky_nuisance", "auto"), **runner).summary()


def _lae(config: PipelineConfig, step: Step, client: Any, runner: Mapping[str, Any]) -> str:
    from dzspec.parallel.lae import run_lae

    prior, name = _model(config, step, "prior", runner)
    return run_lae(config.store, prior, client, prior_name=name, params=step.options.get("params"),
                   noise_calibration=step.options.get("noise_calibration", "auto"), **runner).summary()


def _model(config: PipelineConfig, step: Step, kind: str, runner: Mapping[str, Any]) -> tuple[str, str]:
    """The step's basis/prior store and name, or the shipped model for its spectra group when none is named."""
    if kind in step.options:
        return step.options[kind], step.options.get(f"{kind}_name", {"basis": "nmf", "prior": "lae"}[kind])
    from dzspec.models import default_model_for_store

    model = default_model_for_store(kind, config.store, runner.get("group"))
    return str(model.path), model.group


def _stats(config: PipelineConfig, step: Step, client: Any, runner: Mapping[str, Any]) -> str:
    from dzspec.parallel.stats import survey_report

    options = dict(step.options)
    tables = survey_report(config.store, options.pop("results"), **options)
    return f"stats: {len(tables)} tables ({', '.join(tables)})"


_STEPS: dict[str, Callable[..., str]] = {"ingest": _ingest, "simulate": _simulate, "zfind": _zfind, "lae": _lae,
                                         "stats": _stats}


def run_pipeline(config: PipelineConfig, client: Any, *, resume: bool = False, overwrite: bool = False,
                 progress: bool = True, report: str | Path | None = None,
                 echo: Callable[[str], None] = print) -> Path:
    """Run the steps in order on ``client``. Block steps refuse existing results unless ``resume`` (compute only
    the missing blocks) or ``overwrite``; ingest and simulate always skip what is already in the store.

    A Dask performance report (HTML) of the whole run goes to ``report`` (default ``<store>.report.html`` beside
    the store); its path is returned.
    """
    from distributed import performance_report

    report_path = Path(report) if report else config.store.with_name(config.store.name + ".report.html")
    runner = {"group": config.group, "resume": resume, "overwrite": overwrite, "progress": progress}
    if config.block_rows:
        runner["block_rows"] = config.block_rows
    with performance_report(filename=str(report_path)):
        for i, step in enumerate(config.steps):
            echo(f"step {i + 1}/{len(config.steps)}: {step.kind}")
            echo(_STEPS[step.kind](config, step, client, runner))
    echo(f"performance report: {report_path}")
    return report_path
