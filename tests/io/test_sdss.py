"""SDSS reader: the real DR18 spec files against astropy, and synthetic lattice errors."""

import numpy as np
import pytest
from astropy.io import fits

from dzspec.errors import InputError
from dzspec.io.registry import identify_format
from dzspec.io.sdss import SDSS_GRID_NAME, SDSS_NWAVE, read_sdss, sdss_wavelength
from dzspec.schema import INSTRUMENTS, SURVEYS, SpecMask
from tests.conftest import shared_file


@pytest.mark.parametrize(
    ("name", "plate", "mjd", "fiber"),
    [("NGC3073_SDSS_DR18.fits", 945, 52652, 470), ("NGC3522_SDSS_DR18.fits", 2488, 54149, 1)],
)
def test_real_spec_files(name, plate, mjd, fiber):
    path = shared_file(f"sdss_legac_ppxf/{name}")
    with fits.open(path) as hdul:
        coadd = hdul["COADD"].data
        loglam, flux, ivar = (np.asarray(coadd[c], dtype=np.float64) for c in ("loglam", "flux", "ivar"))
        and_mask, sky = np.asarray(coadd["and_mask"]), np.asarray(coadd["sky"])
        specobj = hdul["SPECOBJ"].data[0]
    ds = read_sdss(path, keep_sky=True)
    assert ds.sizes == {"spectrum": 1, "wavelength": SDSS_NWAVE} and ds.attrs["grid_name"] == SDSS_GRID_NAME
    index = np.rint((loglam - 3.5) / 1e-4).astype(int)
    np.testing.assert_allclose(ds.wavelength.values[index], 10**loglam, rtol=5e-7)
    good = and_mask == 0
    np.testing.assert_array_equal(ds.flux.values[0, index[good]], flux[good].astype(np.float32))
    np.testing.assert_array_equal(ds.ivar.values[0, index[good]], ivar[good].astype(np.float32))
    np.testing.assert_array_equal(ds.sky.values[0, index], sky)
    mask = ds.mask.values[0]
    assert (mask[index[~good]] & SpecMask.INSTRUMENT).all() and (ds.ivar.values[0, index[~good]] == 0).all()
    outside = np.setdiff1d(np.arange(SDSS_NWAVE), index)
    assert outside.size == SDSS_NWAVE - loglam.size
    assert (mask[outside] & SpecMask.NO_COVERAGE).all() and (ds.ivar.values[0, outside] == 0).all()
    assert not (mask[index] & SpecMask.NO_COVERAGE).any()
    assert (int(ds.plate[0]), int(ds.mjd[0]), int(ds.fiberid[0])) == (plate, mjd, fiber)
    assert float(ds.z_pipeline[0]) == pytest.approx(specobj["Z"]) and np.isnan(ds.z_true[0])
    assert int(ds.targetid[0]) == int(specobj["SPECOBJID"])
    assert float(ds.ra[0]) == specobj["PLUG_RA"] and float(ds.exptime[0]) == pytest.approx(fits.getval(path, "EXPTIME"))
    assert int(ds.survey[0]) == SURVEYS.index("sdss") and int(ds.instrument[0]) == INSTRUMENTS.index("boss")
    assert ds.attrs["medium_original"] == "vacuum" and ds.wavelength.attrs["grid"] == "log10"


def test_shared_grid():
    wave = sdss_wavelength()
    np.testing.assert_allclose(np.log10(wave), 3.5 + 1e-4 * np.arange(6001), rtol=0, atol=1e-12)


def write_spec(path, loglam, *, and_mask=None, specobjid=None, hdu_name="COADD", primary=None):
    n = len(loglam)
    columns = [fits.Column("flux", "E", array=np.linspace(1, 2, n)), fits.Column("loglam", "E", array=loglam),
               fits.Column("ivar", "E", array=np.full(n, 4.0))]  # fmt: skip
    if and_mask is not None:
        columns.append(fits.Column("and_mask", "J", array=and_mask))
    hdus = [fits.PrimaryHDU(header=primary), fits.BinTableHDU.from_columns(columns, name=hdu_name)]
    if specobjid is not None:
        hdus.append(
            fits.BinTableHDU.from_columns(
                [fits.Column("SPECOBJID", "22A", array=[specobjid]), fits.Column("Z", "E", array=[0.5])], name="SPECOBJ"
            )
        )
    fits.HDUList(hdus).writeto(path)
    return path


def test_off_lattice_and_out_of_range(tmp_path):
    loglam = 3.6 + 1e-4 * np.arange(10)
    shifted = write_spec(tmp_path / "shift.fits", loglam + 3e-5)
    with pytest.raises(InputError, match=r"shift\.fits: pixel 0 at loglam .* off the SDSS lattice"):
        read_sdss(shifted)
    far = write_spec(tmp_path / "far.fits", 4.0995 + 1e-4 * np.arange(10))
    with pytest.raises(InputError, match=r"far\.fits: loglam .* reaches outside the SDSS grid"):
        read_sdss(far)
    longer = 3.6 + 1e-4 * np.arange(12)
    gap = write_spec(tmp_path / "gap.fits", np.r_[longer[:4], longer[6:]])  # a gap is fine: padded
    ds = read_sdss(gap)
    assert (ds.mask.values[0, 1004:1006] & SpecMask.NO_COVERAGE).all() and (ds.ivar.values[0, 1006] == 4.0)


def test_specobjid_too_large_for_int64(tmp_path):
    loglam = 3.6 + 1e-4 * np.arange(10)
    ok = read_sdss(write_spec(tmp_path / "a.fits", loglam, specobjid="   1064104649075746816"))
    assert int(ok.targetid[0]) == 1064104649075746816 and float(ok.z_pipeline[0]) == 0.5
    big = read_sdss(write_spec(tmp_path / "b.fits", loglam, specobjid="11056054829046521856"))
    assert int(big.targetid[0]) == -1


def test_unnamed_first_table_needs_sdss_signs(tmp_path):
    loglam = 3.6 + 1e-4 * np.arange(11)
    signed = write_spec(tmp_path / "spec-old.fits", loglam, and_mask=np.r_[0, 16, np.zeros(9, int)], hdu_name="")
    assert identify_format(signed) == "sdss"
    ds = read_sdss(signed)
    assert ds.mask.values[0, 1001] & SpecMask.INSTRUMENT
    plain = write_spec(tmp_path / "plain.fits", loglam, hdu_name="TABLE")
    assert identify_format(plain) == "generic"


def test_flux_unit_from_bunit(tmp_path):
    loglam = 3.6 + 1e-4 * np.arange(10)
    path = write_spec(tmp_path / "u.fits", loglam, primary=fits.Header({"BUNIT": "1E-19 erg/cm^2/s/Ang"}))
    ds = read_sdss(path)
    assert ds.attrs["flux_scale_applied"] == 0.01
    assert float(ds.flux[0, 1000]) == pytest.approx(0.01) and float(ds.ivar[0, 1000]) == pytest.approx(4e4)
