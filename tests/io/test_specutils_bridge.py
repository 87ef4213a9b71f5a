"""The specutils bridge: Spectrum / SpectrumCollection / SpectrumList into a store and back, units included."""

import warnings

import numpy as np
import pytest

pytest.importorskip("specutils")

import astropy.units as u
from astropy.constants import c
from astropy.nddata import InverseVariance, StdDevUncertainty, VarianceUncertainty
from specutils import SpectrumCollection, SpectrumList

import dzspec
from dzspec.errors import BadSpectrumWarning
from dzspec.io import store as zstore
from dzspec.io.specutils_bridge import (
    datasets_from_specutils,
    flux_unit,
    from_specutils,
    spectrum_class,
    to_specutils,
)
from dzspec.kernels.airvac import air_to_vacuum
from dzspec.kernels.simulate.muse import MUSE_GRID_NAME, muse_wavelength
from dzspec.schema import IngestWarn, SpecMask

Spectrum = spectrum_class()
F32 = {"rtol": 2e-7, "atol": 0}  # float32 storage: one rounding


def _fnu_spectrum(rng):
    """Three spectra in erg/s/cm2/Hz on a nm axis, sigma as StdDev, two masked pixels, targetid and z_true."""
    wave_nm = np.linspace(480.0, 560.0, 301)
    fnu = rng.uniform(1.0, 3.0, (3, 301)) * 1e-28
    sigma = fnu * rng.uniform(0.05, 0.2, fnu.shape)
    mask = np.zeros(fnu.shape, bool)
    mask[0, 10] = mask[2, 200] = True
    fnu[2, 200] = np.nan  # a masked NaN is "no data", not a bad value
    unit = u.erg / u.s / u.cm**2 / u.Hz
    spec = Spectrum(flux=fnu * unit, spectral_axis=wave_nm * u.nm, uncertainty=StdDevUncertainty(sigma * unit),
                    mask=mask, meta={"targetid": np.array([7, 8, 9]), "z_true": np.array([0.1, 0.2, np.nan]),
                                     "exptime": 1800.0})
    return spec, wave_nm, fnu, sigma, mask


def test_round_trip_with_a_per_hz_flux_and_a_nm_axis(tmp_path):
    spec, wave_nm, fnu, sigma, mask = _fnu_spectrum(np.random.default_rng(1))
    rows = from_specutils(spec, tmp_path / "s.zarr", medium="vacuum")
    (group, written), = rows.items()
    assert written == range(0, 3) and group.startswith("spectra/lin-4800.0-5600.0-301")

    back = to_specutils(tmp_path / "s.zarr")
    wave = wave_nm * 10.0
    np.testing.assert_allclose(back.spectral_axis.to_value(u.AA), wave, rtol=1e-15)
    per_angstrom = (c.cgs.value * 1e8 / wave**2) / 1e-17  # erg/s/cm2/Hz -> 1e-17 erg/s/cm2/A
    expected_flux = np.where(np.isnan(fnu), 0.0, fnu * per_angstrom)  # masked pixels keep a finite flux
    expected_ivar = np.where(mask, 0.0, 1.0 / (sigma * per_angstrom) ** 2)
    assert back.flux.unit == flux_unit() and isinstance(back.uncertainty, InverseVariance)
    np.testing.assert_allclose(back.flux.value, expected_flux, **F32)
    np.testing.assert_allclose(back.uncertainty.array, expected_ivar, **F32)
    assert back.uncertainty.unit == flux_unit() ** -2
    np.testing.assert_array_equal(back.mask, mask)
    bits = back.meta["dzspec_mask"]
    assert (bits[mask] & SpecMask.INSTRUMENT).all() and not bits[~mask].any()
    assert back.meta["targetid"].tolist() == [7, 8, 9] and back.meta["exptime"].tolist() == [1800.0] * 3
    np.testing.assert_array_equal(back.meta["z_true"], [0.1, 0.2, np.nan])

    # and round again, from the Spectrum to_specutils made: the same bytes, in a group of the same name
    again = from_specutils(back, tmp_path / "t.zarr")
    assert list(again) == [group]
    first, second = (zstore.open_spectra(tmp_path / name).compute() for name in ("s.zarr", "t.zarr"))
    for name in ("wavelength", "flux", "ivar", "mask", "targetid", "z_true", "exptime", "ingest_warn", "survey"):
        np.testing.assert_array_equal(second[name].values, first[name].values, err_msg=name)


@pytest.mark.parametrize("kind", ["variance", "inverse"])
def test_si_flux_per_micron_and_variance_uncertainties(tmp_path, kind):
    wave = np.linspace(6000.0, 6100.0, 51)
    flambda = np.full((1, 51), 2e-19)  # W/m2/um; 1 W/m2/um = 1e-4 erg/s/cm2/A... per micron: 1e-1 erg/s/cm2/A
    var = np.full((1, 51), 4e-42)
    unit = u.W / u.m**2 / u.um
    uncertainty = VarianceUncertainty(var * unit**2) if kind == "variance" else InverseVariance(1 / var * unit**-2)
    spec = Spectrum(flux=flambda * unit, spectral_axis=wave * u.AA, uncertainty=uncertainty)
    (ds,) = datasets_from_specutils(spec, medium="vacuum")
    # 1 W/m2/um = 1e7 erg/s / 1e4 cm2 / 1e4 A = 0.1 erg/s/cm2/A = 1e16 x 1e-17
    np.testing.assert_allclose(ds.flux.values, 2e-19 * 1e16, **F32)
    np.testing.assert_allclose(ds.ivar.values, 1 / (4e-42 * 1e32), **F32)


def test_a_spectrum_list_on_two_grids_makes_two_groups(tmp_path):
    unit = flux_unit()
    a = Spectrum(flux=np.ones((2, 40)) * unit, spectral_axis=np.linspace(5000.0, 5039.0, 40) * u.AA,
                 uncertainty=InverseVariance(np.ones((2, 40))), meta={"targetid": [1, 2]})
    b = Spectrum(flux=np.ones(60) * 2 * unit, spectral_axis=np.linspace(7000.0, 7059.0, 60) * u.AA,
                 uncertainty=StdDevUncertainty(np.full(60, 0.5)), meta={"targetid": 3})
    c_ = Spectrum(flux=np.ones(40) * 3 * unit, spectral_axis=np.linspace(5000.0, 5039.0, 40) * u.AA,
                  uncertainty=InverseVariance(np.ones(40)), meta={"targetid": 4})
    rows = from_specutils(SpectrumList([a, b, c_]), tmp_path / "s.zarr", medium="vacuum")
    assert sorted(len(r) for r in rows.values()) == [1, 3] and len(rows) == 2
    root = zstore.open_root(tmp_path / "s.zarr")
    assert sorted(zstore.spectra_groups(root)) == sorted(rows)
    first = next(g for g, r in rows.items() if len(r) == 3)
    assert root[first]["targetid"][:].tolist() == [1, 2, 4]  # input order within the group
    assert root[first]["flux"][:, 0].tolist() == [1.0, 1.0, 3.0]
    second = next(g for g, r in rows.items() if len(r) == 1)
    assert root[second]["ivar"][0, 0] == 4.0 and root[second]["targetid"][0] == 3

    # the same spectra again: skipped (their hash is in the manifest), nothing appended
    assert from_specutils(SpectrumList([a, b, c_]), tmp_path / "s.zarr", medium="vacuum") == rows
    assert root[first]["flux"].shape[0] == 3
    # new spectra on a grid already there are appended to its group
    more = from_specutils(c_, tmp_path / "s.zarr", medium="vacuum", coords={"targetid": [5]})
    assert more == {first: range(3, 4)} and len(zstore.manifest_of(root[first])) == 2


def test_a_spectrum_collection_and_duplicate_targetids(tmp_path):
    wave = np.vstack([np.linspace(5000.0, 5099.0, 100)] * 2) * u.AA
    sc = SpectrumCollection(flux=np.ones((2, 100)) * flux_unit(), spectral_axis=wave,
                            uncertainty=StdDevUncertainty(np.ones((2, 100))), meta={"targetid": np.array([5, 5])})
    with pytest.warns(BadSpectrumWarning, match="targetids occur more than once"):
        rows = from_specutils(sc, tmp_path / "s.zarr", medium="vacuum")
    (group,) = rows
    warn = zstore.open_root(tmp_path / "s.zarr")[group]["ingest_warn"][:]
    assert (warn & IngestWarn.DUPLICATE_TARGETID).all()


def test_missing_uncertainty_is_an_error_unless_estimated():
    rng = np.random.default_rng(0)
    spec = Spectrum(flux=rng.normal(10.0, 2.0, 3000) * flux_unit(),
                    spectral_axis=np.linspace(5000, 7999, 3000) * u.AA)
    with pytest.raises(ValueError, match="no uncertainty"):
        datasets_from_specutils(spec)
    (ds,) = datasets_from_specutils(spec, missing_uncertainty="estimate", medium="vacuum")
    assert ds.attrs["ivar_estimated"]
    np.testing.assert_allclose(ds.ivar.values, 1 / 2.0**2, rtol=0.1)


def test_units_axes_and_media():
    ones = np.ones(12)  # at least 10 usable pixels: no FEW_PIXELS warning
    # no physical flux unit: an error naming flux_unit=, which then says what it is
    bare = Spectrum(flux=ones * u.dimensionless_unscaled, spectral_axis=np.arange(5000.0, 5012.0) * u.AA,
                    uncertainty=InverseVariance(ones))
    with pytest.raises(ValueError, match="flux_unit="):
        datasets_from_specutils(bare, medium="vacuum")
    (ds,) = datasets_from_specutils(bare, flux_unit="1e-20 erg / (s cm2 Angstrom)", medium="vacuum")
    np.testing.assert_allclose(ds.flux.values, 1e-3, **F32)
    np.testing.assert_allclose(ds.ivar.values, 1e6, rtol=1e-6)
    # a frequency axis runs backwards in wavelength: reversed
    freq = Spectrum(flux=np.arange(12.0) * u.mJy, spectral_axis=np.linspace(500.0, 600.0, 12) * u.THz,
                    uncertainty=StdDevUncertainty(ones * u.mJy))
    (ds,) = datasets_from_specutils(freq, medium="vacuum")
    assert np.all(np.diff(ds.wavelength.values) > 0)
    assert ds.flux.values[0, 0] > 0 and ds.flux.values[0, -1] == 0  # 600 THz (11 mJy) first, 500 THz (0) last
    # air wavelengths become vacuum; a MUSE grid is recognised whatever its last bits
    air = 4750.0 + 1.25 * np.arange(3681)
    spec = Spectrum(flux=np.ones(3681) * flux_unit(), spectral_axis=air * u.AA,
                    uncertainty=InverseVariance(np.ones(3681)))
    (ds,) = datasets_from_specutils(spec, medium="air")
    assert ds.attrs["grid_name"] == MUSE_GRID_NAME and ds.attrs["medium_original"] == "air"
    np.testing.assert_array_equal(ds.wavelength.values, muse_wavelength())
    np.testing.assert_allclose(ds.wavelength.values, air_to_vacuum(air), rtol=1e-12)
    (ds,) = datasets_from_specutils(spec, survey="muse")  # MUSE spectra are in air unless said otherwise
    assert ds.attrs["grid_name"] == MUSE_GRID_NAME and ds.attrs["medium_assumed"]


def test_a_muse_axis_from_a_fits_wcs_is_named_and_valued_as_the_muse_reader_does():
    from astropy.io import fits
    from astropy.wcs import WCS

    from dzspec.io.muse import muse_wavelength as wavelength_of_header

    header = fits.Header({"NAXIS": 1, "NAXIS1": 3721, "CTYPE1": "AWAV", "CUNIT1": "Angstrom", "CRVAL1": 4700.0,
                          "CRPIX1": 1.0, "CDELT1": 1.25})
    spec = Spectrum(flux=np.ones(3721) * 1e-20 * u.erg / u.s / u.cm**2 / u.AA, wcs=WCS(header),
                    uncertainty=VarianceUncertainty(np.ones(3721) * 1e-40))
    (ds,) = datasets_from_specutils(spec)  # AWAV: air, from the WCS
    wave, info = wavelength_of_header(header)
    assert ds.attrs["grid_name"] == info["grid_name"] == "muse-air2vac-4700-1.25-3721"
    np.testing.assert_array_equal(ds.wavelength.values, wave)
    np.testing.assert_allclose(ds.flux.values, 1e-3, **F32)


def test_bad_uncertainties_are_flagged_and_rows_selected(tmp_path):
    sigma = np.ones((2, 30))
    sigma[1, 3] = 0.0  # a zero sigma is a bad value
    sigma[1, 4] = np.inf  # an infinite one means no data
    spec = Spectrum(flux=np.ones((2, 30)) * flux_unit(), spectral_axis=np.linspace(5000, 5029, 30) * u.AA,
                    uncertainty=StdDevUncertainty(sigma), meta={"targetid": [1, 2]})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from_specutils(spec, tmp_path / "s.zarr", medium="vacuum")
    assert any("BAD_IVAR" in str(w.message) for w in caught)
    one = dzspec.to_specutils(tmp_path / "s.zarr", [1])
    assert one.flux.shape == (1, 30) and one.meta["targetid"].tolist() == [2]
    assert one.uncertainty.array[0, 3] == 0 and one.meta["dzspec_mask"][0, 3] & SpecMask.BAD_IVAR
    assert one.uncertainty.array[0, 4] == 0 and one.mask[0, 3] and one.mask[0, 4] and not one.mask[0, 5]
    assert dzspec.io.to_specutils is to_specutils and dzspec.from_specutils is from_specutils
