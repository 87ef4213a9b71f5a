"""MUSE-like 1-D galaxy spectra with known truth: the classes and hard cases of Bourahma et al. (2026).

Each spectrum is one of :data:`MUSE_CLASSES` (the int8 ``sim_class`` code is the index):

* ``passive``: red continuum with a 4000 A break, Ca H&K, G band, Mg b, Na D, Fe and Balmer absorption, UV Mg II
  and Fe II (0.05 < z < 1.4), sometimes weak LINER-like emission;
* ``starforming``: blue continuum, a small Balmer/4000 A break, resolved [OII] 3726/3729 (ratio 3729/3726 from
  0.35 to 1.5, tied with [SII] 6716/6731 to one electron density), Case-B Balmer lines reddened by dust
  (Calzetti), [OIII] and [NII] on the star-forming BPT locus, [SII], [NeIII], HeI, [OI], Balmer absorption
  (0 < z < 1.5);
* ``desert``: 1.5 < z < 2.9, UV continuum f_lambda ~ lambda^beta, interstellar absorption (Si II, C II, Si IV,
  C IV, Fe II, Al II, Mg II, Mg I) blueshifted by an outflow, CIII] 1907/1909, Mg II and He II emission;
* ``lae``: 2.9 < z < 6.7, an asymmetric Lyman-alpha line (red peak at z_true, as in MUSE catalogues;
  sometimes a blue bump), a faint UV continuum attenuated by the IGM (Madau 1995) blueward of Lyman-alpha,
  weak CIII], He II and C IV at the systemic redshift (100-300 km/s blueward of the Lyman-alpha peak);
* ``false_source``: noise and sky residuals only (``z_true`` NaN);
* ``blend``: two galaxies of the above classes at different redshifts in one aperture; ``z_true`` is the
  component of larger total signal-to-noise, ``z2_true`` the other.

Hard cases are flags (:class:`MuseSimFlags`) on any class: distorted continua at the blue/red ends (flat-field
errors acting on the sky and on the source), negative median flux (sky over-subtraction), strong sky residuals,
and descriptive ones (no continuum, [OII]/Lyman-alpha confusion, faint lines).

Instrument: the MUSE grid (air 4750 + 1.25 i A, 3681 pixels, converted to vacuum), the UDF line-spread function
of Bacon et al. (2017), FWHM = 5.866e-8 lambda^2 - 9.187e-4 lambda + 6.040 A, an end-to-end throughput with
telluric bands and steep blue/red cut-offs, and a noise whose variance is sky + read noise + dark (+ source
photons) and scales as 1/depth. The absolute level is calibrated on the STAT of the 10 h UDF mosaic spectrum
``mosaic_01102`` (median sigma 6.85e-20 erg/s/cm2/A at 7000-7200 A; the 141 h MXDF spectrum agrees within a few
per cent with sigma ~ 1/sqrt(t)). Sky-subtraction residuals proportional to the LSF-convolved sky lines (plus a
wavelength-mismatch term) give residual/sigma an excess in the OH bands as in real MUSE data.

Flux density is in 1e-17 erg/s/cm2/A, line fluxes in 1e-17 erg/s/cm2. Spectrum ``row`` depends only on
(seed, row): every random number comes from :func:`~dzspec.kernels.simulate.common.row_rng`, a fixed number of
uniforms and one normal per pixel per spectrum, so results are identical whatever the block split.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter1d, uniform_filter1d
from scipy.special import erf, ndtri

from dzspec.kernels.airvac import air_to_vacuum
from dzspec.kernels.simulate.common import (
    ABSORPTION_LINES,
    BALMER_CASE_B,
    C_KMS,
    EMISSION_LINES,
    FIXED_RATIOS,
    SimulatedBlock,
    SSPGrid,
    ab_magnitude,
    age_of_universe_gyr,
    row_rng,
)
from dzspec.kernels.simulate.sky import SkySpectrum, builtin_sky, sky_continuum, sky_on_grid

__all__ = [
    "MUSE_CLASSES",
    "MUSE_GRID_NAME",
    "MUSE_SURVEY_CODE",
    "MUSE_TRUTH_COLUMNS",
    "MuseIngredients",
    "MuseSimConfig",
    "MuseSimFlags",
    "muse_lsf_fwhm",
    "muse_throughput",
    "muse_wavelength",
    "simulate_muse_block",
]

# ---------------------------------------------------------------------------------------------------------------
# Grid, classes, flags
# ---------------------------------------------------------------------------------------------------------------

_AIR_START, _STEP, _NPIX = 4750.0, 1.25, 3681
#: Grid name shared with :func:`dzspec.io.muse.read_muse` for a 4750 A, 1.25 A, 3681-pixel air file.
MUSE_GRID_NAME = f"muse-air2vac-{_AIR_START:.10g}-{_STEP:.10g}-{_NPIX}"
#: ``code_of("muse", dzspec.schema.SURVEYS)``, the survey code given to :func:`row_rng` (schema imports xarray,
#: which kernels may not).
MUSE_SURVEY_CODE = 2
#: Simulated classes; ``sim_class`` is the index.
MUSE_CLASSES: tuple[str, ...] = ("passive", "starforming", "desert", "lae", "false_source", "blend")
_PASSIVE, _SF, _DESERT, _LAE, _FALSE, _BLEND = range(6)
_GALAXIES = (_PASSIVE, _SF, _DESERT, _LAE)


class MuseSimFlags(enum.IntFlag):
    """Per-spectrum ``sim_flags`` bits: hard cases injected, and descriptive difficulty flags."""

    DISTORTED_CONTINUUM = 1 << 0  #: flat-field distortion in the first/last few hundred A (B26 failure 1)
    NEGATIVE_MEDIAN = 1 << 1  #: sky over-subtraction makes the median flux negative (B26 failure 2)
    STRONG_SKY_RESIDUALS = 1 << 2  #: sky-line residual amplitude above 3.5x the typical one
    LYA_BLUE_BUMP = 1 << 3  #: the Lyman-alpha line has a blue peak
    NO_CONTINUUM = 1 << 4  #: a galaxy whose continuum is undetected (snr_cont < 0.3)
    OII_LYA_CONFUSION = 1 << 5  #: [OII] emitter without continuum whose broad doublet looks like one line
    FAINT_LINES = 1 << 6  #: a galaxy with snr_lines < 7 and snr_cont < 1 (where B26 fail most)
    REAL_SKY_RESIDUALS = 1 << 7  #: the sky residuals come from the real blank-sky pattern ingredient
    AO_NOTCH = 1 << 8  #: AO-fed data: flux 0 with a constant variance in the Na laser notch, as in MXDF products


#: Per-spectrum truth arrays of :func:`simulate_muse_block` and their dtypes.
MUSE_TRUTH_COLUMNS: dict[str, str] = {
    "z_true": "float64", "z2_true": "float64", "sim_class": "int8", "sim_class1": "int8", "sim_class2": "int8",
    "sim_flags": "uint32", "depth_hours": "float32", "exptime": "float32", "flux_lya": "float32",
    "flux_oii": "float32", "flux_hbeta": "float32", "flux_oiii_5007": "float32", "flux_halpha": "float32",
    "flux_ciii": "float32", "flux_mgii": "float32", "snr_lines": "float32", "snr_cont": "float32",
    "mag_f775w": "float32", "blend_snr_ratio": "float32",
}  # fmt: skip


@lru_cache(maxsize=1)
def _wavelength() -> np.ndarray:
    # Exactly the arithmetic of dzspec.io.muse.muse_wavelength (start + arange * step, then air -> vacuum),
    # so simulated and real spectra share one bitwise-identical grid.
    air = _AIR_START + np.arange(_NPIX) * _STEP
    wave = np.asarray(air_to_vacuum(air), dtype=np.float64)
    wave.setflags(write=False)
    return wave


def muse_wavelength() -> np.ndarray:
    """The MUSE simulation grid: vacuum wavelengths (A) of air 4750 + 1.25 i, i < 3681.

    Examples
    --------
    >>> wave = muse_wavelength()
    >>> wave.size, round(float(wave[0]), 3), MUSE_GRID_NAME
    (3681, 4751.328, 'muse-air2vac-4750-1.25-3681')
    """
    return _wavelength().copy()


def muse_lsf_fwhm(wavelength: np.ndarray) -> np.ndarray:
    """FWHM (A) of the MUSE line-spread function (Bacon et al. 2017, UDF):
    5.866e-8 lambda^2 - 9.187e-4 lambda + 6.040.

    Examples
    --------
    >>> np.round(muse_lsf_fwhm(np.array([4800.0, 7000.0, 9300.0])), 2)
    array([2.98, 2.48, 2.57])
    """
    wavelength = np.asarray(wavelength, dtype=np.float64)
    return 5.866e-8 * wavelength**2 - 9.187e-4 * wavelength + 6.040


# End-to-end MUSE throughput (telescope + instrument + detector + continuum extinction at airmass ~1.2), vacuum A.
# Shape from the mean of the two estimates implied by the STAT of mosaic_01102 (10 h UDF) with the built-in and the
# UVES skies, smoothed; telluric bands and the filter cut-offs are separate factors (_telluric, _edges).
_THROUGHPUT_TABLE = np.array([
    (4650.0, 0.150), (4750.0, 0.190), (4800.0, 0.195), (4950.0, 0.215), (5100.0, 0.227), (5250.0, 0.235),
    (5400.0, 0.242), (5550.0, 0.245), (5700.0, 0.246), (5850.0, 0.250), (6000.0, 0.262), (6150.0, 0.285),
    (6300.0, 0.318), (6450.0, 0.350), (6600.0, 0.365), (6750.0, 0.365), (6900.0, 0.360), (7050.0, 0.352),
    (7200.0, 0.340), (7350.0, 0.326), (7500.0, 0.311), (7650.0, 0.296), (7800.0, 0.281), (7950.0, 0.266),
    (8100.0, 0.251), (8250.0, 0.238), (8400.0, 0.222), (8550.0, 0.205), (8700.0, 0.188), (8850.0, 0.172),
    (9000.0, 0.158), (9150.0, 0.145), (9300.0, 0.130), (9450.0, 0.115),
])  # fmt: skip
# Telluric absorption bands (vacuum A): (start, end, mean transmission). The MUSE pipeline corrects the flux, so the
# bands show up as extra noise only.
_TELLURIC_BANDS = ((6868.0, 6925.0, 0.75), (7165.0, 7330.0, 0.90), (7595.0, 7700.0, 0.55),
                   (8130.0, 8340.0, 0.88), (8940.0, 9450.0, 0.80))  # fmt: skip


def _telluric(wavelength: np.ndarray) -> np.ndarray:
    transmission = np.ones_like(wavelength)
    for lo, hi, mean in _TELLURIC_BANDS:
        inside = 0.25 * (1 + erf((wavelength - lo) / 4.0)) * (1 + erf((hi - wavelength) / 4.0))
        transmission *= 1.0 - (1.0 - mean) * inside
    return transmission


def muse_throughput(wavelength: np.ndarray) -> np.ndarray:
    """End-to-end throughput of MUSE at the VLT (atmosphere, telluric bands and blue/red cut-offs included).

    Examples
    --------
    >>> np.round(muse_throughput(np.array([4752.0, 5000.0, 6700.0, 7650.0, 9345.0])), 3)
    array([0.063, 0.219, 0.365, 0.163, 0.04 ])
    """
    wavelength = np.asarray(wavelength, dtype=np.float64)
    base = np.interp(wavelength, _THROUGHPUT_TABLE[:, 0], _THROUGHPUT_TABLE[:, 1])
    # Blue cut-off of the WFM-NOAO filter (sigma rises 2.4x over the first 5 A of mosaic_01102) and the red edge.
    blue = np.clip(1.0 - np.exp(-(wavelength - 4748.0) / 10.0), 0.02, 1.0)
    red = 1.0 - 0.65 / (1.0 + np.exp(-(wavelength - 9325.0) / 8.0))
    return base * blue * red * _telluric(wavelength)


# Built-in HST/ACS F775W bandpass (total system throughput, sampled from mpdaf's ACS_F775W curve).
_F775W_TABLE = np.array([
    (6700.0, 0.0), (6750.0, 0.0031), (6800.0, 0.0037), (6825.0, 0.0075), (6850.0, 0.0146), (6875.0, 0.0275),
    (6900.0, 0.0477), (6925.0, 0.0752), (6950.0, 0.1101), (6975.0, 0.1521), (7000.0, 0.1929), (7025.0, 0.2321),
    (7050.0, 0.2639), (7075.0, 0.2918), (7100.0, 0.3120), (7125.0, 0.3310), (7200.0, 0.3612), (7300.0, 0.3692),
    (7400.0, 0.3744), (7500.0, 0.3657), (7600.0, 0.3628), (7700.0, 0.3518), (7800.0, 0.3430), (7900.0, 0.3375),
    (8000.0, 0.3214), (8100.0, 0.3142), (8200.0, 0.3057), (8300.0, 0.2776), (8400.0, 0.2654), (8440.0, 0.2572),
    (8480.0, 0.2365), (8500.0, 0.2179), (8520.0, 0.1814), (8540.0, 0.1209), (8560.0, 0.0594), (8580.0, 0.0244),
    (8600.0, 0.0107), (8620.0, 0.0052), (8660.0, 0.0014), (8700.0, 0.0),
])  # fmt: skip

# ---------------------------------------------------------------------------------------------------------------
# Configuration and ingredients
# ---------------------------------------------------------------------------------------------------------------

# Redshift histogram of the UDF-10 catalogue (udf10_c041_e030_withz, 308 sources with CONFID >= 1), counts + 1.
_Z_EDGES = (0.0, 0.3, 0.5, 0.7, 0.9, 1.1, 1.3, 1.5, 2.0, 2.9, 3.3, 3.7, 4.1, 4.5, 5.0, 5.5, 6.0, 6.7)
_Z_WEIGHTS = (6.0, 10.0, 23.0, 18.0, 23.0, 9.0, 16.0, 14.0, 18.0, 32.0, 40.0, 25.0, 19.0, 28.0, 21.0, 14.0, 9.0)


@dataclass(frozen=True)
class MuseSimConfig:
    """Parameters of the MUSE-like simulation; the defaults mimic the B26 sample (five GTO surveys, 1-141 h).

    Ranges are ``(low, high)`` of uniform draws unless said otherwise; fluxes in 1e-17 erg/s/cm2.

    Attributes
    ----------
    class_fractions
        Fractions of :data:`MUSE_CLASSES` (normalised).
    z_edges, z_weights
        Redshift histogram (default: UDF-10 catalogue); each galaxy class samples it inside its own range.
    z_passive, z_starforming, z_desert, z_lae
        Redshift ranges of the classes (Lyman-alpha stays on the grid: 2.92 < z < 6.68).
    depth_hours, depth_weights
        Depth mixture (hours): MUSE-Wide 1 h, MUSCATEL 1.7/5/25 h, MEGAFLOW 3/11 h, MAGIC ~5 h, UDF mosaic 10 h,
        UDF-10 31 h, MXDF 141 h, weighted by the B26 Table 1 counts.
    depth_scatter_dex, depth_range
        Log-normal scatter of each depth (dex) and the clipping range (hours).
    flux_depth_exponent, flux_reference_hours
        Deeper fields reach fainter sources: magnitudes get +2.5 g log10(depth/ref) and line fluxes a factor
        (depth/ref)^-g (the catalogue priors are for the 31 h UDF-10). 0 makes sources independent of depth.
    mag_passive, mag_starforming, mag_desert, mag_lae
        F775W-like AB magnitude of the continuum at 7750 A: (mean, sd) of a normal (UDF-10 catalogue by type).
    mag_range
        Clipping range of those magnitudes.
    lya_flux_median, lya_flux_ln_sigma
        Log-normal Lyman-alpha flux (UDF-10: median 0.69, 10-90 % 0.25-1.9).
    lya_fwhm_kms, lya_asymmetry
        Intrinsic FWHM of the red peak and sigma_red/sigma_blue of its split Gaussian.
    lya_blue_bump_fraction, lya_blue_flux_fraction, lya_peak_separation_kms
        Fraction of LAEs with a blue peak (times the IGM transmission at its wavelength), its share of the flux,
        and the peak separation.
    lya_offset_kms
        Velocity of the Lyman-alpha red peak above the systemic redshift of the other UV lines.
    sigma_v_kms
        Gas velocity dispersion (log-uniform), also the width of UV interstellar lines.
    sigma_star_kms
        Stellar velocity dispersion of passive galaxies.
    oii_ratio
        [OII] F(3729)/F(3726), from high (0.35) to low (1.5) electron density; [SII] 6716/6731 follows the same
        density (0.45-1.45).
    hbeta_ew_median, hbeta_ew_ln_sigma
        Rest equivalent width (A) of H-beta in star-forming galaxies (log-normal); other nebular lines follow
        from ratios.
    ebv_max
        Maximum nebular E(B-V) (drawn as ebv_max * u^2, Calzetti 2000 attenuation curve).
    distorted_fraction, distortion_length, distortion_sky_fraction, distortion_multiplicative
        Fraction of spectra with flat-field distortions; length (A) of the distorted end(s); additive amplitude
        as a fraction of the aperture sky continuum; multiplicative amplitude on the source.
    negative_median_fraction, negative_median_sigma
        Fraction of sky over-subtracted spectra, and how far below zero (in median sigma) the median is pushed.
    sky_residual_fraction, sky_residual_reference_hours, sky_residual_depth_exponent, sky_residual_ln_sigma
        Sky residual = fraction x (depth/ref)^-exponent x a per-spectrum lognormal x N(0, 1) x the LSF-convolved
        sky lines in the aperture (plus a wavelength-shift term of the same size). An exponent of 0.5 would keep
        residual/sigma independent of depth; 0.6 lets it fall slowly, as in the real data: the faint spaxels of
        the 900 s cube minicube_A478 have residual/sigma std 1.20 in the 8340-8400 A OH band (1.03 at
        5000-5500 A) while the ZAP-cleaned 10 h and 141 h UDF spectra show no excess. Defaults give 1.28 at
        0.25 h, 1.14 at 10 h, 1.09 at 141 h and 1.17 for the default depth mixture (built-in sky).
    blend_flux_ratio, blend_min_dz
        Scale of the secondary galaxy of a blend, and the minimum |dz|/(1+z) between the two.
    ao_fraction, ao_notch_air
        Fraction of AO-fed spectra (MXDF, recent GTO fields) and their Na laser notch (air A): flux 0 and the
        variance of the pixel before, exactly as in the DR2 MXDF products (not masked: a real hard case).
    noise_pixel_correlation
        Lag-1 correlation of the noise between neighbouring pixels (0.12-0.16 measured in mosaic_01102 and
        minicube_A478); the per-pixel variance is unchanged.
    sigma_reference, sigma_reference_window, sigma_reference_hours
        Noise calibration: median sigma (1e-17) in the window at that depth; the effective aperture is solved
        from it. ``None`` uses ``aperture_arcsec2``.
    aperture_arcsec2, spaxel_arcsec2, read_noise_e, dark_e_per_hour, exposure_seconds, telescope_area_cm2
        Detector and aperture model (variance = sky + n_spaxel (RN^2 / t_exp + dark) + source, per hour).
    """

    class_fractions: tuple[float, ...] = (0.08, 0.36, 0.12, 0.30, 0.07, 0.07)
    z_edges: tuple[float, ...] = _Z_EDGES
    z_weights: tuple[float, ...] = _Z_WEIGHTS
    z_passive: tuple[float, float] = (0.05, 1.4)
    z_starforming: tuple[float, float] = (0.005, 1.5)
    z_desert: tuple[float, float] = (1.5, 2.9)
    z_lae: tuple[float, float] = (2.92, 6.68)
    depth_hours: tuple[float, ...] = (1.0, 1.7, 3.0, 5.0, 10.0, 11.0, 25.0, 31.0, 141.0)
    depth_weights: tuple[float, ...] = (1602.0, 1515.0, 2200.0, 2938.0, 1505.0, 227.0, 1515.0, 351.0, 691.0)
    depth_scatter_dex: float = 0.05
    depth_range: tuple[float, float] = (1.0, 141.0)
    flux_depth_exponent: float = 0.35
    flux_reference_hours: float = 31.0
    mag_passive: tuple[float, float] = (24.6, 1.4)
    mag_starforming: tuple[float, float] = (25.9, 1.5)
    mag_desert: tuple[float, float] = (25.8, 1.2)
    mag_lae: tuple[float, float] = (28.9, 1.1)
    mag_range: tuple[float, float] = (19.0, 32.5)
    lya_flux_median: float = 0.69
    lya_flux_ln_sigma: float = 0.8
    lya_fwhm_kms: tuple[float, float] = (150.0, 400.0)
    lya_asymmetry: tuple[float, float] = (1.5, 3.5)
    lya_blue_bump_fraction: float = 0.3
    lya_blue_flux_fraction: tuple[float, float] = (0.05, 0.35)
    lya_peak_separation_kms: tuple[float, float] = (300.0, 800.0)
    lya_offset_kms: tuple[float, float] = (100.0, 300.0)
    sigma_v_kms: tuple[float, float] = (20.0, 150.0)
    sigma_star_kms: tuple[float, float] = (100.0, 250.0)
    oii_ratio: tuple[float, float] = (0.35, 1.5)
    hbeta_ew_median: float = 12.0
    hbeta_ew_ln_sigma: float = 0.8
    ebv_max: float = 0.6
    distorted_fraction: float = 0.08
    distortion_length: tuple[float, float] = (150.0, 600.0)
    distortion_sky_fraction: tuple[float, float] = (0.005, 0.04)
    distortion_multiplicative: tuple[float, float] = (0.1, 0.5)
    negative_median_fraction: float = 0.05
    negative_median_sigma: tuple[float, float] = (0.3, 3.0)
    sky_residual_fraction: float = 0.0042
    sky_residual_reference_hours: float = 1.0
    sky_residual_depth_exponent: float = 0.6
    sky_residual_ln_sigma: float = 0.5
    blend_flux_ratio: tuple[float, float] = (0.2, 1.0)
    blend_min_dz: float = 0.05
    ao_fraction: float = 0.2
    ao_notch_air: tuple[float, float] = (5800.0, 5966.25)
    noise_pixel_correlation: float = 0.14
    sigma_reference: float | None = 6.85e-3
    sigma_reference_window: tuple[float, float] = (7000.0, 7200.0)
    sigma_reference_hours: float = 10.0
    aperture_arcsec2: float = 1.2
    spaxel_arcsec2: float = 0.04
    read_noise_e: float = 3.0
    dark_e_per_hour: float = 1.0
    exposure_seconds: float = 1500.0
    telescope_area_cm2: float = 48.5e4

    def __post_init__(self) -> None:
        if len(self.class_fractions) != len(MUSE_CLASSES) or min(self.class_fractions) < 0:
            raise ValueError(f"class_fractions needs {len(MUSE_CLASSES)} non-negative values")
        if sum(self.class_fractions) <= 0:
            raise ValueError("class_fractions sum to zero")
        if len(self.z_weights) != len(self.z_edges) - 1:
            raise ValueError("z_weights needs one value per z_edges bin")
        if len(self.depth_weights) != len(self.depth_hours) or min(self.depth_hours) <= 0:
            raise ValueError("depth_hours must be positive, one weight each")
        for name in ("distorted_fraction", "negative_median_fraction", "lya_blue_bump_fraction", "ao_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1]")
        if not 0.0 <= self.noise_pixel_correlation < 0.5:
            raise ValueError("noise_pixel_correlation must lie in [0, 0.5)")


@dataclass
class MuseIngredients:
    """Optional real inputs of the MUSE simulation (all arrays; the simulator has built-in defaults).

    Attributes
    ----------
    sky
        Sky surface brightness (e.g. the UVES atlas); default :func:`~dzspec.kernels.simulate.sky.builtin_sky`.
    filter_wavelength, filter_throughput
        The F775W bandpass for ``mag_f775w`` (e.g. mpdaf's ``ACS_F775W``); default a built-in table.
    catalog
        Columns of a MUSE catalogue used as prior: ``Z_MUSE`` (and ``CONFID``, kept where >= 1) replace the
        redshift histogram weights.
    sky_residual_pattern
        Real blank-sky residual/sigma patterns on the MUSE grid, ``(nwave,)`` or a library ``(npattern, nwave)``
        (e.g. the mean of the faintest spaxels of a cube, per spatial tile); when given, they replace the model
        sky residuals: each spectrum carries one pattern of the library, with a random sign and amplitude.
    stellar_populations
        A single-stellar-population grid (:class:`~dzspec.kernels.simulate.common.SSPGrid`, e.g. BC03/MILES);
        when given, galaxy continua are stellar populations (an old and a young burst, ages below the age of the
        universe at z, metallicity, Calzetti dust) instead of the analytic shape, and the stellar and Balmer
        absorption lines are the populations' own.
    """

    sky: SkySpectrum | None = None
    filter_wavelength: np.ndarray | None = None
    filter_throughput: np.ndarray | None = None
    catalog: Mapping[str, np.ndarray] | None = None
    sky_residual_pattern: np.ndarray | None = None
    stellar_populations: SSPGrid | None = None
    _prepared: dict[Any, Any] = field(default_factory=dict, init=False, repr=False, compare=False)


# ---------------------------------------------------------------------------------------------------------------
# Instrument: sky, noise, line pixelisation
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Instrument:
    wave: np.ndarray
    edges: np.ndarray
    width: np.ndarray
    lsf_sigma: np.ndarray
    sky_cont: np.ndarray  # aperture sky continuum (1e-17 erg/s/cm2/A)
    sky_lines: np.ndarray  # aperture sky lines, continuum removed
    sky_lines_slope: np.ndarray  # d(sky_lines)/d(pixel)
    var_hour: np.ndarray  # variance of a 1-hour spectrum without source
    gain_hour: np.ndarray  # counts per hour per unit flux density (source photon noise: var += f / (gain t))
    aperture: float
    band_wave: np.ndarray
    band_throughput: np.ndarray
    window_cont: np.ndarray  # pixels of 7650-7850 A (snr_cont)
    line_pixels: np.ndarray  # pixels where the sky lines (or their slope) are not negligible
    sky_source: str


_HC = 6.62607015e-27 * 2.99792458e18  # erg A
_NOISE_FIELDS = ("sigma_reference", "sigma_reference_window", "sigma_reference_hours", "aperture_arcsec2",
                 "spaxel_arcsec2", "read_noise_e", "dark_e_per_hour", "exposure_seconds", "telescope_area_cm2")


def _noise_key(config: MuseSimConfig) -> tuple[Any, ...]:
    return tuple(getattr(config, name) for name in _NOISE_FIELDS)


def _build_instrument(config: MuseSimConfig, sky: SkySpectrum, band: tuple[np.ndarray, np.ndarray]) -> _Instrument:
    wave = _wavelength()
    mid = 0.5 * (wave[1:] + wave[:-1])
    edges = np.concatenate([[wave[0] - (mid[0] - wave[0])], mid, [wave[-1] + (wave[-1] - mid[-1])]])
    width = np.diff(edges)
    lsf = muse_lsf_fwhm(wave)
    surface = sky_on_grid(sky, wave, lsf)
    continuum = sky_continuum(surface)  # the lines are what is left
    lines = np.clip(surface - continuum, 0.0, None)
    gain_hour = config.telescope_area_cm2 * muse_throughput(wave) * width * wave / _HC * 3600.0 * 1e-17
    spaxel_var = config.read_noise_e**2 / (config.exposure_seconds / 3600.0) + config.dark_e_per_hour
    # Variance per hour of an aperture of 1 arcsec2: sky photons + detector, in flux units.
    var_unit = (surface * gain_hour + spaxel_var / config.spaxel_arcsec2) / gain_hour**2
    if config.sigma_reference is not None:
        lo, hi = config.sigma_reference_window
        inside = (wave >= lo) & (wave <= hi)
        sigma_unit = np.median(np.sqrt(var_unit[inside] / config.sigma_reference_hours))
        aperture = float((config.sigma_reference / sigma_unit) ** 2)  # sigma ~ sqrt(aperture): exact
    else:
        aperture = float(config.aperture_arcsec2)
    window = np.flatnonzero((wave >= 7650.0) & (wave <= 7850.0))
    slope = np.gradient(aperture * lines)
    significant = (lines > 1e-3 * lines.max()) | (np.abs(slope) > 1e-3 * np.abs(slope).max())
    line_pixels = np.flatnonzero(uniform_filter1d(significant.astype(np.float64), 5) > 0)
    arrays = dict(wave=wave, edges=edges, width=width, lsf_sigma=lsf / 2.3548200450309493,
                  sky_cont=aperture * continuum, sky_lines=aperture * lines,
                  sky_lines_slope=slope, var_hour=aperture * var_unit, line_pixels=line_pixels,
                  gain_hour=gain_hour, band_wave=np.asarray(band[0], np.float64),
                  band_throughput=np.asarray(band[1], np.float64), window_cont=window)  # fmt: skip
    for value in arrays.values():
        value.setflags(write=False)
    return _Instrument(aperture=aperture, sky_source=sky.source, **arrays)


@lru_cache(maxsize=4)
def _builtin_instrument(noise_key: tuple[Any, ...]) -> _Instrument:
    config = MuseSimConfig(**dict(zip(_NOISE_FIELDS, noise_key, strict=True)))
    return _build_instrument(config, builtin_sky(), (_F775W_TABLE[:, 0], _F775W_TABLE[:, 1]))


def _instrument(config: MuseSimConfig, ingredients: MuseIngredients | None) -> _Instrument:
    key = _noise_key(config)
    if ingredients is None or (ingredients.sky is None and ingredients.filter_wavelength is None):
        return _builtin_instrument(key)
    prepared = ingredients._prepared
    if ("instrument", key) not in prepared:
        sky = ingredients.sky if ingredients.sky is not None else builtin_sky()
        band = ((ingredients.filter_wavelength, ingredients.filter_throughput)
                if ingredients.filter_wavelength is not None else (_F775W_TABLE[:, 0], _F775W_TABLE[:, 1]))
        prepared[("instrument", key)] = _build_instrument(config, sky, band)
    return prepared[("instrument", key)]


def _pixel_index(inst: _Instrument, centers: np.ndarray) -> np.ndarray:
    return np.interp(centers, inst.wave, np.arange(inst.wave.size))


class _LineSink:
    """Accumulates pixel-integrated lines of many spectra at once and keeps each line's pixels for its SNR."""

    def __init__(self, inst: _Instrument, nspec: int) -> None:
        self.inst = inst
        self.nspec = nspec
        self.pieces: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (flat pixel index, contribution, line id)
        self.total = np.zeros(nspec * inst.wave.size)

    def _add(self, rows: np.ndarray, ids: np.ndarray, centers: np.ndarray, widest: np.ndarray, cdf: Any) -> None:
        inst, nw = self.inst, self.inst.wave.size
        center_pix = np.rint(_pixel_index(inst, centers)).astype(np.int64)
        half = np.ceil(6.0 * widest / 1.25).astype(np.int64) + 2
        # Bucket by window size (powers of two) so that narrow lines do not pay for the broad ones.
        bucket = np.maximum(np.ceil(np.log2(np.maximum(half, 4))).astype(np.int64), 2)
        for b in np.unique(bucket):
            sel = np.flatnonzero(bucket == b)
            k = 1 << int(b)
            pix = center_pix[sel, None] + np.arange(-k, k + 1)[None, :]
            valid = (pix >= 0) & (pix < nw)
            pc = np.clip(pix, 0, nw - 1)
            frac = cdf(sel, inst.edges[pc + 1]) - cdf(sel, inst.edges[pc])
            contrib = np.where(valid, frac / inst.width[pc], 0.0)
            flat = rows[sel, None] * nw + pc
            keep = valid & (contrib != 0.0)
            self.pieces.append((flat[keep], contrib[keep], np.broadcast_to(ids[sel, None], pix.shape)[keep]))
            self.total += np.bincount(flat[keep], contrib[keep], minlength=self.total.size)

    def gaussians(self, rows: np.ndarray, ids: np.ndarray, centers: np.ndarray, fluxes: np.ndarray,
                  sigmas: np.ndarray) -> None:
        """Gaussian lines of integrated ``fluxes`` (negative: absorption) at observed ``centers``."""
        use = np.isfinite(fluxes) & (fluxes != 0) & (centers > self.inst.edges[0] - 6 * sigmas) & (
            centers < self.inst.edges[-1] + 6 * sigmas)
        rows, ids, centers, fluxes, sigmas = rows[use], ids[use], centers[use], fluxes[use], sigmas[use]
        if rows.size == 0:
            return
        scale = 1.0 / (np.sqrt(2.0) * sigmas)

        def cdf(sel: np.ndarray, x: np.ndarray) -> np.ndarray:
            return 0.5 * fluxes[sel, None] * erf((x - centers[sel, None]) * scale[sel, None])

        self._add(rows, ids, centers, sigmas, cdf)

    def lya(self, rows: np.ndarray, ids: np.ndarray, centers: np.ndarray, fluxes: np.ndarray, sigma_red: np.ndarray,
            sigma_blue: np.ndarray, blue_fraction: np.ndarray, separation: np.ndarray) -> None:
        """Pixel-integrated :func:`~dzspec.kernels.simulate.common.lya_profile` (split Gaussian + blue bump)."""
        use = np.isfinite(fluxes) & (fluxes > 0)
        rows, ids, centers, fluxes = rows[use], ids[use], centers[use], fluxes[use]
        sr, sb, fb, sep = sigma_red[use], sigma_blue[use], blue_fraction[use], separation[use]
        if rows.size == 0:
            return
        red_weight = (1.0 - fb) / (sr + sb)
        sq2 = np.sqrt(2.0)

        def cdf(sel: np.ndarray, x: np.ndarray) -> np.ndarray:
            d = x - centers[sel, None]
            r, b = sr[sel, None], sb[sel, None]
            # Split-Gaussian CDF: blue half (width b) carries b/(r+b), red half r/(r+b); both scaled by 1 - fb.
            red = np.where(d < 0, b * (1.0 + erf(d / (sq2 * b))), b + r * erf(d / (sq2 * r)))
            bump = 0.5 * fb[sel, None] * (1.0 + erf((d + sep[sel, None]) / (sq2 * b)))
            return fluxes[sel, None] * (red_weight[sel, None] * red + bump)

        self._add(rows, ids, centers, np.maximum(sr, sb + sep / 6.0), cdf)

    def model(self) -> np.ndarray:
        return self.total.reshape(self.nspec, self.inst.wave.size)

    def line_snr(self, var: np.ndarray, nlines: int) -> np.ndarray:
        """Optimal (matched-filter) SNR of every line id: sqrt(sum over its pixels of contrib^2 / var)."""
        snr2 = np.zeros(nlines)
        flat_var = var.ravel()
        for flat, contrib, ids in self.pieces:
            snr2 += np.bincount(ids, contrib**2 / flat_var[flat], minlength=nlines)
        return np.sqrt(snr2)


# ---------------------------------------------------------------------------------------------------------------
# Physics helpers
# ---------------------------------------------------------------------------------------------------------------


def _calzetti(wavelength: np.ndarray) -> np.ndarray:
    """Calzetti et al. (2000) k(lambda), R_V = 4.05."""
    x = np.asarray(wavelength, np.float64) / 1e4
    blue = 2.659 * (-2.156 + 1.509 / x - 0.198 / x**2 + 0.011 / x**3) + 4.05
    red = 2.659 * (-1.857 + 1.040 / x) + 4.05
    return np.where(x < 0.63, blue, red)


def _igm_transmission(wave: np.ndarray, z: np.ndarray) -> np.ndarray:
    """:func:`~dzspec.kernels.simulate.common.igm_transmission_madau` with broadcasting ``wave`` and ``z``.

    The Madau (1995) optical depths are sums of powers of lambda times powers of (1+z), so for a grid
    ``wave[None, :]`` against ``z[:, None]`` the lambda powers are computed once.
    """
    wave = np.asarray(wave, np.float64)
    z = np.asarray(z, np.float64)
    tau = np.zeros(np.broadcast_shapes(wave.shape, z.shape))
    w346 = wave**3.46
    for lam, coeff in ((1215.67, 3.6e-3), (1025.72, 1.7e-3), (972.537, 1.2e-3), (949.743, 9.3e-4)):
        tau += np.where(wave < lam * (1.0 + z), coeff * lam**-3.46 * w346, 0.0)
    x = wave / 911.75
    xem = 1.0 + z
    x3, x15, x168, x346 = x**3, x**1.5, x**1.68, x**3.46
    lc = (x3 * (0.25 * xem**0.46 + 0.7 * xem**-1.32) + 9.4 * x15 * xem**0.18 - 0.25 * x346
          - 10.077 * x168 - 0.023 * xem**1.68)  # fmt: skip
    tau += np.where(x < xem, lc, 0.0)
    return np.exp(-np.clip(tau, 0.0, 50.0))


def _softplus(t: np.ndarray, scale: float) -> np.ndarray:
    return scale * np.logaddexp(0.0, t / scale)


def _uni(u: np.ndarray, lo: Any, hi: Any) -> np.ndarray:
    return lo + (np.asarray(hi) - lo) * u


def _logu(u: np.ndarray, lo: Any, hi: Any) -> np.ndarray:
    return np.exp(_uni(u, np.log(lo), np.log(hi)))


def _gauss(u: np.ndarray) -> np.ndarray:
    return ndtri(np.clip(u, 1e-12, 1.0 - 1e-12))


# Per galaxy class (passive, starforming, desert, lae): ranges of the continuum and absorption parameters.
_BETA_UV = np.array([(1.0, 3.0), (-2.2, -0.8), (-2.6, -0.8), (-2.6, -1.4)])
_BETA_MID = np.array([(0.5, 2.0), (-1.6, -0.4), (-1.8, -0.3), (-2.2, -1.2)])
_BETA_OPT = np.array([(-0.8, 0.1), (-2.0, -0.8), (-1.8, -0.6), (-2.2, -1.2)])
_BREAK = np.array([(1.5, 2.2), (1.0, 1.35), (1.0, 1.3), (1.0, 1.1)])
_BREAK_CENTER = np.array([3960.0, 3800.0, 3800.0, 3800.0])
_BREAK_WIDTH = np.array([35.0, 60.0, 60.0, 60.0])
_STELLAR_ABS = np.array([(0.7, 1.3), (0.1, 0.5), (0.0, 0.2), (0.0, 0.0)])
_BALMER_ABS = np.array([(0.5, 3.0), (1.5, 5.0), (1.0, 3.0), (0.0, 0.0)])
_UV_ABS = np.array([(0.5, 1.2), (0.5, 1.5), (0.5, 1.5), (0.0, 0.6)])
_N2 = np.array([(-0.3, 0.2), (-1.6, -0.35), (-1.6, -0.5), (-1.6, -0.5)])
_R2 = np.array([(0.4, 0.8), (0.2, 0.65), (0.2, 0.65), (0.2, 0.65)])
_S2 = np.array([(-0.4, 0.0), (-0.85, -0.4), (-0.85, -0.4), (-0.85, -0.4)])

# Stellar absorption features: name -> (rest vacuum A, rest EW A at scale 1, intrinsic sigma A).
_STELLAR_LINES = {
    "cak_3934": (ABSORPTION_LINES["cak_3934"], 8.0, 8.0),
    "cah_3969": (ABSORPTION_LINES["cah_3969"], 7.0, 8.0),
    "cn_4180": (4180.0, 3.0, 25.0),
    "cai_4227": (4227.9, 1.5, 4.0),
    "gband_4305": (ABSORPTION_LINES["gband_4305"], 5.0, 9.0),
    "fe_4384": (4384.7, 3.0, 6.0),
    "fe_4532": (4532.3, 2.0, 6.0),
    "mgb_5177": (ABSORPTION_LINES["mgb_5177"], 4.5, 10.0),
    "fe_5271": (5271.5, 2.5, 6.0),
    "fe_5336": (5336.5, 2.0, 6.0),
    "nad_5894": (ABSORPTION_LINES["nad_5894"], 3.0, 5.0),
    "tio_6250": (6250.0, 2.0, 30.0),
}
# Balmer absorption (rest EW at scale 1 and intrinsic sigma: broad A-star wings).
_BALMER_ABS_LINES = {"h8": 0.8, "heps": 0.9, "hdelta_abs": 1.0, "hgamma_abs": 1.0, "hbeta_abs": 0.9,
                     "halpha_abs": 0.8}  # fmt: skip
_BALMER_ABS_WAVE = {"h8": EMISSION_LINES["h8"], "heps": EMISSION_LINES["heps"], **{
    k: ABSORPTION_LINES[k] for k in ("hdelta_abs", "hgamma_abs", "hbeta_abs", "halpha_abs")}}
# Interstellar UV absorption: rest EW (A) at scale 1 (roughly the Shapley et al. 2003 LBG composite).
_UV_LINES = {
    "siii_1260": 1.6, "oi_1302": 1.7, "cii_1335": 1.5, "siiv_1394": 1.2, "siiv_1403": 0.9, "siii_1527": 1.4,
    "civ_1548a": 1.7, "civ_1551a": 1.2, "feii_1608": 0.8, "alii_1671": 1.0, "feii_2344": 1.4, "feii_2374": 0.9,
    "feii_2383": 1.8, "feii_2587": 1.5, "feii_2600": 2.0, "mgii_2796a": 2.2, "mgii_2804a": 1.9, "mgi_2853": 0.7,
}  # fmt: skip

# Nebular lines tied to H-beta (the ones in the truth come first).
_NEBULAR = ("hbeta", "oiii_5007", "halpha", "oii_3726", "oii_3729", "oiii_4959", "nii_6548", "nii_6584",
            "sii_6716", "sii_6731", "neiii_3869", "hgamma", "hdelta", "heps", "h8", "hei_5876", "oi_6300")
_UV_EMISSION = ("ciii_1907", "ciii_1909", "mgii_2796", "mgii_2804", "heii_1640", "civ_1548", "civ_1551")
_TRUTH_LINES = {"flux_lya": ("lya",), "flux_oii": ("oii_3726", "oii_3729"), "flux_hbeta": ("hbeta",),
                "flux_oiii_5007": ("oiii_5007",), "flux_halpha": ("halpha",),
                "flux_ciii": ("ciii_1907", "ciii_1909"), "flux_mgii": ("mgii_2796", "mgii_2804")}  # fmt: skip

#: Lines per galaxy (absorption, nebular, UV emission, Lyman-alpha): line ids are row * _NLINE + line.
_NLINE = len(_STELLAR_LINES) + len(_BALMER_ABS_LINES) + len(_UV_LINES) + len(_NEBULAR) + len(_UV_EMISSION) + 1

# Column indices of the per-spectrum uniforms: global slots, then two blocks of component slots.
_G = {name: i for i, name in enumerate((
    "class", "depth", "depth_jitter", "distorted", "negmed", "res_a", "res_b", "res_amp", "res_phase1",
    "res_phase2", "res_phase3", "res_period1", "res_period2", "res_period3", "dist_ends", "dist_len_b",
    "dist_len_r", "dist_add_b", "dist_add_r", "dist_mul_b", "dist_mul_r", "negmed_sigma", "blend_ratio",
    "blend_class", "blend_class2", "blend_side", "res_sign", "ao"))}  # fmt: skip
_C = {name: i for i, name in enumerate((
    "z", "mag", "beta_uv", "beta_mid", "beta_opt", "break", "sigma_v", "sigma_star", "density", "hbeta_ew",
    "n2", "r3", "r2", "ebv", "s2", "neiii", "stellar", "balmer", "uv", "outflow", "ciii_on", "ciii",
    "mgii_on", "mgii", "heii_on", "heii", "lya_flux", "lya_fwhm", "lya_asym", "bump_on", "bump_frac",
    "bump_sep", "lya_offset", "pas_em_on", "pas_em", "civ_on", "civ", "lae_ciii_on", "lae_ciii"))}  # fmt: skip
_C1, _C2 = 32, 80
_NU = 128
if not (len(_G) <= _C1 and _C1 + len(_C) <= _C2 and _C2 + len(_C) <= _NU):  # pragma: no cover
    raise RuntimeError("uniform slots overlap")


# ---------------------------------------------------------------------------------------------------------------
# Galaxies
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class _Component:
    """The noiseless spectrum of one galaxy per row (rows without a galaxy are zero)."""

    continuum: np.ndarray  # (n, nwave), IGM applied
    truth: dict[str, np.ndarray]  # line fluxes (NaN where the line is off the grid)
    nline: int  # line ids of row r are r * nline ... (r + 1) * nline - 1 (Lyman-alpha last)


def _class_z(u: np.ndarray, cls: np.ndarray, config: MuseSimConfig, weights: np.ndarray) -> np.ndarray:
    """Redshift from the histogram restricted to each class's range (inverse CDF of a piecewise-uniform law)."""
    edges = np.asarray(config.z_edges, np.float64)
    z = np.full(u.shape, np.nan)
    ranges = {_PASSIVE: config.z_passive, _SF: config.z_starforming, _DESERT: config.z_desert, _LAE: config.z_lae}
    for c, (lo, hi) in ranges.items():
        sel = cls == c
        if not sel.any():
            continue
        a, b = np.clip(edges[:-1], lo, hi), np.clip(edges[1:], lo, hi)
        mass = weights * (b - a) / np.diff(edges)
        if mass.sum() <= 0:  # the histogram does not cover the class range: uniform inside it
            a, b, mass = np.array([lo]), np.array([hi]), np.array([1.0])
        cdf = np.concatenate([[0.0], np.cumsum(mass)]) / mass.sum()
        t = u[sel]
        k = np.clip(np.searchsorted(cdf, t, side="right") - 1, 0, mass.size - 1)
        within = np.where(mass[k] > 0, (t - cdf[k]) / np.maximum(cdf[k + 1] - cdf[k], 1e-300), 0.5)
        z[sel] = a[k] + np.clip(within, 0.0, 1.0) * (b[k] - a[k])
    return z


def _continuum_shape(lam_obs: np.ndarray, z: np.ndarray, p: dict[str, np.ndarray]) -> np.ndarray:
    """Rest-frame continuum shape g(lambda_rest) at observed wavelengths, shape (n, k), no IGM.

    ln g is piecewise linear in ln lambda with slopes beta_uv (< 2600 A), beta_mid and beta_opt (> 4000 A)
    joined by softplus ramps; a logistic break of amplitude D multiplies it.
    """
    rest = lam_obs / (1.0 + z[:, None])
    x = np.log(rest / 4000.0)
    x_uv = np.log(2600.0 / 4000.0)
    bo, bm, bu = p["beta_opt"][:, None], p["beta_mid"][:, None], p["beta_uv"][:, None]
    ln_g = bo * x - (bm - bo) * _softplus(-x, 0.03) - (bu - bm) * _softplus(x_uv - x, 0.05)
    d = p["break"][:, None]
    step = 0.5 * (1.0 + np.tanh((rest - p["break_center"][:, None]) / p["break_width"][:, None]))
    return np.exp(ln_g) * (1.0 / d + (1.0 - 1.0 / d) * step)


# Stellar-population continua, per galaxy class (passive, starforming, desert, lae): metallicity range (Z/Zsun,
# log-uniform), age ranges (Gyr, log-uniform, capped by the age of the universe at z less 0.27 Gyr, its age at
# z = 15) of the old and the young burst, and the young burst's share of the light at 5500 A rest.
_SSP_ZMET = np.array([(0.4, 2.5), (0.2, 1.0), (0.02, 0.4), (0.005, 0.2)])
_SSP_OLD_GYR = np.array([(1.0, 13.0), (0.3, 13.0), (0.1, 13.0), (0.05, 13.0)])
_SSP_YOUNG_GYR = np.array([(0.01, 0.3), (0.005, 0.3), (0.003, 0.2), (0.002, 0.1)])
_SSP_YOUNG_LIGHT = np.array([(0.0, 0.03), (0.05, 0.7), (0.3, 0.9), (0.5, 1.0)])
_SSP_FORMATION_GYR = 0.27
_SSP_DUST_RATIO = 0.44  # E(B-V) of the stars / of the gas (Calzetti 2000)
_SSP_BROADENING_KMS = 100.0  # velocity dispersion added to the templates' own resolution
_SSP_DLN = 1e-4  # rest log-wavelength step of the resampled grid (30 km/s)
_SSP_RANGE = (550.0, 9600.0)  # rest Angstrom: the MUSE grid at 0 < z < 6.7


@dataclass(frozen=True, eq=False)
class _SSPLibrary:
    """An :class:`SSPGrid` resampled on a log-wavelength grid, broadened, each template 1 at 5500 A rest."""

    ln_wave0: float
    flux: np.ndarray  # (nmetallicity * nage, npixel) float32
    ln_age: np.ndarray  # ln(age / Gyr)
    ln_zmet: np.ndarray


def _ssp_library(ingredients: MuseIngredients | None) -> _SSPLibrary | None:
    grid = None if ingredients is None else ingredients.stellar_populations
    if grid is None:
        return None
    if "ssp" not in ingredients._prepared:  # type: ignore[union-attr]
        ln = np.arange(np.log(_SSP_RANGE[0]), np.log(_SSP_RANGE[1]), _SSP_DLN)
        flat = np.asarray(grid.flux, np.float64).reshape(-1, grid.wavelength.size)
        resampled = np.stack([np.interp(np.exp(ln), grid.wavelength, f, left=0.0, right=0.0) for f in flat])
        resampled = gaussian_filter1d(resampled, _SSP_BROADENING_KMS / C_KMS / _SSP_DLN, axis=1, mode="nearest")
        window = (np.exp(ln) > 5450.0) & (np.exp(ln) < 5550.0)
        norm = resampled[:, window].mean(axis=1)
        if not np.all(norm > 0):
            raise ValueError("a stellar population has no flux at 5450-5550 A rest")
        ingredients._prepared["ssp"] = _SSPLibrary(  # type: ignore[union-attr]
            ln_wave0=float(ln[0]), flux=(resampled / norm[:, None]).astype(np.float32),
            ln_age=np.log(np.asarray(grid.age_yr, np.float64) / 1e9),
            ln_zmet=np.log(np.asarray(grid.zmet_zsol, np.float64)))
    return ingredients._prepared["ssp"]  # type: ignore[union-attr,no-any-return]


def _ssp_mixture(lib: _SSPLibrary, c: np.ndarray, zsys: np.ndarray, u_zmet: np.ndarray, u_old: np.ndarray,
                 u_young: np.ndarray, u_light: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Template indices and weights (n, 4): an old and a young burst, each interpolated linearly in ln(age)
    between its two neighbouring grid ages, at the grid metallicity nearest a class-dependent draw."""
    nage = lib.ln_age.size
    ln_zmet = _uni(u_zmet, np.log(_SSP_ZMET[c, 0]), np.log(_SSP_ZMET[c, 1]))
    iz = np.argmin(np.abs(ln_zmet[:, None] - lib.ln_zmet[None, :]), axis=1)
    cap = np.log(np.maximum(age_of_universe_gyr(zsys) - _SSP_FORMATION_GYR, 0.02))
    light = _uni(u_light, _SSP_YOUNG_LIGHT[c, 0], _SSP_YOUNG_LIGHT[c, 1])
    idx, weights = [], []
    for u, table, share in ((u_old, _SSP_OLD_GYR, 1.0 - light), (u_young, _SSP_YOUNG_GYR, light)):
        hi = np.minimum(np.log(table[c, 1]), cap)
        lo = np.minimum(np.log(table[c, 0]), hi - np.log(2.0))
        ln_age = _uni(u, lo, hi)
        ia = np.clip(np.searchsorted(lib.ln_age, ln_age) - 1, 0, nage - 2)
        t = np.clip((ln_age - lib.ln_age[ia]) / (lib.ln_age[ia + 1] - lib.ln_age[ia]), 0.0, 1.0)
        idx += [iz * nage + ia, iz * nage + ia + 1]
        weights += [share * (1.0 - t), share * t]
    return np.stack(idx, axis=1), np.stack(weights, axis=1)


def _ssp_continuum(lib: _SSPLibrary, idx: np.ndarray, weights: np.ndarray, rest: np.ndarray) -> np.ndarray:
    """The mixture ``sum_j weights[:, j] * template[idx[:, j]]`` at rest wavelengths ``rest`` (n, k), linear in
    ln(lambda); 0 outside the grid."""
    npix = lib.flux.shape[1]
    pos = (np.log(rest) - lib.ln_wave0) / _SSP_DLN
    i = np.clip(np.floor(pos).astype(np.intp), 0, npix - 2)
    t = np.clip(pos - i, 0.0, 1.0)
    out = np.zeros(rest.shape)
    for j in range(idx.shape[1]):
        template = idx[:, j, None]
        out += weights[:, j, None] * ((1.0 - t) * lib.flux[template, i] + t * lib.flux[template, i + 1])
    return np.where((pos >= 0) & (pos <= npix - 1), out, 0.0)


def _galaxy(u: np.ndarray, cls: np.ndarray, z: np.ndarray, depth: np.ndarray, config: MuseSimConfig,
            inst: _Instrument, sink: _LineSink, scale: np.ndarray, batch_rows: np.ndarray,
            ssp: _SSPLibrary | None = None) -> _Component:
    """One galaxy per row with ``cls`` in the galaxy classes (others: zero), its lines added to ``sink``.

    ``u`` holds the component's uniforms (n, len(_C)); ``scale`` multiplies the whole galaxy (blends);
    ``batch_rows`` are the rows of the batch these are (the rows of ``sink`` and of the line ids); ``ssp``
    makes the continua stellar populations (the analytic shape otherwise).
    """
    n = u.shape[0]
    wave = inst.wave
    active = np.isin(cls, _GALAXIES)
    c = np.where(active, cls, _SF)  # placeholder class for inactive rows (zeroed below)
    zz = np.where(active, z, 0.5)

    def col(name: str) -> np.ndarray:
        return u[:, _C[name]]

    def per_class(table: np.ndarray, name: str) -> np.ndarray:
        return _uni(col(name), table[c, 0], table[c, 1])

    # Systemic redshift: LAE red peaks sit at z_true, their other lines lya_offset_kms bluer.
    offset = np.where(c == _LAE, _uni(col("lya_offset"), *config.lya_offset_kms), 0.0)
    zsys = (1.0 + zz) / (1.0 + offset / C_KMS) - 1.0
    ebv = np.where(c == _PASSIVE, 0.2, np.where(c == _SF, config.ebv_max, 0.4 * config.ebv_max)) * col("ebv") ** 2
    if ssp is None:
        p = {"beta_uv": per_class(_BETA_UV, "beta_uv"), "beta_mid": per_class(_BETA_MID, "beta_mid"),
             "beta_opt": per_class(_BETA_OPT, "beta_opt"), "break": per_class(_BREAK, "break"),
             "break_center": _BREAK_CENTER[c], "break_width": _BREAK_WIDTH[c]}  # fmt: skip

        def shape(lam_obs: np.ndarray, z_shape: np.ndarray) -> np.ndarray:
            return _continuum_shape(lam_obs, z_shape, p)
    else:
        # The analytic shape's uniforms draw the populations: a spectrum keeps its other draws either way.
        mix = _ssp_mixture(ssp, c, zsys, col("beta_uv"), col("beta_mid"), col("beta_opt"), col("break"))
        stars_ebv = _SSP_DUST_RATIO * ebv

        def shape(lam_obs: np.ndarray, z_shape: np.ndarray) -> np.ndarray:
            rest = lam_obs / (1.0 + z_shape[:, None])
            dust = 10 ** (-0.4 * stars_ebv[:, None] * _calzetti(np.maximum(rest, 1200.0)))
            return _ssp_continuum(ssp, *mix, rest) * dust

    depth_shift = np.log10(depth / config.flux_reference_hours) * config.flux_depth_exponent
    mags = np.array([config.mag_passive, config.mag_starforming, config.mag_desert, config.mag_lae])
    mag = mags[c, 0] + mags[c, 1] * _gauss(col("mag")) + 2.5 * depth_shift
    mag = np.clip(mag, *config.mag_range)
    f_norm = 10 ** (-0.4 * (mag + 48.6)) * 2.99792458e18 / 7750.0**2 / 1e-17
    amp = f_norm / np.maximum(shape(np.full((n, 1), 7750.0), zz)[:, 0], 1e-30) * scale * active
    continuum = amp[:, None] * shape(np.broadcast_to(wave, (n, wave.size)), zsys)
    igm_rows = np.flatnonzero(active & (1215.67 * (1.0 + zsys) > wave[0] - 50.0))
    if igm_rows.size:
        continuum[igm_rows] *= _igm_transmission(wave[None, :], zsys[igm_rows, None])

    def cont_at(rest_wave: np.ndarray, zline: np.ndarray) -> np.ndarray:
        obs = np.atleast_2d(rest_wave) * (1.0 + zline[:, None])
        return amp[:, None] * shape(obs, zsys)

    sigma_v = _logu(col("sigma_v"), *config.sigma_v_kms)
    sigma_star = np.where(c == _PASSIVE, _uni(col("sigma_star"), *config.sigma_star_kms), sigma_v)
    outflow = -_uni(col("outflow"), 0.0, 300.0)

    names: list[str] = []
    rest_l, z_l, flux_l, vel_l, intr_l = [], [], [], [], []

    def add(name: str, rest: float, zline: np.ndarray, flux: np.ndarray, vel: np.ndarray, intrinsic: float) -> None:
        names.append(name)
        rest_l.append(rest)
        z_l.append(zline)
        flux_l.append(np.where(active, flux, 0.0))
        vel_l.append(vel)
        intr_l.append(intrinsic)

    # Absorption: stellar, Balmer, interstellar UV (EW in the rest frame -> flux with the local continuum).
    # Stellar populations carry their own stellar and Balmer absorption.
    stellar = per_class(_STELLAR_ABS, "stellar") * (ssp is None)
    for name, (rest, ew, intrinsic) in _STELLAR_LINES.items():
        add(name, rest, zsys, -ew * stellar * (1.0 + zsys) * cont_at(np.array([rest]), zsys)[:, 0], sigma_star,
            intrinsic)
    balmer = per_class(_BALMER_ABS, "balmer") * (ssp is None)
    for name, weight in _BALMER_ABS_LINES.items():
        rest = _BALMER_ABS_WAVE[name]
        add(name + "_balmer", rest, zsys, -weight * balmer * (1.0 + zsys) * cont_at(np.array([rest]), zsys)[:, 0],
            sigma_star, 10.0)
    uv = per_class(_UV_ABS, "uv")
    z_out = (1.0 + zsys) * (1.0 + outflow / C_KMS) - 1.0
    for name, ew in _UV_LINES.items():
        rest = ABSORPTION_LINES[name]
        add(name, rest, z_out, -ew * uv * (1.0 + zsys) * cont_at(np.array([rest]), zsys)[:, 0],
            np.maximum(sigma_v, 80.0), 0.5)

    # Nebular emission tied to H-beta: EW(H-beta) sets its flux, ratios and dust the others.
    ew_hb = np.select(
        [c == _PASSIVE, c == _SF, c == _DESERT],
        [np.where(col("pas_em_on") < 0.3, _uni(col("pas_em"), 0.2, 2.0), 0.0),
         np.clip(config.hbeta_ew_median * np.exp(config.hbeta_ew_ln_sigma * _gauss(col("hbeta_ew"))), 1.0, 300.0),
         np.clip(0.7 * config.hbeta_ew_median * np.exp(config.hbeta_ew_ln_sigma * _gauss(col("hbeta_ew"))),
                 1.0, 300.0)], 0.0)  # fmt: skip
    f_hb_int = ew_hb * (1.0 + zsys) * cont_at(np.array([EMISSION_LINES["hbeta"]]), zsys)[:, 0]
    n2 = per_class(_N2, "n2")
    r3_sf = 0.61 / (np.minimum(n2, -0.2) - 0.05) + 1.3 + 0.15 * _gauss(col("r3"))
    r3 = np.minimum(np.where(c == _PASSIVE, _uni(col("r3"), -0.3, 0.3), r3_sf), 1.1)
    r2 = per_class(_R2, "r2")
    s2 = per_class(_S2, "s2")
    density = 1.0 - col("density") ** 2  # 1 = low density (high ratios), most galaxies
    r_oii = _uni(density, *config.oii_ratio)  # F(3729)/F(3726)
    r_sii = _uni(density, 0.45, 1.45)  # F(6716)/F(6731)
    neiii = _logu(col("neiii"), 0.03, 0.3)
    halpha = BALMER_CASE_B["halpha"]
    ratios = {
        **{name: BALMER_CASE_B[name] for name in ("hbeta", "halpha", "hgamma", "hdelta", "heps", "h8")},
        "oiii_5007": 10**r3, "oii_3726": 10**r2 / (1.0 + r_oii), "oii_3729": 10**r2 * r_oii / (1.0 + r_oii),
        "nii_6584": halpha * 10**n2, "sii_6716": halpha * 10**s2 * r_sii / (1.0 + r_sii),
        "sii_6731": halpha * 10**s2 / (1.0 + r_sii), "neiii_3869": neiii * 10**r2,
        "hei_5876": 0.11, "oi_6300": 0.03 * halpha * np.where(c == _PASSIVE, 4.0, 1.0),
    }  # fmt: skip
    for weak, (strong, ratio) in FIXED_RATIOS.items():
        ratios[weak] = ratios[strong] * ratio
    k_hb = _calzetti(np.array(EMISSION_LINES["hbeta"]))
    for name in _NEBULAR:
        rest = EMISSION_LINES[name]
        dust = 10 ** (-0.4 * ebv * (_calzetti(np.array(rest)) - k_hb))
        add(name, rest, zsys, f_hb_int * ratios[name] * dust, sigma_v, 0.0)

    # UV emission: CIII], Mg II, He II (desert: EW on the continuum; LAE: fractions of Lyman-alpha).
    depth_factor = (depth / config.flux_reference_hours) ** -config.flux_depth_exponent
    lya_flux = np.where(c == _LAE, config.lya_flux_median * np.exp(config.lya_flux_ln_sigma * _gauss(col("lya_flux")))
                        * depth_factor, 0.0) * scale  # fmt: skip
    r_ciii = 1.0 + 0.6 * density  # F(1907)/F(1909)
    desert = c == _DESERT
    ciii_desert = np.where(desert & (col("ciii_on") < 0.6), _logu(col("ciii"), 0.5, 15.0), 0.0) * (1.0 + zsys) * (
        cont_at(np.array([1908.0]), zsys)[:, 0])
    ciii_lae = np.where(col("lae_ciii_on") < 0.5, _logu(col("lae_ciii"), 0.01, 0.12), 0.0) * lya_flux
    ciii = np.where(desert, ciii_desert, ciii_lae)
    add("ciii_1907", EMISSION_LINES["ciii_1907"], zsys, ciii * r_ciii / (1.0 + r_ciii), sigma_v, 0.0)
    add("ciii_1909", EMISSION_LINES["ciii_1909"], zsys, ciii / (1.0 + r_ciii), sigma_v, 0.0)
    mgii = np.where((c != _LAE) & (col("mgii_on") < 0.25), _uni(col("mgii"), 0.5, 4.0), 0.0) * (1.0 + zsys) * (
        cont_at(np.array([2800.0]), zsys)[:, 0])
    z_mgii = (1.0 + zsys) * (1.0 + 100.0 / C_KMS) - 1.0  # resonant emission escapes on the red side
    add("mgii_2796", EMISSION_LINES["mgii_2796"], z_mgii, mgii * 2.0 / 3.0, sigma_v, 0.0)
    add("mgii_2804", EMISSION_LINES["mgii_2804"], z_mgii, mgii / 3.0, sigma_v, 0.0)
    heii = np.where(desert, np.where(col("heii_on") < 0.2, _uni(col("heii"), 0.3, 2.0), 0.0) * (1.0 + zsys)
                    * cont_at(np.array([1640.0]), zsys)[:, 0],
                    np.where(col("heii_on") < 0.15, _logu(col("heii"), 0.01, 0.05), 0.0) * lya_flux)  # fmt: skip
    add("heii_1640", EMISSION_LINES["heii_1640"], zsys, heii, sigma_v, 0.0)
    civ = np.where(col("civ_on") < 0.15, _logu(col("civ"), 0.02, 0.1), 0.0) * lya_flux
    add("civ_1548", EMISSION_LINES["civ_1548"], zsys, civ * 2.0 / 3.0, sigma_v, 0.0)
    add("civ_1551", EMISSION_LINES["civ_1551"], zsys, civ / 3.0, sigma_v, 0.0)

    # All Gaussian lines at once: observed centre, velocity + intrinsic + LSF widths.
    nline = len(names)
    rest = np.asarray(rest_l)[None, :]
    centers = rest * (1.0 + np.stack(z_l, axis=1))
    fluxes = np.stack(flux_l, axis=1)
    vel = np.stack(vel_l, axis=1)
    lsf = np.interp(centers, wave, inst.lsf_sigma)
    sigmas = np.sqrt((np.asarray(intr_l)[None, :] * (1.0 + zsys[:, None])) ** 2 + (centers * vel / C_KMS) ** 2
                     + lsf**2)  # fmt: skip
    if nline + 1 != _NLINE:  # pragma: no cover - the line lists and _NLINE disagree
        raise RuntimeError(f"{nline + 1} lines, _NLINE = {_NLINE}")
    row_idx = np.broadcast_to(batch_rows[:, None], centers.shape)
    ids = row_idx * _NLINE + np.arange(nline)[None, :]
    sink.gaussians(row_idx.ravel(), ids.ravel(), centers.ravel(), fluxes.ravel(), sigmas.ravel())

    # Lyman-alpha (LAE only): red peak at z_true, optional blue bump attenuated by the IGM.
    lae_rows = np.flatnonzero(active & (c == _LAE))
    bump = np.zeros(n)
    if lae_rows.size:
        lam = EMISSION_LINES["lya"] * (1.0 + zz[lae_rows])
        fwhm = _uni(col("lya_fwhm")[lae_rows], *config.lya_fwhm_kms) / C_KMS * lam
        asym = _uni(col("lya_asym")[lae_rows], *config.lya_asymmetry)
        s_blue = fwhm / (np.sqrt(2 * np.log(2.0)) * (1.0 + asym))
        s_red = asym * s_blue
        sep = _uni(col("bump_sep")[lae_rows], *config.lya_peak_separation_kms) / C_KMS * lam
        has_bump = col("bump_on")[lae_rows] < config.lya_blue_bump_fraction
        t_igm = _igm_transmission(lam - sep, zsys[lae_rows])
        frac = np.where(has_bump, _uni(col("bump_frac")[lae_rows], *config.lya_blue_flux_fraction), 0.0)
        kept = frac * t_igm  # the IGM removes part of the blue peak
        flux_total = lya_flux[lae_rows] * (1.0 - frac + kept)
        blue_fraction = kept / np.maximum(1.0 - frac + kept, 1e-12)
        lsf_l = np.interp(lam, wave, inst.lsf_sigma)
        sink.lya(batch_rows[lae_rows], batch_rows[lae_rows] * _NLINE + nline, lam, flux_total,
                 np.sqrt(s_red**2 + lsf_l**2), np.sqrt(s_blue**2 + lsf_l**2), blue_fraction, sep)
        bump[lae_rows] = np.where(has_bump & (kept > 0.02), 1.0, 0.0)
        lya_flux = lya_flux.copy()
        lya_flux[lae_rows] = flux_total

    # Truth: line fluxes of this component (NaN off the grid, 0 for a line the galaxy does not emit).
    truth: dict[str, np.ndarray] = {}
    on_grid = (centers > wave[0]) & (centers < wave[-1])
    index = {name: i for i, name in enumerate(names)}
    for key, members in _TRUTH_LINES.items():
        if members == ("lya",):
            lam = EMISSION_LINES["lya"] * (1.0 + zz)
            truth[key] = np.where(active & (c == _LAE), lya_flux, np.where(active, 0.0, np.nan))
            truth[key] = np.where((lam > wave[0]) & (lam < wave[-1]), truth[key], np.nan)
            continue
        cols = [index[m] for m in members]
        total = fluxes[:, cols].sum(axis=1)
        truth[key] = np.where(on_grid[:, cols].all(axis=1) & active, total, np.nan)
    truth["lya_bump"] = bump
    truth["sigma_v"] = sigma_v
    return _Component(continuum, truth, _NLINE)


# ---------------------------------------------------------------------------------------------------------------
# The block simulator
# ---------------------------------------------------------------------------------------------------------------

_BATCH = 512  # rows per internal batch (bounds the float64 temporaries)


def simulate_muse_block(
    rows: np.ndarray,
    seed: int,
    config: MuseSimConfig = MuseSimConfig(),
    ingredients: MuseIngredients | None = None,
) -> SimulatedBlock:
    """Simulate MUSE-like spectra for global ``rows`` of a run with ``seed``.

    Parameters
    ----------
    rows
        Global row numbers (int); spectrum ``row`` depends only on (seed, row).
    seed
        Run seed.
    config
        :class:`MuseSimConfig`.
    ingredients
        Optional :class:`MuseIngredients` (real sky, F775W curve, catalogue prior, real sky-residual pattern,
        stellar populations).

    Returns
    -------
    SimulatedBlock
        Vacuum grid (:func:`muse_wavelength`), float32 flux/ivar in 1e-17 erg/s/cm2/A, and the truth arrays of
        :data:`MUSE_TRUTH_COLUMNS`.

    Examples
    --------
    >>> block = simulate_muse_block(np.arange(6), seed=1)
    >>> block.flux.shape, block.flux.dtype, str(block.truth["sim_class"].dtype)
    ((6, 3681), dtype('float32'), 'int8')
    >>> again = simulate_muse_block(np.array([4, 5]), seed=1)
    >>> bool(np.array_equal(again.flux, block.flux[4:]))
    True
    """
    rows = np.asarray(rows, dtype=np.int64).ravel()
    inst = _instrument(config, ingredients)
    weights = _z_weights(config, ingredients)
    pattern = None
    if ingredients is not None and ingredients.sky_residual_pattern is not None:
        pattern = np.atleast_2d(np.asarray(ingredients.sky_residual_pattern, np.float64))
        if pattern.ndim != 2 or pattern.shape[1] != inst.wave.size or pattern.shape[0] == 0:
            raise ValueError(f"sky_residual_pattern must have shape {inst.wave.shape} or (npattern, "
                             f"{inst.wave.size}), not {np.shape(ingredients.sky_residual_pattern)}")
    ssp = _ssp_library(ingredients)
    nw = inst.wave.size
    flux = np.empty((rows.size, nw), np.float32)
    ivar = np.empty((rows.size, nw), np.float32)
    truth = {name: np.empty(rows.size, dtype) for name, dtype in MUSE_TRUTH_COLUMNS.items()}
    for start in range(0, rows.size, _BATCH):
        part = slice(start, min(start + _BATCH, rows.size))
        f, iv, t = _simulate_batch(rows[part], int(seed), config, inst, weights, pattern, ssp)
        flux[part], ivar[part] = f, iv
        for name in truth:
            truth[name][part] = t[name]
    attrs = {"grid_name": MUSE_GRID_NAME, "survey": "muse", "flux_unit": "1e-17 erg/s/cm2/Angstrom",
             "sky": inst.sky_source, "aperture_arcsec2": inst.aperture,
             "continua": "analytic" if ssp is None else "sps",
             "sim_classes": " ".join(MUSE_CLASSES)}  # fmt: skip
    return SimulatedBlock(wavelength=muse_wavelength(), flux=flux, ivar=ivar, truth=truth, attrs=attrs)


def _z_weights(config: MuseSimConfig, ingredients: MuseIngredients | None) -> np.ndarray:
    weights = np.asarray(config.z_weights, np.float64)
    catalog = None if ingredients is None else ingredients.catalog
    if catalog is not None and "Z_MUSE" in catalog:
        z = np.asarray(catalog["Z_MUSE"], np.float64)
        good = np.isfinite(z)
        if "CONFID" in catalog:
            good &= np.asarray(catalog["CONFID"], np.float64) >= 1
        counts, _ = np.histogram(z[good], bins=np.asarray(config.z_edges))
        weights = counts + 1.0  # no empty bin: every class range stays reachable
    return weights


def _draws(rows: np.ndarray, seed: int, nw: int) -> tuple[np.ndarray, np.ndarray]:
    uniforms = np.empty((rows.size, _NU))
    normals = np.empty((rows.size, nw))
    for i, row in enumerate(rows):
        rng = row_rng(seed, MUSE_SURVEY_CODE, int(row))
        uniforms[i] = rng.random(_NU)
        normals[i] = rng.standard_normal(nw)
    return uniforms, normals


def _simulate_batch(rows: np.ndarray, seed: int, config: MuseSimConfig, inst: _Instrument, weights: np.ndarray,
                    pattern: np.ndarray | None, ssp: _SSPLibrary | None = None
                    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    n, nw = rows.size, inst.wave.size
    wave = inst.wave
    uni, noise = _draws(rows, seed, nw)

    def g(name: str) -> np.ndarray:
        return uni[:, _G[name]]

    # Class, depth.
    fractions = np.asarray(config.class_fractions, np.float64)
    cls = np.searchsorted(np.cumsum(fractions / fractions.sum())[:-1], g("class"), side="right").astype(np.int8)
    dw = np.asarray(config.depth_weights, np.float64)
    pick = np.searchsorted(np.cumsum(dw / dw.sum())[:-1], g("depth"), side="right")
    depth = np.asarray(config.depth_hours, np.float64)[pick] * 10 ** (config.depth_scatter_dex
                                                                        * _gauss(g("depth_jitter")))
    depth = np.clip(depth, *config.depth_range)

    # Components: the primary galaxy (its own class, or a random galaxy class for blends) and a blend partner.
    galaxy_fractions = fractions[list(_GALAXIES)] + (1e-12 if fractions[list(_GALAXIES)].sum() == 0 else 0.0)
    galaxy_cdf = np.cumsum(galaxy_fractions / galaxy_fractions.sum())[:-1]
    u1, u2 = uni[:, _C1 : _C1 + len(_C)], uni[:, _C2 : _C2 + len(_C)]
    blend = cls == _BLEND
    galaxies = np.asarray(_GALAXIES)
    cls1 = np.where(blend, galaxies[np.searchsorted(galaxy_cdf, g("blend_class"), side="right")], cls)
    cls2 = np.where(blend, galaxies[np.searchsorted(galaxy_cdf, g("blend_class2"), side="right")], -1)
    z1 = _class_z(u1[:, _C["z"]], cls1, config, weights)
    z2 = _class_z(u2[:, _C["z"]], cls2, config, weights)
    z2 = _separate(z1, z2, cls2, blend, g("blend_side"), config)
    ratio = np.where(blend, _uni(g("blend_ratio"), *config.blend_flux_ratio), 0.0)

    sink1, sink2 = _LineSink(inst, n), _LineSink(inst, n)

    def component(u: np.ndarray, c: np.ndarray, z: np.ndarray, scale: np.ndarray, sink: _LineSink) -> _Component:
        # Only the rows that hold a galaxy are computed (most rows have no blend partner).
        idx = np.flatnonzero(np.isin(c, _GALAXIES))
        out = _Component(np.zeros((n, nw)), {key: np.full(n, np.nan) for key in (*_TRUTH_LINES, "sigma_v")},
                         _NLINE)
        out.truth["lya_bump"] = np.zeros(n)
        if idx.size:
            part = _galaxy(u[idx], c[idx], z[idx], depth[idx], config, inst, sink, scale[idx], idx, ssp)
            out.continuum[idx] = part.continuum
            for key, values in part.truth.items():
                out.truth[key][idx] = values
        return out

    comp1 = component(u1, cls1, z1, np.ones(n), sink1)
    comp2 = component(u2, cls2, z2, ratio, sink2)
    source1 = comp1.continuum + sink1.model()
    source2 = comp2.continuum + sink2.model()
    source = source1 + source2
    continuum = comp1.continuum + comp2.continuum

    # Noise: sky + detector (per hour) / depth, plus source photons.
    var = (inst.var_hour[None, :] + np.clip(source, 0.0, None) / inst.gain_hour[None, :]) / depth[:, None]
    sigma = np.sqrt(var)

    flags = np.zeros(n, np.uint32)
    # Sky-subtraction residuals: scaled sky lines and a wavelength-shift (derivative) term, modulated along lambda.
    res_scale = (config.sky_residual_fraction * (depth / config.sky_residual_reference_hours)
                 ** -config.sky_residual_depth_exponent * np.exp(config.sky_residual_ln_sigma
                                                                 * _gauss(g("res_amp"))))  # fmt: skip
    a, b = _gauss(g("res_a")), _gauss(g("res_b"))
    strong = np.exp(config.sky_residual_ln_sigma * _gauss(g("res_amp"))) * np.hypot(a, b) > 3.5
    flags[strong] |= np.uint32(MuseSimFlags.STRONG_SKY_RESIDUALS)
    if pattern is None:
        # Only pixels on sky lines; line-to-line variations (sign flips included) from three random sinusoids.
        on = inst.line_pixels
        modulation = np.ones((n, on.size))
        for k in (1, 2, 3):
            period = _logu(g(f"res_period{k}"), 20.0, 3000.0)
            modulation += 0.4 * np.sin(2 * np.pi * (wave[None, on] / period[:, None] + g(f"res_phase{k}")[:, None]))
        residual = np.zeros((n, nw))
        residual[:, on] = res_scale[:, None] * (a[:, None] * inst.sky_lines[None, on] * modulation
                                                + b[:, None] * inst.sky_lines_slope[None, on])  # fmt: skip
    else:
        amp = np.exp(config.sky_residual_ln_sigma * _gauss(g("res_amp"))) * np.where(g("res_sign") < 0.5, -1, 1)
        # Each spectrum one pattern of the library (a slot the model residuals use for their periods).
        which = np.minimum((g("res_period1") * pattern.shape[0]).astype(np.intp), pattern.shape[0] - 1)
        residual = amp[:, None] * (1.0 + 0.3 * a[:, None]) * pattern[which] * sigma
        flags |= np.uint32(MuseSimFlags.REAL_SKY_RESIDUALS)

    # Flat-field distortions at the blue and/or red end: multiplicative on the source, additive on the sky.
    distorted = g("distorted") < config.distorted_fraction
    additive = np.zeros((n, nw))
    multiplicative = np.ones((n, nw))
    if distorted.any():
        d = np.flatnonzero(distorted)
        ends = g("dist_ends")[d]  # < 0.4 blue only, < 0.7 red only, else both
        for side, use, length_u, add_u, mul_u in (
            ("blue", ends < 0.4, g("dist_len_b")[d], g("dist_add_b")[d], g("dist_mul_b")[d]),
            ("red", (ends >= 0.4) & (ends < 0.7), g("dist_len_r")[d], g("dist_add_r")[d], g("dist_mul_r")[d]),
            ("both-blue", ends >= 0.7, g("dist_len_b")[d], g("dist_add_b")[d], g("dist_mul_b")[d]),
            ("both-red", ends >= 0.7, g("dist_len_r")[d], g("dist_add_r")[d], g("dist_mul_r")[d]),
        ):
            rows_d = d[use]
            if rows_d.size == 0:
                continue
            length = _uni(length_u[use], *config.distortion_length)
            if side.endswith("blue"):
                ramp = np.clip(1.0 - (wave[None, :] - wave[0]) / length[:, None], 0.0, 1.0) ** 2
            else:
                ramp = np.clip(1.0 - (wave[-1] - wave[None, :]) / length[:, None], 0.0, 1.0) ** 2
            s_add = 2.0 * add_u[use] - 1.0
            s_mul = 2.0 * mul_u[use] - 1.0
            add_amp = np.sign(s_add) * _uni(np.abs(s_add), *config.distortion_sky_fraction)
            mul_amp = np.sign(s_mul) * _uni(np.abs(s_mul), *config.distortion_multiplicative)
            additive[rows_d] += add_amp[:, None] * ramp * inst.sky_cont[None, :]
            multiplicative[rows_d] += mul_amp[:, None] * ramp
        flags[distorted] |= np.uint32(MuseSimFlags.DISTORTED_CONTINUUM)

    rho = config.noise_pixel_correlation
    if rho != 0.0:
        # Neighbouring pixels share noise through the cube resampling (lag-1 correlation ~0.14 in real MUSE
        # spectra): a [c, 1, c] kernel with 2c / (1 + 2c^2) = rho, normalised to keep the variance.
        c = (1.0 - np.sqrt(1.0 - 2.0 * rho**2)) / (2.0 * rho)
        smoothed = noise.copy()
        smoothed[:, 1:] += c * noise[:, :-1]
        smoothed[:, :-1] += c * noise[:, 1:]
        noise = smoothed / np.sqrt(1.0 + 2.0 * c**2)
    observed = source * multiplicative + additive + residual + sigma * noise

    # Sky over-subtraction: remove a scaled sky continuum until the median is below -k sigma.
    negative = g("negmed") < config.negative_median_fraction
    if negative.any():
        d = np.flatnonzero(negative)
        shape = inst.sky_cont / np.median(inst.sky_cont)
        target = -_uni(g("negmed_sigma")[d], *config.negative_median_sigma) * np.median(sigma[d], axis=1)
        level = np.zeros(d.size)
        for _ in range(8):  # the median of (x - s * shape) is not linear in s: a few fixed-point steps
            med = np.median(observed[d] - level[:, None] * shape[None, :], axis=1)
            level += np.maximum(med - target, 0.0) * 1.05
        observed[d] -= level[:, None] * shape[None, :]
        flags[negative] |= np.uint32(MuseSimFlags.NEGATIVE_MEDIAN)

    # AO-fed data: the Na laser notch holds flux 0 and a constant variance (the DR2 MXDF convention).
    ao = g("ao") < config.ao_fraction
    var_out = var
    if ao.any():
        air = _AIR_START + np.arange(nw) * _STEP
        notch = np.flatnonzero((air >= config.ao_notch_air[0] - 1e-6) & (air <= config.ao_notch_air[1] + 1e-6))
        if notch.size:
            d = np.flatnonzero(ao)
            observed[np.ix_(d, notch)] = 0.0
            var_out = var.copy()
            var_out[np.ix_(d, notch)] = var[d, max(notch[0] - 1, 0)][:, None]
            var = var.copy()
            var[np.ix_(d, notch)] = np.inf  # nothing is measured there: lines in the notch are not detected
            sigma = np.sqrt(var)
        flags[ao] |= np.uint32(MuseSimFlags.AO_NOTCH)

    # Truth.
    # snr_lines: quadrature sum of the SNRs of the lines (emission and absorption) detected above 3 sigma.
    snr_sq = np.zeros(n)
    for sink, comp in ((sink1, comp1), (sink2, comp2)):
        snr = sink.line_snr(var, n * comp.nline).reshape(n, comp.nline)
        snr_sq += np.where(snr > 3.0, snr**2, 0.0).sum(axis=1)
    snr_lines = np.sqrt(snr_sq)
    window = inst.window_cont
    snr_cont = np.median(continuum[:, window] / sigma[:, window], axis=1)
    mag = ab_magnitude(wave, source, inst.band_wave, inst.band_throughput)

    # Blends: the component with the larger whole-spectrum SNR is the primary (what a fitter would find).
    signal1 = np.sqrt(np.sum(source1**2 / var, axis=1))
    signal2 = np.sqrt(np.sum(source2**2 / var, axis=1))
    swap = blend & (signal2 > signal1)
    z_true = np.where(swap, z2, z1)
    z2_true = np.where(blend, np.where(swap, z1, z2), np.nan)
    c1 = np.where(swap, cls2, cls1)
    c2 = np.where(swap, cls1, cls2)
    z_true = np.where(cls == _FALSE, np.nan, z_true)

    galaxy = cls != _FALSE
    no_cont = galaxy & (snr_cont < 0.3)
    flags[no_cont] |= np.uint32(MuseSimFlags.NO_CONTINUUM)
    flags[galaxy & (snr_lines < 7.0) & (snr_cont < 1.0)] |= np.uint32(MuseSimFlags.FAINT_LINES)
    bump = np.where(swap, comp2.truth["lya_bump"], comp1.truth["lya_bump"]) > 0
    flags[bump & galaxy] |= np.uint32(MuseSimFlags.LYA_BLUE_BUMP)
    # [OII] without continuum whose doublet (2.79 A rest apart) is blended by its width: it mimics Lyman-alpha.
    sig_v = np.where(swap, comp2.truth["sigma_v"], comp1.truth["sigma_v"])
    oii_obs = 3728.5 * (1.0 + z_true)
    fwhm_oii = 2.3548 * np.sqrt((oii_obs * sig_v / C_KMS) ** 2 + np.interp(oii_obs, wave, inst.lsf_sigma) ** 2)
    confusing = (np.isin(c1, (_SF, _PASSIVE)) & (oii_obs > wave[0]) & (oii_obs < wave[-1]) & (snr_cont < 1.0)
                 & (fwhm_oii > 0.8 * 2.79 * (1.0 + z_true)))  # fmt: skip
    flags[confusing & galaxy] |= np.uint32(MuseSimFlags.OII_LYA_CONFUSION)

    truth: dict[str, np.ndarray] = {
        "z_true": z_true, "z2_true": z2_true, "sim_class": cls.astype(np.int8),
        "sim_class1": np.where(blend, c1, -1).astype(np.int8), "sim_class2": np.where(blend, c2, -1).astype(np.int8),
        "sim_flags": flags, "depth_hours": depth.astype(np.float32), "exptime": (depth * 3600.0).astype(np.float32),
        "snr_lines": np.where(galaxy, snr_lines, 0.0).astype(np.float32),
        "snr_cont": np.where(galaxy, snr_cont, 0.0).astype(np.float32),
        "mag_f775w": np.where(galaxy, mag, np.nan).astype(np.float32),
        "blend_snr_ratio": np.where(blend, np.minimum(signal1, signal2)
                                    / np.maximum(np.maximum(signal1, signal2), 1e-30), np.nan).astype(np.float32),
    }  # fmt: skip
    for key in _TRUTH_LINES:
        value = np.where(swap, comp2.truth[key], comp1.truth[key])
        truth[key] = np.where(galaxy, value, np.nan).astype(np.float32)
    ivar = (1.0 / var_out).astype(np.float32)
    return observed.astype(np.float32), ivar, truth


def _separate(z1: np.ndarray, z2: np.ndarray, cls2: np.ndarray, blend: np.ndarray, side: np.ndarray,
              config: MuseSimConfig) -> np.ndarray:
    """Move a blend partner that is too close in redshift to the primary by a minimum separation."""
    ranges = np.array([config.z_passive, config.z_starforming, config.z_desert, config.z_lae])
    z2 = z2.copy()
    close = blend & (np.abs(z2 - z1) < config.blend_min_dz * (1.0 + z1))
    if not close.any():
        return z2
    idx = np.flatnonzero(close)
    lo, hi = ranges[cls2[idx], 0], ranges[cls2[idx], 1]
    step = 2.0 * config.blend_min_dz * (1.0 + z1[idx])
    up, down = z1[idx] + step, z1[idx] - step
    first = np.where(side[idx] < 0.5, up, down)
    second = np.where(side[idx] < 0.5, down, up)
    ok1 = (first >= lo) & (first <= hi)
    ok2 = (second >= lo) & (second <= hi)
    far_edge = np.where(np.abs(lo - z1[idx]) > np.abs(hi - z1[idx]), lo, hi)
    z2[idx] = np.where(ok1, first, np.where(ok2, second, far_edge))
    return z2
