"""Default models shipped with dzspec, so that ``dzspec zfind`` and ``dzspec lae`` run without training first.

Each model is a small Zarr store under ``dzspec/models/data/`` made by dzspec's own commands from its simulations
(which use real ingredients: sky spectra, MUSE sky-subtraction residuals, stellar-population grids), never data
fetched from elsewhere. ``MANIFEST.json`` beside them names each one: kind, store, group, checksum, the recipe
that made it (:mod:`dzspec.models.recipes`) and the command that remakes it (``dzspec models remake NAME``),
bit-identically on the same platform with the same pinned versions. ``dzspec/models/README.md`` has the
provenance and licence notes.

Examples
--------
>>> "muse" in MODELS
True
>>> default_basis_path("muse").name
'muse_nmf.zarr'
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["MODELS", "ShippedModel", "default_basis_path", "default_model_for_grid", "default_model_for_store",
           "default_prior_path", "models_dir", "shipped_model"]

#: Where the shipped stores and their manifest live (package data).
_DATA = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True)
class ShippedModel:
    """One shipped model as the manifest describes it.

    Attributes
    ----------
    name
        What users type (``muse``, ``desi_lae``, ``desi_galaxy``).
    kind
        ``basis`` (an NMF basis in ``bases/<group>``) or ``prior`` (MADGICS priors in ``priors/<group>``).
    store
        Store folder name under :func:`models_dir`.
    group
        The basis or prior name inside the store (``--name`` of zfind/lae).
    checksum
        ``basis_sha256`` or ``prior_sha256`` of the shipped arrays (checked again on every load).
    survey
        The spectra it is meant for (``muse``, ``desi``): the default of zfind/lae for a store of that survey.
    description, recipe
        One line on what it is; the recipe parameters it was made with (:mod:`dzspec.models.recipes`).
    """

    name: str
    kind: str
    store: str
    group: str
    checksum: str
    survey: str
    description: str
    recipe: dict[str, Any]

    @property
    def path(self) -> Path:
        """The store's path (inside the installed package)."""
        return _DATA / self.store


def models_dir() -> Path:
    """The folder of the shipped stores and ``MANIFEST.json``."""
    return _DATA


def _read_manifest() -> dict[str, ShippedModel]:
    path = _DATA / "MANIFEST.json"
    if not path.exists():
        return {}
    entries = json.loads(path.read_text())
    return {name: ShippedModel(name=name, **entry) for name, entry in sorted(entries.items())}


#: Every shipped model by name (from ``data/MANIFEST.json``).
MODELS: dict[str, ShippedModel] = _read_manifest()


def shipped_model(name: str, kind: str | None = None) -> ShippedModel:
    """The shipped model ``name`` (of ``kind`` if given); a clear error naming the shipped ones otherwise."""
    if name not in MODELS or (kind is not None and MODELS[name].kind != kind):
        known = [m.name for m in MODELS.values() if kind is None or m.kind == kind]
        what = f"{kind} " if kind else ""
        raise KeyError(f"no shipped {what}model {name!r}; shipped: {', '.join(known) or 'none'} "
                       "(dzspec models lists them)")
    model = MODELS[name]
    if not model.path.exists():
        raise FileNotFoundError(f"shipped model {name!r}: {model.path} is missing from this installation "
                                f"(remake it with: dzspec models remake {name})")
    return model


def default_basis_path(name: str = "muse") -> Path:
    """The store of a shipped NMF basis (``muse``, ``desi_galaxy``); its basis is ``bases/<group>``."""
    return shipped_model(name, "basis").path


def default_prior_path(name: str = "desi_lae") -> Path:
    """The store of shipped MADGICS priors (``desi_lae``); they are ``priors/<group>``."""
    return shipped_model(name, "prior").path


def default_model_for_grid(kind: str, grid_name: str) -> ShippedModel:
    """The shipped model of ``kind`` for spectra on ``grid_name``: the one whose survey the grid name starts
    with (``muse-...``, ``desi-...``), else the first of that kind (a MUSE basis for any other grid)."""
    candidates = [m for m in MODELS.values() if m.kind == kind]
    if not candidates:
        raise KeyError(f"no shipped {kind} model; pass one explicitly")
    for model in candidates:
        if grid_name.startswith(model.survey):
            return shipped_model(model.name, kind)
    # a generic grid (a linear one from TDOSE or a generic reader): MUSE's, as documented, not the first by name
    fallback = next((m for m in candidates if m.survey == "muse"), candidates[0])
    return shipped_model(fallback.name, kind)


def default_model_for_store(kind: str, store: str | Path, group: str | None = None) -> ShippedModel:
    """The shipped model of ``kind`` for a store's spectra group (by its grid name, :func:`default_model_for_grid`);
    what ``zfind`` / ``lae`` and pipeline steps use when no basis or prior is named."""
    from dzspec.io import store as zstore

    spectra = zstore.resolve_spectra_group(zstore.open_root(store), group)
    return default_model_for_grid(kind, spectra.removeprefix("spectra/"))
