"""What both engines' block adapters share: the noise calibration of the inverse variance (METHODS §5.7).

A scan's parameters name a stored calibration by :data:`NOISE_PARAMS` (all "" for none; the driver picks it:
:func:`dzspec.parallel.noise_calibration.noise_params`); every block divides its inverse variance by the square of
that calibration's scale (:func:`calibrated_ivar`), loaded once per process through :mod:`dzspec.io.noise`.
"""

from __future__ import annotations

import numpy as np

from dzspec.engines.cache import process_cache
from dzspec.io.noise import load_noise_calibration

__all__ = ["NOISE_PARAMS", "cached_noise_scale", "calibrated_ivar"]

#: The kernel parameters naming a calibration (all "" for none): its store, spectra group, name and checksum.
NOISE_PARAMS: dict[str, str] = {"noise_store": "", "noise_group": "", "noise_name": "", "noise_sha256": ""}


@process_cache(maxsize=2)
def cached_noise_scale(path: str, spectra: str, name: str, sha256: str) -> np.ndarray:
    """The scale of the calibration ``name`` of ``spectra`` in ``path``, loaded once per process and refused if its
    checksum is no longer ``sha256``."""
    calibration = load_noise_calibration(path, spectra, name)
    if calibration.sha256 != sha256:
        raise ValueError(f"{path}: noise calibration {name} of {spectra} changed since the run started")
    return calibration.scale


def calibrated_ivar(ivar: np.ndarray, *, noise_store: str, noise_group: str, noise_name: str,
                    noise_sha256: str) -> np.ndarray:
    """``ivar / scale**2`` with the calibration that the scan's :data:`NOISE_PARAMS` name (``ivar`` itself when
    none): the sky-subtraction residuals that the pipeline variance leaves out (METHODS §5.7)."""
    if not noise_sha256:
        return ivar
    return ivar / cached_noise_scale(noise_store, noise_group, noise_name, noise_sha256) ** 2
