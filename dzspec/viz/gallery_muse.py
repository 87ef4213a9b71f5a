"""Gallery of MUSE-like simulated spectra (one per class and hard case) beside real MUSE spectra.

The real ones, when ``shared_data`` is given: the 10 h UDF mosaic spectrum ``mosaic_01102``, the 141 h MXDF
spectrum ``DR2_001032``, and a faint (blank-sky) and a bright (cluster galaxy, z = 0.086) spaxel of the 900 s
cube ``minicube_A478``. All in 1e-17 erg/s/cm2/A; the thick line is a 9-pixel running median.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dzspec.kernels.simulate.common import ABSORPTION_LINES, EMISSION_LINES
from dzspec.kernels.simulate.muse import MUSE_CLASSES, MuseSimConfig, MuseSimFlags, simulate_muse_block

__all__ = ["muse_gallery"]

_MARKS = {
    "Lya": EMISSION_LINES["lya"], "CIV": 1549.5, "HeII": EMISSION_LINES["heii_1640"], "CIII]": 1907.7,
    "FeII": 2382.8, "MgII": 2799.9, "[OII]": 3728.5, "K": ABSORPTION_LINES["cak_3934"],
    "H": ABSORPTION_LINES["cah_3969"], "Hd": EMISSION_LINES["hdelta"], "G": ABSORPTION_LINES["gband_4305"],
    "Hg": EMISSION_LINES["hgamma"], "Hb": EMISSION_LINES["hbeta"], "[OIII]": EMISSION_LINES["oiii_5007"],
    "Mgb": ABSORPTION_LINES["mgb_5177"], "NaD": ABSORPTION_LINES["nad_5894"], "Ha": EMISSION_LINES["halpha"],
    "[SII]": 6725.0, "SiII": 1260.4, "CII": 1334.5, "SiIV": 1398.0,
}  # fmt: skip


def _running_median(flux: np.ndarray, size: int = 9) -> np.ndarray:
    from scipy.ndimage import median_filter

    return median_filter(flux, size=size, mode="nearest")


def _pick_simulated(seed: int) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]]:
    """One spectrum per class and hard case: searched among rows of a 10 h (and a 141 h) simulation."""
    panels = []
    for hours in (10.0, 141.0):
        config = MuseSimConfig(depth_hours=(hours,), depth_weights=(1.0,), depth_scatter_dex=0.0)
        block = simulate_muse_block(np.arange(seed * 1000, seed * 1000 + 600), seed, config)
        t = block.truth
        flags = t["sim_flags"]
        hard = np.uint32(MuseSimFlags.DISTORTED_CONTINUUM | MuseSimFlags.NEGATIVE_MEDIAN
                         | (MuseSimFlags.AO_NOTCH if hours < 100 else 0))
        plain = (flags & hard) == 0
        cls = t["sim_class"]
        wanted: list[tuple[str, np.ndarray]] = []
        if hours == 10.0:
            wanted = [
                ("passive", plain & (cls == 0) & (t["mag_f775w"] < 24.0)),
                ("starforming", plain & (cls == 1) & (t["snr_lines"] > 15) & (t["z_true"] > 0.3)),
                ("starforming, no continuum", plain & (cls == 1) & (t["snr_cont"] < 0.5) & (t["snr_lines"] > 8)),
                ("desert", plain & (cls == 2) & (t["snr_cont"] > 1.0)),
                ("lae", plain & (cls == 3) & (t["snr_lines"] > 10)),
                ("false_source", plain & (cls == 4)),
                ("blend", plain & (cls == 5) & (t["blend_snr_ratio"] > 0.3)),
                ("distorted continuum", (flags & np.uint32(MuseSimFlags.DISTORTED_CONTINUUM)) > 0),
                ("negative median", (flags & np.uint32(MuseSimFlags.NEGATIVE_MEDIAN)) > 0),
            ]
        else:
            wanted = [("lae", plain & (cls == 3) & (t["snr_lines"] > 10)),
                      ("passive", plain & (cls == 0) & (t["mag_f775w"] > 24.5))]
        for label, sel in wanted:
            rows = np.flatnonzero(sel)
            if rows.size == 0:
                continue
            i = int(rows[0])
            info = {name: values[i] for name, values in t.items()}
            panels.append((f"simulated {label} ({hours:g} h)", block.wavelength, block.flux[i], block.ivar[i], info))
    # A blank-sky spaxel as in the 900 s cube minicube_A478: one 0.2" spaxel, one exposure, physical noise model.
    spaxel = MuseSimConfig(depth_hours=(0.25,), depth_weights=(1.0,), depth_scatter_dex=0.0, depth_range=(0.1, 1.0),
                           sigma_reference=None, aperture_arcsec2=0.04, exposure_seconds=900.0,
                           class_fractions=(0, 0, 0, 0, 1, 0),
                           distorted_fraction=0.0, negative_median_fraction=0.0, ao_fraction=0.0)
    block = simulate_muse_block(np.arange(1), seed, spaxel)
    info = {name: values[0] for name, values in block.truth.items()}
    panels.append(("simulated blank-sky spaxel (0.04 arcsec2, 900 s)", block.wavelength, block.flux[0], block.ivar[0],
                   info))
    return panels


def _real_spectra(shared_data: Path) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]]:
    from dzspec.io.registry import read_spectra

    panels = []
    udf = shared_data / "muse_udf_format"
    for name, label in (("mosaic_01102.fits", "real UDF mosaic 1102 (10 h)"),
                        ("DR2_001032.fits", "real MXDF 1032 (141 h)")):  # fmt: skip
        if (udf / name).exists():
            ds = read_spectra(udf / name)
            panels.append((label, ds.wavelength.values, ds.flux.values[0], ds.ivar.values[0], {}))
    cube = shared_data / "muse_mpdaf_cubes" / "minicube_A478.fits.gz"
    if cube.exists():
        ds = read_spectra(cube)
        flux, ivar = ds.flux.values, ds.ivar.values
        level = np.nanmedian(np.where(ivar > 0, flux, np.nan), axis=1)
        order = np.argsort(level)
        faint, bright = int(order[int(0.15 * order.size)]), int(order[-1])
        wave = ds.wavelength.values
        panels.append(("real A478 faint spaxel (blank sky, 900 s)", wave, flux[faint], ivar[faint], {}))
        panels.append(("real A478 brightest spaxel (cluster galaxy, 900 s)", wave, flux[bright], ivar[bright],
                       {"z_true": 0.086}))
    return panels


def muse_gallery(output_png: str | Path, shared_data: Path | None, seed: int = 0) -> Path:
    """Draw the gallery into ``output_png`` and return its path.

    Parameters
    ----------
    output_png
        The PNG file to write.
    shared_data
        The folder with ``muse_udf_format/`` and ``muse_mpdaf_cubes/`` (real spectra); None for simulated only.
    seed
        Simulation seed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = _pick_simulated(seed)
    if shared_data is not None and Path(shared_data).is_dir():
        panels += _real_spectra(Path(shared_data))
    ncol = 2
    nrow = (len(panels) + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(22, 2.9 * nrow), squeeze=False)
    for ax, (label, wave, flux, ivar, info) in zip(axes.ravel(), panels, strict=False):
        flux = np.asarray(flux, np.float64)
        good = np.asarray(ivar) > 0
        sigma = np.where(good, 1.0 / np.sqrt(np.where(good, ivar, 1.0)), np.nan)
        smooth = _running_median(flux)
        ax.plot(wave, flux, color="tab:blue", lw=0.4, alpha=0.6)
        ax.plot(wave, sigma, color="tab:red", lw=0.5, alpha=0.7)
        ax.plot(wave, smooth, color="black", lw=1.0)
        lo, hi = np.nanpercentile(smooth, [1, 99])
        pad = 0.6 * (hi - lo) + 2 * np.nanmedian(sigma)
        ax.set_ylim(lo - pad, hi + pad)
        ax.axhline(0.0, color="grey", lw=0.5)
        ax.set_xlim(wave[0], wave[-1])
        title = label
        z = info.get("z_true", np.nan)
        if np.isfinite(z):
            title += f"   z = {z:.4f}"
            _mark_lines(ax, z, wave, "tab:green")
        z2 = info.get("z2_true", np.nan)
        if np.isfinite(z2):
            title += f", z2 = {z2:.4f}"
            _mark_lines(ax, z2, wave, "tab:orange")
        if "sim_class" in info:
            flags = MuseSimFlags(int(info["sim_flags"]))
            title += (f"   [{MUSE_CLASSES[int(info['sim_class'])]}; F775W {info['mag_f775w']:.1f}; "
                      f"SNR lines {info['snr_lines']:.0f}, cont {info['snr_cont']:.2f}; "
                      f"{'|'.join(f.name or '' for f in flags) or 'no flags'}]")
        ax.set_title(title, fontsize=9, loc="left")
        ax.tick_params(labelsize=8)
    for ax in axes.ravel()[len(panels):]:
        ax.set_visible(False)
    fig.supxlabel("vacuum wavelength (A)")
    fig.supylabel("flux (1e-17 erg/s/cm2/A); red: sigma; black: 9-px running median")
    fig.tight_layout()
    output_png = Path(output_png)
    fig.savefig(output_png, dpi=80)
    plt.close(fig)
    return output_png


def _mark_lines(ax: Any, z: float, wave: np.ndarray, color: str) -> None:
    top = ax.get_ylim()[1]
    for name, rest in _MARKS.items():
        obs = rest * (1.0 + z)
        if wave[0] < obs < wave[-1]:
            ax.axvline(obs, color=color, lw=0.6, ls=":")
            ax.text(obs, top, name, fontsize=7, color=color, rotation=90, va="top", ha="right")
