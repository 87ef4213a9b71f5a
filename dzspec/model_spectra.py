"""The best-fit model of stored results, and their full chi-square curves recomputed on demand, for chosen rows.

Results groups keep per-spectrum numbers, not models or curves (a 10⁶-spectrum store would need terabytes for
them). What a scientist looks at is rebuilt here, in process, from the run's own provenance: the model named in its
parameters (checked by checksum), its noise calibration and its settings.

* :func:`model_spectra` rebuilds the best fit on each spectrum's own grid. NMF: the basis at the best trial times
  the stored coefficients plus the nuisance terms times theirs, no rescan needed. MADGICS: the posterior sky residual
  and LAE components, which need the scan again.
* :func:`rescan` runs the results' kernel again on the rows and returns the stored outputs with the whole
  chi-square (NMF) or Δχ² (MADGICS) curve over the trial redshifts and the model components: what the inspector
  draws.

Both compute in this process. :func:`model_spectra` is eager by default (a MUSE model is 15 kB a component) and lazy
on request (``lazy=True``: dask arrays, one chunk of rows computed at a time); computing the models of a whole store
is opt-in (``rows="all"``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from os import PathLike
from typing import Any

import numpy as np
import xarray as xr
from astropy.table import Table

from dzspec.engines.madgics.adapter import LAE_SCAN, scan_as_run
from dzspec.engines.nmf.adapter import ZFIND, cached_basis, sky_continuum_on
from dzspec.engines.nmf.model_spectra import log_grid_to_native, nmf_model
from dzspec.errors import StoreError
from dzspec.io import store as zstore
from dzspec.kernels.trials import trial_redshifts
from dzspec.results_schema import REDSHIFT_DIM

__all__ = ["model_spectra", "models_tables", "parse_rows", "rescan", "select_rows"]

log = logging.getLogger(__name__)

#: Rows per pass when a whole store's models are asked for.
_BLOCK_ROWS = 1024

Rows = Sequence[int] | np.ndarray | slice | str


def select_rows(store: str | PathLike[str], results: str, rows: Rows | None = None, *,
                where: str | None = None) -> np.ndarray:
    """Row numbers of a results group: ``rows`` (indices, a boolean mask, a slice, ``"all"``), then those of them
    for which ``where`` holds (an expression over the group's per-spectrum variables, as
    :meth:`xarray.Dataset.query` reads it, e.g. ``"zwarn == 0 and z > 3"``).
    """
    if results not in zstore.open_root(store):
        raise StoreError(f"{store}: no results group {results!r}")
    ds = zstore.open_results(store, results)
    n = ds.sizes["spectrum"]
    if rows is None and where is None:
        raise ValueError("choose rows (indices, a slice or 'all') or a where expression: computing every model of a "
                         "store is opt-in")
    if rows is None or (isinstance(rows, str) and rows == "all"):
        index = np.arange(n)
    elif isinstance(rows, slice):
        index = np.arange(n)[rows]
    elif isinstance(rows, str):
        raise ValueError(f"rows must be indices, a boolean mask, a slice or 'all', not {rows!r}")
    else:
        index = np.asarray(rows)
        index = np.flatnonzero(index) if index.dtype == bool else index.astype(np.int64).ravel()
    if index.size and (index.min() < -n or index.max() >= n):
        raise IndexError(f"{store}/{results}: rows outside 0..{n - 1}")
    index = np.where(index < 0, index + n, index)
    if where is not None:
        flat = ds[[name for name, var in ds.data_vars.items() if var.dims == ("spectrum",)]].compute()
        keep = flat.assign_coords(row=("spectrum", np.arange(n))).query(spectrum=where)["row"].values
        index = index[np.isin(index, keep)]
    return index


def _read(store: str | PathLike[str], results: str, rows: np.ndarray
          ) -> tuple[dict[str, Any], np.ndarray, np.ndarray, np.ndarray, xr.Dataset]:
    root = zstore.open_root(store)
    attrs = dict(root[results].attrs)
    source = root[attrs["input_group"]]
    if zstore.input_id(source) != attrs.get("input_id"):
        raise StoreError(f"{store}/{results}: the spectra of {attrs['input_group']} changed since the results were "
                         "written; run the engine again")
    wavelength = source["wavelength"][:]
    flux = source["flux"].get_orthogonal_selection((rows, slice(None)))
    ivar = source["ivar"].get_orthogonal_selection((rows, slice(None)))
    stored = zstore.open_results(store, results).isel(spectrum=rows).load()
    return attrs, wavelength, flux, ivar, stored


def _nmf_models(params: dict[str, Any], wavelength: np.ndarray, stored: xr.Dataset) -> dict[str, np.ndarray]:
    basis = cached_basis(params["basis_store"], params["basis_name"], params["basis_sha256"])
    nuisance = stored["nuisance_coeff"].values if "nuisance_coeff" in stored else None
    return nmf_model(wavelength, basis.basis, basis.grid, stored["z"].values, stored["coeff"].values, nuisance,
                     sky_continuum=sky_continuum_on(wavelength, params["basis_store"], params["basis_name"],
                                                    params.get("sky_sha256", "")))


def _lae_scan(params: dict[str, Any], wavelength: np.ndarray, flux: np.ndarray, ivar: np.ndarray,
              stored: xr.Dataset) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """The LAE scan as ``dzspec lae`` ran it, with its curves and components: (native components, redshifts of the
    coarse trials, Δχ² curves); rows without a stored redshift get NaN components."""
    loaded, _, result = scan_as_run(wavelength, flux, ivar, **{**LAE_SCAN.defaults, **params}, return_curve=True,
                                    return_components=True)
    shifts = loaded.prior.coarse_shifts(float(params["z_min"]), int(params["n_shifts"]))
    scale = np.sqrt(10.0 ** loaded.rescale_y)  # undo U25's rescaling: back to the store's flux unit
    window = (0, loaded.grid.size)
    components = {f"model_{name}": log_grid_to_native(result.components[name] * scale, loaded.grid, window,  # type: ignore[index]
                                                      wavelength, per_log_lambda=False) for name in ("sky", "lae")}
    components["model"] = components["model_sky"] + components["model_lae"]
    missing = ~np.isfinite(stored["z"].values)
    for values in components.values():
        values[missing] = np.nan
    _check_same_z(result.z, stored["z"].values, missing)
    return components, loaded.prior.redshift_of(shifts), result.dchi2_curve  # type: ignore[return-value]


def _check_same_z(scanned: np.ndarray, stored: np.ndarray, missing: np.ndarray) -> None:
    """Warn where the scan again finds another redshift than the stored one. The kernels are deterministic, but a
    batched FFT rounds differently for another block size, which can flip a near tie between two minima; the model
    and curve shown are then those of the stored z's neighbour minimum, so say it."""
    differ = ~missing & ~np.isclose(scanned, stored, rtol=0.0, atol=1e-9)
    if differ.any():
        log.warning("the rescan finds another redshift than the stored one for %d of %d rows (a near tie between "
                    "minima, or the spectra or model changed)", int(differ.sum()), differ.size)


def _dataset(stored: xr.Dataset, rows: np.ndarray, wavelength: np.ndarray, arrays: dict[str, np.ndarray],
             kernel: str) -> xr.Dataset:
    out = stored.drop_vars([name for name in stored.data_vars if REDSHIFT_DIM in stored[name].dims])
    out = out.assign_coords(row=("spectrum", rows), wavelength=("wavelength", wavelength))
    unit = "1e-17 erg s-1 cm-2 Angstrom-1"
    descriptions = {
        "model": "best-fit model" + (" (basis at z times coeff, plus the nuisance terms)" if kernel == "nmf_zfind"
                                     else " (posterior sky residual plus LAE components)"),
        "model_nuisance": "the nuisance terms of the NMF fit (pedestal, tilts, sky continuum)",
        "model_sky": "posterior mean sky-residual component (MADGICS)",
        "model_lae": "posterior mean LAE component (MADGICS)",
    }
    for name, values in arrays.items():
        out[name] = (("spectrum", "wavelength"), values, {"units": unit, "description": descriptions[name]})
    return out


def _models_of(store: str | PathLike[str], results: str, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The model components of some rows (float32, spectrum x wavelength)."""
    attrs, wavelength, flux, ivar, stored = _read(store, results, rows)
    params = dict(attrs["params"])
    if attrs["kernel"] == "nmf_zfind":
        arrays = _nmf_models(params, wavelength, stored)
    else:
        arrays = _lae_scan(params, wavelength, flux, ivar, stored)[0]
    return {name: values.astype(np.float32) for name, values in arrays.items()}


def model_spectra(store: str | PathLike[str], results: str, rows: Rows | None = None, *,
                  where: str | None = None, lazy: bool = False, block_rows: int = _BLOCK_ROWS) -> xr.Dataset:
    """Best-fit models of chosen rows of a results group, on the spectra's own wavelength grid.

    Parameters
    ----------
    store, results
        The store and its results group (``results/<grid>/nmf_zfind`` or ``.../madgics_lae``).
    rows, where
        Which rows (:func:`select_rows`); one of them is needed: all rows only when asked (``rows="all"``).
    lazy
        Return dask-backed models, chunked by ``block_rows`` rows, each chunk computed only when asked for (one
        pass per chunk for all components): ``model_spectra(store, results, "all", lazy=True)`` opens the models
        of a whole store and ``.isel(spectrum=...)`` or ``.to_zarr`` computes what is needed.

    Returns
    -------
    xarray.Dataset
        The stored per-spectrum results of the rows (coordinate ``row``: their store rows) and ``model``
        (spectrum x wavelength, float32, flux unit of the store); NMF also ``model_nuisance``, MADGICS
        ``model_sky`` and ``model_lae``. Rows without a result (NaN z) have NaN models.
    """
    index = select_rows(store, results, rows, where=where)
    blocks = [index[start:start + block_rows] for start in range(0, index.size, block_rows)]
    root = zstore.open_root(store)
    kernel = str(root[results].attrs["kernel"])
    names = ("model", "model_nuisance") if kernel == "nmf_zfind" else ("model", "model_sky", "model_lae")
    stored = zstore.open_results(store, results).isel(spectrum=index)
    wavelength = root[str(stored.attrs["input_group"])]["wavelength"][:]
    if lazy:
        from dzspec.parallel.lazy import from_row_blocks

        arrays = from_row_blocks(lambda rows: _models_of(store, results, rows), blocks,
                                 dict.fromkeys(names, wavelength.size), "float32")
    else:
        parts = [_models_of(store, results, rows) for rows in blocks]
        arrays = {name: np.concatenate([part[name] for part in parts]) if parts
                  else np.zeros((0, wavelength.size), np.float32) for name in names}
    return _dataset(stored if lazy else stored.load(), index, wavelength, arrays, kernel)


def rescan(store: str | PathLike[str], results: str, rows: Rows, *, group: str | None = None) -> xr.Dataset:
    """Run a results group's kernel again on some rows, with its own parameters and model, keeping the curves.

    Parameters
    ----------
    store, results
        The store and a results group written by ``dzspec zfind`` or ``dzspec lae``.
    rows
        Store rows (:func:`select_rows`: indices, a mask, a slice).
    group
        Unused beyond a check: the results group names its spectra group (``input_group``).

    Returns
    -------
    xarray.Dataset
        The stored results of the rows (coordinate ``row``), ``flux`` and ``ivar`` as stored, ``zchi2`` (spectrum x
        redshift, with the trial redshifts as coordinate ``redshift``): chi2 over every trial for NMF, the coarse
        Δχ² of the LAE component for MADGICS (attribute ``quantity`` says which), and the model components of
        :func:`model_spectra`. The recomputed best redshift equals the stored ``z`` (the kernels are deterministic;
        the spectra's identity is checked first); where a near tie between minima flips, a warning is logged.
    """
    index = select_rows(store, results, rows)
    attrs, wavelength, flux, ivar, stored = _read(store, results, index)
    if group is not None and zstore.resolve_spectra_group(zstore.open_root(store), group) != attrs["input_group"]:
        raise StoreError(f"{store}/{results} was computed on {attrs['input_group']}, not on {group}")
    params = dict(attrs["params"])
    if attrs["kernel"] == "nmf_zfind":
        # today's defaults under the run's own parameters: a run from before a parameter existed rescans too
        scanned = ZFIND.func(wavelength, flux, ivar, **{**ZFIND.defaults, **params, "store_chi2": True,
                                                        "chi2_decimate": 1})
        grid = cached_basis(params["basis_store"], params["basis_name"], params["basis_sha256"]).grid
        # the redshifts the scan evaluated: the nominal trials quantised to the basis grid, as the stored z is
        redshift = grid.redshift_of(grid.shift_of(trial_redshifts(float(params["z_min"]), float(params["z_max"]),
                                                                 float(params["dz"]))))
        curve, quantity = scanned["zchi2"], "chi2"
        arrays = _nmf_models(params, wavelength, stored)
        _check_same_z(scanned["z"], stored["z"].values, ~np.isfinite(stored["z"].values))
    elif attrs["kernel"] == "madgics_lae":
        arrays, redshift, curve = _lae_scan(params, wavelength, flux, ivar, stored)
        quantity = "dchi2"
    else:
        raise ValueError(f"{store}/{results}: no rescan for kernel {attrs['kernel']!r}")
    out = _dataset(stored, index, wavelength, {k: v.astype(np.float32) for k, v in arrays.items()}, attrs["kernel"])
    out["flux"] = (("spectrum", "wavelength"), np.asarray(flux), {"units": "1e-17 erg s-1 cm-2 Angstrom-1"})
    out["ivar"] = (("spectrum", "wavelength"), np.asarray(ivar), {"units": "1e34 erg-2 s2 cm4 Angstrom2"})
    out = out.assign_coords({REDSHIFT_DIM: (REDSHIFT_DIM, np.asarray(redshift, np.float64))})
    out["zchi2"] = (("spectrum", REDSHIFT_DIM), np.asarray(curve, np.float64),
                    {"quantity": quantity, "description": "chi2 over every trial redshift" if quantity == "chi2"
                     else "chi2(sky+LAE+res) - chi2(sky+res) over the coarse trial redshifts"})
    return out


def parse_rows(text: str) -> Rows:
    """Rows as the command line gives them: ``all``, a slice ``start:stop[:step]`` or indices ``3,5,8``.

    Examples
    --------
    >>> parse_rows("all"), parse_rows("10:20"), parse_rows("3,5,8")
    ('all', slice(10, 20, None), [3, 5, 8])
    """
    text = text.strip()
    if text == "all":
        return "all"
    if ":" in text:
        return slice(*(int(part) if part else None for part in text.split(":")))
    return [int(part) for part in text.split(",") if part]


def models_tables(models: xr.Dataset) -> dict[str, Table]:
    """:func:`model_spectra`'s output as the tables ``dzspec export --model-spectra`` appends: ``MODELS`` with
    ``ROW`` (store row), ``TARGETID`` and a vector column per model component (``MODEL``, and ``MODEL_NUISANCE`` or
    ``MODEL_SKY`` and ``MODEL_LAE``), and ``MODEL_WAVELENGTH``, the wavelengths (Angstrom, vacuum) of those vectors.
    """
    table = Table(meta={"EXTNAME": "MODELS"})
    table["ROW"] = np.asarray(models["row"].values, np.int64)
    table["TARGETID"] = (np.asarray(models["targetid"].values, np.int64) if "targetid" in models
                         else np.full(models.sizes["spectrum"], -1, np.int64))
    for name in ("model", "model_nuisance", "model_sky", "model_lae"):
        if name in models:
            table[name.upper()] = np.asarray(models[name].values, np.float32)
            table[name.upper()].unit = "1e-17 erg s-1 cm-2 Angstrom-1"
            table[name.upper()].description = models[name].attrs.get("description", "")
    wavelength = Table({"WAVELENGTH": np.asarray(models["wavelength"].values, np.float64)},
                       meta={"EXTNAME": "MODEL_WAVELENGTH"})
    wavelength["WAVELENGTH"].unit = "Angstrom"
    return {"MODELS": table, "MODEL_WAVELENGTH": wavelength}
