"""The results vocabulary: every per-spectrum output of both redshift engines, named once.

:mod:`dzspec.schema` fixes how spectra are stored; this module fixes what the engines write about them. Each
:class:`ResultField` gives a name, its dtype, units, the extra dimension after ``spectrum`` (if any), the value of
rows never computed, its CF flag meanings and, where Redrock's ``REDSHIFTS`` table has the same quantity, Redrock's
column name. The engines build their output specifications from :func:`output_specs` (so a name, a unit or a flag
meaning is written in one place), the export maps fields to Redrock columns through :attr:`ResultField.redrock`, and
:func:`upgrade_names` lets results written before this vocabulary open under today's names.

Conventions shared by both engines:

* ``z`` is the redshift, ``zerr`` its 1-sigma uncertainty, ``chi2`` the chi-square at ``z`` and ``deltachi2`` the
  chi-square of the next minimum more than 1000 km/s away minus the best (Redrock's DELTACHI2);
* ``zwarn`` bits all mean "do not trust this redshift": ``zwarn == 0`` is the trust cut. Findings that leave the
  fit usable (a negative median flux absorbed by the nuisance terms, say) go to ``znote`` instead;
* one candidate dimension, ``candidate``: the scan's distinct minima, lowest chi-square first, so candidate 0 is the
  best minimum of the trial (coarse) grid;
* ``zchi2`` is chi-square over the trial redshifts (dimension ``redshift``), as Redrock's zscan names it.

This module imports neither dask nor xarray: kernels build their flags from it.

Examples
--------
>>> FIELDS["zerr"].redrock, FIELDS["zerr"].units
('ZERR', '1')
>>> sorted(output_specs("madgics_lae", ["z", "zwarn"]))
['z', 'zwarn']
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from dzspec.kernels.base import OutputSpec

__all__ = [
    "CANDIDATE_DIM",
    "ENGINES",
    "FIELDS",
    "REDSHIFT_DIM",
    "RENAMES",
    "LAEWarn",
    "ResultField",
    "ZNote",
    "ZWarn",
    "best_redshift_name",
    "output_specs",
    "upgrade_names",
]

#: The one candidate dimension of every engine (lowest chi-square first).
CANDIDATE_DIM = "candidate"
#: The dimension of chi-square curves over the trial redshifts.
REDSHIFT_DIM = "redshift"
#: The engines (kernel names) whose outputs this vocabulary describes.
ENGINES: tuple[str, ...] = ("nmf_zfind", "madgics_lae")


class ZWarn(enum.IntFlag):
    """NMF ``zwarn`` bits, each a reason not to trust ``z``: 0-11 keep Redrock's meanings, dzspec's own in 13-15 and
    24-31 (16-23 stay free for downstream use, as in Redrock).

    Bit 12 held NEGATIVE_MEDIAN_FLUX until that finding moved to :class:`ZNote` (it is informational once the scan
    fits a free-sign pedestal); :func:`upgrade_names` moves it out of older results.
    """

    SKY = 1 << 0
    LITTLE_COVERAGE = 1 << 1  #: fewer than half of the observed pixels have data
    SMALL_DELTA_CHI2 = 1 << 2  #: deltachi2 < 9, as Redrock sets it
    NEGATIVE_MODEL = 1 << 3
    MANY_OUTLIERS = 1 << 4
    Z_FITLIMIT = 1 << 5  #: the best trial is the first or last of the grid
    NEGATIVE_EMISSION = 1 << 6
    UNPLUGGED = 1 << 7
    BAD_TARGET = 1 << 8
    NODATA = 1 << 9  #: no pixel with data: z = NaN
    BAD_MINFIT = 1 << 10
    POORDATA = 1 << 11
    LOW_SIGNIFICANCE = 1 << 13  #: log10 nmf_significance < -2 (B26 4.3: likely a false source)
    LOW_ROBUSTNESS = 1 << 14  #: nmf_robustness < 3 (B26 4.1)
    Z_SPIKE = 1 << 15  #: z sits on a redshift spike of its store and deltachi2 is not decisive (engines.nmf.zspikes)
    LOW_CONFIDENCE = 1 << 24  #: confidence below the basis's calibrated threshold (engines.nmf.confidence)


class ZNote(enum.IntFlag):
    """``znote`` bits: findings about a spectrum that do not by themselves make its redshift untrustworthy."""

    NEGATIVE_MEDIAN_FLUX = 1 << 0  #: median flux < 0 (sky over-subtraction, B26 4.1)
    #: nmf_robustness < 3 where a confidence model decides instead (R is one of its features): ZWarn's
    #: LOW_ROBUSTNESS moves here, so that zwarn == 0 keeps what the calibrated confidence trusts
    LOW_ROBUSTNESS = 1 << 1


class LAEWarn(enum.IntFlag):
    """``zwarn`` bits of the MADGICS LAE scan (stored as ``lae_warn`` before the results vocabulary)."""

    NODATA = 1 << 0  #: no pixel with data: outputs NaN
    EDGE = 1 << 1  #: the coarse best is the first or last shift, or the fine minimum is at the fine grid's edge
    BAD_CURVATURE = 1 << 2  #: the fine dchi2 is not convex around its minimum: zerr = NaN
    NO_SIGNAL = 1 << 3  #: the best dchi2 is 0: the LAE component is nowhere supported by data
    SKY_SINGULAR = 1 << 4  #: I + V_skyᵀ W V_sky is not positive definite (cannot happen in exact arithmetic)
    LOW_EW = 1 << 5  #: continuum detected and rest EW below the LAE cut (:mod:`~dzspec.engines.madgics.interlopers`)
    LOWZ_LINES = 1 << 6  #: companion lines of a low-z reading of the line ([O II], H-beta, [O III] 5007)
    NO_LINE = 1 << 7  #: no line on the native pixels at the Lya wavelength (a continuum step or junction fitted)
    LOW_SIGNIFICANCE = 1 << 8  #: calibrated abs(dchi2) at or below the detection threshold (U25: 25): no LAE found


def _cf_flags(flags: type[enum.IntFlag]) -> dict[str, Any]:
    members = list(flags)
    return {"flag_masks": [int(m) for m in members], "flag_meanings": " ".join(str(m.name) for m in members)}


@dataclass(frozen=True)
class ResultField:
    """One per-spectrum output.

    Parameters
    ----------
    name
        Its name in a results group.
    dtype
        NumPy dtype name as stored.
    description
        What it is, in one sentence.
    engines
        The kernels that write it (:data:`ENGINES`).
    units
        UDUNITS string; ``"1"`` for dimensionless, ``""`` for counts, codes and flags.
    dim
        The extra dimension after ``spectrum`` (``"candidate"``, ``"coeff"``, ``"redshift"`` ...), or None.
    fill
        Value of rows never computed.
    flags
        The :class:`enum.IntFlag` of a bit mask (its CF ``flag_masks``/``flag_meanings`` are stored).
    redrock
        The column of Redrock's ``REDSHIFTS`` table holding the same quantity, if any.
    """

    name: str
    dtype: str
    description: str
    engines: tuple[str, ...]
    units: str = "1"
    dim: str | None = None
    fill: Any = np.nan
    flags: type[enum.IntFlag] | None = None
    redrock: str | None = None

    def attrs(self) -> dict[str, Any]:
        """The attributes stored with the array (units, description, CF flags)."""
        out: dict[str, Any] = {"description": self.description, "units": self.units}
        if self.flags is not None:
            out.update(_cf_flags(self.flags))
        return out


_NMF, _LAE, _BOTH = ("nmf_zfind",), ("madgics_lae",), ENGINES

_FIELD_LIST = [
    # shared by both engines
    ResultField("z", "float64", "best redshift", _BOTH, redrock="Z"),
    ResultField("zerr", "float64", "1-sigma redshift uncertainty from the curvature of chi2 at the refined z, "
                "calibrated on simulations", _BOTH, redrock="ZERR"),
    ResultField("zwarn", "uint32", "bits that each mean: do not trust z (zwarn == 0 is the trust cut)", _BOTH,
                units="", fill=0, redrock="ZWARN"),
    ResultField("deltachi2", "float64", "chi2 of the best other minimum more than 1000 km/s from z, minus chi2 at z "
                "(Redrock's DELTACHI2)", _BOTH, redrock="DELTACHI2"),
    ResultField("candidate_z", "float64", "redshift of each distinct minimum of the trial scan, lowest chi2 first",
                _BOTH, dim=CANDIDATE_DIM),
    # NMF
    ResultField("chi2", "float64", "chi2 at the best trial, sum over pixels", _NMF, redrock="CHI2"),
    ResultField("npixels", "int32", "pixels with data on the scanned window", _NMF, units="", fill=-1,
                redrock="NPIXELS"),
    ResultField("coeff", "float32", "basis coefficients at the best trial (non-negative)", _NMF,
                units="1e-17 erg s-1 cm-2 Angstrom-1", dim="coeff", redrock="COEFF"),
    ResultField("znote", "uint32", "informational findings that leave z usable", _NMF, units="", fill=0,
                flags=ZNote),
    ResultField("nmf_significance", "float32", "B26 1 - chi2_min / Q1(chi2)", _NMF),
    ResultField("nmf_robustness", "float32", "B26 R = (min2 - min1) / sigma_Q1", _NMF),
    ResultField("candidate_chi2", "float64", "chi2 at each candidate", _NMF, dim=CANDIDATE_DIM),
    ResultField("candidate_significance", "float32", "B26 significance 1 - chi2 / Q1 of each candidate", _NMF,
                dim=CANDIDATE_DIM),
    ResultField("z_refined", "float64", "sub-pixel redshift: parabola through the chi2 of the best integer shift "
                "within one trial step of the best trial and its neighbours", _NMF),
    ResultField("chi2_refined", "float64", "chi2 at the best integer shift within one trial step of the best trial "
                "(<= chi2)", _NMF),
    ResultField("nuisance_coeff", "float32", "free-sign coefficients of the observed-frame nuisance terms at the "
                "best trial (constant, then Legendre P1, P2 ... over the observed window, then the basis's sky "
                "continuum scaled to median 1 when it is fitted)", _NMF,
                units="1e-17 erg s-1 cm-2 Angstrom-1", dim="nuisance"),
    ResultField("zchi2", "float32", "chi2 over the trial redshifts", _NMF, dim=REDSHIFT_DIM),
    ResultField("confidence", "float32", "probability that z is right, from the scan's own outputs, by the "
                "confidence model stored with the basis (NaN without one)", _NMF),
    # MADGICS LAE
    ResultField("lae_dchi2", "float64", "chi2(sky+LAE+res) - chi2(sky+res) at z (<= 0)", _LAE),
    ResultField("lae_abs_dchi2_cal", "float64", "|lae_dchi2| / s^2 with U25's calibration factor s", _LAE),
    ResultField("candidate_lae_dchi2", "float64", "lae_dchi2 of the coarse scan at each candidate", _LAE,
                dim=CANDIDATE_DIM),
    ResultField("chi2_null", "float64", "chi2(sky+res), the baseline of lae_dchi2", _LAE),
    ResultField("lae_amplitude", "float32", "posterior amplitudes of the LAE prior vectors at z", _LAE,
                dim="lae_vector"),
    ResultField("lae_line_flux", "float32", "integral of the posterior LAE component at z", _LAE,
                units="1e-17 erg s-1 cm-2"),
    ResultField("lae_continuum", "float32", "clipped inverse-variance mean flux density at rest 1250-1500 A "
                "(Lya reading)", _LAE, units="1e-17 erg s-1 cm-2 Angstrom-1"),
    ResultField("lae_continuum_err", "float32", "uncertainty of lae_continuum", _LAE,
                units="1e-17 erg s-1 cm-2 Angstrom-1"),
    ResultField("lae_ew_rest", "float32", "lae_line_flux / (lae_continuum (1+z)); inf where the continuum is <= 0",
                _LAE, units="Angstrom"),
    ResultField("lowz_score", "float32", "largest companion-line chi-square of a low-z reading of the line", _LAE),
    ResultField("lowz_hypothesis", "int8", "index of that reading", _LAE, units="", fill=-1),
    ResultField("lae_line_snr", "float32", "S/N of a 200 km/s Gaussian at the Lya wavelength on the native pixels",
                _LAE),
]

#: Every result field by name.
FIELDS: dict[str, ResultField] = {f.name: f for f in _FIELD_LIST}

#: Per-engine flag class of ``zwarn``.
_ZWARN_FLAGS: dict[str, type[enum.IntFlag]] = {"nmf_zfind": ZWarn, "madgics_lae": LAEWarn}

#: Names results had before this vocabulary -> today's: ``{engine: {old: (new, new_dim or None)}}``.
RENAMES: dict[str, dict[str, tuple[str, str | None]]] = {
    "nmf_zfind": {
        "cand_z": ("candidate_z", None),
        "cand_chi2": ("candidate_chi2", None),
        "cand_score": ("candidate_significance", None),
        "chi2_curve": ("zchi2", REDSHIFT_DIM),
    },
    "madgics_lae": {
        "z_unc": ("zerr", None),
        "lae_warn": ("zwarn", None),
    },
}
_OLD_DIMS = {"trial": REDSHIFT_DIM}


def best_redshift_name(names: Iterable[str]) -> str:
    """The variable holding a results group's best redshift: the NMF ``z_refined`` where the scan refined (the one
    ``zerr`` belongs to, and the export's Z), else ``z``.

    Examples
    --------
    >>> best_redshift_name(["z", "z_refined", "zerr"]), best_redshift_name(["z", "zerr"])
    ('z_refined', 'z')
    """
    return "z_refined" if "z_refined" in set(names) else "z"


def output_specs(engine: str, names: Iterable[str], sizes: Mapping[str, int] | None = None,
                 extra_attrs: Mapping[str, Mapping[str, Any]] | None = None,
                 coords: Mapping[str, Any] | None = None) -> dict[str, OutputSpec]:
    """The runner's :class:`~dzspec.kernels.base.OutputSpec` of ``names`` for ``engine``, from :data:`FIELDS`.

    ``sizes`` gives the length of each extra dimension used (``{"candidate": 5}``); ``extra_attrs`` adds run-specific
    attributes per field (a calibration factor); ``coords`` the values of a dimension's coordinate (the trial
    redshifts of ``zchi2`` over ``redshift``).

    Examples
    --------
    >>> spec = output_specs("nmf_zfind", ["candidate_z", "zwarn"], {"candidate": 5})
    >>> spec["candidate_z"].dims, spec["candidate_z"].sizes, spec["zwarn"].attrs["flag_meanings"].split()[0]
    (('candidate',), (5,), 'SKY')
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; known: {', '.join(ENGINES)}")
    sizes, extra_attrs, coords = dict(sizes or {}), dict(extra_attrs or {}), dict(coords or {})
    out: dict[str, OutputSpec] = {}
    for name in names:
        field = FIELDS.get(name)
        if field is None or engine not in field.engines:
            raise KeyError(f"{name!r} is not an output of {engine} in dzspec.results_schema.FIELDS")
        attrs = field.attrs()
        if name == "zwarn":
            attrs.update(_cf_flags(_ZWARN_FLAGS[engine]))
        attrs.update(extra_attrs.get(name, {}))
        dims = () if field.dim is None else (field.dim,)
        out[name] = OutputSpec(field.dtype, dims, tuple(int(sizes[d]) for d in dims), field.fill, attrs,
                               {d: coords[d] for d in dims if d in coords})
    return out


def upgrade_names(engine: str, names: Iterable[str]) -> tuple[dict[str, str], dict[str, str]]:
    """Variable and dimension renames that bring results of ``engine`` written under older names to today's.

    Returns ``(variables, dims)``, empty for results already in this vocabulary. The LAE scan's older
    ``z_coarse``/``z_alt`` pair and the NMF ``zwarn`` bit 12 need values, not names:
    :func:`dzspec.io.store.open_results` rebuilds those.

    Examples
    --------
    >>> upgrade_names("madgics_lae", ["z", "z_unc", "lae_warn"])
    ({'z_unc': 'zerr', 'lae_warn': 'zwarn'}, {})
    >>> upgrade_names("nmf_zfind", ["z", "chi2_curve"])
    ({'chi2_curve': 'zchi2'}, {'trial': 'redshift'})
    """
    present = set(names)
    variables, dims = {}, {}
    for old, (new, new_dim) in RENAMES.get(engine, {}).items():
        if old in present and new not in present:
            variables[old] = new
            if new_dim is not None:
                dims.update({o: n for o, n in _OLD_DIMS.items() if n == new_dim})
    return variables, dims
