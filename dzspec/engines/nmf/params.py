"""The NMF engine's parameters: the one source of their defaults and help (the kernel specs
:data:`~dzspec.engines.nmf.adapter.ZFIND` and :data:`~dzspec.engines.nmf.adapter.BLENDS`, the flags of
``dzspec zfind`` and ``dzspec blends``, the ``params`` of a pipeline's zfind and blends steps).

Parameters the driver sets (model checksums, the ZERR calibration of the basis) and those whose command-line form
means something else (``--z-min`` absent: the basis's scan range) are declared here with ``cli=False``; their
flags stay in :mod:`dzspec.cli`.

Examples
--------
>>> ZfindParams().dz, BlendParams().t_blend
(0.0005, 0.011)
"""

from __future__ import annotations

from dataclasses import dataclass

from dzspec.params import param

__all__ = ["MUSE_LSF_FWHM", "BlendParams", "ZfindParams"]

#: MUSE UDF line-spread function FWHM(lambda) = a lambda^2 + b lambda + c (Angstrom; Bacon et al. 2017).
MUSE_LSF_FWHM: tuple[float, float, float] = (5.866e-8, -9.187e-4, 6.040)


@dataclass(frozen=True)
class ZfindParams:
    """What an NMF scan depends on, besides the basis and the noise calibration."""

    z_min: float = param(0.0, "first trial redshift", cli=False)
    z_max: float = param(6.7, "last trial redshift", cli=False)
    dz: float = param(0.0005, "trial step (B26: 0.0005)")
    weighting: str = param("weighted", "NNLS weighting; unweighted reproduces the authors' code (chi2 stays "
                                        "weighted)", choices=("weighted", "unweighted"))
    support_floor: float = param(0.0, "basis values below this are outside its support", cli=False)
    n_candidates: int = param(5, "redshift candidates kept per spectrum", cli=False)
    refine: bool = param(True, "skip the sub-pixel refinement of the best trial (no z_refined, chi2_refined)")
    store_chi2: bool = param(False, "also store chi2 over the trials (zchi2)")
    chi2_decimate: int = param(1, "with --store-chi2: keep the minimum of each N consecutive trials")
    nuisance_order: int = param(0, "free-sign Legendre terms P0..PN beside the basis", cli=False)
    sky_sha256: str = param("", "the basis's sky continuum, fitted as a free-sign term", cli=False)
    confidence_sha256: str = param("", "the basis's confidence model", cli=False)
    zerr_scale: list = param([1.0], "ZERR calibration: scale per measured-z range", cli=False)
    zerr_floor: list = param([0.0], "ZERR calibration: floor per measured-z range", cli=False)
    zerr_z_edges: list = param([], "ZERR calibration: measured-z range edges", cli=False)


@dataclass(frozen=True)
class BlendParams:
    """What B26's blend detection depends on, besides the basis and the first scan."""

    z_min: float = param(0.0, "first trial redshift (default: the first scan's)", cli=False)
    z_max: float = param(6.7, "last trial redshift (default: the first scan's)", cli=False)
    dz: float = param(0.0005, "trial step (default: the first scan's)", cli=False)
    support_floor: float = param(0.0, "basis values below this are outside its support", cli=False)
    z_column: str = param("z_refined", "the first scan's redshift column", cli=False)
    t_blend: float = param(0.011, "flag a blend above this score (B26: 0.011)")
    tolerance: float = param(0.01, "drop second minima within this of a line confusion with z1")
    exclusion_steps: int = param(20, "trials around a minimum that are not other minima", cli=False)
    n_minima: int = param(20, "minima of the rescan examined", cli=False)
    continuum_degree: int = param(6, "degree of the continuum polynomial of the first galaxy's fit", cli=False)
    sigma_grid_kms: list = param([0.0, 30.0, 60.0, 100.0, 150.0, 220.0, 320.0], "line widths tried (km/s)",
                                 cli=False)
    offset_grid_kms: list = param([-60.0, -45.0, -30.0, -15.0, 0.0, 15.0, 30.0, 45.0, 60.0],
                                  "line velocity offsets tried (km/s)", cli=False)
    lsf_fwhm: list = param(list(MUSE_LSF_FWHM), "line-spread FWHM(lambda) polynomial (a, b, c; Angstrom), or None "
                           "to fit line widths freely", cli=False)
    absorption_sigma_kms: float = param(200.0, "width of the absorption lines (km/s)", cli=False)
    absorption_offsets_kms: list = param([-250.0, 0.0], "velocity offsets of the absorption lines (km/s)", cli=False)
