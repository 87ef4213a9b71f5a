"""Best-fit model spectra on each spectrum's own wavelength grid, rebuilt from an engine's outputs.

The NMF model is the basis at the best trial times its coefficients, plus the free-sign nuisance terms (pedestal,
Legendre tilts, the sky continuum) times theirs: exactly the fit whose chi-square the scan reports, on the basis
grid's observed window, then brought back to flux per Angstrom on the native pixels. The MADGICS components (the
posterior sky residual and LAE line) come out of the scan on the prior's rescaled log grid and go back the same
way.
"""

from __future__ import annotations

import numpy as np

from dzspec.engines.nmf.scan import nuisance_vectors
from dzspec.engines.nmf.zfind import sky_nuisance_vector
from dzspec.kernels.restframe import LogGrid, observed_window

__all__ = ["log_grid_to_native", "nmf_model", "nmf_model_log"]

_LN10 = np.log(10.0)


def nmf_model_log(wavelength: np.ndarray, basis: np.ndarray, grid: LogGrid, z: np.ndarray, coeff: np.ndarray,
                  nuisance_coeff: np.ndarray | None = None, *, sky_continuum: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """The NMF fit on the basis grid's observed window, in the scan's unit (flux per unit log lambda).

    Parameters
    ----------
    wavelength
        Observed vacuum wavelengths (Angstrom) of the spectra.
    basis, grid
        The ``(k, n_rest)`` basis and its rest grid.
    z
        ``(nspec,)`` best *trial* redshifts (``z``, quantised: ``coeff`` belongs to it). NaN: a row of NaN.
    coeff
        ``(nspec, k)`` basis coefficients at ``z``.
    nuisance_coeff
        ``(nspec, m)`` free-sign nuisance coefficients (constant, Legendre P1 ..., then the sky continuum when
        ``sky_continuum`` is given), or None for a scan without nuisance terms.
    sky_continuum
        The sky continuum on ``wavelength`` that the scan fitted
        (:func:`~dzspec.engines.nmf.zfind.sky_nuisance_vector`).

    Returns
    -------
    galaxy, nuisance, window
        ``(nspec, n)`` basis part and nuisance part on grid pixels ``j0 .. j0+n-1``, and ``window = (j0, n)``.

    Examples
    --------
    >>> grid = LogGrid(np.log10(3000.0), 1e-4, 3000)
    >>> wave = 10 ** grid.loglam()[1000:1800]
    >>> basis = np.exp(-0.5 * ((np.arange(3000) - 1200) / 3.0) ** 2)[None]
    >>> z = np.array([10 ** (100 * 1e-4) - 1])  # a shift of 100 pixels
    >>> galaxy, nuisance, (j0, n) = nmf_model_log(wave, basis, grid, z, np.array([[2.0]]), np.array([[0.5]]))
    >>> int(np.argmax(galaxy[0])) + j0, float(galaxy.max()), float(nuisance[0, 0])
    (1300, 2.0, 0.5)
    """
    wavelength = np.asarray(wavelength, np.float64)
    z = np.atleast_1d(np.asarray(z, np.float64))
    coeff = np.atleast_2d(np.asarray(coeff, np.float64))
    j0, n = observed_window(wavelength, grid)
    nspec, n_rest = z.size, basis.shape[1]
    galaxy = np.full((nspec, n), np.nan)
    observed = j0 + np.arange(n)
    for row in np.flatnonzero(np.isfinite(z)):
        rest = observed - int(grid.shift_of(z[row]))
        inside = (rest >= 0) & (rest < n_rest)
        galaxy[row] = 0.0
        galaxy[row, inside] = coeff[row] @ basis[:, rest[inside]]
    nuisance = np.zeros((nspec, n))
    if nuisance_coeff is not None:
        beta = np.atleast_2d(np.asarray(nuisance_coeff, np.float64))
        vectors = nuisance_vectors(n, beta.shape[1] - 1 - (sky_continuum is not None))
        vectors = np.zeros((0, n)) if vectors is None else vectors
        if sky_continuum is not None:
            vectors = np.vstack([vectors, sky_nuisance_vector(wavelength, sky_continuum, grid, (j0, n))])
        nuisance = beta @ vectors
    nuisance[~np.isfinite(z)] = np.nan
    return galaxy, nuisance, (j0, n)


def log_grid_to_native(values: np.ndarray, grid: LogGrid, window: tuple[int, int], wavelength: np.ndarray, *,
                       per_log_lambda: bool = True) -> np.ndarray:
    """Curves on grid pixels ``window = (j0, n)`` interpolated (linearly in log lambda) onto ``wavelength``, as flux
    per Angstrom (dividing by ``ln 10 lambda`` when ``per_log_lambda``); NaN outside the window.

    Examples
    --------
    >>> grid = LogGrid(np.log10(4000.0), 1e-4, 500)
    >>> lam = 10 ** grid.loglam()
    >>> out = log_grid_to_native((np.log(10) * lam * 3.0)[None], grid, (0, 500), np.array([4100.0, 3000.0]))
    >>> np.round(out, 9).tolist()
    [[3.0, nan]]
    """
    j0, n = window
    loglam = grid.start + grid.step * np.arange(j0, j0 + n)
    values = np.atleast_2d(np.asarray(values, np.float64))
    if per_log_lambda:
        values = values / (_LN10 * 10.0**loglam)
    x = np.log10(np.asarray(wavelength, np.float64))
    out = np.empty((values.shape[0], x.size))
    for row, curve in enumerate(values):
        out[row] = np.interp(x, loglam, curve, left=np.nan, right=np.nan)
    return out


def nmf_model(wavelength: np.ndarray, basis: np.ndarray, grid: LogGrid, z: np.ndarray, coeff: np.ndarray,
              nuisance_coeff: np.ndarray | None = None, *, sky_continuum: np.ndarray | None = None
              ) -> dict[str, np.ndarray]:
    """The NMF best-fit model on the spectra's own grid, in their flux unit (per Angstrom).

    Same parameters as :func:`nmf_model_log`. Returns ``model`` (basis plus nuisance terms) and ``model_nuisance``
    (the nuisance terms alone: the pedestal, tilts and sky continuum the scan fitted), both ``(nspec, nwave)``.

    Examples
    --------
    >>> grid = LogGrid(np.log10(3000.0), 1e-4, 3000)
    >>> wave = np.linspace(3500.0, 5000.0, 600)
    >>> out = nmf_model(wave, np.ones((1, 3000)), grid, np.array([0.1]), np.array([[1.0]]), np.array([[0.0]]))
    >>> inner = slice(1, -1)  # the end pixels may fall outside the basis grid's window: NaN there
    >>> bool(np.allclose(out["model"][0, inner] * np.log(10) * wave[inner], 1.0)), float(out["model_nuisance"][0, 300])
    (True, 0.0)
    """
    galaxy, nuisance, window = nmf_model_log(wavelength, basis, grid, z, coeff, nuisance_coeff,
                                             sky_continuum=sky_continuum)
    nuisance_native = log_grid_to_native(nuisance, grid, window, wavelength)
    return {"model": log_grid_to_native(galaxy, grid, window, wavelength) + nuisance_native,
            "model_nuisance": nuisance_native}
