"""Blend detection over a store through the block runner, after zfind."""

import warnings

import numpy as np
import pytest

from dzspec.engines.nmf.blends import confusion_redshifts, detect_blends
from dzspec.engines.nmf.grams import prepare_basis
from dzspec.engines.nmf.train import NMFResult
from dzspec.errors import BadSpectrumWarning
from dzspec.io import store as zstore
from dzspec.io.bases import save_basis
from dzspec.kernels.restframe import LogGrid, observed_window
from dzspec.parallel.blends import run_blends
from dzspec.parallel.zfind import run_zfind
from dzspec.schema import make_spectra_dataset

pytestmark = pytest.mark.cluster

C = 299_792.458
WAVE = 4750.0 + 1.25 * np.arange(3400)  # 4750-8999 A
GRID = LogGrid.spanning(4700.0 / 2.0, 9100.0, 2.5e-5)
GROUPS = ({3727.09: 1.0, 3729.88: 1.3}, {4862.68: 1.0}, {4960.30: 1.0, 5008.24: 3.0})
NSPEC = 24
PARAMS = {"z_max": 1.0, "dz": 0.0005}


def _components(rest):
    """Rest-frame f_lambda: flat, [OII], H-beta, [OIII], a red slope (lines 100 km/s)."""
    lines = [sum(a * np.exp(-0.5 * ((rest - lam) / (lam * 100.0 / C)) ** 2) for lam, a in g.items()) for g in GROUPS]
    return np.vstack([np.ones_like(rest), *lines, (rest / 5000.0) ** 2])


def _galaxy(z, scale=1.0):
    omega = np.array([1.0, 4.0, 3.0, 5.0, 0.3]) * 0.5
    return scale * omega @ _components(WAVE / (1 + z)) / (1 + z)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("blends")
    rest = GRID.wavelength()
    fit = NMFResult(_components(rest) * np.log(10) * rest, np.zeros((1, 5)), np.ones(GRID.size, bool))
    save_basis(tmp / "basis.zarr", "toy", fit, GRID, training_sha256="analytic")
    rng = np.random.default_rng(0)
    z1 = rng.uniform(0.1, 0.45, NSPEC)
    blend = np.arange(NSPEC) % 2 == 0
    # second galaxies away from the redshifts the confusion rule drops (its cost is the benchmark's business)
    z2 = np.full(NSPEC, np.nan)
    for i in np.flatnonzero(blend):
        while not np.isfinite(z2[i]):
            trial = z1[i] + rng.choice([-1.0, 1.0]) * rng.uniform(0.06, 0.5)
            confusion = confusion_redshifts(z1[i], (WAVE[0], WAVE[-1]))
            if 0.02 < trial < 0.95 and np.min(np.abs(confusion - trial)) > 0.02:
                z2[i] = trial
    flux = np.vstack([_galaxy(a) + (_galaxy(b, 0.4) if np.isfinite(b) else 0.0) for a, b in zip(z1, z2, strict=True)])
    sigma = 0.05
    flux += rng.normal(0, sigma, flux.shape)
    ivar = np.full(flux.shape, 1 / sigma**2)
    ivar[5] = 0.0  # a spectrum without data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadSpectrumWarning)
        ds = make_spectra_dataset(WAVE, flux, ivar, source_file="<test>", reader="test",
                                  coords={"targetid": 1000 + np.arange(NSPEC)[::-1], "z_true": z1})
    root = zstore.open_root(tmp / "s.zarr", mode="a")
    group = zstore.create_spectra_group(root, ds, chunk_rows=8)
    zstore.resize_spectra_group(group, NSPEC)
    zstore.write_rows(group, ds, 0)
    zstore.set_manifest(group, [{"sha256": "t", "path": "<test>", "reader": "test", "row_start": 0, "nrows": NSPEC,
                                 "status": "done"}])
    return tmp, z1, z2, flux.astype(np.float32), ivar.astype(np.float32)


def test_blends_need_a_finished_first_scan(setup, client):
    tmp = setup[0]
    with pytest.raises(ValueError, match="run zfind first"):
        run_blends(tmp / "s.zarr", tmp / "basis.zarr", client, basis_name="toy", progress=False)


def test_blends_through_the_runner_equal_the_kernel_and_keep_every_row(setup, client):
    tmp, _, z2_true, flux, ivar = setup
    store = tmp / "s.zarr"
    zfind = run_zfind(store, tmp / "basis.zarr", client, basis_name="toy", params=PARAMS, progress=False)
    assert zfind.complete
    report = run_blends(store, tmp / "basis.zarr", client, basis_name="toy", params={"lsf_fwhm": None},
                        progress=False)
    assert report.complete and report.nblocks == 4  # blocks sized by compute: 2 per worker thread
    results = zstore.open_results(store, report.results).compute()
    first = zstore.open_results(store, zfind.results).compute()
    spectra = zstore.open_spectra(store)

    # every input row has its output row, in order
    assert results.sizes["spectrum"] == NSPEC
    np.testing.assert_array_equal(results["targetid"].values, spectra["targetid"].values)
    assert bool(zstore.done_blocks(zstore.open_root(store)[report.results]).all())
    assert results.attrs["params"]["z_max"] == 1.0  # the trial grid comes from the first scan

    # the runner equals the kernel on the whole set at once
    basis = np.log(10) * GRID.wavelength() * _components(GRID.wavelength())
    prepared = prepare_basis(basis, observed_window(WAVE, GRID)[1])
    direct = detect_blends(WAVE, flux, ivar, first["z_refined"].values, prepared=prepared, grid=GRID,
                           shifts=GRID.shift_of(np.arange(2001) * 0.0005), lsf_fwhm=None)
    for name, values in direct.items():
        if values.dtype.kind in "bi":
            np.testing.assert_array_equal(results[name].values, values, err_msg=name)
        else:
            np.testing.assert_allclose(results[name].values, values, rtol=1e-6, atol=1e-9, err_msg=name)

    # the science: blends flagged at their second redshift, single galaxies not, the empty row NaN and unflagged
    flag, z2 = results["blend_flag"].values, results["blend_z"].values
    assert not flag[5] and np.isnan(results["blend_score"].values[5])
    blend = np.isfinite(z2_true)
    assert np.mean(flag[blend] & (np.abs(z2 - z2_true) < 0.003)[blend]) >= 0.9
    # single galaxies whose first scan is right are not flagged (one with a wrong z1 rightly is: the galaxy itself
    # shows up as the "second" redshift)
    right = np.abs(first["z_refined"].values - spectra["z_true"].values) < 0.003
    single = ~blend & (np.arange(NSPEC) != 5)
    assert (single & right).sum() >= 9 and not flag[single & right].any()


def test_blends_resume_and_refuse_another_configuration(setup, client):
    tmp = setup[0]
    store = tmp / "s.zarr"
    if "results" not in zstore.open_root(store):
        run_zfind(store, tmp / "basis.zarr", client, basis_name="toy", params=PARAMS, progress=False)
    run_blends(store, tmp / "basis.zarr", client, basis_name="toy", params={"lsf_fwhm": None}, progress=False,
               overwrite=True)
    again = run_blends(store, tmp / "basis.zarr", client, basis_name="toy", params={"lsf_fwhm": None},
                       progress=False, resume=True)
    assert again.complete and again.computed == 0 and again.already_done == 4
    with pytest.raises(Exception, match="config_sha256 differs"):
        run_blends(store, tmp / "basis.zarr", client, basis_name="toy", params={"t_blend": 0.02}, progress=False,
                   resume=True)


def test_cli_blends(setup, client, capsys):
    from dzspec.cli import main

    tmp = setup[0]
    store = tmp / "s.zarr"
    if "results" not in zstore.open_root(store):
        run_zfind(store, tmp / "basis.zarr", client, basis_name="toy", params=PARAMS, progress=False)
    args = ["blends", str(store), "--basis", str(tmp / "basis.zarr"), "--name", "toy", "--t-blend", "0.02",
            "--overwrite", "--workers", "1", "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    results = zstore.open_results(store, "results/" + zstore.resolve_spectra_group(zstore.open_root(store), None)
                                  .removeprefix("spectra/") + "/nmf_blend")
    flagged = int(results.blend_flag.values.sum())
    assert f"blend candidates (score > 0.02): {flagged} of {NSPEC}" in out
    assert np.array_equal(results.blend_flag.values, np.nan_to_num(results.blend_score.values) > 0.02)
