"""dzspec run CONFIG (dzspec.parallel.pipeline): every key is checked before a cluster starts, naming the file, the
key and the closest valid one; every command that works on a store is a step doing what the command does, with its
options and defaults; `dzspec run` runs a config end to end on a LocalCluster and resumes."""

import argparse
import inspect
import re
import shutil
import sys

import numpy as np
import pytest
import xarray as xr

from dzspec.errors import StoreError
from dzspec.io import store as zstore
from dzspec.io.bases import load_basis
from dzspec.parallel import commands
from dzspec.parallel.pipeline import STEP_KEYS, ConfigError, engine_params, load_config, run_pipeline
from dzspec.testing import write_synthetic_store
from tests.conftest import COARSE_N_SHIFTS, small_lae_prior, write_lae_pipeline
from tests.conftest import DESI_GROUP as GROUP

pytestmark = pytest.mark.cluster


def _run(folder, name, text, client, **kwargs):
    """Run the config ``text`` (written to ``folder/name``) on ``client``; its output lines as one string."""
    path = folder / name
    path.write_text(text)
    lines = []
    run_pipeline(load_config(path), client, progress=False, echo=lines.append, **kwargs)
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- checking the config


_LAE = '[[steps]]\nkind = "lae"\nprior = "p"\n'


@pytest.mark.parametrize(("text", "message"), [
    ('store = "s"\nsteps = []\nworkers = 2\n',
     "unknown key 'workers'; did you mean 'cluster.workers'? the top level takes"),
    ('stor = "s"\n' + _LAE, "unknown key 'stor'; did you mean 'store'? the top level takes"),
    ('store = "s"\n[cluster]\nkind = "k8s"\n' + _LAE, "'cluster.kind' must be one of"),
    ('store = "s"\n[cluster]\nkind = "address"\n' + _LAE, "needs 'cluster.address'"),
    ('store = "s"\n[cluster]\nworker = 2\n' + _LAE, "unknown key 'cluster.worker'; did you mean 'workers'? [cluster]"),
    ('store = "s"\n[[steps]]\nkind = "lae"\nprior_nam = "p"\n',
     "steps[0] (lae): unknown key 'prior_nam'; did you mean 'prior_name'? it takes prior, prior_name"),
    ('store = "s"\n[[steps]]\nkind = "zfind"\nbasis = 3\n', "'basis' must be a string, not int 3"),
    ('store = "s"\n[[steps]]\nkind = "training"\n', "unknown kind 'training'; did you mean 'train'?"),
    ('store = "s"\n[[steps]]\nkind = "select-rank"\nout = "cv"\n', "did you mean 'select_rank'?"),
    ('store = "s"\n[[steps]]\nkind = "train"\n', "steps[0] (train): missing key 'out'"),
    ('[[steps]]\nkind = "lae"\nprior = "p"\n', "missing key 'store'"),
    ('store = "s"\n[cluster]\nworkers = "many"\n' + _LAE, "'cluster.workers' must be an integer"),
    ('store = "s"\n[[steps]\n', "not valid TOML"),
    ('store = "s"\n[cluster]\nkind = "gateway"\n' + _LAE, "cluster.kind = 'gateway' needs 'cluster.address'"),
    ('store = "s"\n[cluster]\nkind = "local"\ncluster_name = "c"\n' + _LAE,
     "'cluster.cluster_name' is only for cluster.kind = 'gateway', not 'local'"),
    ('store = "s"\n[cluster]\nkind = "gateway"\naddress = "http://g"\nadapt = {max = 4}\n' + _LAE,
     "unknown key 'cluster.adapt.max'; did you mean 'maximum'? it takes minimum, maximum"),
    ('store = "s"\n[cluster]\nkind = "gateway"\naddress = "http://g"\nadapt = {minimum = "1"}\n' + _LAE,
     "'cluster.adapt.minimum' must be an integer"),
    ('store = "s"\n[cluster]\nkind = "gateway"\naddress = "http://g"\nworkers = 2\nadapt = {maximum = 4}\n' + _LAE,
     "'cluster.workers' (a fixed count) and 'cluster.adapt' exclude"),
    ('store = "s"\n[cluster]\nkind = "gateway"\naddress = "http://g"\ncluster_name = "c"\n[cluster.gateway]\n'
     'worker_cores = 1\n' + _LAE, "give one of them"),
    ('store = "s"\n[cluster]\nkind = "gateway"\naddress = "http://g"\nauth = 1\n' + _LAE,
     "'cluster.auth' must be a string"),
    # a step's params: the engine's parameters, of their default's type
    ('store = "s"\n[[steps]]\nkind = "zfind"\nparams = { dz_step = 0.001 }\n',
     "steps[0] (zfind): unknown key 'params.dz_step'; did you mean 'dz'? it takes z_min, z_max, dz,"),
    ('store = "s"\n[[steps]]\nkind = "zfind"\nparams = { dz = "fine" }\n',
     "steps[0] (zfind): 'params.dz' must be a number, not str 'fine'"),
    ('store = "s"\n[[steps]]\nkind = "zfind"\nparams = { refine = 1 }\n', "'params.refine' must be true or false"),
    ('store = "s"\n[[steps]]\nkind = "zfind"\nparams = { nuisance_order = 1.5 }\n',
     "'params.nuisance_order' must be an integer"),
    ('store = "s"\n[[steps]]\nkind = "zfind"\nparams = { noise_sha256 = "x" }\n', "unknown key 'params.noise_sha256'"),
    ('store = "s"\n[[steps]]\nkind = "zfind"\nparams = { zerr_scale = ["1"] }\n',
     "'params.zerr_scale[0]' must be a number"),
    ('store = "s"\n[[steps]]\nkind = "lae"\nparams = { nshifts = 100 }\n',
     "steps[0] (lae): unknown key 'params.nshifts'; did you mean 'n_shifts'?"),
    ('store = "s"\n[[steps]]\nkind = "lae"\nparams = { n_shifts = true }\n', "'params.n_shifts' must be an integer"),
    ('store = "s"\n[[steps]]\nkind = "blends"\nbasis = "b"\nparams = { tblend = 0.1 }\n',
     "steps[0] (blends): unknown key 'params.tblend'"),
    ('store = "s"\n[[steps]]\nkind = "blends"\nbasis = "b"\nparams = { t_blend = 0.1 }\n',
     "'params.t_blend' is a key of the step itself: write t_blend = 0.1 beside kind"),
    ('store = "s"\n[[steps]]\nkind = "zfind"\ndz = 0.001\n', "unknown key 'dz'; did you mean 'params.dz'?"),
    ('store = "s"\n[[steps]]\nkind = "train"\nout = "b"\ngroup = "g"\n',
     "unknown key 'group'; did you mean the top-level 'group'?"),
    # the other steps' keys: the command's options, their types, choices and forms
    ('store = "s"\n[[steps]]\nkind = "train"\nout = "b"\nmax_iters = 3\n',
     "steps[0] (train): unknown key 'max_iters'; did you mean 'max_iter'?"),
    ('store = "s"\n[[steps]]\nkind = "train"\nout = "b"\nrank = 2.5\n', "'rank' must be an integer, not float 2.5"),
    ('store = "s"\n[[steps]]\nkind = "train"\nout = "b"\ngrid = "fine"\n', "'grid' must be one of paper, moose"),
    ('store = "s"\n[[steps]]\nkind = "select_rank"\nout = "cv"\nranks = "two"\n', "'ranks' = 'two' cannot be read"),
    ('store = "s"\n[[steps]]\nkind = "select_rank"\nout = "cv"\nranks = [1, "2"]\n', "'ranks[1]' must be an integer"),
    ('store = "s"\n[[steps]]\nkind = "priors"\nsky = "s"\nlae = "s"\nout = "s"\nsky_class = "sky"\n',
     "'sky_class' must be a list"),
    ('store = "s"\n[[steps]]\nkind = "calibrate_zerr"\nresults = "r"\nsnr_edges = "5;13"\n',
     "'snr_edges' = '5;13' cannot be read"),
    ('store = "s"\n[[steps]]\nkind = "calibrate_confidence"\nresults = "r"\n', "missing key 'basis'"),
    ('store = "s"\n[[steps]]\nkind = "convergence"\nprior = "p"\nestimator = "mad"\n',
     "'estimator' must be one of std, iqr"),
    ('store = "s"\n[[steps]]\nkind = "export"\n', "steps[0] (export): missing key 'output'"),
    ('store = "s"\n[[steps]]\nkind = "stats"\nresults = "r"\nthresholds = "0:1"\n', "'thresholds' = '0:1' cannot be"),
    ('store = "s"\n[[steps]]\nkind = "simulate"\nsurvey = "desi"\nn = 2\ningredients = { sky_path = 3 }\n',
     "'ingredients.sky_path' must be a string"),
])
def test_bad_configs_name_the_file_the_key_and_the_closest_valid_one(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        load_config(path)
    assert str(info.value).startswith(str(path))


def test_every_key_of_a_good_config_is_kept_and_paths_are_relative_to_the_config(tmp_path):
    path = tmp_path / "sub" / "run.toml"
    path.parent.mkdir()
    path.write_text("""store = "s.zarr"
[[steps]]
kind = "zfind"
basis = "../b.zarr"
params = { dz = 0.001, z_max = 2, refine = false, zerr_scale = [1, 1.2] }
[[steps]]
kind = "blends"
basis = "/abs/b.zarr"
t_blend = 0.02
params = { lsf_fwhm = [2.5, 2.6], continuum_degree = 4 }
[[steps]]
kind = "simulate"
survey = "muse"
n = 3
ingredients = { sky_path = "sky.fits" }
[[steps]]
kind = "export"
output = "z.fits"
results = "nmf_zfind"
""")
    zfind, blends, simulate, export = load_config(path).steps
    assert zfind.options == {"basis": str(tmp_path / "sub" / ".." / "b.zarr"),
                             "params": {"dz": 0.001, "z_max": 2, "refine": False, "zerr_scale": [1, 1.2]}}
    assert blends.options["basis"] == "/abs/b.zarr" and blends.options["params"]["continuum_degree"] == 4
    assert simulate.options["ingredients"] == {"sky_path": str(tmp_path / "sub" / "sky.fits")}
    assert export.options["output"] == str(tmp_path / "sub" / "z.fits")


def test_the_params_a_step_checks_are_its_engines():
    """zfind, lae and blends params: the kernels' defaults, less what the step itself sets."""
    from dzspec.engines.madgics.adapter import LAE_SCAN
    from dzspec.engines.nmf.adapter import BLENDS, ZFIND

    assert set(engine_params("zfind")) == set(ZFIND.defaults) - {"sky_sha256", "confidence_sha256", "noise_store",
                                                                "noise_group", "noise_name", "noise_sha256"}
    assert {"z_min", "n_shifts", "dchi2_min", "ew_min"} <= set(engine_params("lae")) < set(LAE_SCAN.defaults)
    assert set(engine_params("blends")) == set(BLENDS.defaults) - {"t_blend", "tolerance"}


def test_gateway_address_may_come_from_the_dask_config(tmp_path):
    """Inside a JupyterHub with Dask Gateway, DASK_GATEWAY__ADDRESS (dask's gateway.address) names the gateway."""
    import dask

    path = tmp_path / "hub.toml"
    path.write_text('store = "s"\n[cluster]\nkind = "gateway"\n' + _LAE)
    with dask.config.set({"gateway.address": "https://hub.example.org/services/dask-gateway"}):
        assert load_config(path).cluster == {"kind": "gateway"}


def test_dzspec_run_with_a_bad_config_starts_no_cluster(tmp_path, monkeypatch, capsys):
    import dzspec.cluster
    from dzspec.cli import main

    def no_cluster(*args, **kwargs):
        pytest.fail("a cluster was started for a bad config")

    monkeypatch.setattr(dzspec.cluster, "make_client", no_cluster)
    monkeypatch.setattr(dzspec.cluster, "client_from_config", no_cluster)
    path = tmp_path / "bad.toml"
    path.write_text('store = "s.zarr"\n[[steps]]\nkind = "zfind"\nparams = { dz_step = 0.001 }\n')
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"dzspec run: error: {path}: steps[0] (zfind): unknown key 'params.dz_step'; did you mean 'dz'?" in err


def _subcommand(name):
    from dzspec.cli import build_parser

    parser = build_parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


#: What a step takes from the config or the run instead of the command line.
_FROM_THE_RUN = {"help", "store", "group", "scheduler", "workers", "threads_per_worker", "progress", "no_progress"}


def _as_list(value):
    return list(value) if isinstance(value, tuple | list) else value


@pytest.mark.parametrize("kind", [kind for kind in STEP_KEYS if hasattr(commands, kind)])
def test_a_step_takes_its_commands_options_with_its_defaults(kind):
    """The step's keys are the command's long options (`_` for `-`), its defaults are the command's, and the CLI
    and the step call the same function of dzspec.parallel.commands."""
    options = {action.dest: action for action in _subcommand(kind.replace("_", "-"))._actions}
    keys = {key for key in STEP_KEYS[kind] if key != "params"}
    elsewhere = _FROM_THE_RUN | ({"resume", "overwrite", "block_rows"} if kind == "blends" else set())
    assert keys == set(options) - elsewhere
    signature = inspect.signature(getattr(commands, kind)).parameters
    for key in keys:
        action = options[key]
        assert STEP_KEYS[kind][key].required == bool(action.required), key
        if not action.required:
            assert _as_list(signature[key].default) == _as_list(action.default), key
        if action.choices:
            assert set(STEP_KEYS[kind][key].choices) == set(action.choices), key


# ------------------------------------------------------------------------------------------------ progress bars


def test_progress_bars_only_on_a_terminal_by_default(tmp_path, monkeypatch, client):
    from contextlib import nullcontext

    import dzspec.cluster
    import dzspec.parallel.pipeline
    from dzspec.cli import _runner_kwargs, build_parser, main
    from dzspec.parallel.core import progress_enabled

    assert not sys.stderr.isatty() and progress_enabled(None) is False  # pytest captures stderr: a batch log
    assert progress_enabled(True) is True and progress_enabled(False) is False
    parser = build_parser()
    assert _runner_kwargs(parser.parse_args(["zfind", "s.zarr"]))["progress"] is None
    assert _runner_kwargs(parser.parse_args(["zfind", "s.zarr", "--no-progress"]))["progress"] is False
    assert _runner_kwargs(parser.parse_args(["zfind", "s.zarr", "--progress"]))["progress"] is True
    with pytest.raises(SystemExit):
        parser.parse_args(["zfind", "s.zarr", "--progress", "--no-progress"])
    seen = []
    monkeypatch.setattr(dzspec.cluster, "client_from_config", lambda cluster: nullcontext(client))
    monkeypatch.setattr(dzspec.parallel.pipeline, "run_pipeline", lambda *a, **kw: seen.append(kw["progress"]))
    path = tmp_path / "run.toml"
    path.write_text('store = "s.zarr"\n' + _LAE)
    for flags in ([], ["--no-progress"], ["--progress"]):
        assert main(["run", str(path), *flags]) == 0
    assert seen == [None, False, True]


# ------------------------------------------------------------------------------------------------ the steps run


@pytest.fixture(scope="module")
def nmf(tmp_path_factory, client):
    """A synthetic store with z_true, a basis trained on it by a train step and its zfind results (a zfind step)."""
    folder = tmp_path_factory.mktemp("nmf")
    write_synthetic_store(folder / "s.zarr", nspectrum=40, nwave=400, seed=4)
    out = _run(folder, "setup.toml", """store = "s.zarr"
[[steps]]
kind = "train"
out = "bases.zarr"
rank = 2
max_iter = 3
[[steps]]
kind = "zfind"
basis = "bases.zarr"
noise_calibration = "off"
params = { z_max = 1.0, dz = 0.002 }
""", client)
    grid = zstore.resolve_spectra_group(zstore.open_root(folder / "s.zarr"), None).removeprefix("spectra/")
    return folder, grid, out


TRAIN = 'store = "s.zarr"\n[[steps]]\nkind = "train"\nout = "bases.zarr"\nrank = 2\nmax_iter = 3\n'


def test_train_step_trains_a_basis_and_resume_keeps_it(nmf, client):
    folder, _, out = nmf
    assert "step 1/2: train" in out and "bases.zarr/bases/nmf: rank 2, 40 spectra" in out
    basis = load_basis(folder / "bases.zarr", "nmf")
    assert basis.rank == 2 and basis.attrs["training_spectra"] == 40
    assert basis.attrs["training_store"] == str(folder / "s.zarr")
    assert "bases/nmf exists: kept (--resume)" in _run(folder, "train.toml", TRAIN, client, resume=True)
    with pytest.raises(StoreError, match="bases/nmf exists: dzspec run --resume keeps it"):  # before any training
        _run(folder, "train.toml", TRAIN, client)


def test_blends_step_runs_the_block_runner_after_zfind(nmf, client):
    folder, grid, _ = nmf
    out = _run(folder, "blends.toml", 'store = "s.zarr"\nblock_rows = 20\n[[steps]]\nkind = "blends"\n'
               'basis = "bases.zarr"\nt_blend = 0.02\nparams = { continuum_degree = 4 }\n', client, overwrite=True)
    results = zstore.open_results(folder / "s.zarr", f"results/{grid}/nmf_blend")
    flagged = int(results.blend_flag.values.sum())
    assert f"blend candidates (score > 0.02): {flagged} of 40" in out and "2 blocks, 0 already done" in out
    assert results.attrs["params"]["continuum_degree"] == 4 and results.attrs["params"]["t_blend"] == 0.02


def test_calibrate_noise_step_stores_a_calibration(nmf, client):
    from dzspec.io.noise import load_noise_calibration

    folder, grid, _ = nmf
    text = 'store = "s.zarr"\n[[steps]]\nkind = "calibrate_noise"\nname = "pipeline"\nwindow = 31\n'
    assert "40 spectra" in _run(folder, "noise.toml", text, client, overwrite=True)
    assert load_noise_calibration(folder / "s.zarr", f"spectra/{grid}", "pipeline").attrs["window"] == 31
    assert f"calibration/{grid}/pipeline exists: kept" in _run(folder, "noise.toml", text, client, resume=True)


def test_calibrate_confidence_and_zerr_steps(nmf, client, tmp_path):
    folder, grid, _ = nmf
    shutil.copytree(folder / "bases.zarr", tmp_path / "bases.zarr")  # the module's basis stays without a model
    shutil.copytree(folder / "s.zarr", tmp_path / "s.zarr")
    out = _run(tmp_path, "calibrate.toml", f"""store = "s.zarr"
[[steps]]
kind = "calibrate_confidence"
results = "results/{grid}/nmf_zfind"
basis = "bases.zarr"
purity = 0.9
seed = 1
[[steps]]
kind = "calibrate_zerr"
results = "results/{grid}/nmf_zfind"
snr = "z_true"
snr_edges = []
z_edges = ""
check = true
""", client)
    model = load_basis(tmp_path / "bases.zarr", "nmf").attrs["confidence"]
    assert f"LOW_CONFIDENCE below {model['threshold']:.4f}" in out
    assert re.search(r"z_true -inf-inf: \d+ right redshifts, pull width", out)


def test_the_command_runs_the_same_function_as_the_step(nmf, capsys):
    from dzspec.cli import main

    folder, grid, _ = nmf
    args = ["calibrate-zerr", str(folder / "s.zarr"), "--results", f"results/{grid}/nmf_zfind"]
    assert main(args) == 2
    assert "give --basis (or --check)" in capsys.readouterr().err
    assert main([*args, "--snr", "z_true", "--snr-edges", "", "--z-edges", "", "--check"]) == 0
    assert re.search(r"z_true -inf-inf: \d+ right redshifts, pull width", capsys.readouterr().out)


def test_export_step_writes_the_redshifts(nmf, client):
    import pandas as pd

    folder, _, _ = nmf
    text = 'store = "s.zarr"\n[[steps]]\nkind = "export"\noutput = "out/z.csv"\nresults = ["nmf_zfind"]\n'
    (folder / "out").mkdir()
    assert "redshifts written to" in _run(folder, "export.toml", text, client)
    table = pd.read_csv(folder / "out" / "z.csv")
    assert len(table) == 40 and {"Z", "ZWARN", "TARGETID"} <= set(table.columns)
    assert "z.csv exists: kept (--resume)" in _run(folder, "export.toml", text, client, resume=True)
    with pytest.raises(StoreError, match=re.escape("z.csv exists")):
        _run(folder, "export.toml", text, client)


def test_select_rank_step_writes_its_table(nmf, client):
    folder, _, _ = nmf
    text = 'store = "s.zarr"\n[[steps]]\nkind = "select_rank"\nout = "cv"\nranks = [2]\nfolds = 2\nmax_iter = 3\n'
    out = _run(folder, "cv.toml", text, client)
    assert "chosen rank 2" in out
    assert (folder / "cv" / "rank_selection.csv").read_text().splitlines()[0].startswith("rank,gf_mean")
    assert "rank_selection.zarr exists: kept (--resume)" in _run(folder, "cv.toml", text, client, resume=True)


def test_simulate_then_priors_steps(tmp_path, client):
    from dzspec.io.priors import load_lae_prior

    out = _run(tmp_path, "priors.toml", f"""store = "survey.zarr"
group = "{GROUP}"
[[steps]]
kind = "simulate"
survey = "desi"
n = 120
seed = 12
[[steps]]
kind = "priors"
sky = "survey.zarr"
sky_group = "{GROUP}"
sky_class = ["sky_residual"]
lae = "survey.zarr"
lae_group = "{GROUP}"
lae_class = ["lae", "lae_double_peak"]
max_lae = 30
out = "survey.zarr"
name = "mine"
n_sky = 5
""", client)
    assert re.search(r"priors: \d+ sky spectra from .*survey.zarr, 30 LAE spectra", out)
    assert f"{tmp_path / 'survey.zarr'}/priors/mine" in out
    assert load_lae_prior(tmp_path / "survey.zarr", "mine").prior.sky_vectors.shape[1] == 5


def test_convergence_step(tmp_path, client):
    from dzspec.kernels.simulate.desi import DesiSimConfig
    from dzspec.simulate import simulate

    small_lae_prior(client, tmp_path / "prior.zarr", seed=31)
    simulate(tmp_path / "exposures.zarr", "desi", 10, client, seed=32, chunk_rows=8, progress=False,
             config=DesiSimConfig(nexp=4, class_fractions=(1, 0, 0, 0, 0)))
    text = f"""store = "exposures.zarr"
[[steps]]
kind = "convergence"
prior = "prior.zarr"
n_max = 4
draws = 3
n_shifts = {COARSE_N_SHIFTS}
out = "stats/mine"
figure = "fig9.png"
"""
    out = _run(tmp_path, "convergence.toml", text, client)
    assert "10 targets in" in out and "0 failed" in out and "line flux >= 0:" in out
    assert (tmp_path / "fig9.png").read_bytes()[:4] == b"\x89PNG"
    grid = xr.open_zarr(tmp_path / "exposures.zarr", group="stats/mine/grid", consolidated=False)
    assert int(grid["count"].sel(flux_threshold=0.0).sum()) == 10 * 4
    assert "already done" in _run(tmp_path, "convergence.toml", text, client)  # resumes


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
nbins = 4
""")
    assert main(["run", str(config), "--overwrite", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "step 3/3: stats" in out and "dask dashboard:" in out
    assert "threshold_lae_abs_dchi2_cal: AUC" in out  # the lines `dzspec stats` prints
    results = zstore.open_results(tmp_path / "survey.zarr", f"results/{GROUP}/madgics_lae")
    assert results.sizes["spectrum"] == 160 and np.isfinite(results.z.values).all()
    assert (tmp_path / "survey.zarr.report.html").stat().st_size > 10_000
    table = xr.open_zarr(tmp_path / "survey.zarr", group="stats/madgics_lae/threshold_lae_abs_dchi2_cal",
                         consolidated=False)
    assert table.attrs["marked"] == 25
    assert main(["run", str(config), "--resume", "--no-progress"]) == 0
    assert re.search(r"(\d+) blocks, \1 already done, 0 computed", capsys.readouterr().out)
    assert main(["run", str(tmp_path / "missing.toml")]) == 2
    assert "no such config file" in capsys.readouterr().err
