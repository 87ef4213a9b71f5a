"""Redshifts without a store or a cluster: :func:`zfind` and :func:`lae` on spectra in memory, for notebooks.

They run the block functions that ``dzspec zfind`` and ``dzspec lae`` hand to the runner (the NMF scan of
:data:`dzspec.engines.nmf.adapter.ZFIND`, the MADGICS scan of :data:`dzspec.engines.madgics.adapter.LAE_SCAN`) in this
process, with the parameters their drivers would choose (:func:`~dzspec.engines.nmf.adapter.zfind_params`,
:func:`~dzspec.engines.madgics.adapter.lae_params`) and, for the NMF scan, the same passes over the whole set of spectra
(:func:`~dzspec.engines.nmf.adapter.finalize_flags`: redshift spikes, confidence). Nothing is written and no Dask
scheduler is used; the answer is an xarray Dataset in the vocabulary of :mod:`dzspec.results_schema` (the names, dtypes
and attributes of ``open_results``), one row per input spectrum.

For the same spectra, with default arguments, the results are those of the store path (the spectra written to a
store, by :func:`dzspec.io.from_specutils` or an ingest, then ``dzspec zfind``/``dzspec lae`` on it with its
defaults) to the last bit, because every step is shared:

* the input becomes the canonical spectra a store holds (float32 flux and ivar in the store's unit, vacuum
  wavelengths, mask bits), through :func:`~dzspec.schema.make_spectra_dataset`, on a grid named as
  :func:`~dzspec.io.from_specutils` names it (:mod:`dzspec.io.specutils_bridge`: MUSE and DESI grids are
  recognised by their values, so a MUSE spectrum is on a ``muse-...`` grid);
* the model is the shipped one ``zfind``/``lae`` pick for that grid's name
  (:func:`dzspec.models.default_model_for_grid`: ``desi_galaxy`` and ``desi_lae`` for ``desi-...`` grids, ``muse``
  for ``muse-...`` and any other grid);
* the noise calibration follows :func:`~dzspec.parallel.noise_calibration.resolve_noise_calibration`: measured on
  the spectra themselves when there are at least 300 (the same histograms), else the model store's instrument
  default for the grid (resampled from another grid of the same instrument when needed), else none;
* spectra are scanned in blocks of the store's default chunk (:func:`dzspec.io.store.chunk_rows_for`), because a
  batched FFT rounds differently in the last bits for another block size;
* redshift spikes and confidence are computed over the spectra passed, as the store path does over its group
  (the confidence's pixel-count feature is scaled by the largest ``npixels`` of the set). A spike needs many spectra
  at one redshift, so for a handful of spectra the pass finds none; ``redshift_spikes=False`` skips it.

What differs: a store keeps a measured calibration and reuses it while its spectra are unchanged (here it is
measured on every call), ``dzspec zfind`` can name a stored calibration (here: ``"auto"``, ``"off"`` or an array
of per-pixel factors), a store scanned in blocks other than its default chunk (``--block-rows``, or a group made
with another ``chunk_rows``) may differ in the last bits of the floating-point outputs, and the results carry no
``run_status`` (a failing block raises). Spectra on several grids are scanned one grid per call.

Examples
--------
>>> import numpy as np, dzspec
>>> from dzspec.kernels.simulate.muse import simulate_muse_block
>>> sim = simulate_muse_block(np.array([4]), seed=1)
>>> res = dzspec.zfind((sim.wavelength, sim.flux, sim.ivar))
>>> res.attrs["model"], bool(abs(res.z.values[0] - sim.truth["z_true"][0]) < 0.002)
('muse', True)
"""

from __future__ import annotations

from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xarray as xr

from dzspec._version import __version__
from dzspec.io import store as zstore
from dzspec.io.bases import array_sha256
from dzspec.io.noise import calibration_path, load_noise_calibration
from dzspec.kernels.base import KernelSpec
from dzspec.kernels.noise_calibration import calibration_from_histogram, resample_calibration, residual_histogram
from dzspec.schema import make_spectra_dataset

__all__ = ["lae", "spectra_dataset", "zfind"]

#: A model: ``"auto"`` (the shipped one for the spectra's grid), a shipped model's name, or a store path.
Model = str | PathLike[str]
#: ``"auto"``, ``"off"``, or per-pixel factors (>= 1) on the spectra's grid by which sigma is multiplied.
NoiseChoice = Literal["auto", "off"] | np.ndarray


def spectra_dataset(spectra: Any, *, survey: str | None = None, medium: Literal["auto", "vacuum", "air"] = "auto",
                    flux_unit: Any = None, missing_uncertainty: Literal["raise", "estimate"] = "raise") -> xr.Dataset:
    """The canonical spectra Dataset (one wavelength grid) of what :func:`zfind` and :func:`lae` accept.

    Parameters
    ----------
    spectra
        A specutils ``Spectrum``, ``SpectrumCollection`` or ``SpectrumList`` (converted by
        :func:`dzspec.io.specutils_bridge.datasets_from_specutils`, which ``medium``, ``flux_unit`` and
        ``missing_uncertainty`` go to); a tuple ``(wavelength, flux, ivar)`` of arrays (vacuum Angstrom, and
        ``(nspec, nwave)`` or ``(nwave,)`` in :data:`~dzspec.schema.FLUX_UNIT` and its inverse square); or a
        canonical spectra Dataset (a reader's output, or :func:`dzspec.open_spectra`, loaded here).
    survey
        A :data:`~dzspec.schema.SURVEYS` name, which names a grid dzspec does not know after the instrument
        (``muse-...``) so that the instrument's model and noise default are used.

    Raises
    ------
    ValueError
        Spectra on more than one wavelength grid (scan each grid by itself).

    Examples
    --------
    >>> wave = np.linspace(5000.0, 6000.0, 101)
    >>> ds = spectra_dataset((wave, np.ones((2, 101)), np.ones((2, 101))))
    >>> ds.sizes["spectrum"], ds.attrs["grid_name"][:4]
    (2, 'lin-')
    """
    from dzspec.io.specutils_bridge import datasets_from_specutils, grid_name_for

    if isinstance(spectra, xr.Dataset):
        missing = {"flux", "ivar", "wavelength"} - set(spectra.variables)
        if missing:
            raise ValueError(f"not a spectra Dataset: no {sorted(missing)}")
        ds = spectra.copy().load()  # the caller's Dataset is left as it was
        if "grid_name" not in ds.attrs:
            ds.attrs["grid_name"] = grid_name_for(ds["wavelength"].values, survey)[0]
        return ds
    if isinstance(spectra, tuple) and len(spectra) == 3 and not hasattr(spectra[0], "spectral_axis"):
        wavelength, flux, ivar = (np.asarray(a) for a in spectra)
        name, wave = grid_name_for(wavelength, survey)
        return make_spectra_dataset(wave, flux, ivar, source_file="<arrays>", reader="arrays", grid_name=name)
    datasets = datasets_from_specutils(spectra, survey=survey, medium=medium, flux_unit=flux_unit,
                                       missing_uncertainty=missing_uncertainty)
    if len(datasets) != 1:
        raise ValueError(f"the spectra are on {len(datasets)} wavelength grids "
                         f"({', '.join(d.attrs['grid_name'] for d in datasets)}); scan each grid by itself "
                         "(dzspec.io.datasets_from_specutils splits them)")
    return datasets[0]


def _model(model: Model, kind: str, grid_name: str, name: str | None) -> tuple[str, str, str]:
    """``(store path, basis or prior name, label)`` of ``model`` for a grid."""
    from dzspec.models import MODELS, default_model_for_grid, shipped_model

    if isinstance(model, str) and model == "auto":
        shipped = default_model_for_grid(kind, grid_name)
    elif isinstance(model, str) and model in MODELS:
        shipped = shipped_model(model, kind)
    else:
        path = Path(model)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such model store (shipped models: {', '.join(MODELS)})")
        return str(path.resolve()), name or ("nmf" if kind == "basis" else "lae"), str(path)
    return str(shipped.path), name or shipped.group, shipped.name


def _blocks(nspectrum: int, nwave: int, block_rows: int | None) -> list[tuple[int, int]]:
    rows = block_rows or zstore.chunk_rows_for(nwave)
    if rows < 1:
        raise ValueError(f"block_rows must be >= 1, not {block_rows}")
    return [(start, min(start + rows, nspectrum)) for start in range(0, nspectrum, rows)]


def _noise_scale(ds: xr.Dataset, choice: NoiseChoice, fallback: str,
                 blocks: list[tuple[int, int]]) -> tuple[np.ndarray | None, dict[str, Any]]:
    """The per-pixel sigma factors the store path would use for these spectra (see the module docstring)."""
    from dzspec.parallel.noise_calibration import MIN_SURVEY_SPECTRA, instrument_default

    wave = ds["wavelength"].values
    if not isinstance(choice, str):
        scale = np.asarray(choice, dtype=np.float64)
        if scale.shape != wave.shape or not np.all(np.isfinite(scale) & (scale >= 1.0)):
            raise ValueError(f"noise_calibration: {wave.size} finite factors >= 1 expected, got shape {scale.shape}")
        return scale, {"source": "given", "scale_sha256": array_sha256(scale)}
    if choice == "off":
        return None, {"source": "off"}
    if choice != "auto":
        raise ValueError(f"noise_calibration must be 'auto', 'off' or an array of factors, not {choice!r} (a stored "
                         "calibration's name needs a store: use dzspec zfind)")
    nspectrum = ds.sizes["spectrum"]
    flux, ivar = ds["flux"].values, ds["ivar"].values
    if nspectrum >= MIN_SURVEY_SPECTRA:  # as calibrate_noise with its defaults; histograms add up over blocks
        counts = sum(residual_histogram(flux[a:b], ivar[a:b]) for a, b in blocks)
        scale = calibration_from_histogram(counts)
        return scale, {"source": "measured on these spectra", "n_spectra": int(nspectrum),
                       "scale_sha256": array_sha256(scale)}
    spectra = f"spectra/{ds.attrs['grid_name']}"
    if calibration_path(spectra) in zstore.open_root(fallback):
        default = load_noise_calibration(fallback, spectra)
        if default.scale.shape != wave.shape:
            raise ValueError(f"{fallback}: the noise default of {spectra} has {default.scale.size} pixels, the "
                             f"spectra {wave.size}")
        return default.scale, {"source": "instrument default", "store": fallback, "spectra_group": spectra,
                               "scale_sha256": default.sha256}
    other = instrument_default(fallback, spectra, wave)
    if other is not None:
        scale = resample_calibration(other.wavelength, other.scale, wave)
        return scale, {"source": "instrument default resampled to this grid", "store": fallback,
                       "spectra_group": other.attrs["spectra_group"], "resampled_from_sha256": other.sha256,
                       "scale_sha256": array_sha256(scale)}
    return None, {"source": "none: fewer than 300 spectra and no instrument default for this grid"}


def _scan(kernel: KernelSpec, ds: xr.Dataset, params: Mapping[str, Any], scale: np.ndarray | None,
          blocks: list[tuple[int, int]]) -> dict[str, np.ndarray]:
    """The kernel over the blocks, with ``ivar / scale**2`` as ``calibrated_ivar`` gives the store path's workers."""
    wave = ds["wavelength"].values
    flux, ivar = ds["flux"].values, ds["ivar"].values
    full = {**kernel.defaults, **params}  # no noise_* names: the calibration is applied here
    outs = []
    for a, b in blocks:
        block_ivar = ivar[a:b] if scale is None else ivar[a:b] / scale**2
        outs.append(kernel.func(wave, flux=flux[a:b], ivar=block_ivar, **full))
    if not outs:
        raise ValueError("no spectra to scan")
    return {name: np.concatenate([out[name] for out in outs]) for name in outs[0]}


def _results(kernel: KernelSpec, ds: xr.Dataset, values: Mapping[str, np.ndarray], params: Mapping[str, Any],
             attrs: Mapping[str, Any]) -> xr.Dataset:
    specs = kernel.output_specs(params)
    data_vars = {name: (("spectrum", *spec.dims), np.asarray(values[name]).astype(spec.dtype, copy=False),
                        dict(spec.attrs))
                 for name, spec in specs.items()}
    out = xr.Dataset(data_vars, coords={"targetid": ("spectrum", ds["targetid"].values.astype(np.int64))})
    out.attrs.update(zstore.jsonable({
        "kernel": kernel.name, "kernel_version": kernel.version, "params": {**kernel.defaults, **params},
        "grid_name": ds.attrs.get("grid_name"), "store_less": True, "dzspec_version": __version__, **attrs,
    }))
    return out


def zfind(
    spectra: Any,
    *,
    model: Model = "auto",
    basis_name: str | None = None,
    params: Mapping[str, Any] | None = None,
    noise_calibration: NoiseChoice = "auto",
    sky_nuisance: Literal["auto", "off"] = "auto",
    redshift_spikes: bool = True,
    survey: str | None = None,
    block_rows: int | None = None,
    **convert: Any,
) -> xr.Dataset:
    """NMF redshifts of spectra in memory, as ``dzspec zfind`` gives them for the same spectra in a store.

    Parameters
    ----------
    spectra
        A specutils ``Spectrum`` / ``SpectrumCollection`` / ``SpectrumList``, ``(wavelength, flux, ivar)`` arrays,
        or a canonical spectra Dataset, on one wavelength grid (:func:`spectra_dataset`).
    model
        ``"auto"`` (the shipped basis for the grid, as ``dzspec zfind`` chooses it: ``muse`` for MUSE grids,
        ``desi_galaxy`` for DESI's), a shipped basis's name, or the path of a store holding ``bases/<basis_name>``.
    basis_name
        The basis inside the store (default: the shipped model's, else ``nmf``).
    params
        Overrides of :data:`~dzspec.engines.nmf.adapter.ZFIND`'s parameters (``z_min``, ``z_max``, ``dz``,
        ``store_chi2`` ...), as ``run_zfind``'s ``params``.
    noise_calibration
        ``"auto"`` (see the module docstring), ``"off"``, or per-pixel factors by which sigma is multiplied.
    sky_nuisance
        ``"auto"``: fit the basis's night-sky continuum as a free-sign nuisance term when it has one; ``"off"``.
    redshift_spikes
        Flag ``Z_SPIKE`` over the spectra passed, as ``finalize_zfind`` over a store's group.
    survey
        See :func:`spectra_dataset`.
    block_rows
        Spectra per kernel call (default: the store's default chunk for the grid, which keeps the results equal to
        the store path's to the last bit).
    **convert
        ``medium``, ``flux_unit``, ``missing_uncertainty`` for specutils input (:func:`spectra_dataset`).

    Returns
    -------
    xarray.Dataset
        The ``nmf_zfind`` outputs (``z``, ``zerr``, ``zwarn``, ``znote``, ``confidence``, ``deltachi2``,
        ``coeff`` ...), dims ``spectrum`` (+ ``coeff``, ``candidate`` ...), coordinate ``targetid``; attributes:
        the parameters, the model, the noise calibration used and the redshift spikes found.
    """
    from dzspec.engines.nmf.adapter import ZFIND, cached_basis, finalize_flags, zfind_params
    from dzspec.engines.nmf.confidence import ConfidenceModel

    ds = spectra_dataset(spectra, survey=survey, **convert)
    basis_store, name, label = _model(model, "basis", ds.attrs["grid_name"], basis_name)
    scan = zfind_params(basis_store, name, params, sky_nuisance=sky_nuisance)
    blocks = _blocks(ds.sizes["spectrum"], ds.sizes["wavelength"], block_rows)
    scale, noise = _noise_scale(ds, noise_calibration, basis_store, blocks)
    values = _scan(ZFIND, ds, scan, scale, blocks)
    confidence = None
    if scan.get("confidence_sha256"):
        stored = cached_basis(basis_store, name, scan["basis_sha256"]).attrs["confidence"]
        confidence = ConfidenceModel.from_attrs(stored)
    zwarn, znote, conf, spikes = finalize_flags(values, {**ZFIND.defaults, **scan}, confidence,
                                                spikes=redshift_spikes)
    values = {**values, "zwarn": zwarn, "znote": znote}
    if conf is not None:
        values["confidence"] = conf.astype(np.float32)
    return _results(ZFIND, ds, values, scan, {"model": label, "noise_calibration": noise,
                                              "redshift_spikes": spikes if redshift_spikes else "not searched"})


def lae(
    spectra: Any,
    *,
    model: Model = "auto",
    prior_name: str | None = None,
    params: Mapping[str, Any] | None = None,
    noise_calibration: NoiseChoice = "auto",
    survey: str | None = None,
    block_rows: int | None = None,
    **convert: Any,
) -> xr.Dataset:
    """MADGICS Lyman-alpha emitter redshifts of spectra in memory, as ``dzspec lae`` gives them in a store.

    Parameters
    ----------
    spectra, survey, block_rows, convert
        As :func:`zfind`.
    model
        ``"auto"`` (the shipped ``desi_lae`` priors, as ``dzspec lae`` chooses them), a shipped prior's name, or
        the path of a store holding ``priors/<prior_name>``.
    prior_name
        The prior inside the store (default: the shipped model's, else ``lae``).
    params
        Overrides of :data:`~dzspec.engines.madgics.adapter.LAE_SCAN`'s parameters (``z_min``, ``n_shifts``, the
        interloper cuts, ``dchi2_min`` ...), as ``run_lae``'s ``params``.
    noise_calibration
        As :func:`zfind`, with the prior store's instrument default.

    Returns
    -------
    xarray.Dataset
        The ``madgics_lae`` outputs (``z``, ``zerr``, ``zwarn``, ``lae_abs_dchi2_cal``, ``candidate_z`` ...), one
        row per spectrum, coordinate ``targetid``; ``zwarn == 0`` is a trusted LAE.

    Examples
    --------
    >>> import numpy as np, dzspec
    >>> from dzspec.kernels.simulate.desi import simulate_desi_block
    >>> sim = simulate_desi_block(np.array([3]), seed=5)  # a double-peaked LAE at z = 3.465
    >>> res = dzspec.lae((sim.wavelength, sim.flux, sim.ivar))
    >>> round(float(res.z[0]), 2), int(res.zwarn[0])
    (3.46, 0)
    """
    from dzspec.engines.madgics.adapter import LAE_SCAN, lae_params

    ds = spectra_dataset(spectra, survey=survey, **convert)
    prior_store, name, label = _model(model, "prior", ds.attrs["grid_name"], prior_name)
    scan = lae_params(prior_store, name, params)
    blocks = _blocks(ds.sizes["spectrum"], ds.sizes["wavelength"], block_rows)
    scale, noise = _noise_scale(ds, noise_calibration, prior_store, blocks)
    values = _scan(LAE_SCAN, ds, scan, scale, blocks)
    return _results(LAE_SCAN, ds, values, scan, {"model": label, "noise_calibration": noise})
