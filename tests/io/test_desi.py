"""DESI reader: the real coadds compared value by value with astropy, plus synthetic edge cases."""

import numpy as np
import pytest
from astropy.io import fits

from dzspec.errors import BadSpectrumWarning, InputError
from dzspec.io.desi import DESI_GRID_NAME, read_desi
from dzspec.schema import INSTRUMENTS, SURVEYS, IngestWarn, SpecMask
from tests.conftest import shared_file

FASTSPEC = "desi_fastspecfit/coadd-4-80613-thru20210324.fits"
QUASARNP = "desi_quasarnp_everest/coadd-0-80605-first25fibers.fits"


def _index(wave):
    return np.rint((np.asarray(wave) - 3600.0) / 0.8).astype(int)


@pytest.fixture(scope="module")
def fastspec():
    path = shared_file(FASTSPEC)
    with fits.open(path) as hdul:
        raw = {hdu.name: np.array(hdu.data) for hdu in hdul if hdu.name != "PRIMARY"}
    return read_desi(path, keep_resolution=True), raw


def test_real_coadd_grid_and_metadata(fastspec):
    ds, raw = fastspec
    assert ds.sizes == {"spectrum": 1, "wavelength": 7781, "diagonal": 11}
    assert ds.wavelength[0] == 3600.0 and ds.wavelength[-1] == pytest.approx(9824.0, abs=1e-9)
    assert ds.attrs["grid_name"] == DESI_GRID_NAME and ds.attrs["medium_original"] == "vacuum"
    assert ds.wavelength.attrs["step"] == 0.8
    fibermap = raw["FIBERMAP"]
    assert int(ds.targetid[0]) == 39633345008634465 == fibermap["TARGETID"][0]
    assert float(ds.ra[0]) == fibermap["TARGET_RA"][0] and float(ds.dec[0]) == fibermap["TARGET_DEC"][0]
    assert float(ds.exptime[0]) == pytest.approx(fibermap["COADD_EXPTIME"][0])
    assert int(ds.nexp[0]) == 30 and ds.nexp.dtype == np.int16
    assert int(ds.coadd_fiberstatus[0]) == fibermap["COADD_FIBERSTATUS"][0]
    assert float(ds.flux_g[0]) == pytest.approx(fibermap["FLUX_G"][0])
    assert "objtype" not in ds.coords and "brickname" not in ds.coords  # strings are skipped
    assert int(ds.survey[0]) == SURVEYS.index("desi") and int(ds.instrument[0]) == INSTRUMENTS.index("desi")
    assert int(ds.ingest_warn[0]) == 0


def test_real_coadd_single_camera_ranges_equal_the_file(fastspec):
    ds, raw = fastspec
    flux, ivar = ds.flux.values[0], ds.ivar.values[0]
    b, r, z = (_index(raw[f"{c}_WAVELENGTH"]) for c in "BRZ")
    b_only, r_only, z_only = b[b < r[0]], r[(r > b[-1]) & (r < z[0])], z[z > r[-1]]
    assert (b_only.size, r_only.size, z_only.size) == (2700, 2149, 2755)
    np.testing.assert_array_equal(flux[b_only], raw["B_FLUX"][0, : b_only.size])
    np.testing.assert_array_equal(ivar[b_only], raw["B_IVAR"][0, : b_only.size])
    np.testing.assert_array_equal(flux[r_only], raw["R_FLUX"][0, r_only - r[0]])
    np.testing.assert_array_equal(flux[z_only], raw["Z_FLUX"][0, z_only - z[0]])
    np.testing.assert_array_equal(ivar[z_only], raw["Z_IVAR"][0, z_only - z[0]])
    np.testing.assert_array_equal(ds.resolution.values[0][:, b_only], raw["B_RESOLUTION"][0][:, : b_only.size])


@pytest.mark.parametrize(("first", "second", "npix"), [("B", "R", 51), ("R", "Z", 126)])
def test_real_coadd_overlaps_are_ivar_weighted(fastspec, first, second, npix):
    ds, raw = fastspec
    i1, i2 = _index(raw[f"{first}_WAVELENGTH"]), _index(raw[f"{second}_WAVELENGTH"])
    common = np.intersect1d(i1, i2)
    assert common.size == npix
    f1, w1 = (raw[f"{first}_{k}"][0, common - i1[0]].astype(float) for k in ("FLUX", "IVAR"))
    f2, w2 = (raw[f"{second}_{k}"][0, common - i2[0]].astype(float) for k in ("FLUX", "IVAR"))
    np.testing.assert_allclose(ds.flux.values[0, common], (w1 * f1 + w2 * f2) / (w1 + w2), rtol=1e-5)
    np.testing.assert_allclose(ds.ivar.values[0, common], w1 + w2, rtol=1e-6)
    r1 = raw[f"{first}_RESOLUTION"][0][:, common - i1[0]]
    r2 = raw[f"{second}_RESOLUTION"][0][:, common - i2[0]]
    np.testing.assert_allclose(ds.resolution.values[0][:, common], (w1 * r1 + w2 * r2) / (w1 + w2), rtol=1e-5)
    overlap = (ds.mask.values[0] & SpecMask.CAMERA_OVERLAP) != 0
    assert overlap[common].all()


def test_real_coadd_mask_bits(fastspec):
    ds, _ = fastspec
    mask = ds.mask.values[0]
    assert int(((mask & SpecMask.CAMERA_OVERLAP) != 0).sum()) == 51 + 126
    assert not (mask & (SpecMask.NO_COVERAGE | SpecMask.INSTRUMENT)).any()


def test_quasarnp_file_without_fibermap_or_mask():
    path = shared_file(QUASARNP)
    with pytest.warns(BadSpectrumWarning, match=r"rows 11: no pixel with ivar > 0"):
        ds = read_desi(path)
    assert ds.sizes == {"spectrum": 25, "wavelength": 7781}
    assert ds.attrs["grid_name"] == DESI_GRID_NAME
    assert (ds.targetid.values == -1).all()
    assert (ds.ingest_warn.values & IngestWarn.NO_TARGETID).all()
    assert ds.ingest_warn.values[11] & IngestWarn.EMPTY
    with fits.open(path) as hdul:
        b_flux = hdul["B_FLUX"].data
        z_ivar, z_flux = hdul["Z_IVAR"].data, hdul["Z_FLUX"].data
    np.testing.assert_array_equal(ds.flux.values[:, :2700], b_flux[:, :2700])
    np.testing.assert_array_equal(ds.flux.values[:, -2755:], z_flux[:, -2755:])
    assert (ds.ivar.values[11] == 0).all() and (ds.mask.values[11] & SpecMask.NODATA).all()
    assert ds.ivar.values[0, -1] == z_ivar[0, -1] == 0  # the one zero-ivar Z pixel of row 0
    with pytest.raises(InputError, match="no B_RESOLUTION HDU"):
        read_desi(path, keep_resolution=True)


# ------------------------------------------------------------------------------------------------------------
# Synthetic files
# ------------------------------------------------------------------------------------------------------------


def write_desi(path, cameras, nspec=2, *, fibermap=None, drop=(), mutate=None, seed=1):
    """Write a small DESI-like file; ``cameras`` maps name -> (first lattice index, npix)."""
    rng = np.random.default_rng(seed)
    hdus = [fits.PrimaryHDU()]
    arrays = {}
    for cam, (start, npix) in cameras.items():
        arrays[f"{cam}_WAVELENGTH"] = 3600.0 + 0.8 * np.arange(start, start + npix)
        arrays[f"{cam}_FLUX"] = rng.normal(5, 1, (nspec, npix)).astype("f4")
        arrays[f"{cam}_IVAR"] = rng.uniform(0.5, 2, (nspec, npix)).astype("f4")
        arrays[f"{cam}_MASK"] = np.zeros((nspec, npix), "i4")
        arrays[f"{cam}_RESOLUTION"] = rng.uniform(0, 1, (nspec, 11, npix)).astype("f4")
    if mutate:
        mutate(arrays)
    for name, data in arrays.items():
        if name not in drop:
            hdus.append(fits.ImageHDU(data, name=name))
    if fibermap is not None:
        hdus.append(fits.BinTableHDU(fibermap, name="FIBERMAP"))
    fits.HDUList(hdus).writeto(path)
    return arrays


def test_instrument_mask_in_overlaps(tmp_path):
    cams = {"B": (0, 20), "R": (15, 20)}  # overlap: lattice pixels 15..19

    def mutate(a):
        a["B_MASK"][0, 15] = 4  # one camera masked: the other one alone
        a["B_MASK"][0, 16] = a["R_MASK"][0, 1] = 1  # both masked: INSTRUMENT
        a["B_MASK"][0, 3] = 8  # single camera masked: INSTRUMENT

    a = write_desi(tmp_path / "coadd.fits", cams, mutate=mutate)
    ds = read_desi(tmp_path / "coadd.fits")
    assert ds.sizes["wavelength"] == 35 and ds.attrs["grid_name"].startswith("lin-3600.0-3627.2-35-")
    flux, ivar, mask = ds.flux.values[0], ds.ivar.values[0], ds.mask.values[0]
    assert flux[15] == a["R_FLUX"][0, 0] and ivar[15] == a["R_IVAR"][0, 0]
    assert not mask[15] & (SpecMask.INSTRUMENT | SpecMask.CAMERA_OVERLAP)
    assert mask[16] & SpecMask.INSTRUMENT and ivar[16] == 0
    assert mask[3] & SpecMask.INSTRUMENT and ivar[3] == 0 and flux[3] == a["B_FLUX"][0, 3]
    w1, w2 = a["B_IVAR"][0, 17].astype(float), a["R_IVAR"][0, 2].astype(float)
    assert flux[17] == pytest.approx((w1 * a["B_FLUX"][0, 17] + w2 * a["R_FLUX"][0, 2]) / (w1 + w2), rel=1e-6)
    assert mask[17] & SpecMask.CAMERA_OVERLAP
    assert (mask[[17, 18, 19]] & SpecMask.CAMERA_OVERLAP).all()  # row 1 untouched: full overlap
    assert ((ds.mask.values[1] & SpecMask.CAMERA_OVERLAP) != 0).sum() == 5


def test_gap_between_cameras_is_no_coverage(tmp_path):
    write_desi(tmp_path / "coadd.fits", {"B": (0, 10), "Z": (20, 10)})
    ds = read_desi(tmp_path / "coadd.fits")
    mask = ds.mask.values
    assert ds.sizes["wavelength"] == 30
    assert (mask[:, 10:20] & SpecMask.NO_COVERAGE).all() and (ds.ivar.values[:, 10:20] == 0).all()
    assert not (mask[:, :10] & SpecMask.NO_COVERAGE).any()


def test_b_and_z_only_still_get_the_standard_grid(tmp_path):
    write_desi(tmp_path / "coadd.fits", {"B": (0, 2751), "Z": (4900, 2881)}, nspec=1, drop=("B_RESOLUTION",))
    ds = read_desi(tmp_path / "coadd.fits")
    assert ds.attrs["grid_name"] == DESI_GRID_NAME and ds.sizes["wavelength"] == 7781
    assert (ds.mask.values[0, 2751:4900] & SpecMask.NO_COVERAGE).all()


def test_resolution_weighted_in_overlap_and_plain_where_unweighted(tmp_path):
    def mutate(a):
        a["B_IVAR"][:, 6] = 0.0
        a["R_IVAR"][:, 1] = 0.0  # pixel 6: no camera has weight

    a = write_desi(tmp_path / "c.fits", {"B": (0, 8), "R": (5, 8)}, mutate=mutate)
    ds = read_desi(tmp_path / "c.fits", keep_resolution=True)
    res = ds.resolution.values
    assert res.dtype == np.float32 and res.shape == (2, 11, 13)
    np.testing.assert_allclose(res[:, :, 6], (a["B_RESOLUTION"][:, :, 6] + a["R_RESOLUTION"][:, :, 1]) / 2, rtol=1e-6)
    w1, w2 = a["B_IVAR"][:, 7, None].astype(float), a["R_IVAR"][:, 2, None].astype(float)
    expected = (w1 * a["B_RESOLUTION"][:, :, 7] + w2 * a["R_RESOLUTION"][:, :, 2]) / (w1 + w2)
    np.testing.assert_allclose(res[:, :, 7], expected, rtol=1e-6)


def test_fibermap_numeric_columns_and_spectra_exptime(tmp_path):
    fibermap = np.zeros(
        2,
        dtype=[
            ("TARGETID", "i8"),
            ("TARGET_RA", "f8"),
            ("TARGET_DEC", "f8"),
            ("EXPTIME", "f4"),
            ("FIBER", "i4"),
            ("OBJTYPE", "S3"),
            ("FLUX_IVAR", "f4", (3,)),
        ],
    )
    fibermap["TARGETID"] = [11, 12]
    fibermap["EXPTIME"] = [900.0, 1200.0]
    fibermap["FIBER"] = [3, 4]
    write_desi(tmp_path / "spectra-x.fits", {"B": (0, 10)}, fibermap=fibermap)
    ds = read_desi(tmp_path / "spectra-x.fits")
    assert list(ds.targetid.values) == [11, 12] and list(ds.exptime.values) == [900.0, 1200.0]
    assert list(ds.fiber.values) == [3, 4]
    assert "objtype" not in ds.coords and "flux_ivar" not in ds.coords and "nexp" not in ds.coords


def test_fibermap_row_count_must_match(tmp_path):
    fibermap = np.zeros(3, dtype=[("TARGETID", "i8")])
    write_desi(tmp_path / "c.fits", {"B": (0, 10)}, fibermap=fibermap)
    with pytest.raises(InputError, match=r"c\.fits: FIBERMAP has 3 rows but the flux HDUs have 2 spectra"):
        read_desi(tmp_path / "c.fits")


def test_off_lattice_wavelengths_are_refused(tmp_path):
    def mutate(a):
        a["R_WAVELENGTH"] = a["R_WAVELENGTH"] + 0.3

    write_desi(tmp_path / "c.fits", {"B": (0, 10), "R": (8, 10)}, mutate=mutate)
    with pytest.raises(InputError, match=r"c\.fits: camera R: pixel 0 .* off the DESI lattice.*does not resample"):
        read_desi(tmp_path / "c.fits")


def test_shape_mismatch_is_refused(tmp_path):
    def mutate(a):
        a["B_IVAR"] = a["B_IVAR"][:, :-1]

    write_desi(tmp_path / "c.fits", {"B": (0, 10)}, mutate=mutate)
    with pytest.raises(InputError, match=r"c\.fits: B_IVAR has shape \(2, 9\), expected \(2, 10\)"):
        read_desi(tmp_path / "c.fits")


def test_unflagged_nan_flux_is_reported_flagged_nan_is_not(tmp_path):
    def mutate(a):
        a["B_FLUX"][0, 2] = np.nan  # not masked: reported
        a["B_FLUX"][1, 4] = np.nan
        a["B_MASK"][1, 4] = 2  # masked by the pipeline: quiet

    write_desi(tmp_path / "c.fits", {"B": (0, 12)}, mutate=mutate)
    with pytest.warns(BadSpectrumWarning, match=r"rows 0: NaN/inf flux in 1 pixels"):
        ds = read_desi(tmp_path / "c.fits")
    assert ds.mask.values[0, 2] & SpecMask.NONFINITE_FLUX and ds.flux.values[0, 2] == 0
    assert ds.mask.values[1, 4] & SpecMask.INSTRUMENT and not ds.mask.values[1, 4] & SpecMask.NONFINITE_FLUX
    warned = ds.ingest_warn.values & IngestWarn.NONFINITE_FLUX
    assert warned[0] and not warned[1]


def test_negative_ivar_is_reported(tmp_path):
    def mutate(a):
        a["R_IVAR"][1, 0] = -1.0

    write_desi(tmp_path / "c.fits", {"B": (0, 10), "R": (8, 10)}, mutate=mutate)
    with pytest.warns(BadSpectrumWarning, match=r"rows 1: negative, NaN or inf ivar"):
        ds = read_desi(tmp_path / "c.fits")
    assert ds.mask.values[1, 8] & SpecMask.BAD_IVAR and ds.ivar.values[1, 8] == 0


def test_truncated_file_is_an_input_error(tmp_path):
    write_desi(tmp_path / "full.fits", {"B": (0, 300), "R": (250, 300), "Z": (500, 300)}, nspec=4)
    data = (tmp_path / "full.fits").read_bytes()
    (tmp_path / "cut.fits").write_bytes(data[: int(len(data) * 0.7)])
    with pytest.raises(InputError, match=r"cut\.fits: truncated or corrupt FITS file"):
        read_desi(tmp_path / "cut.fits")
