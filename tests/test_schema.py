import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dzspec.errors import BadSpectrumWarning, InputError
from dzspec.schema import SCHEMA_VERSION, IngestWarn, SpecMask, make_spectra_dataset

WAVE = np.linspace(5000.0, 5010.0, 6)


def _make(flux, ivar, wave=WAVE, **kw):
    return make_spectra_dataset(wave, flux, ivar, source_file="bad.fits", reader="test", **kw)


def test_nan_flux_is_flagged_not_dropped():
    flux = np.ones((3, 6))
    flux[1, 2] = np.nan
    flux[2, 0] = np.inf
    with pytest.warns(BadSpectrumWarning, match=r"bad\.fits: rows 1, 2: NaN/inf flux in 2 pixels"):
        ds = _make(flux, np.ones((3, 6)))
    assert ds.sizes["spectrum"] == 3
    assert ds.ivar.values[1, 2] == 0 and ds.flux.values[1, 2] == 0
    assert ds.mask.values[1, 2] == SpecMask.NONFINITE_FLUX | SpecMask.NODATA
    assert ds.ingest_warn.values.tolist()[1] & IngestWarn.NONFINITE_FLUX
    assert not ds.ingest_warn.values[0] & IngestWarn.NONFINITE_FLUX


def test_negative_and_nan_ivar_are_zeroed_and_flagged():
    ivar = np.ones((2, 6))
    ivar[0, 1] = -3.0
    ivar[1, 4] = np.nan
    with pytest.warns(BadSpectrumWarning, match="rows 0, 1: negative, NaN or inf ivar"):
        ds = _make(np.ones((2, 6)), ivar)
    assert ds.ivar.values[0, 1] == 0 and ds.ivar.values[1, 4] == 0
    assert ds.mask.values[0, 1] & SpecMask.BAD_IVAR
    assert (ds.ingest_warn.values & IngestWarn.BAD_IVAR).all()


def test_empty_spectrum_is_kept_and_flagged():
    ivar = np.ones((2, 6))
    ivar[1] = 0
    with pytest.warns(BadSpectrumWarning, match="rows 1: no pixel with ivar > 0"):
        ds = _make(np.ones((2, 6)), ivar)
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
    ds = _make(np.ones((2, 6)), np.ones((2, 6)), coords={"targetid": np.array([5, 6]), "fiber": np.array([1, 2])})
    assert ds.targetid.dtype == np.int64 and ds.targetid.values.tolist() == [5, 6]
    assert ds.fiber.dims == ("spectrum",)
    assert ds.wavelength.dtype == np.float64 and ds.wavelength.attrs["medium"] == "vacuum"
    assert ds.attrs["schema_version"] == SCHEMA_VERSION and ds.attrs["source_file"] == "bad.fits"
    assert not (ds.ingest_warn.values & IngestWarn.NO_TARGETID).any()
    with pytest.raises(InputError, match="coordinate 'fiber' has shape"):
        _make(np.ones((2, 6)), np.ones((2, 6)), coords={"fiber": np.array([1, 2, 3])})


@settings(max_examples=60, deadline=None)
@given(
    flux=arrays(np.float64, (3, 6), elements=st.floats(allow_nan=True, allow_infinity=True, width=32)),
    ivar=arrays(np.float64, (3, 6), elements=st.floats(allow_nan=True, allow_infinity=True, width=32)),
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
