"""How each shipped model is made: dzspec's own simulations (with real ingredients) and its own commands.

A recipe is a frozen dataclass of every number that shapes a model, and one function that runs it on a Dask
client into a fresh store. ``dzspec models remake NAME --data SHARED_DATA --work DIR`` runs one and compares the
checksum with the shipped one; ``--install`` replaces the shipped store and its manifest entry. Everything is
seeded and every reduction has a fixed order, so on the same platform with the same pinned versions a remake is
bit-identical (the checksum covers the model arrays; attributes record paths and times and differ).

The recipes read the real ingredients from the data folder the project ships beside it (``shared/data``: sky
spectra, the MUSE cube whose blank spaxels give the sky residuals, the BC03/MILES grid, the UDF-10 catalogue);
they never copy those files into the model.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["RECIPES", "DesiGalaxyBasisRecipe", "DesiLaePriorRecipe", "MuseBasisRecipe", "make_model"]

log = logging.getLogger(__name__)

#: The real ingredients of the MUSE simulations, relative to the data folder.
MUSE_INGREDIENTS = {
    "sky_path": "sky/sky-uves.fits",
    "filter_path": "filters/mpdaf_filter_list.fits",
    "catalog_path": "muse_udf_format/catalogs/udf10_c041_e030_withz.fits.gz",
    "residual_cube_path": "muse_mpdaf_cubes/minicube_A478.fits.gz",
    "ssp_path": "sps/bc03_miles_subset.npz",
}
DESI_INGREDIENTS = {"sky_path": "sky/eboss-spec-sky.dat", "templates_path": "sps/bc03_miles_subset.npz"}


@dataclass(frozen=True)
class MuseBasisRecipe:
    """The shipped MUSE NMF basis: a rank-``rank`` nearly-NMF basis trained to ``tol`` on a simulated MUSE survey
    with stellar-population continua and the real residuals of the even tiles of the cube (the odd tiles are
    left to test sets), with the training survey's noise calibration (the default of stores too small to measure
    their own) and a dark night-sky continuum at MUSE's resolution (zfind's sky nuisance term), then its
    LOW_CONFIDENCE model fitted on a second simulated survey scanned with it."""

    n_train: int = 6000
    train_seed: int = 1001
    n_calibration: int = 6000
    calibration_seed: int = 1002
    residual_part: str = "even"
    rank: int = 10  # B26's cross-validated rank (their Fig. 4); dzspec select-rank checks it on these spectra
    tol: float = 1e-3
    max_iter: int = 1300
    nmf_seed: int = 100921
    purity: float = 0.995
    ingredients: dict[str, str] = field(default_factory=lambda: dict(MUSE_INGREDIENTS))
    # the night-sky continuum zfind fits beside the basis: a dark sky measured elsewhere (KPNO, the DESI model)
    # than the UVES sky whose continuum the simulator's pedestals take, so acceptance figures do not see their own
    # shape (the two correlate at 0.97 on the MUSE grid)
    nuisance_sky: str = "sky/eboss-spec-sky.dat"
    # ZERR calibrated apart below z 1.5 (optical lines), in the redshift desert (rest-UV ISM lines) and above 2.9 (Lya)
    zerr_z_edges: tuple[float, ...] = (1.5, 2.9)

    kind = "basis"
    survey = "muse"
    store = "muse_nmf.zarr"
    group = "nmf"
    description = ("MUSE NMF basis (rank 10, B26 rest-frame grid) trained on 6 000 simulated MUSE spectra with BC03 "
                   "continua and real sky residuals; with its noise default, sky continuum and LOW_CONFIDENCE model")


@dataclass(frozen=True)
class DesiGalaxyBasisRecipe:
    """The shipped DESI galaxy NMF basis: rank ``rank`` trained to ``tol`` on the coadds of a simulated DESI survey
    of galaxies (passive and star-forming, 0 < z < 1.6, BC03 continua) and [O II] emitters, scanned by default over
    ``scan_z_range`` (Redrock's galaxy range), with its LOW_CONFIDENCE model fitted on a second survey that also
    holds what the basis cannot describe (LAEs at 2 < z < 4, empty sky fibres), so that those get LOW_CONFIDENCE."""

    n_train: int = 4000
    train_seed: int = 3001
    n_calibration: int = 4000
    calibration_seed: int = 3002
    class_fractions: tuple[float, ...] = (0.0, 0.0, 0.2, 0.8, 0.0)  # DESI_SIM_CLASSES: galaxies and [O II] emitters
    # the confidence must also learn what a galaxy basis cannot describe: LAEs (one line, z > 1.7) and sky fibres
    calibration_class_fractions: tuple[float, ...] = (0.15, 0.0, 0.15, 0.55, 0.15)
    scan_z_range: tuple[float, float] = (0.0, 1.7)
    rank: int = 10
    tol: float = 1e-3
    max_iter: int = 1300
    nmf_seed: int = 100921
    purity: float = 0.995
    ingredients: dict[str, str] = field(default_factory=lambda: dict(DESI_INGREDIENTS))
    zerr_z_edges: tuple[float, ...] = ()  # one ZERR calibration over the scan's 0 < z < 1.7

    kind = "basis"
    survey = "desi"
    store = "desi_galaxy_nmf.zarr"
    group = "nmf"
    description = ("DESI galaxy NMF basis (rank 10, B26 rest-frame grid, scanned over 0 < z < 1.7) trained on 4 000 "
                   "simulated DESI coadds of galaxies with BC03 continua; with its LOW_CONFIDENCE model")


@dataclass(frozen=True)
class DesiLaePriorRecipe:
    """The shipped DESI MADGICS priors: U25's 50 sky-residual and 2 LAE eigenvectors from a simulated DESI survey
    (DESI model sky, BC03 continua): its sky fibres and its LAEs; with the survey's noise calibration as the
    instrument default of ``lae`` for stores too small to measure their own."""

    n_spectra: int = 6000
    seed: int = 2001
    n_sky: int = 50
    n_lae: int = 2
    ingredients: dict[str, str] = field(default_factory=lambda: dict(DESI_INGREDIENTS))

    kind = "prior"
    survey = "desi"
    store = "desi_lae.zarr"
    group = "lae"
    description = ("DESI MADGICS priors (50 sky + 2 LAE eigenvectors, U25 grid) from 6 000 simulated DESI spectra; "
                   "with their noise default")


def _paths(data: Path, ingredients: dict[str, str]) -> dict[str, str]:
    paths = {key: str(data / relative) for key, relative in ingredients.items()}
    missing = [path for path in paths.values() if not Path(path).exists()]
    if missing:
        raise FileNotFoundError(f"the recipe needs these ingredient files: {', '.join(missing)} (pass --data, the "
                                "folder holding sky/, sps/, muse_mpdaf_cubes/ ...)")
    return paths


def _ship_noise_default(survey_store: Path, group: str | None, out: Path) -> None:
    """Measure the noise calibration of a simulated survey and copy it into a model store ``out``: the instrument
    default that ``zfind``/``lae`` use for stores too small to measure their own."""
    from dzspec.io.noise import copy_noise_calibration
    from dzspec.parallel.noise_calibration import calibrate_noise

    measured = calibrate_noise(survey_store, group=group, overwrite=True)
    copy_noise_calibration(survey_store, measured.attrs["spectra_group"], out)


def _ship_muse_sky_continuum(sky_path: str, out: Path, name: str) -> None:
    """Store with ``out``/bases/<name> the continuum of the sky at ``sky_path`` as MUSE sees it (its LSF, its
    grid): the shape of the free-sign sky term of ``zfind`` (:func:`dzspec.engines.nmf.zfind.sky_nuisance_vector`)."""
    from dzspec.io.bases import save_sky_continuum
    from dzspec.io.ingredients import load_sky_spectrum
    from dzspec.kernels.simulate.muse import muse_lsf_fwhm, muse_wavelength
    from dzspec.kernels.simulate.sky import sky_continuum, sky_on_grid

    wave = muse_wavelength()
    continuum = sky_continuum(sky_on_grid(load_sky_spectrum(sky_path), wave, muse_lsf_fwhm(wave)))
    save_sky_continuum(out, name, wave, continuum,
                       source=f"{Path(sky_path).name} at the MUSE LSF on the MUSE grid (sky_continuum)")


def _make_basis(recipe: Any, survey: str, ingredients: dict[str, Any], out: Path, work: Path, client: Any, *,
                config: Any = None, calibration_config: Any = None, group: str | None = None,
                attrs: dict[str, Any] | None = None, nuisance_sky: str | None = None) -> str:
    """Simulate a training survey (``config``), train the basis to ``recipe.tol``, save it to
    ``out``/bases/<recipe.group> with the training survey's noise calibration as the instrument default (for stores
    too small to measure their own) and, for MUSE, the continuum of the sky ``nuisance_sky``, then scan a second
    simulated survey with it (``calibration_config``, by default the training's) and fit its LOW_CONFIDENCE model
    and its ZERR calibration on that scan."""
    from dzspec.io.bases import load_basis
    from dzspec.parallel.confidence import calibrate_confidence, calibrate_zerr
    from dzspec.parallel.train import train_and_save
    from dzspec.parallel.zfind import run_zfind
    from dzspec.simulate import simulate

    train_store, calibration_store = work / f"{survey}_train.zarr", work / f"{survey}_calibration.zarr"
    simulate(train_store, survey, recipe.n_train, client, seed=recipe.train_seed, config=config,
             ingredient_paths=ingredients, continua="sps", progress=False)
    train_and_save(train_store, out, recipe.group, client, recipe.rank, group=group, tol=recipe.tol,
                   max_iter=recipe.max_iter, seed=recipe.nmf_seed, overwrite=True, attrs=attrs)
    _ship_noise_default(train_store, group, out)
    if nuisance_sky is not None:
        _ship_muse_sky_continuum(nuisance_sky, out, recipe.group)
    # chunks of 512 spectra, so that the scan spreads over every worker (the spectra do not depend on it)
    simulate(calibration_store, survey, recipe.n_calibration, client, seed=recipe.calibration_seed,
             config=config if calibration_config is None else calibration_config,
             ingredient_paths=ingredients, continua="sps", chunk_rows=512, progress=False)
    report = run_zfind(calibration_store, out, client, basis_name=recipe.group, group=group, progress=False)
    calibrate_confidence(calibration_store, report.results, out, basis_name=recipe.group, purity=recipe.purity)
    calibrate_zerr(calibration_store, report.results, out, basis_name=recipe.group, z_edges=recipe.zerr_z_edges)
    return str(load_basis(out, recipe.group).attrs["basis_sha256"])


def make_muse_basis(recipe: MuseBasisRecipe, data: Path, work: Path, out: Path, client: Any) -> str:
    """Run :class:`MuseBasisRecipe`: BC03 continua and the even tiles' residuals (:func:`_make_basis`)."""
    ingredients = {**_paths(data, recipe.ingredients), "residual_part": recipe.residual_part}
    nuisance_sky = _paths(data, {"sky": recipe.nuisance_sky})["sky"]
    return _make_basis(recipe, "muse", ingredients, out, work, client, nuisance_sky=nuisance_sky)


def make_desi_galaxy_basis(recipe: DesiGalaxyBasisRecipe, data: Path, work: Path, out: Path, client: Any) -> str:
    """Run :class:`DesiGalaxyBasisRecipe` (:func:`_make_basis`): trained on the coadds of a DESI survey of galaxies,
    its confidence fitted on a survey that also holds LAEs and sky fibres."""
    from dzspec.kernels.simulate.desi import DESI_GRID_NAME, DesiSimConfig

    return _make_basis(recipe, "desi", _paths(data, recipe.ingredients), out, work, client,
                       config=DesiSimConfig(class_fractions=recipe.class_fractions),
                       calibration_config=DesiSimConfig(class_fractions=recipe.calibration_class_fractions),
                       group=f"spectra/{DESI_GRID_NAME}", attrs={"scan_z_range": list(recipe.scan_z_range)})


def make_desi_lae_prior(recipe: DesiLaePriorRecipe, data: Path, work: Path, out: Path, client: Any) -> str:
    """Run :class:`DesiLaePriorRecipe`: simulate a DESI survey, build the priors from its sky fibres and LAEs, and
    keep the survey's noise calibration beside them (``lae``'s default for stores too small to measure their own)."""
    from dzspec.io.priors import load_lae_prior
    from dzspec.kernels.simulate.desi import DESI_GRID_NAME
    from dzspec.parallel.lae import build_lae_prior, prior_rows
    from dzspec.simulate import simulate

    store, group = work / "desi_train.zarr", f"spectra/{DESI_GRID_NAME}"  # the coadds, not the exposures
    simulate(store, "desi", recipe.n_spectra, client, seed=recipe.seed,
             ingredient_paths=_paths(data, recipe.ingredients), continua="sps", progress=False)
    sky = prior_rows(store, group, ["sky_residual"])
    lae = prior_rows(store, group, ["lae", "lae_double_peak"], z_name="z_true")
    build_lae_prior(client, (store, group, sky), (store, group, lae), out=out, name=recipe.group,
                    n_sky=recipe.n_sky, n_lae=recipe.n_lae, overwrite=True)
    _ship_noise_default(store, group, out)
    return str(load_lae_prior(out, recipe.group).attrs["prior_sha256"])


#: Recipe and maker of every shipped model.
RECIPES: dict[str, tuple[Any, Callable[..., str]]] = {
    "muse": (MuseBasisRecipe(), make_muse_basis),
    "desi_lae": (DesiLaePriorRecipe(), make_desi_lae_prior),
    "desi_galaxy": (DesiGalaxyBasisRecipe(), make_desi_galaxy_basis),
}


def make_model(name: str, data: str | Path, work: str | Path, client: Any) -> tuple[Path, dict[str, Any]]:
    """Make model ``name`` into ``work``/<store>; returns its path and its manifest entry."""
    recipe, maker = RECIPES[name]
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    out = work / recipe.store
    checksum = maker(recipe, Path(data), work, out, client)
    entry = {"kind": recipe.kind, "store": recipe.store, "group": recipe.group, "checksum": checksum,
             "survey": recipe.survey, "description": recipe.description, "recipe": asdict(recipe)}
    return out, entry


def install_model(name: str, path: str | Path, entry: dict[str, Any]) -> Path:
    """Copy a made model store into the package's model folder and write its manifest entry."""
    from dzspec.models import models_dir

    target = models_dir() / entry["store"]
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(path, target)
    manifest_path = models_dir() / "MANIFEST.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    manifest[name] = entry
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return target
