"""The shipped default models: manifest, checksums, size, recipes, lookup, ``dzspec models``, and ``zfind`` / ``lae``
on a user's store with no model given."""

import json
from dataclasses import asdict

import numpy as np
import pytest

from dzspec.cli import main
from dzspec.io import store as zstore
from dzspec.io.bases import load_basis
from dzspec.io.noise import load_noise_calibration
from dzspec.io.priors import load_lae_prior
from dzspec.models import MODELS, default_basis_path, default_model_for_grid, default_prior_path, shipped_model
from dzspec.models.recipes import RECIPES

pytestmark = pytest.mark.cluster


def test_every_shipped_model_loads_matches_its_manifest_and_recipe_and_is_small():
    assert {"muse", "desi_lae", "desi_galaxy"} <= set(MODELS)
    for name, model in MODELS.items():
        if model.kind == "basis":
            checksum = load_basis(model.path, model.group).attrs["basis_sha256"]  # load_* recheck the bytes
        else:
            checksum = load_lae_prior(model.path, model.group).attrs["prior_sha256"]
        assert checksum == model.checksum, name
        # the manifest records exactly the recipe that `dzspec models remake NAME` runs today
        recipe, _ = RECIPES[name]
        recorded = json.loads(json.dumps(asdict(recipe)))  # as the manifest holds it: tuples are lists in JSON
        assert model.recipe == recorded and model.store == recipe.store and model.group == recipe.group
        size = sum(path.stat().st_size for path in model.path.rglob("*") if path.is_file())
        assert size < 16 * 2**20, f"{name}: {size / 2**20:.1f} MiB is too large to ship"


def test_lookup_by_name_and_by_the_store_grid():
    assert default_basis_path("muse") == MODELS["muse"].path
    assert default_basis_path("desi_galaxy") == MODELS["desi_galaxy"].path
    assert default_prior_path("desi_lae") == MODELS["desi_lae"].path
    assert default_model_for_grid("basis", "muse-air2vac-4750-1.25-3681").name == "muse"
    assert default_model_for_grid("basis", "desi-brz-3600-9824-0.8").name == "desi_galaxy"
    assert default_model_for_grid("prior", "desi-brz-3600-9824-0.8").name == "desi_lae"
    # a generic grid (TDOSE's linear MUSE spectra) takes the MUSE basis, not the first model by name
    assert default_model_for_grid("basis", "lin-4700.0-9350.0-3721-a00732b3").name == "muse"
    with pytest.raises(KeyError, match=r"no shipped basis model 'desi_lae'; shipped: .*muse"):
        shipped_model("desi_lae", "basis")


def test_models_command_lists_every_model(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for model in MODELS.values():
        assert model.name in out and str(model.path) in out and model.checksum[:12] in out
    assert main(["models", "remake", "nope"]) != 0
    assert "NAME is one of muse, desi_lae, desi_galaxy" in capsys.readouterr().err


def test_zfind_and_lae_run_on_a_new_store_with_the_shipped_models(tmp_path, capsys):
    """What a new user does: simulate (or ingest) spectra, then zfind / lae with no basis and no prior."""
    muse, desi = tmp_path / "muse.zarr", tmp_path / "desi.zarr"
    cluster = ["--workers", "1", "--no-progress"]
    assert main(["simulate", "--survey", "muse", "-n", "8", "--store", str(muse), "--seed", "3", *cluster]) == 0
    assert main(["zfind", str(muse), *cluster]) == 0
    assert "the shipped 'muse' basis" in capsys.readouterr().out
    root = zstore.open_root(muse)
    results = root["results/muse-air2vac-4750-1.25-3681/nmf_zfind"]
    assert results.attrs["params"]["basis_sha256"] == MODELS["muse"].checksum
    # 8 spectra are too few to measure a noise calibration: the shipped instrument default is used, and named
    muse_default = load_noise_calibration(MODELS["muse"].path, "spectra/muse-air2vac-4750-1.25-3681")
    assert results.attrs["params"]["noise_sha256"] == muse_default.sha256
    # and the basis's night-sky continuum is fitted beside it (the DESI galaxy basis carries none)
    sky = load_basis(MODELS["muse"].path, "nmf").attrs["sky_continuum"]
    assert results.attrs["params"]["sky_sha256"] == sky["sha256"]
    assert results["nuisance_coeff"].shape == (8, 2)
    assert np.isfinite(results["z"][:]).all() and results["z"].shape == (8,)

    assert main(["simulate", "--survey", "desi", "-n", "6", "--store", str(desi), "--seed", "3", *cluster]) == 0
    coadds = ["--group", "spectra/desi-brz-3600-9824-0.8"]
    assert main(["zfind", str(desi), *coadds, *cluster]) == 0
    assert "the shipped 'desi_galaxy' basis" in capsys.readouterr().out
    galaxies = zstore.open_root(desi)["results/desi-brz-3600-9824-0.8/nmf_zfind"]
    assert galaxies.attrs["params"]["basis_sha256"] == MODELS["desi_galaxy"].checksum
    assert (galaxies.attrs["params"]["z_min"], galaxies.attrs["params"]["z_max"]) == (0.0, 1.7)  # the basis's range
    assert galaxies.attrs["params"]["sky_sha256"] == ""
    assert main(["lae", str(desi), *coadds, *cluster]) == 0
    assert "the shipped 'desi_lae' prior" in capsys.readouterr().out
    lae = zstore.open_root(desi)["results/desi-brz-3600-9824-0.8/madgics_lae"]
    assert lae.attrs["params"]["prior_sha256"] == MODELS["desi_lae"].checksum
    desi_default = load_noise_calibration(MODELS["desi_lae"].path, "spectra/desi-brz-3600-9824-0.8")
    assert lae.attrs["params"]["noise_sha256"] == desi_default.sha256
    assert lae["z"].shape == (6,)
