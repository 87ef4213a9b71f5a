import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dzspec.errors import BadSpectrumWarning, InputError
from dzspec.schema import (
    MIN_USABLE_PIXELS,
    SCHEMA_VERSION,
    IngestWarn,
    SpecMask,
    flag_attrs,
    make_spectra_dataset,
    suspect_spectra,
)

WAVE = np.linspace(5000.0, 5011.0, 12)  # 12 pixels: at least 10 usable unless a test says otherwise


def _make(flux, ivar, wave=WAVE, **kw):
    return make_spectra_dataset(wave, flux, ivar, source_file="bad.fits", reader="test", **kw)


def test_nan_flux_is_flagged_not_dropped():
    flux = np.ones((3, 12))
    flux[1, 2] = np.nan
    flux[2, 0] = np.inf
    with pytest.warns(BadSpectrumWarning, match=r"bad\.fits: rows 1, 2: NaN/inf flux in 2 pixels"):
        ds = _make(flux, np.ones((3, 12)))
    assert ds.sizes["spectrum"] == 3
    assert ds.ivar.values[1, 2] == 0 and ds.flux.values[1, 2] == 0
    assert ds.mask.values[1, 2] == SpecMask.NONFINITE_FLUX | SpecMask.NODATA
    assert ds.ingest_warn.values.tolist()[1] & IngestWarn.NONFINITE_FLUX
    assert not ds.ingest_warn.values[0] & IngestWarn.NONFINITE_FLUX


def test_negative_and_nan_ivar_are_zeroed_and_flagged():
    ivar = np.ones((2, 12))
    ivar[0, 1] = -3.0
    ivar[1, 4] = np.nan
    with pytest.warns(BadSpectrumWarning, match="rows 0, 1: negative, NaN or inf ivar"):
        ds = _make(np.ones((2, 12)), ivar)
    assert ds.ivar.values[0, 1] == 0 and ds.ivar.values[1, 4] == 0
    assert ds.mask.values[0, 1] & SpecMask.BAD_IVAR
    assert (ds.ingest_warn.values & IngestWarn.BAD_IVAR).all()


def test_empty_spectrum_is_kept_and_flagged():
    ivar = np.ones((2, 12))
    ivar[1] = 0
    with pytest.warns(BadSpectrumWarning, match="rows 1: no pixel with ivar > 0"):
        ds = _make(np.ones((2, 12)), ivar)
    assert ds.sizes["spectrum"] == 2
    assert ds.ingest_warn.values[1] & IngestWarn.EMPTY
    assert (ds.mask.values[1] & SpecMask.NODATA).all()


@pytest.mark.parametrize(
    ("wave", "match"),
    [
        (np.array([5000.0, 5001, 5001, 5003, 5004, 5005]), "not strictly increasing at pixel 1"),
        (np.array([5000.0, 5001, 5000.5, 5003, 5004, 5005]), "not strictly increasing"),
        (np.array([5000.0, np.nan, 5002, 5003, 5004, 5005]), "not finite at pixel 1"),
        (np.arange(5.0) + 5000, "6 pixels per spectrum but there are 5 wavelengths"),
    ],
)
def test_bad_wavelengths_raise_naming_the_file(wave, match):
    with pytest.raises(InputError, match=match) as info:
        _make(np.ones((1, 6)), np.ones((1, 6)), wave=wave)
    assert info.value.path == "bad.fits"


def test_mismatched_flux_and_ivar_raise():
    with pytest.raises(InputError, match=r"bad\.fits: flux shape \(2, 6\) and ivar shape \(1, 6\) differ"):
        _make(np.ones((2, 6)), np.ones((1, 6)))


def test_coordinates_and_attributes():
    ds = _make(np.ones((2, 12)), np.ones((2, 12)), coords={"targetid": np.array([5, 6]), "fiber": np.array([1, 2])})
    assert ds.targetid.dtype == np.int64 and ds.targetid.values.tolist() == [5, 6]
    assert ds.fiber.dims == ("spectrum",)
    assert ds.wavelength.dtype == np.float64 and ds.wavelength.attrs["medium"] == "vacuum"
    assert ds.attrs["schema_version"] == SCHEMA_VERSION and ds.attrs["source_file"] == "bad.fits"
    assert not (ds.ingest_warn.values & IngestWarn.NO_TARGETID).any()
    with pytest.raises(InputError, match="coordinate 'fiber' has shape"):
        _make(np.ones((2, 12)), np.ones((2, 12)), coords={"fiber": np.array([1, 2, 3])})


def test_new_ingest_warn_bits_are_in_the_cf_attributes():
    ds = _make(np.ones((1, 12)), np.ones((1, 12)))
    meanings = ds.ingest_warn.attrs["flag_meanings"].split()
    assert meanings[-3:] == ["FEW_PIXELS", "WAVELENGTH_RANGE", "EXTREME_FLUX"]
    assert ds.ingest_warn.attrs["flag_masks"][-3:] == [32, 64, 128]
    assert ds.ingest_warn.attrs == {**ds.ingest_warn.attrs, **flag_attrs(IngestWarn)}


def test_few_usable_pixels_are_flagged_with_rows_and_targetids():
    ivar = np.ones((4, 12))
    ivar[1, MIN_USABLE_PIXELS - 1:] = 0  # 9 usable pixels
    mask = np.zeros((4, 12), np.uint32)
    mask[2, :3] = SpecMask.INSTRUMENT  # 9 usable: masked pixels do not count
    mask[3, :] = SpecMask.CAMERA_OVERLAP  # informative only: 12 usable
    with pytest.warns(BadSpectrumWarning, match=r"bad\.fits: rows 1, 2 \(targetids 11, 12\): fewer than 10 usable "
                      r"pixels .* flagged FEW_PIXELS"):
        ds = _make(np.ones((4, 12)), ivar, mask=mask, coords={"targetid": np.arange(10, 14)})
    assert ds.sizes["spectrum"] == 4
    few = (ds.ingest_warn.values & IngestWarn.FEW_PIXELS) != 0
    assert few.tolist() == [False, True, True, False]


def test_an_empty_spectrum_is_empty_not_few_pixels():
    ivar = np.ones((2, 12))
    ivar[0] = 0
    with pytest.warns(BadSpectrumWarning, match="no pixel with ivar > 0"):
        ds = _make(np.ones((2, 12)), ivar)
    assert ds.ingest_warn.values[0] & IngestWarn.EMPTY and not ds.ingest_warn.values[0] & IngestWarn.FEW_PIXELS


@pytest.mark.parametrize("factor", [0.1, 1e-4, 10.0])  # nm, um given as Angstrom; Angstrom given as nm
def test_a_wavelength_grid_outside_900_30000_flags_every_row(factor):
    with pytest.warns(BadSpectrumWarning, match=r"bad\.fits: rows 0, 1, 2 \(targetids 7, 8, 9\): wavelengths .* "
                      r"outside 900-30000 A .* WAVELENGTH_RANGE"):
        ds = _make(np.ones((3, 12)), np.ones((3, 12)), wave=WAVE * factor, coords={"targetid": np.array([7, 8, 9])})
    assert ((ds.ingest_warn.values & IngestWarn.WAVELENGTH_RANGE) != 0).all()


def test_flux_beyond_a_million_sigma_is_flagged():
    flux, ivar = np.ones((3, 12)), np.full((3, 12), 4.0)  # sigma 0.5
    flux[0, 3] = 4e6  # 8e6 sigma
    flux[1, 3] = -4e5  # 8e5 sigma: fine
    flux[2, 5] = 1e9  # on a masked pixel: not usable, not looked at
    mask = np.zeros((3, 12), np.uint32)
    mask[2, 5] = SpecMask.INSTRUMENT
    with pytest.warns(BadSpectrumWarning, match=r"bad\.fits: rows 0 \(targetids 1\): \|flux\| above 1e\+06 times"):
        ds = _make(flux, ivar, mask=mask, coords={"targetid": np.array([1, 2, 3])})
    extreme = (ds.ingest_warn.values & IngestWarn.EXTREME_FLUX) != 0
    assert extreme.tolist() == [True, False, False]
    assert float(ds.flux.values[0, 3]) == 4e6  # kept as it is


def test_suspect_spectra_of_good_spectra_is_zero():
    rng = np.random.default_rng(1)
    flux = rng.normal(0.0, 1.0, (5, 100))
    bits = suspect_spectra(4000.0 + np.arange(100.0), flux, np.ones((5, 100)), np.zeros((5, 100), np.uint32))
    assert bits.dtype == np.uint32 and not bits.any()


@settings(max_examples=60, deadline=None)
@given(
    flux=arrays(np.float64, (3, 12), elements=st.floats(allow_nan=True, allow_infinity=True, width=32)),
    ivar=arrays(np.float64, (3, 12), elements=st.floats(allow_nan=True, allow_infinity=True, width=32)),
)
def test_property_output_always_satisfies_the_schema(flux, ivar):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadSpectrumWarning)
        ds = _make(flux, ivar)
    out_ivar, out_flux, mask = ds.ivar.values, ds.flux.values, ds.mask.values
    assert ds.sizes["spectrum"] == 3  # never drops a row
    assert np.all(np.isfinite(out_ivar)) and np.all(out_ivar >= 0)
    assert np.all(np.isfinite(out_flux[out_ivar > 0]))
    assert np.all((mask[out_ivar == 0] & SpecMask.NODATA) != 0)
    assert np.all((ds.ingest_warn.values[~(out_ivar > 0).any(axis=1)] & IngestWarn.EMPTY) != 0)
    usable = (out_ivar > 0).sum(axis=1)
    few = (ds.ingest_warn.values & IngestWarn.FEW_PIXELS) != 0
    assert np.array_equal(few, (usable > 0) & (usable < MIN_USABLE_PIXELS))
