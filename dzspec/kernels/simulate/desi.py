"""A DESI-like spectrum simulator: Lyman-alpha emitters, [O II] interlopers, galaxies and blank sky fibres,
observed in several exposures through the three DESI cameras and coadded as the DESI pipeline does.

What is simulated, per target (one :func:`~dzspec.kernels.simulate.common.row_rng` generator each, so a spectrum
depends only on ``(seed, row)``):

* **the object**, in 1e-17 erg s^-1 cm^-2 A^-1 on the vacuum 0.8 Angstrom lattice (:func:`desi_wavelength`):
  LAEs at 2 < z < 4 (asymmetric Lyman-alpha of FWHM 150-400 km/s, optional blue peak, UV power-law continuum with
  Madau IGM, weak C IV / He II / C III] at the systemic redshift), [O II] emitters whose doublet falls in the
  Lyman-alpha window, galaxies at 0 < z < 1.6 (passive or star-forming), or nothing (a sky fibre);
* **the instrument**: cameras b (3600-5800 A), r (5760-7620 A) and z (7520-9824 A), each with its Gaussian LSF
  (resolution linear in wavelength, calibrated on the resolution matrices of real DESI coadds) and its effective
  throughput (calibrated on the ivar of real DESI coadds, see ``_THROUGHPUT``);
* **each exposure**: exposure time, transparency and sky brightness drawn per exposure; Gaussian noise from sky +
  object photons + read noise; sky-subtraction residuals proportional to the sky lines, with an amplitude per line
  and per spectrum (a part fixed per fibre and a part new in every exposure) plus a wavelength-shift (derivative)
  term and a smooth continuum term, as seen in DESI sky fibres (Uzsoy et al. 2025, §3.1.1);
* **the coadd**: per exposure the cameras are merged inverse-variance weighted exactly as
  :func:`dzspec.io.desi.read_desi` merges them; the coadd is the inverse-variance mean of the exposures
  (``flux = sum(i_e f_e) / sum(i_e)``, ``ivar = sum(i_e)``), as DESI coadds.

The reported ivar is the pipeline's: computed from the noiseless expected counts, so it does not correlate with
the noise draw; the true noise is ``noise_excess`` (default 1.06) times larger, as residual/sigma of real DESI blank
fibres shows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import numpy as np
from scipy.ndimage import percentile_filter, uniform_filter1d
from scipy.special import ndtr

from dzspec.kernels.simulate.common import (
    BALMER_CASE_B,
    C_KMS,
    EMISSION_LINES,
    FIXED_RATIOS,
    SimulatedBlock,
    igm_transmission_madau,
    lya_profile,
    row_rng,
)
from dzspec.kernels.simulate.sky import SkySpectrum, builtin_sky, sky_on_grid

__all__ = [
    "CAMERAS",
    "DESI_GRID_NAME",
    "DESI_SIM_CLASSES",
    "DESI_SURVEY_CODE",
    "DesiIngredients",
    "DesiSimConfig",
    "GalaxyTemplates",
    "desi_camera_fwhm",
    "desi_wavelength",
    "simulate_desi_block",
]

#: ``dzspec.schema.code_of("desi", SURVEYS)``; the kernels may not import dzspec.schema (it imports xarray).
DESI_SURVEY_CODE = 1
#: The grid name of :mod:`dzspec.io.desi`, so simulated and real coadds share one store group.
DESI_GRID_NAME = "desi-brz-3600-9824-0.8"
_LATTICE_START, _LATTICE_STEP, _NWAVE = 3600.0, 0.8, 7781
_CAMERA_OVERLAP = np.uint32(1 << 5)  # dzspec.schema.SpecMask.CAMERA_OVERLAP
#: Camera name -> (first lattice index, number of pixels): 3600-5800, 5760-7620 and 7520-9824 Angstrom.
CAMERAS: dict[str, tuple[int, int]] = {"b": (0, 2751), "r": (2700, 2326), "z": (4900, 2881)}

#: Simulated classes; the int8 truth ``sim_class`` is the index in this tuple.
DESI_SIM_CLASSES: tuple[str, ...] = ("lae", "lae_double_peak", "oii_interloper", "galaxy", "sky_residual")
_LAE, _LAE2, _OII, _GAL, _SKY = range(5)

_HC = 1.98644586e-8  # erg Angstrom
_SQRT_2LN2 = math.sqrt(2.0 * math.log(2.0))
_FWHM_PER_SIGMA = 2.0 * _SQRT_2LN2

#: Effective throughput per camera (atmosphere, telescope, fibre aperture for a point source, spectrograph, CCD) at
#: (wavelength, throughput) knots, linearly interpolated, calibrated on real DESI ivar by
#: benchmarks/desi_sim_calibration.py: within each camera the shape of the ivar of the 8 blank fibres of the
#: everest SV1 coadd (desi_quasarnp_everest) seen through the DESI model dark sky, and a level between that coadd
#: (taken as 10.5 ks) and the special/dark coadd 27247 (COADD_EXPTIME 23916 s). It is "effective": about a third
#: of DESI's design throughput, because real per-second ivar is that much below the photon-noise design figure
#: (conditions, extraction); only the ivar it produces is meaningful. The dips are the O2 A band (7600 A) and the
#: water band (>9300 A).
_THROUGHPUT: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "b": (
        (3600.0, 3624.8, 3674.8, 3724.8, 3774.8, 3824.8, 3874.8, 3924.8, 3974.8, 4024.8, 4074.8, 4124.8, 4174.8,
         4224.8, 4274.8, 4324.8, 4374.8, 4424.8, 4474.8, 4524.8, 4574.8, 4624.8, 4674.8, 4724.8, 4774.8, 4824.8,
         4874.8, 4924.8, 4974.8, 5024.8, 5074.8, 5124.8, 5174.8, 5224.8, 5274.8, 5324.8, 5374.8, 5424.8, 5474.8,
         5524.8, 5574.8, 5624.8, 5674.8, 5724.8, 5774.8, 5800.0),
        (0.0069, 0.0069, 0.0103, 0.0133, 0.0152, 0.0193, 0.0213, 0.0293, 0.0309, 0.0366, 0.0370, 0.0406, 0.0468,
         0.0477, 0.0477, 0.0477, 0.0477, 0.0477, 0.0530, 0.0590, 0.0619, 0.0650, 0.0666, 0.0680, 0.0700, 0.0700,
         0.0700, 0.0667, 0.0665, 0.0650, 0.0641, 0.0635, 0.0630, 0.0622, 0.0620, 0.0605, 0.0605, 0.0604, 0.0601,
         0.0590, 0.0585, 0.0585, 0.0513, 0.0513, 0.0461, 0.0461),
    ),
    "r": (
        (5760.0, 5779.6, 5824.8, 5874.8, 5924.8, 5974.8, 6024.8, 6074.8, 6124.8, 6174.8, 6224.8, 6274.8, 6324.8,
         6374.8, 6424.8, 6474.8, 6524.8, 6574.8, 6624.8, 6674.8, 6724.8, 6774.8, 6824.8, 6874.8, 6924.8, 6974.8,
         7024.8, 7074.8, 7124.8, 7174.8, 7224.8, 7274.8, 7324.8, 7374.8, 7424.8, 7474.8, 7524.8, 7574.8, 7610.0,
         7620.0),
        (0.0145, 0.0145, 0.0469, 0.0828, 0.0918, 0.0971, 0.1016, 0.1042, 0.1057, 0.1113, 0.1160, 0.1188, 0.1272,
         0.1409, 0.1441, 0.1471, 0.1476, 0.1476, 0.1476, 0.1265, 0.1235, 0.1229, 0.1229, 0.1229, 0.1235, 0.1268,
         0.1268, 0.1268, 0.1264, 0.1205, 0.1185, 0.1185, 0.1185, 0.1154, 0.1131, 0.1036, 0.0757, 0.0511, 0.0058,
         0.0058),
    ),
    "z": (
        (7520.0, 7534.8, 7574.8, 7624.8, 7674.8, 7724.8, 7774.8, 7824.8, 7874.8, 7924.8, 7974.8, 8024.8, 8074.8,
         8124.8, 8174.8, 8224.8, 8274.8, 8324.8, 8374.8, 8424.8, 8474.8, 8524.8, 8574.8, 8624.8, 8674.8, 8724.8,
         8774.8, 8824.8, 8874.8, 8924.8, 8974.8, 9024.8, 9074.8, 9124.8, 9174.8, 9224.8, 9274.8, 9324.8, 9374.8,
         9424.8, 9474.8, 9524.8, 9574.8, 9624.8, 9674.8, 9724.8, 9774.8, 9812.0, 9824.0),
        (0.0697, 0.0697, 0.0689, 0.0697, 0.1265, 0.1659, 0.1726, 0.1822, 0.1822, 0.1866, 0.1866, 0.1863, 0.1841,
         0.1841, 0.1773, 0.1773, 0.1773, 0.1806, 0.1806, 0.1806, 0.1795, 0.1699, 0.1699, 0.1699, 0.1863, 0.1863,
         0.1863, 0.1863, 0.1841, 0.1839, 0.1753, 0.1793, 0.1753, 0.1753, 0.1753, 0.1601, 0.1507, 0.1010, 0.0926,
         0.0923, 0.0923, 0.0842, 0.0842, 0.0844, 0.0835, 0.0844, 0.0745, 0.1021, 0.1021),
    ),
}  # fmt: skip


def desi_wavelength() -> np.ndarray:
    """The merged DESI b+r+z grid, 3600-9824 Angstrom in 0.8 Angstrom steps (7781 px), bitwise equal to the grid of
    :func:`dzspec.io.desi.read_desi`.

    Examples
    --------
    >>> wave = desi_wavelength()
    >>> wave.size, float(wave[0]), round(float(wave[-1]), 6)
    (7781, 3600.0, 9824.0)
    """
    return _LATTICE_START + np.arange(0, _NWAVE) * _LATTICE_STEP


def _camera_wavelength(camera: str) -> np.ndarray:
    start, n = CAMERAS[camera]
    return _LATTICE_START + np.arange(start, start + n) * _LATTICE_STEP


def desi_camera_fwhm(camera: str, wavelength: np.ndarray, resolution: tuple[float, float]) -> np.ndarray:
    """LSF FWHM (Angstrom) of a camera whose resolving power rises linearly from ``resolution[0]`` at its blue end
    to ``resolution[1]`` at its red end.

    Examples
    --------
    >>> desi_camera_fwhm("b", np.array([3600.0, 5800.0]), (2000.0, 3200.0)).round(3)
    array([1.8  , 1.812])
    """
    start, n = CAMERAS[camera]
    lo, hi = _LATTICE_START + start * _LATTICE_STEP, _LATTICE_START + (start + n - 1) * _LATTICE_STEP
    power = resolution[0] + (resolution[1] - resolution[0]) * (np.asarray(wavelength, float) - lo) / (hi - lo)
    return np.asarray(wavelength, float) / power


@dataclass(frozen=True)
class DesiSimConfig:
    """Everything the DESI-like simulator draws from, with its defaults (all hashable, so a config can be hashed).

    Ranges ``(lo, hi)`` are sampled uniformly unless the attribute says log-uniform. Fluxes are in
    1e-17 erg s^-1 cm^-2, flux densities in 1e-17 erg s^-1 cm^-2 A^-1, wavelengths in vacuum Angstrom.

    Attributes
    ----------
    class_fractions
        Probability of each class of :data:`DESI_SIM_CLASSES` (lae, lae_double_peak, oii_interloper, galaxy,
        sky_residual); normalised to 1.
    nexp
        Exposures per target (all targets of a run have the same number, so the exposure block is rectangular).
    exptime_mean, exptime_spread, exptime_limits
        Per-exposure time (s): ``exptime_mean * exp(N(0, exptime_spread))`` clipped to the limits; DESI dark
        exposures aim at ~1000 s.
    transparency_range
        Per-exposure atmospheric transparency (multiplies the object signal).
    sky_scale, sky_scale_spread
        Sky surface brightness relative to the sky ingredient (dark by default), and the log-normal spread of it per
        exposure.
    resolution_b, resolution_r, resolution_z
        Resolving power at the blue and red end of each camera (Gaussian LSF, linear in wavelength). The defaults
        are the second moments of the resolution matrices of the real coadds (DESI design: 2000-3200, 3200-4100,
        4100-5500).
    throughput_scale
        Multiplies the calibrated throughput of every camera.
    read_noise
        Read noise (electrons rms) per extracted 0.8 Angstrom pixel and exposure, for b, r, z.
    fiber_area, fiber_fraction, collecting_area
        Fibre area on the sky (arcsec^2; 1.52 arcsec diameter), the fraction of a point source the fibre collects
        (already inside the throughput; used to convert the sky) and the telescope area (cm^2).
    noise_excess
        True noise over the noise the reported ivar claims (real DESI blank fibres: residual/sigma std ~1.06).
    sky_line_residual
        Rms of the per-exposure sky-line residual as a fraction of the line flux (new every exposure).
    sky_line_residual_fiber
        Rms of the persistent per-fibre part of the sky-line residual (same in every exposure of a target).
    sky_line_residual_spread
        Log-normal spread of the residual amplitude per spectrum and per line (line-dependent residuals).
    sky_residual_camera_scale
        Multiplies the line residuals of the b, r and z cameras (the r camera of the everest blank fibres shows
        about half the excess of b and z).
    sky_shift_rms
        Rms wavelength error (Angstrom) of the sky model per exposure and camera; gives derivative-shaped residuals.
    sky_continuum_residual
        Rms of the smooth fractional sky-continuum residual per fibre (a quarter of it per exposure).
    lae_z_range
        Lyman-alpha (red peak) redshift of LAEs.
    lae_flux_range
        Observed Lyman-alpha flux, log-uniform (1e-17 erg/s/cm2).
    lae_ew_range
        Rest-frame Lyman-alpha equivalent width (Angstrom), log-uniform.
    lae_fwhm_kms_range
        Intrinsic FWHM (km/s) of the red peak (METHODS §8: 150-400 km/s).
    lae_skew_range
        Asymmetry ``(sigma_red - sigma_blue) / (sigma_red + sigma_blue)`` of the red peak.
    lae_blue_fraction_range, lae_peak_sep_kms_range
        Flux fraction in the blue peak and peak separation (km/s) of double-peaked LAEs.
    lae_velocity_offset_kms_range
        Velocity of the Lyman-alpha red peak above the systemic redshift (U25: 100-300 km/s).
    lae_beta_range
        UV continuum slope ``f_lambda ~ lambda^beta``.
    lae_uv_line_ratio_max
        Maximum flux ratios to Lyman-alpha of C IV, He II and C III] (each drawn uniformly from 0 to its maximum).
    oii_window
        [O II] 3727/3729 of interlopers falls in this observed window (the Lyman-alpha window of DESI LAEs), i.e.
        0.10 < z < 0.64 by default.
    oii_flux_range, oii_ew_range
        [O II] doublet flux (log-uniform) and rest-frame equivalent width (Angstrom, log-uniform) of interlopers.
    galaxy_z_range, galaxy_mag_range, galaxy_passive_fraction, galaxy_oii_ew_range
        Galaxy redshifts, AB magnitude in a 5600-7200 Angstrom top hat, fraction of passive galaxies (no
        emission lines) and rest-frame [O II] EW (log-uniform) of the star-forming ones.
    line_sigma_kms_range
        Intrinsic Gaussian sigma (km/s) of the nebular lines of galaxies and interlopers, and of the LAE UV lines.
    """

    class_fractions: tuple[float, ...] = (0.30, 0.10, 0.15, 0.20, 0.25)
    nexp: int = 4
    exptime_mean: float = 1000.0
    exptime_spread: float = 0.2
    exptime_limits: tuple[float, float] = (300.0, 3000.0)
    transparency_range: tuple[float, float] = (0.85, 1.0)
    sky_scale: float = 1.0
    sky_scale_spread: float = 0.15
    resolution_b: tuple[float, float] = (2300.0, 3650.0)
    resolution_r: tuple[float, float] = (3850.0, 5000.0)
    resolution_z: tuple[float, float] = (4330.0, 5400.0)
    throughput_scale: float = 1.0
    read_noise: tuple[float, float, float] = (3.0, 3.0, 3.0)
    fiber_area: float = 1.81
    fiber_fraction: float = 0.78
    collecting_area: float = 8.678e4
    noise_excess: float = 1.06
    sky_line_residual: float = 0.013
    sky_line_residual_fiber: float = 0.0065
    sky_line_residual_spread: float = 0.5
    sky_residual_camera_scale: tuple[float, float, float] = (1.0, 0.65, 1.0)
    sky_shift_rms: float = 0.013
    sky_continuum_residual: float = 0.01
    lae_z_range: tuple[float, float] = (2.0, 4.0)
    lae_flux_range: tuple[float, float] = (1.0, 30.0)
    lae_ew_range: tuple[float, float] = (20.0, 200.0)
    lae_fwhm_kms_range: tuple[float, float] = (150.0, 400.0)
    lae_skew_range: tuple[float, float] = (0.1, 0.6)
    lae_blue_fraction_range: tuple[float, float] = (0.15, 0.45)
    lae_peak_sep_kms_range: tuple[float, float] = (300.0, 800.0)
    lae_velocity_offset_kms_range: tuple[float, float] = (100.0, 300.0)
    lae_beta_range: tuple[float, float] = (-2.5, -1.5)
    lae_uv_line_ratio_max: tuple[float, float, float] = (0.08, 0.04, 0.12)
    oii_window: tuple[float, float] = (4100.0, 6100.0)
    oii_flux_range: tuple[float, float] = (2.0, 30.0)
    oii_ew_range: tuple[float, float] = (10.0, 100.0)
    galaxy_z_range: tuple[float, float] = (0.01, 1.6)
    galaxy_mag_range: tuple[float, float] = (19.5, 23.0)
    galaxy_passive_fraction: float = 0.35
    galaxy_oii_ew_range: tuple[float, float] = (3.0, 60.0)
    line_sigma_kms_range: tuple[float, float] = (30.0, 120.0)

    def __post_init__(self) -> None:
        fractions = np.asarray(self.class_fractions, dtype=float)
        if fractions.shape != (len(DESI_SIM_CLASSES),) or np.any(fractions < 0) or fractions.sum() <= 0:
            raise ValueError(f"class_fractions needs {len(DESI_SIM_CLASSES)} non-negative values {DESI_SIM_CLASSES}")
        if int(self.nexp) < 1:
            raise ValueError("nexp must be >= 1")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith(("_range", "_limits", "_window")) and not (len(value) == 2 and value[0] <= value[1]):
                raise ValueError(f"{f.name} must be (lo, hi) with lo <= hi, got {value!r}")
        if self.lae_z_range[0] <= 0 or self.galaxy_z_range[0] < 0:
            raise ValueError("redshift ranges must be positive")


@dataclass(frozen=True, eq=False)
class GalaxyTemplates:
    """Rest-frame continuum templates (e.g. BC03 single stellar populations) for galaxies and [O II] emitters.

    Attributes
    ----------
    wavelength
        Rest vacuum wavelength (Angstrom), increasing, ``(nwave,)``; must cover 1300-9000 Angstrom.
    flux
        ``(ntemplate, nwave)`` f_lambda, any normalisation (each is renormalised).
    age_yr
        Age of each template (years): old ones (>= 2 Gyr) make passive galaxies, young ones (<= 300 Myr) are added
        to an old one for star-forming galaxies.
    """

    wavelength: np.ndarray
    flux: np.ndarray
    age_yr: np.ndarray


@dataclass
class DesiIngredients:
    """Optional inputs read from files (see :func:`dzspec.io.desi_ingredients.load_desi_ingredients`).

    Attributes
    ----------
    sky
        Sky surface brightness (default: :func:`~dzspec.kernels.simulate.sky.builtin_sky`, whose approximate OH
        lines give a rougher ivar shape in the z camera). The DESI model dark sky ``eboss-spec-sky.dat`` (the
        calibration reference) and the observed UVES atlas ``sky-uves.fits`` put the lines where DESI sees them;
        the model has a continuum deficit at 8540-8620 A that real DESI fibres do not show.
    templates
        Galaxy continuum templates (default: an analytic continuum with a 4000 Angstrom break and stellar
        absorption lines).
    """

    sky: SkySpectrum | None = None
    templates: GalaxyTemplates | None = None


# ----------------------------------------------------------------------------------------------------------------
# The instrument: everything that does not depend on the target, computed once per (config, sky) and cached.


@dataclass
class _Instrument:
    wave: np.ndarray  # merged grid (7781,)
    stack_wave: np.ndarray  # camera pixels stacked b|r|z (7958,)
    stack_index: np.ndarray  # merged-grid index of each stacked pixel
    offsets: dict[str, int]  # camera -> first stacked index
    lsf_sigma: np.ndarray  # stacked, Angstrom
    conv: np.ndarray  # stacked, electrons per second per unit flux density for a point source
    sky_flux: np.ndarray  # stacked, sky in calibrated flux density units (what the fibre sees)
    sky_cont: np.ndarray  # stacked, smooth sky continuum
    sky_line: np.ndarray  # stacked, sky lines (sky - continuum)
    sky_deriv: np.ndarray  # stacked, d(sky lines)/d(lambda)
    segment: np.ndarray  # stacked int, 0 = no line, k = k-th line
    nseg: int
    read_var: np.ndarray  # stacked, read noise variance (electrons^2)
    cont_basis: np.ndarray  # (9, nstack) smooth per-camera Legendre basis (P0, P1, P2) for continuum residuals
    overlap: np.ndarray  # merged bool, two cameras contribute
    camera_of: np.ndarray  # stacked int camera index
    first: np.ndarray  # merged -> stacked index of the bluest camera covering it (for interpolation)

    def at(self, stacked: np.ndarray, wavelength: float | np.ndarray) -> np.ndarray:
        """Interpolate a stacked-camera array at observed wavelengths (the stacked axis is not monotonic)."""
        return np.interp(wavelength, self.wave, stacked[self.first])


_INSTRUMENT_CACHE: dict[tuple, _Instrument] = {}


def _sky_key(sky: SkySpectrum | None) -> tuple:
    if sky is None:
        return ("builtin",)
    sb = np.asarray(sky.surface_brightness, dtype=float)
    return (sky.source, sb.size, float(sky.wavelength[0]), float(sky.wavelength[-1]), float(sb.sum()),
            float(np.dot(sb, np.arange(sb.size, dtype=float))), float(sky.line_fwhm))


def _instrument(config: DesiSimConfig, sky: SkySpectrum | None) -> _Instrument:
    key = (config.resolution_b, config.resolution_r, config.resolution_z, config.throughput_scale,
           config.read_noise, config.fiber_area, config.fiber_fraction, config.collecting_area, _sky_key(sky))
    cached = _INSTRUMENT_CACHE.get(key)
    if cached is not None:
        return cached
    sky = builtin_sky() if sky is None else sky
    resolution = {"b": config.resolution_b, "r": config.resolution_r, "z": config.resolution_z}
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("wave", "index", "sigma", "conv", "sky", "cont", "line",
                                                          "deriv", "seg", "rvar", "cam")}
    offsets, basis_rows, nseg, offset = {}, [], 0, 0
    nstack = sum(n for _, n in CAMERAS.values())
    for icam, (cam, (start, n)) in enumerate(CAMERAS.items()):
        wave = _camera_wavelength(cam)
        fwhm = desi_camera_fwhm(cam, wave, resolution[cam])
        throughput = config.throughput_scale * np.interp(wave, *_THROUGHPUT[cam])
        conv = 1e-17 * config.collecting_area * throughput * _LATTICE_STEP * wave / _HC
        seen = sky_on_grid(sky, wave, fwhm) * config.fiber_area / config.fiber_fraction
        # Continuum: a low percentile over ~120 A rides under the lines; smoothed so it has no steps.
        cont = uniform_filter1d(percentile_filter(seen, 15, size=151, mode="nearest"), 61, mode="nearest")
        cont = np.minimum(cont, seen)
        line = seen - cont
        seg, count = _line_segments(line, cont)
        seg[seg > 0] += nseg
        nseg += count
        x = np.linspace(-1.0, 1.0, n)
        block = np.zeros((3, nstack))
        block[:, offset : offset + n] = np.array([np.ones(n), x, 1.5 * x**2 - 0.5])
        basis_rows.append(block)
        offsets[cam] = offset
        offset += n
        for name, value in (("wave", wave), ("index", np.arange(start, start + n)), ("sigma", fwhm / _FWHM_PER_SIGMA),
                            ("conv", conv), ("sky", seen), ("cont", cont), ("line", line),
                            ("deriv", np.gradient(line, _LATTICE_STEP)), ("seg", seg),
                            ("rvar", np.full(n, float(config.read_noise[icam]) ** 2)), ("cam", np.full(n, icam))):
            parts[name].append(value)
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    coverage = np.bincount(cat["index"], minlength=_NWAVE)
    first = np.zeros(_NWAVE, np.int64)
    for cam, (start, n) in reversed(CAMERAS.items()):
        first[start : start + n] = offsets[cam] + np.arange(n)
    inst = _Instrument(
        wave=desi_wavelength(), stack_wave=cat["wave"], stack_index=cat["index"], offsets=offsets,
        lsf_sigma=cat["sigma"], conv=cat["conv"], sky_flux=cat["sky"], sky_cont=cat["cont"], sky_line=cat["line"],
        sky_deriv=cat["deriv"], segment=cat["seg"].astype(np.int64), nseg=nseg, read_var=cat["rvar"],
        cont_basis=np.concatenate(basis_rows), overlap=coverage >= 2, camera_of=cat["cam"].astype(np.int8),
        first=first,
    )  # fmt: skip
    if len(_INSTRUMENT_CACHE) >= 4:
        _INSTRUMENT_CACHE.pop(next(iter(_INSTRUMENT_CACHE)))
    _INSTRUMENT_CACHE[key] = inst
    return inst


def _line_segments(line: np.ndarray, cont: np.ndarray, threshold: float = 0.1) -> tuple[np.ndarray, int]:
    """Label each sky line (pixels where the line part exceeds ``threshold`` x continuum), splitting blends at
    local minima, so that every line gets its own residual amplitude."""
    strong = line > threshold * cont
    minima = np.zeros(line.size, bool)
    minima[1:-1] = (line[1:-1] <= line[:-2]) & (line[1:-1] < line[2:])
    starts = strong & (~np.concatenate([[False], strong[:-1]]) | minima)
    labels = np.cumsum(starts)
    return np.where(strong, labels, 0), int(labels[-1]) if labels.size else 0


# ----------------------------------------------------------------------------------------------------------------
# Object models.

#: Line groups whose S/N counts once in snr_lines (doublets are one feature).
_GROUPS: tuple[str, ...] = ("lya", "civ", "heii", "ciii", "oii", "neiii", "hdelta", "hgamma", "hbeta", "oiii_4959",
                            "oiii_5007", "hei_5876", "oi_6300", "nii_6548", "halpha", "nii_6584", "sii")
_GROUP_OF = {"civ_1548": "civ", "civ_1551": "civ", "heii_1640": "heii", "ciii_1907": "ciii", "ciii_1909": "ciii",
             "oii_3726": "oii", "oii_3729": "oii", "neiii_3869": "neiii", "sii_6716": "sii", "sii_6731": "sii"}
_GROUP_INDEX = {g: i for i, g in enumerate(_GROUPS)}

#: Stellar absorption features of the analytic galaxy continuum: (name, rest wavelength, EW of an old population
#: (Angstrom), EW of a young one).
_STELLAR_ABSORPTION = (("cak_3934", 3934.78, 7.0, 1.0), ("cah_3969", 3969.59, 6.0, 1.5), ("hdelta", 4102.89, 1.5, 5.0),
                       ("gband", 4305.61, 4.0, 0.5), ("hgamma", 4341.69, 1.5, 4.0), ("hbeta", 4862.68, 1.5, 4.0),
                       ("mgb", 5176.7, 4.0, 0.5), ("nad", 5895.6, 3.0, 0.5), ("halpha", 6564.61, 1.0, 3.0),
                       ("mgii", 2799.0, 6.0, 2.0), ("feii_2600", 2600.17, 3.0, 1.5))  # fmt: skip


def _loguniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    lo, hi = bounds
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _render_gaussians(inst: _Instrument, target: np.ndarray, centers: np.ndarray, fluxes: np.ndarray,
                      sigmas_kms: np.ndarray, groups: np.ndarray | None = None) -> None:
    """Add Gaussian lines (observed centres, integrated fluxes, intrinsic sigma in km/s) to every camera that sees
    them, convolved with that camera's LSF and integrated over the 0.8 A pixels (erf). ``target`` is ``(nstack,)``
    or, with ``groups``, ``(ngroups, nstack)`` and line ``l`` goes to row ``groups[l]``."""
    if centers.size == 0:
        return
    for cam, (start, n) in CAMERAS.items():
        lo_w = _LATTICE_START + (start - 5) * _LATTICE_STEP
        hi_w = _LATTICE_START + (start + n + 5) * _LATTICE_STEP
        sel = (centers > lo_w) & (centers < hi_w)
        if not sel.any():
            continue
        off = inst.offsets[cam]
        c = centers[sel]
        lsf = np.interp(c, inst.stack_wave[off : off + n], inst.lsf_sigma[off : off + n])
        sigma = np.sqrt((c * sigmas_kms[sel] / C_KMS) ** 2 + lsf**2) / _LATTICE_STEP  # pixels
        uc = (c - _LATTICE_START) / _LATTICE_STEP
        half = int(np.ceil(6.0 * sigma.max())) + 1
        k = np.floor(uc).astype(np.int64)[:, None] + np.arange(-half, half + 2)[None, :]
        cdf = ndtr((k - 0.5 - uc[:, None]) / sigma[:, None])
        vals = (fluxes[sel] / _LATTICE_STEP)[:, None] * (cdf[:, 1:] - cdf[:, :-1])
        k = k[:, :-1]
        inside = (k >= start) & (k < start + n)
        pix = np.where(inside, k - start + off, 0)
        vals = np.where(inside, vals, 0.0)
        if groups is None:
            np.add.at(target, pix.ravel(), vals.ravel())
        else:
            rows = np.broadcast_to(groups[sel][:, None], pix.shape)
            np.add.at(target, (rows.ravel(), pix.ravel()), vals.ravel())


def _render_lya(inst: _Instrument, target: np.ndarray, center: float, flux: float, sigma_red: float,
                sigma_blue: float, blue_fraction: float, separation: float, sub: int = 8) -> None:
    """Add the asymmetric Lyman-alpha profile to each camera that sees it: evaluated on a 0.1 A sub-grid, convolved
    with the camera's Gaussian LSF, averaged over each 0.8 A pixel and normalised to the exact flux."""
    for cam, (start, n) in CAMERAS.items():
        off = inst.offsets[cam]
        lsf = float(np.interp(center, inst.stack_wave[off : off + n], inst.lsf_sigma[off : off + n]))
        lo = center - separation - 7.0 * sigma_blue - 5.0 * lsf - 1.0
        hi = center + 7.0 * sigma_red + 5.0 * lsf + 1.0
        k0 = max(int(np.floor((lo - _LATTICE_START) / _LATTICE_STEP)), start)
        k1 = min(int(np.ceil((hi - _LATTICE_START) / _LATTICE_STEP)) + 1, start + n)
        if k1 <= k0:
            continue
        fine = (_LATTICE_START + (np.arange(k0, k1)[:, None] - 0.5 + (np.arange(sub)[None, :] + 0.5) / sub)
                * _LATTICE_STEP).ravel()  # fmt: skip
        step = _LATTICE_STEP / sub
        # The full profile on a padded grid, so a camera edge cuts the convolved line, not the intrinsic one.
        pad = int(np.ceil(5.0 * lsf / step))
        grid = np.concatenate([fine[0] - step * np.arange(pad, 0, -1), fine, fine[-1] + step * np.arange(1, pad + 1)])
        span = np.arange(lo, hi, step)
        norm = lya_profile(span, center, 1.0, sigma_red, sigma_blue, blue_fraction, separation).sum() * step
        prof = lya_profile(grid, center, flux / norm, sigma_red, sigma_blue, blue_fraction, separation)
        kx = np.arange(-pad, pad + 1) * step
        kernel = np.exp(-0.5 * (kx / lsf) ** 2)
        kernel /= kernel.sum()
        conv = np.convolve(prof, kernel, mode="same")[pad : pad + fine.size]
        target[off + k0 - start : off + k1 - start] += conv.reshape(-1, sub).mean(axis=1)


def _analytic_continuum(rest: np.ndarray, old: float, tilt: float) -> np.ndarray:
    """A smooth galaxy continuum (f_lambda, ~1 at 5500 A rest): a mix of an old population (red, strong 4000 A
    break, falling UV) with weight ``old`` and a young one (blue power law, weak Balmer break), tilted by
    ``(lambda/5500)^tilt`` (dust)."""
    x = rest / 5500.0
    break_old = 1.0 / (1.0 + 1.2 * ndtr((4000.0 - rest) / 60.0))  # D4000 ~ 2.2
    uv_old = np.where(rest < 3000.0, (np.maximum(rest, 1000.0) / 3000.0) ** 2.5, 1.0)
    old_flux = x**0.6 * break_old * uv_old
    young_flux = x**-1.6 / (1.0 + 0.25 * ndtr((3700.0 - rest) / 80.0))
    return (old * old_flux + (1.0 - old) * young_flux) * x**tilt


def _continuum(rng: np.random.Generator, inst: _Instrument, templates: GalaxyTemplates | None, z: float,
               old: float) -> np.ndarray:
    """Observed-frame continuum shape on the stacked camera pixels, normalised to 1 at 5500 A rest (arbitrary)."""
    rest = inst.stack_wave / (1.0 + z)
    tilt = float(rng.uniform(-0.8, 0.0)) * (1.0 - old)  # dust reddens young populations
    if templates is None:
        cont = _analytic_continuum(rest, old, tilt)
        ew = np.array([old * e_old + (1 - old) * e_young for _, _, e_old, e_young in _STELLAR_ABSORPTION])
        ew *= rng.uniform(0.7, 1.3, ew.size)
        centers = np.array([w for _, w, _, _ in _STELLAR_ABSORPTION]) * (1.0 + z)
        level = _analytic_continuum(centers / (1.0 + z), old, tilt)
        absorb = np.zeros_like(cont)
        _render_gaussians(inst, absorb, centers, -ew * (1.0 + z) * level, np.full(ew.size, 150.0))
        # Both cameras render a line in their overlap; keep the stacked pixels independent (no double count).
        return np.maximum(cont + absorb, 0.0)
    ages = np.asarray(templates.age_yr)
    old_pool = np.flatnonzero(ages >= 2e9)
    young_pool = np.flatnonzero(ages <= 3e8)
    i_old = int(old_pool[rng.integers(old_pool.size)])
    i_young = int(young_pool[rng.integers(young_pool.size)])
    tw = templates.wavelength
    norm = lambda f: f / np.interp(5500.0, tw, f)  # noqa: E731
    spec = old * norm(templates.flux[i_old]) + (1.0 - old) * norm(templates.flux[i_young])
    return np.interp(rest, tw, spec, left=0.0, right=0.0) * (rest / 5500.0) ** tilt


def _nebular_lines(rng: np.random.Generator, config: DesiSimConfig, z: float, flux_oii: float
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, float]]:
    """Star-forming nebular lines scaled to an [O II] 3727+3729 flux: Balmer case B with a random decrement,
    [O III], [N II], [S II], [Ne III], He I, [O I]."""
    ratio = float(rng.uniform(0.8, 1.45))  # 3729/3726, density sensitive
    hbeta = flux_oii * float(rng.uniform(0.3, 1.0))
    decrement = float(rng.uniform(2.86, 4.5))  # Halpha/Hbeta: case B plus dust
    oiii = hbeta * 10 ** float(rng.uniform(-0.5, 0.6))
    halpha = hbeta * decrement
    nii = halpha * 10 ** float(rng.uniform(-1.3, -0.4))
    sii = halpha * float(rng.uniform(0.1, 0.35))
    sii_ratio = float(rng.uniform(0.8, 1.4))
    flux = {
        "oii_3726": flux_oii / (1.0 + ratio), "oii_3729": flux_oii * ratio / (1.0 + ratio),
        "neiii_3869": flux_oii * float(rng.uniform(0.03, 0.15)),
        "hdelta": hbeta * BALMER_CASE_B["hdelta"], "hgamma": hbeta * BALMER_CASE_B["hgamma"], "hbeta": hbeta,
        "oiii_5007": oiii, "oiii_4959": oiii * FIXED_RATIOS["oiii_4959"][1],
        "hei_5876": hbeta * float(rng.uniform(0.08, 0.14)), "oi_6300": halpha * float(rng.uniform(0.01, 0.06)),
        "halpha": halpha, "nii_6584": nii, "nii_6548": nii * FIXED_RATIOS["nii_6548"][1],
        "sii_6716": sii * sii_ratio / (1.0 + sii_ratio), "sii_6731": sii / (1.0 + sii_ratio),
    }  # fmt: skip
    sigma = float(rng.uniform(*config.line_sigma_kms_range))
    names = list(flux)
    centers = np.array([EMISSION_LINES[n] for n in names]) * (1.0 + z)
    values = np.array([flux[n] for n in names])
    groups = np.array([_GROUP_INDEX[_GROUP_OF.get(n, n)] for n in names])
    info = {"oii_ratio": ratio, "flux_hbeta": hbeta, "flux_oiii": oiii, "flux_halpha": halpha}
    return centers, values, np.full(len(names), sigma), groups, info


@dataclass
class _Target:
    """The noiseless object on the stacked camera pixels and its truth."""

    continuum: np.ndarray
    lines: np.ndarray  # (ngroups, nstack)
    z: float = np.nan
    truth: dict[str, float] = field(default_factory=dict)


def _draw_target(rng: np.random.Generator, config: DesiSimConfig, inst: _Instrument,
                 templates: GalaxyTemplates | None, cls: int) -> _Target:
    nstack = inst.stack_wave.size
    target = _Target(np.zeros(nstack), np.zeros((len(_GROUPS), nstack)))
    t = target.truth
    if cls == _SKY:
        return target
    if cls in (_LAE, _LAE2):
        z = float(rng.uniform(*config.lae_z_range))
        flux = _loguniform(rng, config.lae_flux_range)
        ew = _loguniform(rng, config.lae_ew_range)
        fwhm_kms = float(rng.uniform(*config.lae_fwhm_kms_range))
        skew = float(rng.uniform(*config.lae_skew_range))
        voff = float(rng.uniform(*config.lae_velocity_offset_kms_range))
        beta = float(rng.uniform(*config.lae_beta_range))
        if cls == _LAE2:
            blue = float(rng.uniform(*config.lae_blue_fraction_range))
            sep_kms = float(rng.uniform(*config.lae_peak_sep_kms_range))
        else:
            blue, sep_kms = 0.0, np.nan
        center = EMISSION_LINES["lya"] * (1.0 + z)
        width = fwhm_kms / C_KMS * center / _SQRT_2LN2  # sigma_red + sigma_blue
        sigma_red, sigma_blue = 0.5 * (1.0 + skew) * width, 0.5 * (1.0 - skew) * width
        separation = 0.0 if cls == _LAE else sep_kms / C_KMS * center
        _render_lya(inst, target.lines[_GROUP_INDEX["lya"]], center, flux, sigma_red, sigma_blue, blue, separation)
        z_sys = (1.0 + z) / (1.0 + voff / C_KMS) - 1.0
        # UV continuum: power law whose level just redward of Lyman-alpha gives the rest EW; Madau IGM blueward.
        cont_level = flux / (ew * (1.0 + z))
        rest = inst.stack_wave / (1.0 + z_sys)
        target.continuum = (cont_level * (rest / 1230.0) ** beta * igm_transmission_madau(inst.stack_wave, z_sys)
                            * (rest > 912.0))  # fmt: skip
        ratios = [float(rng.uniform(0.0, m)) for m in config.lae_uv_line_ratio_max]
        uv = {"civ_1548": ratios[0] * 2 / 3, "civ_1551": ratios[0] / 3, "heii_1640": ratios[1],
              "ciii_1907": ratios[2] * 0.6, "ciii_1909": ratios[2] * 0.4}
        sigma_uv = float(rng.uniform(*config.line_sigma_kms_range))
        names = list(uv)
        _render_gaussians(inst, target.lines, np.array([EMISSION_LINES[n] for n in names]) * (1.0 + z_sys),
                          flux * np.array([uv[n] for n in names]), np.full(len(names), sigma_uv),
                          np.array([_GROUP_INDEX[_GROUP_OF[n]] for n in names]))
        target.z = z
        t.update(z_sys=z_sys, flux_lya=flux, lya_ew_rest=ew, lae_fwhm_kms=fwhm_kms, lae_skew=skew,
                 lae_blue_fraction=blue, lae_peak_sep_kms=sep_kms)
        return target
    if cls == _OII:
        lo, hi = config.oii_window
        mean_oii = 0.5 * (EMISSION_LINES["oii_3726"] + EMISSION_LINES["oii_3729"])
        z = float(rng.uniform(lo / mean_oii - 1.0, hi / mean_oii - 1.0))
        flux_oii = _loguniform(rng, config.oii_flux_range)
        ew = _loguniform(rng, config.oii_ew_range)
        old = float(rng.uniform(0.0, 0.4))
        shape = _continuum(rng, inst, templates, z, old)
        at_oii = float(inst.at(shape, mean_oii * (1.0 + z)))
        target.continuum = shape * flux_oii / (ew * (1.0 + z)) / max(at_oii, 1e-30)
    else:  # galaxy
        z = float(rng.uniform(*config.galaxy_z_range))
        mag = float(rng.uniform(*config.galaxy_mag_range))
        passive = bool(rng.random() < config.galaxy_passive_fraction)
        old = float(rng.uniform(0.85, 1.0)) if passive else float(rng.uniform(0.0, 0.7))
        shape = _continuum(rng, inst, templates, z, old)
        band = (inst.wave >= 5600.0) & (inst.wave <= 7200.0)
        target.continuum = shape * _mag_to_flux(mag) / max(float(shape[inst.first[band]].mean()), 1e-30)
        ew = np.nan if passive else _loguniform(rng, config.galaxy_oii_ew_range)
        mean_oii = 0.5 * (EMISSION_LINES["oii_3726"] + EMISSION_LINES["oii_3729"])
        rest_level = float(inst.at(target.continuum, mean_oii * (1.0 + z)))
        flux_oii = 0.0 if passive else ew * (1.0 + z) * rest_level
    target.z = z
    t.update(flux_oii=flux_oii if flux_oii > 0 else np.nan, oii_ew_rest=ew)
    if flux_oii > 0:
        centers, values, sigmas, groups, info = _nebular_lines(rng, config, z, flux_oii)
        _render_gaussians(inst, target.lines, centers, values, sigmas, groups)
        t.update(info)
    return target


def _mag_to_flux(mag: float, wavelength: float = 6400.0) -> float:
    """f_lambda (1e-17 cgs) of an AB magnitude at a wavelength."""
    return 10 ** (-0.4 * (mag + 48.6)) * 2.99792458e18 / wavelength**2 / 1e-17


def _boxcar_mag(wave: np.ndarray, flux: np.ndarray, lo: float, hi: float) -> float:
    sel = (wave >= lo) & (wave <= hi)
    f_nu = np.trapezoid(flux[sel] * 1e-17 * wave[sel], wave[sel]) / np.trapezoid(2.99792458e18 / wave[sel], wave[sel])
    return float(-2.5 * np.log10(f_nu) - 48.6) if f_nu > 0 else np.nan


# ----------------------------------------------------------------------------------------------------------------
# Observation.

_TRUTH_FLOAT = ("flux_lya", "lya_ew_rest", "lae_fwhm_kms", "lae_skew", "lae_blue_fraction",
                "lae_peak_sep_kms", "lae_eta", "lae_area_pix", "lae_sigma", "lae_snr", "snr_lya", "flux_oii",
                "oii_ratio", "oii_ew_rest", "flux_hbeta", "flux_oiii", "flux_halpha", "mag_g", "mag_r",
                "snr_lines", "sky_residual_amp")  # fmt: skip


def _merge(inst: _Instrument, values: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cameras -> merged grid, inverse-variance weighted like dzspec.io.desi.read_desi (last axis stacked)."""
    shape = (*values.shape[:-1], _NWAVE)
    wsum, wfsum = np.zeros(shape), np.zeros(shape)
    for cam, (start, n) in CAMERAS.items():
        off = inst.offsets[cam]
        w = weights[..., off : off + n]
        wsum[..., start : start + n] += w
        wfsum[..., start : start + n] += w * values[..., off : off + n]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(wsum > 0, wfsum / wsum, 0.0), wsum


def simulate_desi_block(rows: np.ndarray, seed: int, config: DesiSimConfig | None = None,
                        ingredients: DesiIngredients | None = None) -> SimulatedBlock:
    """Simulate DESI-like coadds and their individual exposures for a block of global row numbers.

    Parameters
    ----------
    rows
        Global row numbers (int); each spectrum depends only on ``(seed, row)``, whatever the blocks.
    seed
        Run seed.
    config
        :class:`DesiSimConfig` (default: its defaults).
    ingredients
        Optional sky spectrum and continuum templates (:class:`DesiIngredients`).

    Returns
    -------
    SimulatedBlock
        ``flux``/``ivar`` float32 ``(nrows, 7781)`` coadds on :func:`desi_wavelength`, ``mask`` with the
        CAMERA_OVERLAP bit (a read-only broadcast view: the same for every spectrum), ``truth`` (see below) and
        ``exposures``: a block of ``nrows * nexp`` rows (target-major, exposure-minor) whose inverse-variance mean
        per target is the coadd. Truth of the coadds:
        ``z_true`` (Lyman-alpha red-peak redshift for LAEs, systemic otherwise; NaN for sky fibres), ``sim_class``
        (int8 index in :data:`DESI_SIM_CLASSES`), ``exptime`` (float32 total s), ``nexp`` (int16), ``z_sys``,
        ``flux_lya`` and ``flux_oii`` (1e-17 erg/s/cm2), ``lya_ew_rest``, ``lae_fwhm_kms`` (intrinsic),
        ``lae_skew``, ``lae_blue_fraction``, ``lae_peak_sep_kms``, the injection quantities of U25 §4.2
        (``lae_eta``: peak of the observed Lyman-alpha in the coadd, ``lae_area_pix``: A = 1/sum(p^2) for the
        unit-peak profile p in pixels, ``lae_sigma``: IQR/1.34896 of the coadd noise + sky residual over
        3647-6078 A, ``lae_snr`` = eta / (sigma sqrt(A))), ``snr_lya`` (matched-filter S/N with the ivar),
        ``oii_ratio``, ``oii_ew_rest``, ``flux_hbeta``, ``flux_oiii``, ``flux_halpha``, ``mag_g``/``mag_r`` (AB,
        top hats 4000-5500 / 5600-7200 A), ``snr_lines`` (quadrature sum of the matched-filter S/N of the line
        groups above 3; doublets count once; NaN for sky fibres) and ``sky_residual_amp`` (the fibre's
        residual scale). Exposure truth: ``target_row``, ``expid`` (0..nexp-1), ``exptime``, ``transparency``,
        ``sky_level``, ``z_true``, ``sim_class``.

    Examples
    --------
    >>> block = simulate_desi_block(np.arange(3), seed=1, config=DesiSimConfig(nexp=2))
    >>> block.flux.shape, block.exposures.flux.shape, block.flux.dtype.name
    ((3, 7781), (6, 7781), 'float32')
    >>> bool(np.allclose(block.ivar, block.exposures.ivar.reshape(3, 2, -1).sum(axis=1), rtol=1e-5))
    True
    """
    config = DesiSimConfig() if config is None else config
    ingredients = DesiIngredients() if ingredients is None else ingredients
    rows = np.asarray(rows, dtype=np.int64).ravel()
    inst = _instrument(config, ingredients.sky)
    nspec, nexp, nstack = rows.size, int(config.nexp), inst.stack_wave.size
    fractions = np.asarray(config.class_fractions, float) / float(np.sum(config.class_fractions))
    cumulative = np.cumsum(fractions)

    flux = np.zeros((nspec, _NWAVE), np.float32)
    ivar = np.zeros((nspec, _NWAVE), np.float32)
    exp_flux = np.zeros((nspec * nexp, _NWAVE), np.float32)
    exp_ivar = np.zeros((nspec * nexp, _NWAVE), np.float32)
    truth: dict[str, np.ndarray] = {
        "z_true": np.full(nspec, np.nan), "z_sys": np.full(nspec, np.nan), "sim_class": np.zeros(nspec, np.int8),
        "exptime": np.zeros(nspec, np.float32), "nexp": np.full(nspec, nexp, np.int16),
        **{name: np.full(nspec, np.nan, np.float32) for name in _TRUTH_FLOAT},
    }  # fmt: skip
    exp_truth: dict[str, np.ndarray] = {
        "target_row": np.repeat(rows, nexp), "expid": np.tile(np.arange(nexp, dtype=np.int32), nspec),
        "exptime": np.zeros(nspec * nexp, np.float32), "transparency": np.zeros(nspec * nexp, np.float32),
        "sky_level": np.zeros(nspec * nexp, np.float32), "z_true": np.full(nspec * nexp, np.nan),
        "sim_class": np.zeros(nspec * nexp, np.int8),
    }  # fmt: skip
    lya_window = (inst.wave >= 3647.0) & (inst.wave <= 6078.0)
    line_gain = np.asarray(config.sky_residual_camera_scale, float)[inst.camera_of] * inst.sky_line
    deriv_gain = np.asarray(config.sky_residual_camera_scale, float)[inst.camera_of] * inst.sky_deriv
    g_band, r_band = (inst.wave >= 4000.0) & (inst.wave <= 5500.0), (inst.wave >= 5600.0) & (inst.wave <= 7200.0)

    for i, row in enumerate(rows):
        rng = row_rng(seed, DESI_SURVEY_CODE, int(row))
        cls = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
        cls = min(cls, len(DESI_SIM_CLASSES) - 1)
        target = _draw_target(rng, config, inst, ingredients.templates, cls)
        line_model = target.lines.sum(axis=0)
        obj = target.continuum + line_model

        # Observing conditions per exposure.
        lo_t, hi_t = config.exptime_limits
        texp = np.clip(config.exptime_mean * np.exp(config.exptime_spread * rng.standard_normal(nexp)), lo_t, hi_t)
        transparency = rng.uniform(*config.transparency_range, size=nexp)
        sky_level = config.sky_scale * np.exp(config.sky_scale_spread * rng.standard_normal(nexp))
        # Sky-subtraction residuals: per line a fibre amplitude (all exposures) and an exposure amplitude, both
        # scaled by a per-spectrum, per-line log-normal factor; a wavelength-shift term per exposure and camera
        # plus per line; a smooth continuum term per fibre and per exposure.
        fibre_amp = float(np.exp(0.5 * config.sky_line_residual_spread * rng.standard_normal()))
        line_scale = np.exp(config.sky_line_residual_spread * rng.standard_normal(inst.nseg + 1)) * fibre_amp
        amp = (config.sky_line_residual_fiber * rng.standard_normal(inst.nseg + 1)[None, :]
               + config.sky_line_residual * rng.standard_normal((nexp, inst.nseg + 1))) * line_scale
        shift_cam = config.sky_shift_rms * rng.standard_normal((nexp, 3))
        shift_line = 0.5 * config.sky_shift_rms * rng.standard_normal((nexp, inst.nseg + 1))
        amp[:, 0] = 0.0
        shift_line[:, 0] = 0.0
        cont_coef = (config.sky_continuum_residual * rng.standard_normal(9)[None, :]
                     + 0.25 * config.sky_continuum_residual * rng.standard_normal((nexp, 9)))
        noise = rng.standard_normal((nexp, nstack))

        residual = (amp[:, inst.segment] * line_gain
                    + (shift_cam[:, inst.camera_of] + shift_line[:, inst.segment]) * deriv_gain
                    + (cont_coef @ inst.cont_basis) * inst.sky_cont) * sky_level[:, None]  # fmt: skip
        gain = inst.conv[None, :] * (texp * transparency)[:, None]  # electrons per unit flux density
        counts_var = (np.maximum(obj, 0.0)[None, :] * gain + inst.sky_flux[None, :] * inst.conv[None, :]
                      * (texp * sky_level)[:, None] + inst.read_var[None, :])  # fmt: skip
        cam_ivar = gain**2 / counts_var
        cam_flux = obj[None, :] + residual + config.noise_excess * noise / np.sqrt(cam_ivar)

        merged_flux, merged_ivar = _merge(inst, cam_flux, cam_ivar)
        wsum = merged_ivar.sum(axis=0)
        coadd = (merged_ivar * merged_flux).sum(axis=0) / wsum
        sl = slice(i * nexp, (i + 1) * nexp)
        exp_flux[sl], exp_ivar[sl] = merged_flux, merged_ivar
        flux[i], ivar[i] = coadd, wsum

        # Truth: the noiseless model in the coadd (cameras merged with the coadd weights) and line S/N.
        cam_ivar_coadd = cam_ivar.sum(axis=0)
        model, _ = _merge(inst, obj, cam_ivar_coadd)
        snr_groups = np.sqrt((target.lines**2 * cam_ivar_coadd[None, :]).sum(axis=1))
        t = target.truth
        t["sky_residual_amp"] = fibre_amp
        if cls != _SKY:
            detected = snr_groups[snr_groups > 3.0]
            t["snr_lines"] = float(np.sqrt((detected**2).sum()))
            t["mag_g"] = _boxcar_mag(inst.wave[g_band], model[g_band], 4000.0, 5500.0)
            t["mag_r"] = _boxcar_mag(inst.wave[r_band], model[r_band], 5600.0, 7200.0)
        if cls in (_LAE, _LAE2):
            lya, _ = _merge(inst, target.lines[_GROUP_INDEX["lya"]], cam_ivar_coadd)
            eta = float(lya.max())
            area = float(1.0 / np.sum((lya / eta) ** 2))
            q75, q25 = np.percentile((coadd - model)[lya_window], [75, 25])
            sigma = float((q75 - q25) / 1.34896)
            t.update(lae_eta=eta, lae_area_pix=area, lae_sigma=sigma, lae_snr=eta / (sigma * np.sqrt(area)),
                     snr_lya=float(snr_groups[_GROUP_INDEX["lya"]]))
        truth["z_true"][i] = target.z
        truth["sim_class"][i] = cls
        truth["exptime"][i] = float(texp.sum())
        for name, value in t.items():
            truth[name][i] = value
        exp_truth["exptime"][sl], exp_truth["transparency"][sl], exp_truth["sky_level"][sl] = (
            texp, transparency, sky_level)
        exp_truth["z_true"][sl], exp_truth["sim_class"][sl] = target.z, cls

    # The mask is the same for every spectrum (CAMERA_OVERLAP, as the reader sets it): read-only broadcast views.
    mask = np.where(inst.overlap, _CAMERA_OVERLAP, np.uint32(0)).astype(np.uint32)
    wave = inst.wave.copy()
    exposures = SimulatedBlock(wave, exp_flux, exp_ivar, exp_truth, mask=np.broadcast_to(mask, exp_flux.shape),
                               attrs={"kind": "desi_exposures", "nexp": nexp})
    return SimulatedBlock(wave, flux, ivar, truth, mask=np.broadcast_to(mask, flux.shape), exposures=exposures,
                          attrs={"grid_name": DESI_GRID_NAME, "survey": "desi", "classes": DESI_SIM_CLASSES,
                                 "nexp": nexp})
