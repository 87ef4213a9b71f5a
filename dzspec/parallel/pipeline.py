"""``dzspec run CONFIG``: one TOML file names the store, the cluster and the steps, run in order.

A config (every key is checked before any cluster starts, a step's ``params`` table included; an unknown key is
an error that names the file, the key and the closest valid one)::

    store = "survey.zarr"             # the store every step reads and writes
    group = "muse-air2vac-4750-1.25-3681"   # optional: its spectra group when it holds several
    # block_rows = 512                # optional: spectra per task of the block-runner steps

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
    kind = "ingest"
    inputs = ["raw/*.fits"]

    [[steps]]
    kind = "train"                    # what `dzspec train STORE --out bases.zarr --rank 10` does
    out = "bases.zarr"
    rank = 10

    [[steps]]
    kind = "zfind"
    basis = "bases.zarr"              # store holding bases/<basis_name> (default: the shipped one)
    basis_name = "nmf"
    noise_calibration = "auto"        # auto | off | a stored calibration's name
    sky_nuisance = "auto"             # auto (the basis's sky continuum, when it has one) | off
    params = { dz = 0.0005, z_max = 6.7 }   # the scan's parameters (checked against the engine's)

    [[steps]]
    kind = "stats"
    results = "results/muse-air2vac-4750-1.25-3681/nmf_zfind"
    by = ["snr_lines:0,3,5,7,10,20,inf"]

    [[steps]]
    kind = "export"
    output = "redshifts.fits"

The step kinds, each doing what the command of the same name does with the same defaults, on the config's ``store``
and ``group`` (the last ones below through the very function the command calls, in :mod:`dzspec.parallel.commands`):

* ``ingest`` (``inputs``, ``skip_unknown``), ``simulate`` (``survey``, ``n``, ``seed``, ``ingredients``,
  ``continua``);
* ``zfind`` (``basis``, ``basis_name``, ``params``, ``noise_calibration``, ``sky_nuisance``) and ``lae`` (``prior``,
  ``prior_name``, ``params``, ``noise_calibration``): the engines' scans, their parameters in ``params``;
* ``train``, ``select_rank``, ``priors``, ``blends``, ``convergence``, ``calibrate_noise``, ``calibrate_confidence``,
  ``calibrate_zerr``, ``export`` and ``stats``: their keys are the command's long options with ``_`` for ``-``
  (``dzspec train --max-iter 5`` is ``max_iter = 5``); ``blends`` also takes a ``params`` table.

Relative paths are relative to the config file. The block-runner steps (zfind, lae, blends) go through the
resumable block runner, so ``dzspec run CONFIG --resume`` after an interruption computes only what is missing; with
``--resume`` a step whose named output exists already (a basis, a prior, a noise calibration, a rank selection, an
export file) keeps it, ``--overwrite`` (or a step's ``overwrite = true``) replaces it, and with neither the run stops
there before any work (a rank selection is written again, as ``dzspec select-rank`` does); ingest, simulate and
convergence always skip what is already done. Progress bars (``progress`` of :func:`run_pipeline`) appear only when
stderr is a terminal unless asked for. A Dask performance report (HTML) of the whole run is written beside the
store.
"""

from __future__ import annotations

import difflib
import glob
import inspect
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dzspec.parallel import commands

__all__ = ["ConfigError", "PipelineConfig", "Step", "load_config", "run_pipeline"]


class ConfigError(ValueError):
    """An invalid pipeline config; the message names the file and the key."""


Types = type | tuple[type, ...]
_NUMBER = (int, float)


@dataclass(frozen=True)
class Key:
    """One key of a step: its type(s), whether it is required, whether it holds paths (relative to the config
    file), the type of its items (a list's elements, a table's values), its allowed values and a parser that
    checks its text (raising ValueError)."""

    types: Types
    required: bool = False
    path: bool = False
    items: Types | None = None
    choices: tuple[str, ...] = ()
    parse: Callable[[Any], Any] | None = None


_STR, _INT, _FLOAT, _BOOL = Key(str), Key(int), Key(_NUMBER), Key(bool)
_PATH, _REQUIRED_PATH = Key(str, path=True), Key(str, required=True, path=True)
_STRINGS = Key(list, items=str)
_GRID = Key(str, choices=("paper", "moose"))
_EDGES = Key((str, list), items=_NUMBER, parse=commands.parse_edges)

#: The keys of each step kind (besides ``kind``).
STEP_KEYS: dict[str, dict[str, Key]] = {
    "ingest": {"inputs": Key(list, required=True, path=True, items=str), "skip_unknown": _BOOL},
    "simulate": {"survey": Key(str, required=True, choices=("muse", "desi")), "n": Key(int, required=True),
                 "seed": _INT, "ingredients": Key(dict, path=True, items=str),
                 "continua": Key(str, choices=("analytic", "sps"))},
    "zfind": {"basis": _PATH, "basis_name": _STR, "params": Key(dict), "noise_calibration": _STR,
              "sky_nuisance": Key(str, choices=("auto", "off"))},
    "lae": {"prior": _PATH, "prior_name": _STR, "params": Key(dict), "noise_calibration": _STR},
    "stats": {"results": Key(str, required=True), "by": _STRINGS, "nbins": _INT, "split": _STR, "z": _STR,
              "truth": _STR, "tol": _FLOAT, "form": Key(str, choices=("relative", "absolute")), "score": _STR,
              "log10": _BOOL, "thresholds": Key(str, parse=commands.parse_thresholds), "marked": _FLOAT,
              "positive": Key(str, choices=("source", "correct")), "false_class": _STRINGS,
              "rows": Key(str, parse=commands.parse_rows), "name": _STR, "figures": _PATH},
    "train": {"out": _REQUIRED_PATH, "name": _STR, "rank": _INT, "grid": _GRID,
              "method": Key(str, choices=("nearly", "shift")), "max_iter": _INT, "tol": _FLOAT,
              "max_spectra": _INT, "block_rows": _INT, "seed": _INT, "overwrite": _BOOL},
    "select_rank": {"out": _REQUIRED_PATH, "ranks": Key((str, list), items=int, parse=commands.parse_ranks),
                    "folds": _INT, "grid": _GRID, "max_iter": _INT, "tol": _FLOAT, "max_spectra": _INT,
                    "seed": _INT},
    "priors": {"sky": _REQUIRED_PATH, "sky_group": _STR, "sky_class": _STRINGS, "lae": _REQUIRED_PATH,
               "lae_group": _STR, "lae_class": _STRINGS, "max_sky": _INT, "max_lae": _INT, "seed": _INT,
               "out": _REQUIRED_PATH, "name": _STR, "rescale": Key(str, choices=("fit", "paper")), "n_sky": _INT,
               "n_lae": _INT, "variance_model": Key(str, choices=("conserve", "propagate")), "overwrite": _BOOL},
    "blends": {"basis": _REQUIRED_PATH, "name": _STR, "zfind_results": _STR, "t_blend": _FLOAT,
               "tolerance": _FLOAT, "params": Key(dict)},
    "convergence": {"prior": _REQUIRED_PATH, "name": _STR, "exposures": _STR, "n_max": _INT, "draws": _INT,
                    "min_exposures": _INT, "seed": _INT, "estimator": Key(str, choices=("std", "iqr")),
                    "flux_column": _STR, "z_min": _FLOAT, "n_shifts": _INT, "out": _STR, "overwrite": _BOOL,
                    "figure": _PATH},
    "calibrate_noise": {"name": _STR, "window": _INT, "overwrite": _BOOL},
    "calibrate_confidence": {"results": Key(str, required=True), "basis": _REQUIRED_PATH, "name": _STR,
                             "purity": _FLOAT, "seed": _INT},
    "calibrate_zerr": {"results": Key(str, required=True), "basis": _PATH, "name": _STR, "snr": _STR,
                       "snr_edges": _EDGES, "z_edges": _EDGES, "check": _BOOL},
    "export": {"output": _REQUIRED_PATH, "results": Key((str, list), items=str), "overwrite": _BOOL,
               "model_spectra": _STR, "model_where": _STR, "vi": _BOOL},
}
#: The step kinds whose ``params`` table sets the parameters of an engine's kernel.
PARAMS_KINDS = ("zfind", "lae", "blends")
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


def engine_params(kind: str) -> dict[str, Any]:
    """The ``params`` a step of ``kind`` (zfind, lae, blends) may set, with their defaults: its kernel's defaults
    (:data:`~dzspec.engines.nmf.adapter.ZFIND`, :data:`~dzspec.engines.madgics.adapter.LAE_SCAN`,
    :data:`~dzspec.engines.nmf.adapter.BLENDS`) less those the step sets itself (the noise calibration's, the sky
    continuum's and the confidence model's checksums; blends' ``t_blend`` and ``tolerance``, which are step keys).

    Examples
    --------
    >>> params = engine_params("zfind")
    >>> params["dz"], "noise_sha256" in params
    (0.0005, False)
    """
    from dzspec.engines.adapter import NOISE_PARAMS

    if kind == "zfind":
        from dzspec.engines.nmf.adapter import ZFIND as spec
    elif kind == "lae":
        from dzspec.engines.madgics.adapter import LAE_SCAN as spec
    elif kind == "blends":
        from dzspec.engines.nmf.adapter import BLENDS as spec
    else:
        raise ValueError(f"no engine params for step kind {kind!r}; {', '.join(PARAMS_KINDS)} have them")
    internal = {*NOISE_PARAMS, "sky_sha256", "confidence_sha256", *STEP_KEYS[kind]}
    return {key: value for key, value in spec.defaults.items() if key not in internal}


def _check(where: str, key: str, value: Any, expected: Types) -> None:
    if isinstance(value, bool) and expected in (int, _NUMBER):
        raise ConfigError(f"{where}: '{key}' must be {_name(expected)}, not {value!r}")
    if not isinstance(value, expected):
        raise ConfigError(f"{where}: '{key}' must be {_name(expected)}, not {type(value).__name__} {value!r}")


def _name(expected: Types) -> str:
    names = {list: "a list", dict: "a table", str: "a string", int: "an integer", float: "a number",
             bool: "true or false"}
    kinds = expected if isinstance(expected, tuple) else (expected,)
    if kinds == _NUMBER:
        return "a number"
    return " or ".join(names.get(t, t.__name__) for t in kinds)


def _unknown(where: str, shown: str, key: str, valid: Sequence[str], scope: str,
             elsewhere: Mapping[str, str] | None = None) -> ConfigError:
    """The error of an unknown ``key`` (``shown`` as its key path), naming the closest valid key: one of ``valid``,
    or the key's place in ``elsewhere`` (``{key: where it belongs, quoted}``), e.g. a scan parameter given as a
    step key."""
    elsewhere = dict(elsewhere or {})
    if key in elsewhere:
        guess: str | None = elsewhere[key]
    else:
        close = _closest(key, [*valid, *elsewhere])
        guess = elsewhere.get(close, f"'{close}'") if close else None
    hint = f"; did you mean {guess}?" if guess else ";"
    return ConfigError(f"{where}: unknown key '{shown}'{hint} {scope} takes {', '.join(valid)}")


def _closest(key: str, valid: Sequence[str]) -> str | None:
    """The valid key ``key`` most likely stands for: the closest spelling (:func:`difflib.get_close_matches`), else
    the longest valid key it begins or ends with as a word (``dz_step``: ``dz``), else the one it begins."""
    close = difflib.get_close_matches(key, valid, n=1)
    if close:
        return close[0]
    words = [k for k in valid if key.startswith(k + "_") or key.endswith("_" + k)]
    if words:
        return max(words, key=len)
    return next((k for k in valid if k.startswith(key)), None)


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
            raise _unknown(where, f"cluster.adapt.{key}", key, list(_ADAPT_KEYS), "it")
        _check(where, f"cluster.adapt.{key}", value, _ADAPT_KEYS[key])
    if "adapt" in cluster and "workers" in cluster:
        raise ConfigError(f"{where}: 'cluster.workers' (a fixed count) and 'cluster.adapt' exclude each other")
    if "cluster_name" in cluster and "gateway" in cluster:
        raise ConfigError(f"{where}: 'cluster.gateway' options start a new cluster; 'cluster.cluster_name' "
                          "connects to a running one: give one of them")


def _check_key(label: str, key: str, value: Any, spec: Key) -> None:
    _check(label, key, value, spec.types)
    if spec.items is not None and isinstance(value, list | dict):
        for i, item in enumerate(value.values() if isinstance(value, dict) else value):
            shown = f"{key}.{list(value)[i]}" if isinstance(value, dict) else f"{key}[{i}]"
            _check(label, shown, item, spec.items)
    if spec.choices and value not in spec.choices:
        raise ConfigError(f"{label}: '{key}' must be one of {', '.join(spec.choices)}, not {value!r}")
    if spec.parse is not None:
        try:
            spec.parse(value)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{label}: '{key}' = {value!r} cannot be read: {exc}") from None


def _check_params(label: str, kind: str, params: Mapping[str, Any]) -> None:
    """Each key of a step's ``params`` is one of its engine's (:func:`engine_params`), of its default's type."""
    valid = engine_params(kind)
    steps = {key: key for key in STEP_KEYS[kind] if key != "params"}
    for key, value in params.items():
        if key in steps:
            raise ConfigError(f"{label}: 'params.{key}' is a key of the step itself: write {key} = {value!r} "
                              "beside kind")
        if key not in valid:
            raise _unknown(label, f"params.{key}", key, list(valid), "it")
        default = valid[key]
        if isinstance(default, bool):
            expected: Types = bool
        elif isinstance(default, int):
            expected = int
        elif isinstance(default, float):
            expected = _NUMBER
        elif isinstance(default, str | list | tuple | dict):
            expected = list if isinstance(default, tuple) else type(default)
        else:
            continue  # None: any type
        _check(label, f"params.{key}", value, expected)
        if isinstance(default, list | tuple) and default and isinstance(default[0], int | float):
            for i, item in enumerate(value):
                _check(label, f"params.{key}[{i}]", item, _NUMBER)


def _check_step(label: str, kind: str, step: Mapping[str, Any]) -> None:
    allowed = STEP_KEYS[kind]
    elsewhere = {key: f"'params.{key}'" for key in engine_params(kind)} if kind in PARAMS_KINDS else {}
    elsewhere.update({key: f"the top-level '{key}'" for key in _TOP_KEYS if key not in allowed})
    for key, value in step.items():
        if key == "kind":
            continue
        if key not in allowed:
            raise _unknown(label, key, key, list(allowed), "it", elsewhere)
        _check_key(label, key, value, allowed[key])
    for key, spec in allowed.items():
        if spec.required and key not in step:
            raise ConfigError(f"{label}: missing key '{key}'")
    if "params" in step:
        _check_params(label, kind, step["params"])


def _resolve_paths(step: dict[str, Any], kind: str, base: Path) -> dict[str, Any]:
    """The step's options, with its path keys relative to the config file's folder."""
    options = {key: value for key, value in step.items() if key != "kind"}
    for key, spec in STEP_KEYS[kind].items():
        if not spec.path or key not in options:
            continue
        value = options[key]
        if isinstance(value, list):
            options[key] = [str(base / item) for item in value]
        elif isinstance(value, dict):
            options[key] = {name: str(base / item) for name, item in value.items()}
        else:
            options[key] = str(base / value)
    return options


def load_config(path: str | Path) -> PipelineConfig:
    """Read and check a pipeline config, starting no cluster; :class:`ConfigError` names the file, the offending key
    and the closest valid one.

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
    dzspec.parallel.pipeline.ConfigError: ...bad.toml: steps[0] (zfind): unknown key 'basis_nam'; did you mean ...
    >>> _ = (folder / "bad.toml").write_text('store = "s.zarr"\\n[[steps]]\\nkind = "zfind"\\nparams = {dz_step=1}\\n')
    >>> try:
    ...     load_config(folder / "bad.toml")
    ... except ConfigError as error:
    ...     print(str(error).split(": ", 1)[1][:88])
    steps[0] (zfind): unknown key 'params.dz_step'; did you mean 'dz'? it takes z_min, z_max
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
            raise _unknown(where, key, key, list(_TOP_KEYS), "the top level",
                           {name: f"'cluster.{name}'" for name in _CLUSTER_KEYS if name not in _TOP_KEYS})
        _check(where, key, value, _TOP_KEYS[key])
    for key in ("store", "steps"):
        if key not in raw:
            raise ConfigError(f"{where}: missing key '{key}'")
    cluster = dict(raw.get("cluster", {}))
    for key, value in cluster.items():
        if key not in _CLUSTER_KEYS:
            raise _unknown(where, f"cluster.{key}", key, list(_CLUSTER_KEYS), "[cluster]")
        _check(where, f"cluster.{key}", value, _CLUSTER_KEYS[key])
    kind = cluster.get("kind", "local")
    if kind not in CLUSTER_KINDS:
        raise ConfigError(f"{where}: 'cluster.kind' must be one of {', '.join(CLUSTER_KINDS)}, not {kind!r}")
    if kind == "address" and "address" not in cluster:
        raise ConfigError(f"{where}: cluster.kind = 'address' needs 'cluster.address'")
    _check_gateway(where, kind, cluster)
    if not raw["steps"]:
        raise ConfigError(f"{where}: 'steps' is empty")
    steps = []
    for i, step in enumerate(raw["steps"]):
        label = f"{where}: steps[{i}]"
        if not isinstance(step, dict) or "kind" not in step:
            raise ConfigError(f"{label}: each step is a table with a 'kind'")
        if step["kind"] not in STEP_KEYS:
            close = _closest(str(step["kind"]).replace("-", "_"), list(STEP_KEYS))
            hint = f"; did you mean {close!r}?" if close else ";"
            raise ConfigError(f"{label}: unknown kind {step['kind']!r}{hint} kinds are {', '.join(STEP_KEYS)}")
        _check_step(f"{label} ({step['kind']})", step["kind"], step)
        steps.append(Step(step["kind"], _resolve_paths(step, step["kind"], path.parent)))
    return PipelineConfig(path=path, store=path.parent / raw["store"], steps=tuple(steps), cluster=cluster,
                          group=raw.get("group"), block_rows=raw.get("block_rows"))


# ------------------------------------------------------------------------------------------------ the steps


@dataclass(frozen=True)
class _Run:
    """What every step of one run shares."""

    config: PipelineConfig
    client: Any
    resume: bool
    overwrite: bool
    progress: bool | None
    echo: Callable[[str], None]

    @property
    def store(self) -> str:
        return str(self.config.store)

    def runner(self) -> dict[str, Any]:
        """The block runner's keyword arguments."""
        runner = {"group": self.config.group, "resume": self.resume, "overwrite": self.overwrite,
                  "progress": self.progress}
        if self.config.block_rows:
            runner["block_rows"] = self.config.block_rows
        return runner

    def keep(self, options: dict[str, Any], what: str, exists: bool, *, refuse: bool = True) -> bool:
        """Whether a step that makes one named output keeps it (``--resume``, the output exists, and neither the
        step nor the run says overwrite); sets ``options["overwrite"]`` from the run. An existing output with
        neither is refused before any work (``refuse``), as the command would refuse to write it."""
        options["overwrite"] = bool(options.get("overwrite", False) or self.overwrite)
        if not exists or options["overwrite"]:
            return False
        if self.resume:
            self.echo(f"{what} exists: kept (--resume)")
            return True
        if refuse:
            from dzspec.errors import StoreError

            raise StoreError(f"{what} exists: dzspec run --resume keeps it, --overwrite (or overwrite = true in the "
                             "step) replaces it")
        return False


def _default(function: Callable[..., Any], key: str) -> Any:
    """The default of ``function``'s keyword ``key``: the command's, for the name of what a step makes."""
    return inspect.signature(function).parameters[key].default


def _has_group(store: str | Path, inner: str) -> bool:
    import zarr

    try:
        return inner in zarr.open_group(str(store), mode="r")
    except FileNotFoundError:
        return False


def _ingest(run: _Run, options: dict[str, Any]) -> None:
    from dzspec.parallel.ingest import ingest

    paths = sorted({p for pattern in options["inputs"] for p in glob.glob(pattern, recursive=True)})
    if not paths:
        raise ConfigError(f"{run.config.path}: ingest inputs {options['inputs']} match no file")
    report = ingest(paths, run.config.store, run.client, skip_unknown=options.get("skip_unknown", False),
                    progress=run.progress)
    run.echo(report.summary())


def _simulate(run: _Run, options: dict[str, Any]) -> None:
    from dzspec.simulate import simulate

    run.echo(simulate(run.config.store, options["survey"], options["n"], run.client, seed=options.get("seed", 0),
                      progress=run.progress, ingredient_paths=options.get("ingredients", {}),
                      continua=options.get("continua")).summary())


def _zfind(run: _Run, options: dict[str, Any]) -> None:
    from dzspec.parallel.zfind import run_zfind

    basis, name = _model(run, options, "basis")
    run.echo(run_zfind(run.config.store, basis, run.client, basis_name=name, params=options.get("params"),
                       noise_calibration=options.get("noise_calibration", "auto"),
                       sky_nuisance=options.get("sky_nuisance", "auto"), **run.runner()).summary())


def _lae(run: _Run, options: dict[str, Any]) -> None:
    from dzspec.parallel.lae import run_lae

    prior, name = _model(run, options, "prior")
    run.echo(run_lae(run.config.store, prior, run.client, prior_name=name, params=options.get("params"),
                     noise_calibration=options.get("noise_calibration", "auto"), **run.runner()).summary())


def _model(run: _Run, options: dict[str, Any], kind: str) -> tuple[str, str]:
    """The step's basis/prior store and name, or the shipped model for its spectra group when none is named."""
    if kind in options:
        return options[kind], options.get(f"{kind}_name", {"basis": "nmf", "prior": "lae"}[kind])
    from dzspec.models import default_model_for_store

    model = default_model_for_store(kind, run.config.store, run.config.group)
    return str(model.path), model.group


def _stats(run: _Run, options: dict[str, Any]) -> None:
    commands.stats(run.store, run.client, echo=run.echo, **options)


def _train(run: _Run, options: dict[str, Any]) -> None:
    name = options.get("name", _default(commands.train, "name"))
    if not run.keep(options, f"{options['out']}/bases/{name}", _has_group(options["out"], f"bases/{name}")):
        commands.train(run.store, run.client, group=run.config.group, echo=run.echo, **options)


def _select_rank(run: _Run, options: dict[str, Any]) -> None:
    table = Path(options["out"]) / "rank_selection.zarr"
    if not run.keep(options, str(table), table.exists(), refuse=False):
        options.pop("overwrite")  # the command always rewrites its folder
        commands.select_rank(run.store, run.client, group=run.config.group, echo=run.echo, **options)


def _priors(run: _Run, options: dict[str, Any]) -> None:
    name = options.get("name", _default(commands.priors, "name"))
    if not run.keep(options, f"{options['out']}/priors/{name}", _has_group(options["out"], f"priors/{name}")):
        commands.priors(run.client, echo=run.echo, **options)


def _blends(run: _Run, options: dict[str, Any]) -> None:
    commands.blends(run.store, run.client, echo=run.echo, **options, **run.runner())


def _convergence(run: _Run, options: dict[str, Any]) -> None:
    options["overwrite"] = bool(options.get("overwrite", False) or run.overwrite)
    commands.convergence(run.store, run.client, progress=run.progress, echo=run.echo, **options)


def _calibrate_noise(run: _Run, options: dict[str, Any]) -> None:
    from dzspec.io import store as zstore
    from dzspec.io.noise import calibration_path

    name = options.get("name", _default(commands.calibrate_noise, "name"))
    spectra = zstore.resolve_spectra_group(zstore.open_root(run.store), run.config.group)
    where = calibration_path(spectra, name)
    if not run.keep(options, f"{run.store}/{where}", _has_group(run.store, where)):
        commands.calibrate_noise(run.store, run.client, group=run.config.group, progress=run.progress,
                                 echo=run.echo, **options)


def _calibrate_confidence(run: _Run, options: dict[str, Any]) -> None:
    commands.calibrate_confidence(run.store, echo=run.echo, **options)


def _calibrate_zerr(run: _Run, options: dict[str, Any]) -> None:
    commands.calibrate_zerr(run.store, echo=run.echo, **options)


def _export(run: _Run, options: dict[str, Any]) -> None:
    if isinstance(options.get("results"), str):
        options["results"] = [options["results"]]
    if not run.keep(options, options["output"], Path(options["output"]).exists()):
        commands.export(run.store, group=run.config.group, echo=run.echo, **options)


_STEPS: dict[str, Callable[[_Run, dict[str, Any]], None]] = {
    "ingest": _ingest, "simulate": _simulate, "zfind": _zfind, "lae": _lae, "stats": _stats, "train": _train,
    "select_rank": _select_rank, "priors": _priors, "blends": _blends, "convergence": _convergence,
    "calibrate_noise": _calibrate_noise, "calibrate_confidence": _calibrate_confidence,
    "calibrate_zerr": _calibrate_zerr, "export": _export,
}


def run_pipeline(config: PipelineConfig, client: Any, *, resume: bool = False, overwrite: bool = False,
                 progress: bool | None = None, report: str | Path | None = None,
                 echo: Callable[[str], None] = print) -> Path:
    """Run the steps in order on ``client``. Block steps refuse existing results unless ``resume`` (compute only
    the missing blocks) or ``overwrite``; a step that makes one named output keeps an existing one with ``resume``
    and replaces it with ``overwrite``; ingest, simulate and convergence always skip what is already done.
    ``progress``: bars on (True), off (False), or only when stderr is a terminal (None).

    A Dask performance report (HTML) of the whole run goes to ``report`` (default ``<store>.report.html`` beside
    the store); its path is returned.
    """
    from distributed import performance_report

    report_path = Path(report) if report else config.store.with_name(config.store.name + ".report.html")
    run = _Run(config, client, resume, overwrite, progress, echo)
    with performance_report(filename=str(report_path)):
        for i, step in enumerate(config.steps):
            echo(f"step {i + 1}/{len(config.steps)}: {step.kind}")
            _STEPS[step.kind](run, dict(step.options))
    echo(f"performance report: {report_path}")
    return report_path
