"""MUSE readers: real 1-D spectra and cubes compared with astropy, plus synthetic layouts and bad values."""

import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from dzspec.errors import BadSpectrumWarning, InputError
from dzspec.io.muse import read_muse, read_muse_cube
from dzspec.kernels.airvac import air_to_vacuum
from dzspec.schema import INSTRUMENTS, SURVEYS, IngestWarn, SpecMask
from tests.conftest import shared_file

MUSE_BUNIT = "10**(-20)*erg/s/cm**2/Angstrom"


def _raw(path, *names):
    with fits.open(path) as hdul:
        return [np.array(hdul[n].data, dtype=np.float64) for n in names], hdul[names[0]].header.copy()


@pytest.mark.parametrize(
    ("name", "grid", "assumed"),
    [
        ("muse_udf_format/DR2_001032.fits", "muse-air2vac-4700-1.25-3721", True),  # BUNIT = ''
        ("muse_udf_format/mosaic_01102.fits", "muse-air2vac-4750-1.25-3681", False),
    ],
)
def test_real_udf_spectra(name, grid, assumed):
    path = shared_file(name)
    (data, stat), header = _raw(path, "DATA", "STAT")
    ds = read_muse(path)
    assert ds.sizes["spectrum"] == 1 and ds.attrs["grid_name"] == grid
    np.testing.assert_allclose(ds.flux.values[0] * 1e3, data, rtol=1e-6)
    np.testing.assert_allclose(ds.ivar.values[0] * 1e-6, 1.0 / stat, rtol=1e-6)
    air = header["CRVAL1"] + (np.arange(data.size) + 1 - header["CRPIX1"]) * header["CDELT1"]
    np.testing.assert_allclose(ds.wavelength.values, air_to_vacuum(air), rtol=0, atol=1e-9)
    assert ds.wavelength.values[0] == pytest.approx(air_to_vacuum(header["CRVAL1"]), abs=1e-9)
    assert ds.attrs["medium_original"] == "air" and ds.attrs["flux_scale_applied"] == 1e-3
    assert ds.attrs.get("flux_unit_assumed", False) is assumed
    primary = fits.getheader(path)
    assert int(ds.targetid[0]) == primary["ID"] and int(ds.zconf[0]) == primary["ZCONF"] == 3
    assert float(ds.ra[0]) == primary["RA"] and float(ds.dec[0]) == primary["DEC"]
    assert int(ds.survey[0]) == SURVEYS.index("muse") and int(ds.instrument[0]) == INSTRUMENTS.index("muse")
    assert ds.ingest_warn.values[0] == 0 and not ds.mask.values.any()


@pytest.mark.parametrize("name", ["origin-00026.fits", "sing-0032.fits"])
def test_real_source_files_without_spectra(name):
    path = shared_file(f"muse_mpdaf_cubes/{name}")
    with pytest.raises(InputError, match=rf"{name}: MPDAF Source file without a SPE_\*_DATA spectrum"):
        read_muse(path)


# ------------------------------------------------------------------------------------------------------------
# Synthetic 1-D files
# ------------------------------------------------------------------------------------------------------------


def _spectral_header(n=20, ctype="AWAV", bunit=MUSE_BUNIT, **extra):
    header = fits.Header({"CRVAL1": 4750.0, "CRPIX1": 1.0, "CDELT1": 1.25, "CTYPE1": ctype, "CUNIT1": "Angstrom"})
    if bunit is not None:
        header["BUNIT"] = bunit
    header.update(extra)
    return header


def write_muse(path, data=None, stat=None, dq=None, header=None, primary=None):
    data = np.linspace(10.0, 30.0, 20) if data is None else np.asarray(data)
    stat = np.full(data.shape, 4.0) if stat is None else np.asarray(stat)
    header = _spectral_header(data.size) if header is None else header
    hdus = [fits.PrimaryHDU(header=primary), fits.ImageHDU(data.astype("f4"), header, name="DATA"),
            fits.ImageHDU(stat.astype("f4"), header, name="STAT")]  # fmt: skip
    if dq is not None:
        hdus.append(fits.ImageHDU(np.asarray(dq, "i4"), name="DQ"))
    fits.HDUList(hdus).writeto(path)
    return path


def test_vacuum_cd_and_crpix(tmp_path):
    header = _spectral_header(ctype="WAVE")
    del header["CDELT1"]
    header["CD1_1"], header["CRPIX1"], header["CRVAL1"] = 2.5, 3.0, 5000.0
    ds = read_muse(write_muse(tmp_path / "v.fits", header=header))
    np.testing.assert_allclose(ds.wavelength.values, 5000.0 + (np.arange(20) - 2.0) * 2.5)
    assert ds.attrs["medium_original"] == "vacuum" and ds.attrs["grid_name"] == "muse-vac-4995-2.5-20"
    assert ds.wavelength.attrs["grid"] == "linear" and ds.wavelength.attrs["step"] == 2.5


def test_dq_and_nan_marker_are_quiet(tmp_path):
    data, stat, dq = np.full(20, 20.0), np.full(20, 4.0), np.zeros(20)
    dq[3] = 1
    data[3] = stat[3] = np.nan  # flagged by DQ
    data[7] = stat[7] = np.nan  # MUSE "no data" marker
    ds = read_muse(write_muse(tmp_path / "s.fits", data, stat, dq))  # no warning allowed
    mask, ivar = ds.mask.values[0], ds.ivar.values[0]
    assert mask[3] & SpecMask.INSTRUMENT and ivar[3] == 0 and ds.flux.values[0, 3] == 0
    assert mask[7] == SpecMask.NODATA and ivar[7] == 0
    assert ivar[0] == pytest.approx(1e6 / 4.0)
    assert ds.ingest_warn.values[0] == IngestWarn.NO_TARGETID


def test_bad_stat_and_nan_data_are_reported(tmp_path):
    data, stat = np.full(20, 20.0), np.full(20, 4.0)
    stat[2], stat[5], data[9] = 0.0, -1.0, np.nan
    path = write_muse(tmp_path / "s.fits", data, stat)
    with pytest.warns(BadSpectrumWarning) as record:
        ds = read_muse(path)
    messages = " | ".join(str(w.message) for w in record)
    assert "NaN/inf flux in 1 pixels" in messages and "negative, NaN or inf ivar in 2 pixels" in messages
    mask = ds.mask.values[0]
    assert mask[2] & SpecMask.BAD_IVAR and mask[5] & SpecMask.BAD_IVAR and mask[9] & SpecMask.NONFINITE_FLUX
    assert ds.ivar.values[0, [2, 5, 9]].tolist() == [0, 0, 0]


def test_units(tmp_path):
    ds = read_muse(write_muse(tmp_path / "a.fits", header=_spectral_header(bunit="1e-17 erg / (Angstrom cm2 s)")))
    assert ds.attrs["flux_scale_applied"] == 1.0 and float(ds.flux[0, 0]) == pytest.approx(10.0)
    with pytest.raises(InputError, match=r"b\.fits: unknown flux unit.*'adu'"):
        read_muse(write_muse(tmp_path / "b.fits", header=_spectral_header(bunit="adu")))
    ds = read_muse(tmp_path / "b.fits", flux_unit="1e-20 erg/s/cm2/Angstrom")
    assert float(ds.flux[0, 0]) == pytest.approx(0.01) and float(ds.ivar[0, 0]) == pytest.approx(2.5e5)
    ds = read_muse(write_muse(tmp_path / "c.fits", header=_spectral_header(bunit=None)))
    assert ds.attrs["flux_unit_assumed"] is True and ds.attrs["flux_scale_applied"] == 1e-3


def test_missing_stat_and_bad_axis(tmp_path):
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.ones(5, "f4"), _spectral_header(5), name="DATA")]).writeto(
        tmp_path / "nostat.fits"
    )
    with pytest.raises(InputError, match=r"nostat\.fits: HDU DATA has no STAT"):
        read_muse(tmp_path / "nostat.fits")
    with pytest.raises(InputError, match=r"log\.fits: HDU DATA: CTYPE1 = 'AWAV-LOG' is not a linear"):
        read_muse(write_muse(tmp_path / "log.fits", header=_spectral_header(ctype="AWAV-LOG")))
    short = write_muse(tmp_path / "short.fits", stat=np.ones(19))
    with pytest.raises(InputError, match=r"short\.fits: length mismatch: STAT has shape \(19,\)"):
        read_muse(short)


def test_legacy_primary_plus_variance(tmp_path):
    header = _spectral_header(ctype="LINEAR", INSTRUME="MUSE")
    fits.HDUList([fits.PrimaryHDU(np.full(20, 5.0, "f4"), header), fits.ImageHDU(np.full(20, 0.25, "f4"))]).writeto(
        tmp_path / "legacy.fits"
    )
    ds = read_muse(tmp_path / "legacy.fits")
    assert ds.attrs["medium_original"] == "air" and ds.attrs["medium_assumed"] is True
    assert float(ds.ivar[0, 0]) == pytest.approx(4e6) and float(ds.flux[0, 0]) == pytest.approx(5e-3)
    np.testing.assert_allclose(ds.wavelength.values, air_to_vacuum(4750.0 + 1.25 * np.arange(20)))
    assert read_muse(tmp_path / "legacy.fits", medium="vacuum").wavelength.values[0] == 4750.0


def _source(path, names=("MUSE_PSF", "MUSE_TOT"), z_rows=(("EMI", 1.5), ("MUSE", 2.25))):
    primary = fits.Header({"ID": 42, "RA": 53.1, "DEC": -27.8, "AUTHOR": "MPDAF", "ZCONF": 2})
    hdus = [fits.PrimaryHDU(header=primary)]
    for i, name in enumerate(names):
        header = _spectral_header()
        hdus += [fits.ImageHDU(np.full(20, 10.0 * (i + 1), "f4"), header, name=f"SPE_{name}_DATA"),
                 fits.ImageHDU(np.full(20, 1.0, "f4"), header, name=f"SPE_{name}_STAT")]  # fmt: skip
    if z_rows:
        table = np.array(list(z_rows), dtype=[("Z_DESC", "S8"), ("Z", "f8")])
        hdus.append(fits.BinTableHDU(table, name="Z"))
    fits.HDUList(hdus).writeto(path)
    return path


def test_source_file_spectrum_choice_and_redshift(tmp_path):
    path = _source(tmp_path / "src.fits")
    ds = read_muse(path)
    assert ds.attrs["muse_spectrum"] == "MUSE_TOT" and float(ds.flux[0, 0]) == pytest.approx(0.02)
    assert int(ds.targetid[0]) == 42 and float(ds.ra[0]) == 53.1 and int(ds.zconf[0]) == 2
    assert float(ds.z_true[0]) == 2.25
    assert read_muse(path, spectrum_name="muse_psf").attrs["muse_spectrum"] == "MUSE_PSF"
    assert float(read_muse(path, z_desc="EMI").z_true[0]) == 1.5
    with pytest.raises(InputError, match=r"src\.fits: the Z table has no row with Z_DESC = 'NONE'"):
        read_muse(path, z_desc="NONE")
    other = _source(tmp_path / "other.fits", names=("NARROW",), z_rows=(("EMI", 0.7),))
    ds = read_muse(other)
    assert ds.attrs["muse_spectrum"] == "NARROW" and float(ds.z_true[0]) == 0.7


# ------------------------------------------------------------------------------------------------------------
# Cubes
# ------------------------------------------------------------------------------------------------------------

MINICUBE = "muse_mpdaf_cubes/minicube_A478.fits.gz"


@pytest.fixture(scope="module")
def minicube():
    path = shared_file(MINICUBE)
    with fits.open(path) as hdul:
        raw = {name: np.array(hdul[name].data) for name in ("DATA", "STAT", "DQ")}
        header = hdul["DATA"].header.copy()
    return path, raw, header


def test_real_cube_every_spaxel(minicube):
    path, raw, header = minicube
    ds = read_muse_cube(path)  # DQ-flagged NaN pixels must not warn
    nwave, ny, nx = raw["DATA"].shape
    assert ds.sizes == {"spectrum": ny * nx, "wavelength": nwave} and (ny, nx) == (40, 40)
    assert ds.attrs["grid_name"] == "muse-air2vac-4749.890625-1.25-3681"
    assert ds.attrs["muse_rvcorr"] == "bary" and float(ds.exptime[0]) == 900.0
    assert ds.wavelength.values[0] == pytest.approx(air_to_vacuum(4749.890625), abs=1e-9)
    for x, y in [(0, 0), (17, 23), (39, 5)]:
        row = y * nx + x
        assert (int(ds.spaxel_x[row]), int(ds.spaxel_y[row])) == (x, y)
        good = raw["DQ"][:, y, x] == 0
        np.testing.assert_allclose(ds.flux.values[row, good] * 1e3, raw["DATA"][good, y, x], rtol=1e-6)
        np.testing.assert_allclose(ds.ivar.values[row, good] * 1e-6, 1 / raw["STAT"][good, y, x], rtol=1e-6)
    flagged = np.argwhere(raw["DQ"] != 0)  # the 5 NaN pixels of the last wavelength plane
    assert len(flagged) == 5
    for k, y, x in flagged:
        assert ds.mask.values[y * nx + x, k] & SpecMask.INSTRUMENT and ds.ivar.values[y * nx + x, k] == 0
    ra, dec = WCS(header).celestial.pixel_to_world_values(17, 23)
    assert float(ds.ra[23 * nx + 17]) == pytest.approx(ra, abs=1e-10)
    assert float(ds.dec[23 * nx + 17]) == pytest.approx(dec, abs=1e-10)


def test_real_cube_apertures(minicube):
    path, raw, _ = minicube
    positions = [(10.0, 10.0), (20.3, 5.7)]
    ds = read_muse_cube(path, positions=positions, radius=2.0)
    yy, xx = np.mgrid[:40, :40]
    for row, (x, y) in enumerate(positions):
        disk = (xx - x) ** 2 + (yy - y) ** 2 <= 4.0
        assert int(ds.aperture_nspaxel[row]) == disk.sum() == 13
        data, stat = raw["DATA"][:, disk].astype(float), raw["STAT"][:, disk].astype(float)
        good = np.isfinite(data).all(axis=1)
        np.testing.assert_allclose(ds.flux.values[row, good] * 1e3, data[good].sum(axis=1), rtol=1e-5)
        np.testing.assert_allclose(ds.ivar.values[row, good] * 1e-6, 1 / stat[good].sum(axis=1), rtol=1e-5)
    assert ds.spaxel_x.values.tolist() == [10, 20] and ds.spaxel_y.values.tolist() == [10, 6]
    assert ds.attrs["aperture_radius_spaxel"] == 2.0


def test_real_cube_world_positions(minicube):
    path, _, header = minicube
    ra, dec = 63.3559265, 10.4653692  # catalogue source 1 of minicube_A478_cat.txt
    x, y = WCS(header).celestial.world_to_pixel_values(ra, dec)
    by_world = read_muse_cube(path, positions=[(ra, dec)], positions_world=True)
    by_pixel = read_muse_cube(path, positions=[(float(x), float(y))])
    np.testing.assert_array_equal(by_world.flux.values, by_pixel.flux.values)
    assert float(by_world.ra[0]) == ra and float(by_pixel.ra[0]) == pytest.approx(ra, abs=1e-9)
    assert int(by_world.spaxel_x[0]) == round(float(x)) and int(by_world.spaxel_y[0]) == round(float(y))


def test_subcube_spaxel_mask():
    path = shared_file("muse_mpdaf_cubes/subcub_mosaic_udf.fits.gz")
    with fits.open(path) as hdul:
        data = np.array(hdul["DATA"].data, dtype=np.float64)
    mask = np.zeros((30, 30), bool)
    mask[4, 7] = mask[20, 2] = True
    ds = read_muse_cube(path, spaxel_mask=mask)
    assert ds.spaxel_x.values.tolist() == [7, 2] and ds.spaxel_y.values.tolist() == [4, 20]
    np.testing.assert_allclose(ds.flux.values[1] * 1e3, data[:, 20, 2], rtol=1e-6)
    assert ds.attrs["grid_name"] == "muse-air2vac-4750-1.25-500"


def write_cube(path, data, stat=None, dq=None):
    header = fits.Header({"CRVAL3": 4750.0, "CRPIX3": 1.0, "CD3_3": 1.25, "CTYPE3": "AWAV", "BUNIT": MUSE_BUNIT,
                          "CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 10.0, "CRVAL2": 20.0,
                          "CRPIX1": 1.0, "CRPIX2": 1.0, "CD1_1": -5.5e-5, "CD2_2": 5.5e-5})  # fmt: skip
    stat = np.ones_like(data) if stat is None else stat
    hdus = [fits.PrimaryHDU(), fits.ImageHDU(data.astype("f4"), header, name="DATA"),
            fits.ImageHDU(stat.astype("f4"), header, name="STAT")]  # fmt: skip
    if dq is not None:
        hdus.append(fits.ImageHDU(dq.astype("u1"), name="DQ"))
    fits.HDUList(hdus).writeto(path)
    return path


def test_aperture_partial_dq_and_edges(tmp_path):
    data = np.ones((12, 5, 6))  # 12 wavelengths: at least 10 usable pixels per aperture spectrum
    dq = np.zeros((12, 5, 6))
    data[1, 2, 2] = np.nan
    dq[1, 2, 2] = 1  # one flagged spaxel: excluded from the sum
    data[2][dq[2] == 0] = np.nan
    dq[2] = 1  # every spaxel flagged: INSTRUMENT
    path = write_cube(tmp_path / "c.fits", data, dq=dq)
    ds = read_muse_cube(path, positions=[(2, 2), (0, 0)], radius=1.0)
    assert ds.aperture_nspaxel.values.tolist() == [5, 3]  # the corner aperture is cut by the edges
    flux = ds.flux.values * 1e3
    assert flux[0, 0] == pytest.approx(5.0) and flux[0, 1] == pytest.approx(4.0)
    assert ds.mask.values[0, 2] & SpecMask.INSTRUMENT and ds.ivar.values[0, 2] == 0
    assert not ds.mask.values[0, 1] & SpecMask.INSTRUMENT
    assert ds.ivar.values[0, 1] == pytest.approx(1e6 / 4) and flux[1, 0] == pytest.approx(3.0)


def test_cube_bad_requests(tmp_path):
    path = write_cube(tmp_path / "c.fits", np.ones((3, 4, 4)))
    with pytest.raises(InputError, match=r"c\.fits: row 1: aperture at \[40\.0, 40\.0\].*no spaxel inside"):
        read_muse_cube(path, positions=[(1, 1), (40, 40)])
    with pytest.raises(InputError, match=r"spaxel_mask has shape \(3, 3\), the cube is \(4, 4\)"):
        read_muse_cube(path, spaxel_mask=np.ones((3, 3), bool))
    with pytest.raises(ValueError, match="positions or spaxel_mask, not both"):
        read_muse_cube(path, positions=[(1, 1)], spaxel_mask=np.ones((4, 4), bool))
    stat = np.ones((3, 4, 4))
    stat[0, 1, 1] = -2.0
    bad = write_cube(tmp_path / "bad.fits", np.ones((3, 4, 4)), stat)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(BadSpectrumWarning, match=r"rows 5: negative, NaN or inf ivar in 1 pixels"):
            read_muse_cube(bad)
