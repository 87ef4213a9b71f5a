"""Acceptance: the real DESI, MUSE and SDSS files of ../shared/data ingest into one valid store whose values
match the files."""

import numpy as np
import pytest
import xarray as xr
from astropy.io import fits

from dzspec.cluster import make_client
from dzspec.errors import BadSpectrumWarning
from dzspec.io import store as zstore
from dzspec.io.registry import read_spectra
from dzspec.io.validate import validate_store
from dzspec.kernels.airvac import air_to_vacuum
from dzspec.kernels.summary import SUMMARY
from dzspec.parallel.ingest import ingest
from dzspec.parallel.runner import run_kernel

pytestmark = pytest.mark.cluster

REAL_FILES = [
    "desi_fastspecfit/coadd-4-80613-thru20210324.fits",
    "desi_fastspecfit/coadd-special-dark-27247.fits",
    "desi_quasarnp_everest/coadd-0-80605-first25fibers.fits",
    "muse_udf_format/DR2_001032.fits",
    "muse_udf_format/mosaic_01102.fits",
    "muse_mpdaf_cubes/minicube_A478.fits.gz",
    "muse_mpdaf_cubes/subcub_mosaic_udf.fits.gz",
    "sdss_legac_ppxf/NGC3073_SDSS_DR18.fits",
    "sdss_legac_ppxf/NGC3522_SDSS_DR18.fits",
    "sdss_legac_ppxf/legac_M19_56670_v3.0.fits",
]


@pytest.fixture(scope="module")
def real_store(tmp_path_factory, shared_data):
    paths = [shared_data / name for name in REAL_FILES]
    store = tmp_path_factory.mktemp("real") / "real.zarr"
    with make_client(n_workers=1, processes=False) as client:
        with pytest.warns(BadSpectrumWarning, match=r"coadd-0-80605-first25fibers\.fits: rows 11: no pixel"):
            report = ingest(paths, store, client, progress=False)
        assert report.ok, report.summary()
        rerun = ingest(paths, store, client, progress=False)
        assert len(rerun.skipped) == len(paths) and not rerun.ingested
        run = run_kernel(store, SUMMARY, client, group=_group_of(store, "desi-brz"), progress=False)
        assert run.complete
    return store, report, paths


def _group_of(store, prefix):
    return next(g for g in zstore.spectra_groups(zstore.open_root(store)) if g.startswith(f"spectra/{prefix}"))


def test_every_spectrum_of_every_file_is_in_the_store(real_store):
    _, report, paths = real_store
    assert set(report.ingested) == {str(p) for p in paths}
    assert report.ingested[str(paths[5])] == 1600  # every spaxel of the 40 x 40 cube
    assert report.ingested[str(paths[2])] == 25
    assert sum(report.groups.values()) == sum(report.ingested.values())


def test_store_is_valid(real_store):
    store, _, _ = real_store
    errors = [p for p in validate_store(store) if p.severity == "error"]
    assert errors == []


def test_values_match_the_readers_and_the_files(real_store):
    store, _, _ = real_store
    root = zstore.open_root(store)
    for group_path in zstore.spectra_groups(root):
        ds = xr.open_zarr(str(store), group=group_path, consolidated=False)
        assert ds.flux.chunks is not None  # lazy (dask-backed)
        manifest = ds.attrs["manifest"]
        for code, entry in enumerate(manifest):
            rows = np.flatnonzero(ds.source_file.values == code)
            assert rows.size == entry["nrows"]
            direct = read_spectra(entry["path"], entry["reader"]) if "first25" not in entry["path"] else None
            if direct is None:
                with pytest.warns(BadSpectrumWarning):
                    direct = read_spectra(entry["path"], entry["reader"])
            stored = ds.isel(spectrum=rows).compute()
            np.testing.assert_array_equal(stored.wavelength.values, direct.wavelength.values)
            for name in ("flux", "ivar", "mask", "targetid"):
                np.testing.assert_array_equal(stored[name].values, direct[name].values, err_msg=f"{entry['path']}")


def test_desi_b_arm_and_muse_pixels_equal_the_raw_fits(real_store, shared_data):
    store, _, paths = real_store
    desi = zstore.open_spectra(store, _group_of(store, "desi-brz"))
    with fits.open(paths[0]) as hdul:
        b_flux, b_wave = hdul["B_FLUX"].data[0], hdul["B_WAVELENGTH"].data
        targetid = hdul["FIBERMAP"].data["TARGETID"][0]
    row = int(np.flatnonzero(desi.targetid.values == targetid)[0])
    only_b = b_wave < 5760.0 - 0.4
    np.testing.assert_allclose(desi.wavelength.values[: only_b.sum()], b_wave[only_b], atol=1e-4)
    np.testing.assert_array_equal(desi.flux.values[row, : only_b.sum()], b_flux[only_b].astype(np.float32))

    with fits.open(paths[4]) as hdul:
        data, header = hdul["DATA"].data, hdul["DATA"].header
    root = zstore.open_root(store)
    muse_group = next(g for g in zstore.spectra_groups(root)
                      if any(e["path"] == str(paths[4]) for e in zstore.manifest_of(root[g])))
    muse = zstore.open_spectra(store, muse_group)
    assert muse.wavelength.values[0] == pytest.approx(air_to_vacuum(np.array([header["CRVAL1"]]))[0], abs=1e-9)
    manifest_code = next(i for i, e in enumerate(muse.attrs["manifest"]) if e["path"] == str(paths[4]))
    row = int(np.flatnonzero(muse.source_file.values == manifest_code)[0])
    good = np.isfinite(data)
    np.testing.assert_allclose(muse.flux.values[row][good], data[good] * 1e-3, rtol=1e-6)


def test_kernel_ran_over_the_real_desi_spectra(real_store):
    store, _, _ = real_store
    group = _group_of(store, "desi-brz")
    results = zstore.open_results(store, f"results/{group.removeprefix('spectra/')}/summary").compute()
    spectra = zstore.open_spectra(store, group)
    assert results.sizes["spectrum"] == spectra.sizes["spectrum"] == 27
    np.testing.assert_array_equal(results.ngood.values, (spectra.ivar.values > 0).sum(axis=1))


def test_desi_resolution_is_kept_on_request_with_smaller_chunks(tmp_path, shared_data):
    path = shared_data / REAL_FILES[0]
    store = tmp_path / "res.zarr"
    with make_client(n_workers=1, processes=False) as client:
        report = ingest([path], store, client, options={"desi": {"keep_resolution": True}}, progress=False)
    assert report.ok, report.summary()
    ds = zstore.open_spectra(store)
    direct = read_spectra(path, "desi", keep_resolution=True)
    assert ds.resolution.dims == ("spectrum", "diagonal", "wavelength")
    np.testing.assert_array_equal(ds.resolution.values, direct.resolution.values)
    flux_rows, resolution_rows = ds.flux.encoding["chunks"][0], ds.resolution.encoding["chunks"][0]
    assert flux_rows % resolution_rows == 0
    assert resolution_rows * 11 * ds.sizes["wavelength"] * 4 <= 64 * 2**20


def _without_rows(source, target):
    """A copy of a DESI coadd with every per-spectrum HDU cut to zero rows (wavelengths and headers kept)."""
    with fits.open(source) as hdul:
        out = [fits.PrimaryHDU(header=hdul[0].header)]
        for hdu in hdul[1:]:
            if isinstance(hdu, fits.BinTableHDU):
                out.append(fits.BinTableHDU(hdu.data[:0], header=hdu.header, name=hdu.name))
            elif hdu.data is not None and hdu.data.ndim >= 2:
                out.append(fits.ImageHDU(hdu.data[:0], header=hdu.header, name=hdu.name))
            else:
                out.append(fits.ImageHDU(hdu.data, header=hdu.header, name=hdu.name))
        fits.HDUList(out).writeto(target)
    return target


def test_a_file_without_spectra_is_named_and_skipped_and_the_others_ingested(tmp_path, shared_data, capsys):
    from dzspec.cli import main
    from dzspec.errors import SkippedInputWarning

    real = shared_data / REAL_FILES[0]
    empty = _without_rows(real, tmp_path / "coadd-empty.fits")
    assert read_spectra(empty).sizes["spectrum"] == 0  # the reader accepts it; the batch must not choke on it
    skipped = r"coadd-empty\.fits: holds no spectra \(desi reader: 0 rows\); skipped, the other files are ingested"
    with make_client(n_workers=1, processes=False) as client, pytest.warns(SkippedInputWarning, match=skipped):
        report = ingest([real, empty], tmp_path / "s.zarr", client, progress=False)
    assert report.ok and report.ingested == {str(real): 1}
    assert report.skipped == {str(empty): "holds no spectra (desi reader: 0 rows)"}
    assert f"skipped {empty}: holds no spectra" in report.summary()
    ds = zstore.open_spectra(tmp_path / "s.zarr")
    assert ds.sizes["spectrum"] == 1 and [m["path"] for m in ds.attrs["manifest"]] == [str(real)]
    assert validate_store(tmp_path / "s.zarr") == []

    with pytest.warns(SkippedInputWarning, match=r"coadd-empty\.fits: holds no spectra"):  # the CLI alike
        assert main(["ingest", str(empty), str(real), "--store", str(tmp_path / "cli.zarr"), "--workers", "1",
                     "--no-progress"]) == 0
    assert f"skipped {empty}: holds no spectra" in capsys.readouterr().out
    assert zstore.open_spectra(tmp_path / "cli.zarr").sizes["spectrum"] == 1
