"""Generic reader: LEGA-C and the DESI stack against astropy, synthetic npz/FITS/HDF5 files, bad values."""

import numpy as np
import pytest
from astropy.io import fits

from dzspec.errors import BadSpectrumWarning, InputError
from dzspec.io.generic import read_generic
from dzspec.io.units import flux_scale_from_unit, wavelength_factor_from_unit
from dzspec.kernels.airvac import air_to_vacuum
from dzspec.schema import INSTRUMENTS, SURVEYS, IngestWarn, SpecMask
from tests.conftest import shared_file

WAVE = np.linspace(5000.0, 5019.0, 20)


def test_legac_values_quality_and_medium():
    path = shared_file("sdss_legac_ppxf/legac_M19_56670_v3.0.fits")
    with fits.open(path) as hdul:
        row = hdul[1].data[0]
        wave, flux, err, qual = (np.asarray(row[c], dtype=np.float64) for c in ("WAVE", "FLUX", "ERR", "QUAL"))
        header = hdul[0].header
    ds = read_generic(path, survey="legac")  # QUAL-flagged NaN flux and ERR = 0 must not warn
    assert ds.sizes == {"spectrum": 1, "wavelength": 6166}
    # TUCD1 = 'em.wl;obs.atmos': air wavelengths
    np.testing.assert_allclose(ds.wavelength.values, air_to_vacuum(wave), rtol=0, atol=1e-9)
    assert ds.attrs["medium_original"] == "air" and "medium_assumed" not in ds.attrs
    assert ds.attrs["flux_scale_applied"] == 0.01 and ds.attrs["specsys"] == "TOPOCENT"  # 1e-19 units
    good = qual == 0
    assert good.sum() == 6166 - 2080
    np.testing.assert_allclose(ds.flux.values[0, good], flux[good] * 0.01, rtol=1e-6)
    np.testing.assert_allclose(ds.ivar.values[0, good], 1 / (err[good] * 0.01) ** 2, rtol=1e-6)
    mask = ds.mask.values[0]
    assert (mask[~good] & SpecMask.INSTRUMENT).all() and (ds.ivar.values[0, ~good] == 0).all()
    assert not (mask & (SpecMask.NONFINITE_FLUX | SpecMask.BAD_IVAR)).any()
    assert float(ds.ra[0]) == header["RA"] and float(ds.exptime[0]) == header["EXPTIME"]
    assert int(ds.survey[0]) == SURVEYS.index("legac") and int(ds.instrument[0]) == INSTRUMENTS.index("vimos")


def test_desi_stack_is_rest_frame():
    path = shared_file("desi_fastspecfit/stack-LRG.fits")
    with fits.open(path) as hdul:
        flux, ivar, wave = (np.asarray(hdul[n].data, dtype=np.float64) for n in ("FLUX", "IVAR", "WAVE"))
    ds = read_generic(path)
    assert ds.attrs["frame"] == "rest" and ds.wavelength.attrs["frame"] == "rest"
    assert ds.attrs["medium_original"] == "vacuum" and "medium_assumed" not in ds.attrs  # AIRORVAC = 'vac'
    assert ds.attrs["flux_unit_assumed"] is True
    np.testing.assert_array_equal(ds.wavelength.values, wave)
    np.testing.assert_array_equal(ds.flux.values, flux.astype(np.float32))
    np.testing.assert_array_equal(ds.ivar.values, ivar.astype(np.float32))
    assert ds.wavelength.attrs["grid"] == "linear" and ds.wavelength.attrs["step"] == 0.4
    assert read_generic(path, frame="observed").attrs["frame"] == "observed"


# ------------------------------------------------------------------------------------------------------------
# npz
# ------------------------------------------------------------------------------------------------------------


def npz(path, **arrays):
    with open(path, "wb") as handle:  # a file handle: numpy does not append ".npz"
        np.savez(handle, **arrays)
    return path


def test_npz_values_keys_and_uncertainties(tmp_path):
    flux = np.arange(40.0).reshape(2, 20)
    ds = read_generic(npz(tmp_path / "a.npz", WAVE=WAVE, Flux=flux, Sigma=np.full((2, 20), 0.5),
                          TargetID=[5, 6], z=[0.1, 0.2], ra=1.5, mask=np.eye(2, 20)))  # fmt: skip
    np.testing.assert_array_equal(ds.flux.values[:, 1:], flux[:, 1:])
    assert ds.ivar.values[0, 1] == 4.0 and ds.ivar.values[0, 0] == 0 and ds.mask.values[1, 1] & SpecMask.INSTRUMENT
    assert ds.targetid.values.tolist() == [5, 6] and ds.z_true.values.tolist() == [0.1, 0.2]
    assert ds.ra.values.tolist() == [1.5, 1.5]
    assert ds.attrs["medium_assumed"] is True and ds.attrs["flux_unit_assumed"] is True
    var = read_generic(npz(tmp_path / "v.npz", wave=WAVE, flux=flux, variance=np.full((2, 20), 0.25)))
    assert var.ivar.values[0, 0] == 4.0


def test_npz_loglam_medium_unit_and_options(tmp_path):
    loglam = np.log10(WAVE)
    path = npz(tmp_path / "l.npz", loglam=loglam, flux=np.ones(20), ivar=np.ones(20), medium="air",
               flux_unit="1e-20 erg/s/cm2/Angstrom")  # fmt: skip
    ds = read_generic(path)
    np.testing.assert_allclose(ds.wavelength.values, air_to_vacuum(WAVE), rtol=1e-12)
    assert ds.attrs["medium_original"] == "air" and ds.attrs["flux_scale_applied"] == 1e-3
    assert float(ds.ivar[0, 0]) == pytest.approx(1e6)
    ds = read_generic(path, medium="vacuum", flux_scale=2.0, survey="simulated", instrument="simulated")
    np.testing.assert_allclose(ds.wavelength.values, WAVE, rtol=1e-12)
    assert float(ds.flux[0, 0]) == 2.0 and float(ds.ivar[0, 0]) == 0.25
    assert int(ds.survey[0]) == SURVEYS.index("simulated")
    with pytest.raises(ValueError, match="medium must be"):
        read_generic(path, medium="water")


def test_two_dimensional_wavelength(tmp_path):
    same = npz(tmp_path / "same.npz", wave=np.tile(WAVE, (3, 1)), flux=np.ones((3, 20)), ivar=np.ones((3, 20)))
    assert read_generic(same).sizes == {"spectrum": 3, "wavelength": 20}
    wave = np.tile(WAVE, (3, 1))
    wave[2, 5] += 0.1
    differs = npz(tmp_path / "differ.npz", wave=wave, flux=np.ones((3, 20)), ivar=np.ones((3, 20)))
    with pytest.raises(InputError, match=r"differ\.npz: row 2: array 'wave' differs from row 0.*does not resample"):
        read_generic(differs)


def test_nan_and_inf_flux_are_flagged(tmp_path):
    flux = np.ones((3, 20))
    flux[0, 3], flux[2, 7] = np.nan, np.inf
    with pytest.warns(BadSpectrumWarning, match=r"bad\.npz: rows 0, 2: NaN/inf flux in 2 pixels"):
        ds = read_generic(npz(tmp_path / "bad.npz", wave=WAVE, flux=flux, ivar=np.ones((3, 20))))
    assert ds.mask.values[0, 3] & SpecMask.NONFINITE_FLUX and ds.mask.values[2, 7] & SpecMask.NONFINITE_FLUX
    assert ds.flux.values[0, 3] == 0 and ds.ivar.values[2, 7] == 0
    assert ds.ingest_warn.values.tolist() == [IngestWarn.NONFINITE_FLUX | IngestWarn.NO_TARGETID,
                                              IngestWarn.NO_TARGETID,
                                              IngestWarn.NONFINITE_FLUX | IngestWarn.NO_TARGETID]  # fmt: skip


@pytest.mark.parametrize(
    ("key", "value"), [("ivar", -1.0), ("ivar", np.nan), ("err", 0.0), ("err", -2.0), ("var", np.nan)]
)
def test_invalid_uncertainty_is_flagged(tmp_path, key, value):
    unc = np.ones((2, 20))
    unc[1, 4] = value
    with pytest.warns(BadSpectrumWarning, match=r"rows 1: negative, NaN or inf ivar in 1 pixels"):
        ds = read_generic(npz(tmp_path / "u.npz", wave=WAVE, flux=np.ones((2, 20)), **{key: unc}))
    assert ds.mask.values[1, 4] & SpecMask.BAD_IVAR and ds.ivar.values[1, 4] == 0
    assert ds.ingest_warn.values[1] & IngestWarn.BAD_IVAR and not ds.ingest_warn.values[0] & IngestWarn.BAD_IVAR


def test_empty_spectrum_is_kept_and_flagged(tmp_path):
    ivar = np.ones((3, 20))
    ivar[1] = 0.0
    with pytest.warns(BadSpectrumWarning, match=r"rows 1: no pixel with ivar > 0; kept, flagged EMPTY"):
        ds = read_generic(npz(tmp_path / "e.npz", wave=WAVE, flux=np.ones((3, 20)), ivar=ivar))
    assert ds.sizes["spectrum"] == 3 and ds.ingest_warn.values[1] & IngestWarn.EMPTY
    assert (ds.mask.values[1] & SpecMask.NODATA).all()


def test_non_monotonic_wavelength(tmp_path):
    wave = WAVE.copy()
    wave[[4, 5]] = wave[[5, 4]]
    with pytest.raises(InputError, match=r"w\.npz: wavelengths are not strictly increasing at pixel 4"):
        read_generic(npz(tmp_path / "w.npz", wave=wave, flux=np.ones(20), ivar=np.ones(20)))


def test_length_mismatches_name_the_arrays(tmp_path):
    with pytest.raises(InputError, match=r"m\.npz: length mismatch: array 'wave' has 19 values but array 'flux'"):
        read_generic(npz(tmp_path / "m.npz", wave=WAVE[:-1], flux=np.ones(20), ivar=np.ones(20)))
    with pytest.raises(InputError, match=r"n\.npz: length mismatch: array 'err' has shape \(2, 19\)"):
        read_generic(npz(tmp_path / "n.npz", wave=WAVE, flux=np.ones((2, 20)), err=np.ones((2, 19))))
    with pytest.raises(InputError, match=r"t\.npz: length mismatch: 'targetid' has shape \(3,\)"):
        read_generic(npz(tmp_path / "t.npz", wave=WAVE, flux=np.ones((2, 20)), ivar=np.ones((2, 20)),
                         targetid=[1, 2, 3]))  # fmt: skip
    with pytest.raises(InputError, match=r"x\.npz: no uncertainty array"):
        read_generic(npz(tmp_path / "x.npz", wave=WAVE, flux=np.ones(20)))


# ------------------------------------------------------------------------------------------------------------
# FITS
# ------------------------------------------------------------------------------------------------------------


def test_fits_table_one_spectrum_per_column(tmp_path):
    columns = [fits.Column("LAMBDA", "D", array=WAVE / 10, unit="nm"),
               fits.Column("FLUX", "E", array=np.full(20, 3e-17), unit="erg/s/cm2/A"),
               fits.Column("ERROR", "E", array=np.full(20, 1e-17))]  # fmt: skip
    header = fits.Header({"AIRORVAC": "air", "RA": 12.5, "EXPTIME": 600.0})
    fits.HDUList([fits.PrimaryHDU(header=header), fits.BinTableHDU.from_columns(columns)]).writeto(tmp_path / "t.fits")
    ds = read_generic(tmp_path / "t.fits")
    np.testing.assert_allclose(ds.wavelength.values, air_to_vacuum(WAVE), rtol=1e-12)
    assert ds.attrs["flux_scale_applied"] == 1e17 and float(ds.flux[0, 0]) == pytest.approx(3.0)
    assert float(ds.ivar[0, 0]) == pytest.approx(1.0) and float(ds.ra[0]) == 12.5 and float(ds.exptime[0]) == 600


def test_fits_array_columns_must_agree(tmp_path):
    columns = [fits.Column("WAVE", "20D", array=WAVE[None]), fits.Column("FLUX", "19E", array=np.ones((1, 19))),
               fits.Column("IVAR", "19E", array=np.ones((1, 19)))]  # fmt: skip
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(columns)]).writeto(tmp_path / "a.fits")
    with pytest.raises(InputError, match=r"a\.fits: length mismatch: column WAVE has 20 values but column FLUX"):
        read_generic(tmp_path / "a.fits")


def test_fits_images_must_agree(tmp_path):
    hdus = [fits.PrimaryHDU(), fits.ImageHDU(WAVE, name="WAVELENGTH"), fits.ImageHDU(np.ones((2, 20)), name="FLUX"),
            fits.ImageHDU(np.ones((2, 21)), name="VAR")]  # fmt: skip
    fits.HDUList(hdus).writeto(tmp_path / "i.fits")
    with pytest.raises(InputError, match=r"i\.fits: length mismatch: HDU VAR has shape \(2, 21\) but HDU FLUX"):
        read_generic(tmp_path / "i.fits")


def test_fits_unknown_flux_unit(tmp_path):
    hdus = [fits.PrimaryHDU(), fits.ImageHDU(WAVE, name="WAVE"),
            fits.ImageHDU(np.ones(20), fits.Header({"BUNIT": "counts/pixel"}), name="FLUX"),
            fits.ImageHDU(np.ones(20), name="IVAR")]  # fmt: skip
    fits.HDUList(hdus).writeto(tmp_path / "c.fits")
    with pytest.raises(InputError, match=r"c\.fits: flux unit: .*pass flux_scale= to override"):
        read_generic(tmp_path / "c.fits")
    assert read_generic(tmp_path / "c.fits", flux_scale=1.0).attrs["flux_scale_applied"] == 1.0


def test_fits_nan_flux_and_negative_ivar(tmp_path):
    flux, ivar = np.ones((2, 20)), np.ones((2, 20))
    flux[1, 0], ivar[0, 2] = np.nan, -3.0
    hdus = [fits.PrimaryHDU(), fits.ImageHDU(WAVE, name="WAVE"), fits.ImageHDU(flux, name="FLUX"),
            fits.ImageHDU(ivar, name="IVAR")]  # fmt: skip
    fits.HDUList(hdus).writeto(tmp_path / "b.fits")
    with pytest.warns(BadSpectrumWarning) as record:
        ds = read_generic(tmp_path / "b.fits")
    assert len(record) == 2
    assert ds.mask.values[1, 0] & SpecMask.NONFINITE_FLUX and ds.mask.values[0, 2] & SpecMask.BAD_IVAR


# ------------------------------------------------------------------------------------------------------------
# HDF5 and units
# ------------------------------------------------------------------------------------------------------------


def test_hdf5_nested(tmp_path):
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "s.h5", "w") as handle:
        handle.attrs["medium"] = "vacuum"
        group = handle.create_group("spectra")
        group["wavelength"] = WAVE
        group["flux"] = np.ones((2, 20))
        group["flux"].attrs["units"] = "1e-17 erg/s/cm2/Angstrom"
        group["ivar"] = np.full((2, 20), 2.0)
        group["targetid"] = [1, 2]
    ds = read_generic(tmp_path / "s.h5")
    assert ds.sizes["spectrum"] == 2 and ds.targetid.values.tolist() == [1, 2]
    assert "medium_assumed" not in ds.attrs and "flux_unit_assumed" not in ds.attrs


@pytest.mark.parametrize(
    ("unit", "scale"),
    [
        ("10**(-20)*erg/s/cm**2/Angstrom", 1e-3),
        ("10**-20 Angstrom-1 cm-2 erg s-1", 1e-3),
        ("1E-17 erg/cm^2/s/Ang", 1.0),
        ("10**-17 erg/(s cm2 Angstrom)", 1.0),
        ("10**(-19).erg.cm**(-2).s**(-1).angstrom**(-1)", 1e-2),
        ("erg/s/cm2/A", 1e17),
        ("W/m2/nm", 1e19),
    ],
)
def test_flux_units(unit, scale):
    assert flux_scale_from_unit(unit) == pytest.approx(scale, rel=1e-12)


def test_bad_units():
    with pytest.raises(ValueError, match="not a flux density per unit wavelength"):
        flux_scale_from_unit("Jy")
    with pytest.raises(ValueError, match="cannot parse"):
        flux_scale_from_unit("bananas per fortnight")
    assert wavelength_factor_from_unit("um") == 1e4
    with pytest.raises(ValueError, match="not a wavelength unit"):
        wavelength_factor_from_unit("s")


def test_fits_non_monotonic_and_empty(tmp_path):
    wave = WAVE.copy()
    wave[10] = wave[2]
    hdus = [fits.PrimaryHDU(), fits.ImageHDU(wave, name="WAVE"), fits.ImageHDU(np.ones(20), name="FLUX"),
            fits.ImageHDU(np.ones(20), name="IVAR")]  # fmt: skip
    fits.HDUList(hdus).writeto(tmp_path / "nm.fits")
    with pytest.raises(InputError, match=r"nm\.fits: wavelengths are not strictly increasing at pixel 9"):
        read_generic(tmp_path / "nm.fits")
    columns = [fits.Column("wave", "20D", array=np.tile(WAVE, (2, 1))),
               fits.Column("flux", "20E", array=np.ones((2, 20))),
               fits.Column("ivar", "20E", array=np.r_[np.ones((1, 20)), np.zeros((1, 20))]),
               fits.Column("targetid", "K", array=[7, 8])]  # fmt: skip
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(columns)]).writeto(tmp_path / "e.fits")
    with pytest.warns(BadSpectrumWarning, match=r"e\.fits: rows 1: no pixel with ivar > 0"):
        ds = read_generic(tmp_path / "e.fits")
    assert ds.targetid.values.tolist() == [7, 8] and ds.ingest_warn.values[1] & IngestWarn.EMPTY
