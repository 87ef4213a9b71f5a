"""Gallery of the DESI-like simulator beside real DESI coadds: one simulated spectrum per class, the real spectra of
``shared/data`` (two fastspecfit coadds, a blank and a target fibre of the everest SV1 coadd), and the ivar(lambda)
shape of simulated and real blank fibres."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from dzspec.kernels.simulate.common import EMISSION_LINES
from dzspec.kernels.simulate.desi import (
    DESI_SIM_CLASSES,
    DesiIngredients,
    DesiSimConfig,
    desi_wavelength,
    simulate_desi_block,
)

__all__ = ["blank_fibres", "desi_gallery"]

_FASTSPEC = ("desi_fastspecfit/coadd-4-80613-thru20210324.fits", "desi_fastspecfit/redrock-4-80613-thru20210324.fits")
_SPECIAL = ("desi_fastspecfit/coadd-special-dark-27247.fits", "desi_fastspecfit/redrock-special-dark-27247.fits")
_EVEREST = "desi_quasarnp_everest/coadd-0-80605-first25fibers.fits"
_EVEREST_BLANK, _EVEREST_TARGET = 10, 22  # a fibre with median flux ~0 everywhere and a bright target
_MARKED = ("lya", "civ_1548", "ciii_1907", "mgii_2796", "oii_3729", "hbeta", "oiii_5007", "halpha", "sii_6716")
_LABEL = {"lya": "Lya", "civ_1548": "CIV", "ciii_1907": "CIII]", "mgii_2796": "MgII", "oii_3729": "[OII]",
          "hbeta": "Hb", "oiii_5007": "[OIII]", "halpha": "Ha", "sii_6716": "[SII]"}


def _smooth(flux: np.ndarray, ivar: np.ndarray, width: int = 7) -> np.ndarray:
    kernel = np.ones(width)
    num = np.convolve(flux * ivar, kernel, mode="same")
    den = np.convolve(ivar, kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def _window_median(wave: np.ndarray, values: np.ndarray, step: float = 100.0) -> tuple[np.ndarray, np.ndarray]:
    edges = np.arange(3600.0, 9900.0, step)
    centers, out = [], []
    for lo in edges:
        sel = (wave >= lo) & (wave < lo + step) & np.isfinite(values)
        if sel.sum() > 10:
            centers.append(lo + step / 2)
            out.append(np.median(values[sel]))
    return np.asarray(centers), np.asarray(out)


def blank_fibres(wave: np.ndarray, flux: np.ndarray, ivar: np.ndarray, limit: float = 0.15) -> list[int]:
    """Fibres with data whose median flux is within ``limit`` of 0 in each camera (blank sky or very faint).

    Examples
    --------
    >>> wave = np.linspace(3600, 9824, 100)
    >>> blank_fibres(wave, np.array([np.zeros(100), np.ones(100)]), np.ones((2, 100)))
    [0]
    """
    arms = ((3600.0, 5800.0), (5800.0, 7600.0), (7600.0, 9824.0))
    return [i for i in range(flux.shape[0])
            if ivar[i].max() > 0 and all(abs(np.median(flux[i][(wave >= lo) & (wave < hi)])) < limit
                                         for lo, hi in arms)]


def _redrock_z(path: Path) -> float:
    try:
        from astropy.io import fits

        with fits.open(path) as hdul:
            return float(hdul["REDSHIFTS"].data["Z"][0])
    except (OSError, KeyError, IndexError):
        return float("nan")


def _pick_examples(seed: int, config: DesiSimConfig, ingredients: DesiIngredients) -> dict[int, int]:
    """First row of each class with clearly detected lines (any row for sky fibres)."""
    found: dict[int, int] = {}
    for start in range(0, 4000, 200):
        rows = np.arange(start, start + 200)
        block = simulate_desi_block(rows, seed, config, ingredients)
        for row, cls, snr in zip(rows, block.truth["sim_class"], block.truth["snr_lines"], strict=True):
            good = cls == DESI_SIM_CLASSES.index("sky_residual") or (np.isfinite(snr) and 10.0 < snr < 60.0)
            if int(cls) not in found and good:
                found[int(cls)] = int(row)
        if len(found) == len(DESI_SIM_CLASSES):
            break
    return found


def desi_gallery(output_png: str | Path, shared_data: Path | None, seed: int = 0) -> Path:
    """Draw the DESI simulation gallery into ``output_png`` and return its path.

    With ``shared_data`` (the ``shared/data`` folder) the simulation uses the DESI model dark sky and the BC03
    templates and the real coadds are drawn beside it; without it, only the simulated spectra and their ivar.

    Examples
    --------
    >>> import tempfile
    >>> out = desi_gallery(Path(tempfile.mkdtemp()) / "desi.png", None, seed=0)  # doctest: +SKIP
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dzspec.io.desi_ingredients import load_desi_ingredients
    from dzspec.io.registry import read_spectra

    output_png = Path(output_png)
    data = Path(shared_data) if shared_data is not None and Path(shared_data).is_dir() else None
    sky_file = data / "sky" / "eboss-spec-sky.dat" if data else None
    sps_file = data / "sps" / "bc03_miles_subset.npz" if data else None
    ingredients = load_desi_ingredients(sky_file if sky_file and sky_file.exists() else None,
                                        sps_file if sps_file and sps_file.exists() else None)
    config = DesiSimConfig()
    examples = _pick_examples(seed, config, ingredients)
    rows = np.array([examples[c] for c in sorted(examples)])
    block = simulate_desi_block(rows, seed, config, ingredients)
    wave = desi_wavelength()

    real: list[tuple[str, np.ndarray, np.ndarray, float]] = []
    blank_ivar: list[tuple[str, np.ndarray, float]] = []
    if data is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the everest file has one empty fibre (flagged, expected)
            for coadd, redrock, label in ((*_FASTSPEC, "BGS, 30 exp"), (*_SPECIAL, "special/dark, 20 exp")):
                if (data / coadd).exists():
                    ds = read_spectra(data / coadd)
                    z = _redrock_z(data / redrock)
                    real.append((f"real DESI {label}, {float(ds.exptime[0]):.0f} s, Redrock z={z:.4f}",
                                 ds.flux.values[0], ds.ivar.values[0], z))
                    if "special" in coadd:
                        blank_ivar.append(("real special/dark (per 1000 s)", ds.ivar.values[0],
                                           float(ds.exptime[0])))
            if (data / _EVEREST).exists():
                ds = read_spectra(data / _EVEREST)
                for fibre, what in ((_EVEREST_BLANK, "blank fibre"), (_EVEREST_TARGET, "target fibre")):
                    real.append((f"real DESI SV1 everest tile 80605, {what} {fibre} (no z)", ds.flux.values[fibre],
                                 ds.ivar.values[fibre], np.nan))
                blank = blank_fibres(ds.wavelength.values, ds.flux.values, ds.ivar.values)
                blank_ivar.append(("real everest blank fibres (per 1000 s, taken as 10.5 ks)",
                                   np.median(ds.ivar.values[blank], axis=0), 10_500.0))

    nrows = len(rows) + len(real) + 1 + any("blank" in r[0] for r in real)
    fig = plt.figure(figsize=(17, 2.6 * nrows))
    grid = fig.add_gridspec(nrows, 4, width_ratios=(3.2, 1, 0.05, 0.0001), hspace=0.45, wspace=0.18)
    names = {i: n for i, n in enumerate(DESI_SIM_CLASSES)}
    panels = []
    for k, row in enumerate(rows):
        cls = int(block.truth["sim_class"][k])
        z = float(block.truth["z_true"][k])
        truth = {key: float(v[k]) for key, v in block.truth.items()}
        title = (f"simulated {names[cls]} (row {row}), {truth['exptime']:.0f} s in {int(truth['nexp'])} exp, "
                 + (f"z={z:.4f}" if np.isfinite(z) else "no target"))
        if cls in (0, 1):
            title += (f", F(Lya)={truth['flux_lya']:.1f}e-17, EW0={truth['lya_ew_rest']:.0f} A, "
                      f"FWHM={truth['lae_fwhm_kms']:.0f} km/s, skew={truth['lae_skew']:.2f}, "
                      f"blue={truth['lae_blue_fraction']:.2f}, SNR={truth['lae_snr']:.1f}")
        elif np.isfinite(truth["flux_oii"]):
            title += (f", F([OII])={truth['flux_oii']:.1f}e-17, r={truth['mag_r']:.1f}, "
                      f"SNR_lines={truth['snr_lines']:.0f}")
        elif np.isfinite(truth["mag_r"]):
            title += f", passive, r={truth['mag_r']:.1f}"
        zoom = None
        if cls in (0, 1):
            zoom = EMISSION_LINES["lya"] * (1 + z)
        elif np.isfinite(truth["flux_oii"]):
            zoom = 0.5 * (EMISSION_LINES["oii_3726"] + EMISSION_LINES["oii_3729"]) * (1 + z)
        elif cls == DESI_SIM_CLASSES.index("sky_residual"):
            zoom = 8400.0
        else:
            zoom = 3950.0 * (1 + z)
        panels.append((title, block.flux[k], block.ivar[k], z, zoom, "C0"))
    # A simulated sky fibre as deep as the everest coadd, drawn just above the real blank fibre.
    deep = simulate_desi_block(np.arange(1), seed, DesiSimConfig(class_fractions=(0, 0, 0, 0, 1), nexp=10,
                                                                 exptime_mean=1050.0), ingredients)
    deep_title = f"simulated sky_residual as deep as the everest coadd: {deep.truth['exptime'][0]:.0f} s in 10 exp"
    for title, flux, ivar, z in real:
        zoom = EMISSION_LINES["halpha"] * (1 + z) if np.isfinite(z) else 8400.0
        if "blank" in title:
            panels.append((deep_title, deep.flux[0], deep.ivar[0], np.nan, 8400.0, "C0"))
        panels.append((title, flux, ivar, z, zoom, "C2"))

    for i, (title, flux, ivar, z, zoom, colour) in enumerate(panels):
        ax = fig.add_subplot(grid[i, 0])
        good = ivar > 0
        smooth = _smooth(np.where(good, flux, 0.0), np.where(good, ivar, 0.0))
        ax.plot(wave, np.where(good, flux, np.nan), color="0.75", lw=0.4)
        ax.plot(wave, smooth, color=colour, lw=0.8)
        lo, hi = np.nanpercentile(smooth[good], [0.5, 99.7])
        pad = 0.15 * (hi - lo) + 0.05
        ax.set_ylim(lo - pad, hi + 2 * pad)
        ax.set_xlim(3600, 9824)
        ax.set_title(title, fontsize=8, loc="left")
        ax.set_ylabel("flux [1e-17 cgs/A]", fontsize=7)
        ax.tick_params(labelsize=7)
        if np.isfinite(z):
            for name in _MARKED:
                obs = EMISSION_LINES[name] * (1 + z)
                if 3600 < obs < 9824:
                    ax.axvline(obs, color="C3", lw=0.6, ls=":")
                    ax.text(obs, hi + 1.5 * pad, _LABEL[name], fontsize=6, color="C3", ha="center", va="top")
        zax = fig.add_subplot(grid[i, 1])
        sel = (wave > zoom - 45) & (wave < zoom + 45) & good
        if sel.sum() > 5:
            err = 1 / np.sqrt(ivar[sel])
            zax.fill_between(wave[sel], -err, err, color="0.85", step="mid", label="±1 sigma")
            zax.step(wave[sel], flux[sel], where="mid", color=colour, lw=0.8)
            if np.isfinite(z):
                for name in (*_MARKED, "oii_3726"):
                    obs = EMISSION_LINES[name] * (1 + z)
                    if zoom - 45 < obs < zoom + 45:
                        zax.axvline(obs, color="C3", lw=0.6, ls=":")
            zax.set_title(f"zoom {zoom:.0f} A", fontsize=7)
            zax.tick_params(labelsize=6)

    ax = fig.add_subplot(grid[nrows - 1, 0:2])
    blanks = simulate_desi_block(np.arange(50_000, 50_040), seed,
                                 DesiSimConfig(class_fractions=(0, 0, 0, 0, 1)), ingredients)
    per_ks = np.median(blanks.ivar / blanks.truth["exptime"][:, None], axis=0) * 1000.0
    x, y = _window_median(wave, per_ks)
    ax.semilogy(x, y, "o-", color="C0", ms=3, label="simulated sky fibres (median ivar per 1000 s)")
    for (label, ivar, exptime), colour in zip(blank_ivar, ("C2", "C1"), strict=False):
        x, y = _window_median(wave, ivar / exptime * 1000.0)
        ax.semilogy(x, y, "s--", color=colour, ms=3, label=label)
    ax.set_xlim(3600, 9824)
    ax.set_xlabel("vacuum wavelength [A]", fontsize=8)
    ax.set_ylabel("median ivar per 100 A", fontsize=8)
    ax.set_title("ivar(lambda) shape: simulated vs real DESI (each scaled to 1000 s)", fontsize=8, loc="left")
    ax.legend(fontsize=7)
    ax.tick_params(labelsize=7)
    output_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output_png, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return output_png
