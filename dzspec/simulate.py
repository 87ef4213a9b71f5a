"""Simulated MUSE-like and DESI-like surveys with known truth, written straight into a spectra store.

The physics lives in :mod:`dzspec.kernels.simulate` (pure NumPy); this module names the simulators and hands
them to the block runner of :mod:`dzspec.parallel.generate`, so that millions of spectra are generated in
parallel with bounded memory and a run resumes where it stopped.

Examples
--------
>>> sorted(SIMULATORS)
['desi', 'muse']
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from os import PathLike
from typing import Any

import numpy as np

__all__ = ["CONTINUA", "SIMULATORS", "SimulatorSpec", "simulate"]

#: Galaxy continua of a simulation: the built-in analytic shape, or stellar-population synthesis (a grid file).
CONTINUA = ("analytic", "sps")


@dataclass(frozen=True)
class SimulatorSpec:
    """A survey simulator as the runner sees it (all members importable, so the spec pickles by reference)."""

    survey: str
    module: str
    function: str
    config_class: str
    grid_name_attr: str
    classes_attr: str
    ingredients_module: str
    ingredients_function: str
    flags_attr: str | None = None
    continua_ingredient: str = "ssp_path"  #: the ingredient that makes the continua stellar populations

    def _kernel(self) -> Any:
        return import_module(self.module)

    @property
    def grid_name(self) -> str:
        return str(getattr(self._kernel(), self.grid_name_attr))

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(getattr(self._kernel(), self.classes_attr))

    def default_config(self) -> Any:
        return getattr(self._kernel(), self.config_class)()

    def simulate(self, rows: np.ndarray, seed: int, config: Any, ingredients: Any) -> Any:
        return getattr(self._kernel(), self.function)(rows, seed, config, ingredients)

    @property
    def flags(self) -> Any:
        """The IntFlag class of the ``sim_flags`` truth column, if the simulator has one."""
        return getattr(self._kernel(), self.flags_attr) if self.flags_attr else None

    @property
    def load_ingredients(self) -> Callable[..., Any]:
        return getattr(import_module(self.ingredients_module), self.ingredients_function)


SIMULATORS: dict[str, SimulatorSpec] = {
    "muse": SimulatorSpec("muse", "dzspec.kernels.simulate.muse", "simulate_muse_block", "MuseSimConfig",
                          "MUSE_GRID_NAME", "MUSE_CLASSES", "dzspec.io.muse_ingredients", "load_muse_ingredients",
                          "MuseSimFlags"),
    "desi": SimulatorSpec("desi", "dzspec.kernels.simulate.desi", "simulate_desi_block", "DesiSimConfig",
                          "DESI_GRID_NAME", "DESI_SIM_CLASSES", "dzspec.io.desi_ingredients",
                          "load_desi_ingredients", continua_ingredient="templates_path"),
}


def simulate(
    store: str | PathLike[str],
    survey: str,
    nspectrum: int,
    client: Any,
    *,
    seed: int = 0,
    config: Any = None,
    ingredient_paths: dict[str, str] | None = None,
    chunk_rows: int | None = None,
    progress: bool | None = True,
    continua: str | None = None,
) -> Any:
    """Simulate ``nspectrum`` spectra of ``survey`` (``"muse"`` or ``"desi"``) into ``store`` on ``client``.

    Parameters
    ----------
    store
        The Zarr store (created if missing); spectra go to the group of the survey's wavelength grid.
    survey
        A key of :data:`SIMULATORS`.
    nspectrum
        Number of spectra (targets, for DESI: each with its exposures in a companion group).
    client
        A Dask client (:func:`dzspec.cluster.make_client`).
    seed
        Spectrum ``i`` depends only on (seed, survey, i).
    config
        The survey's config dataclass (default: its defaults).
    ingredient_paths
        Optional files for richer ingredients, passed to the survey's ingredient loader (e.g. ``sky_path``).
    chunk_rows
        Spectra per chunk of a new group (default from the byte budget).
    continua
        ``"sps"`` (stellar populations: the survey's grid ingredient, ``ssp_path`` for MUSE, ``templates_path``
        for DESI, must be given) or ``"analytic"`` (it must not); None: whatever the ingredients say.

    Returns
    -------
    dzspec.parallel.generate.GenerateReport
    """
    from dzspec.parallel.generate import generate_to_store

    try:
        spec = SIMULATORS[survey]
    except KeyError:
        raise ValueError(f"unknown survey {survey!r}; known: {', '.join(SIMULATORS)}") from None
    check_continua(spec, continua, ingredient_paths or {})
    return generate_to_store(store, spec, nspectrum, client, seed=seed, config=config,
                             ingredient_paths=ingredient_paths, chunk_rows=chunk_rows, progress=progress)


def check_continua(spec: SimulatorSpec, continua: str | None, ingredient_paths: dict[str, str]) -> None:
    """Raise a ValueError when the continua asked for and the ingredients given disagree.

    Examples
    --------
    >>> check_continua(SIMULATORS["muse"], "sps", {})
    Traceback (most recent call last):
    ...
    ValueError: continua 'sps' for muse needs a stellar-population grid: --ingredient ssp_path=PATH
    """
    if continua is None:
        return
    if continua not in CONTINUA:
        raise ValueError(f"continua {continua!r}: choose one of {', '.join(CONTINUA)}")
    key = spec.continua_ingredient
    if continua == "sps" and key not in ingredient_paths:
        raise ValueError(f"continua 'sps' for {spec.survey} needs a stellar-population grid: --ingredient "
                         f"{key}=PATH")
    if continua == "analytic" and key in ingredient_paths:
        raise ValueError(f"continua 'analytic' for {spec.survey} contradicts the ingredient {key}; drop one")
