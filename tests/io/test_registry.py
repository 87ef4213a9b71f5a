"""Format detection by content: every real file finds its reader, whatever its name; junk is refused clearly."""

import gzip
import shutil

import numpy as np
import pytest
from astropy.io import fits

from dzspec.errors import InputError, UnknownFormatError
from dzspec.io.registry import identify_format, read_spectra, readers
from tests.conftest import shared_file

REAL = {
    "desi_fastspecfit/coadd-4-80613-thru20210324.fits": "desi",
    "desi_fastspecfit/coadd-special-dark-27247.fits": "desi",
    "desi_quasarnp_everest/coadd-0-80605-first25fibers.fits": "desi",
    "desi_fastspecfit/stack-LRG.fits": "generic",
    "muse_udf_format/DR2_001032.fits": "muse",
    "muse_udf_format/mosaic_01102.fits": "muse",
    "muse_mpdaf_cubes/minicube_A478.fits.gz": "muse_cube",
    "muse_mpdaf_cubes/subcub_mosaic_udf.fits.gz": "muse_cube",
    "muse_mpdaf_cubes/origin-00026.fits": "muse",  # an MPDAF Source without spectra: read says so
    "muse_mxdf_tdose/tdose_spectrum_mxdf_aperture_0000005082.fits": "generic",
    "sdss_legac_ppxf/NGC3073_SDSS_DR18.fits": "sdss",
    "sdss_legac_ppxf/legac_M19_56670_v3.0.fits": "generic",
}


def test_builtin_readers_by_priority():
    names = list(readers())
    assert set(names) >= {"desi", "sdss", "muse_cube", "muse", "generic"}
    assert names.index("desi") < names.index("generic") and names.index("muse_cube") < names.index("muse")
    assert names[-1] == "generic" or readers()["generic"].priority <= min(r.priority for r in readers().values())


@pytest.mark.parametrize(("name", "reader"), REAL.items(), ids=[n.split("/")[-1] for n in REAL])
def test_real_files_are_identified(name, reader):
    assert identify_format(shared_file(name)) == reader


@pytest.mark.parametrize(
    ("name", "new_name", "reader"),
    [
        ("desi_fastspecfit/coadd-special-dark-27247.fits", "coadd.txt", "desi"),
        ("muse_udf_format/mosaic_01102.fits", "spectrum", "muse"),
        ("sdss_legac_ppxf/NGC3522_SDSS_DR18.fits", "spec.dat", "sdss"),
        ("sdss_legac_ppxf/legac_M19_56670_v3.0.fits", "legac.bin", "generic"),
        ("muse_mpdaf_cubes/subcub_mosaic_udf.fits.gz", "cube.npz", "muse_cube"),
    ],
)
def test_detection_ignores_the_file_name(tmp_path, name, new_name, reader):
    copy = tmp_path / new_name
    shutil.copyfile(shared_file(name), copy)
    assert identify_format(copy) == reader
    ds = read_spectra(copy)
    assert ds.attrs["reader"] == reader and ds.attrs["source_file"] == str(copy)


def test_npz_and_hdf5_by_content(tmp_path):
    wave = np.linspace(4000.0, 4010.0, 11)
    with open(tmp_path / "spectra.fits", "wb") as handle:
        np.savez(handle, wave=wave, flux=np.ones(11), ivar=np.ones(11))
    assert identify_format(tmp_path / "spectra.fits") == "generic"
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "spectra", "w") as handle:
        handle["lambda"], handle["flux"], handle["err"] = wave, np.ones(11), np.ones(11)
    assert identify_format(tmp_path / "spectra") == "generic"
    assert read_spectra(tmp_path / "spectra").sizes["wavelength"] == 11


def test_unknown_content_names_the_file(tmp_path):
    text = tmp_path / "notes.fits"
    text.write_text("just some words\n")
    with pytest.raises(UnknownFormatError, match=r"notes\.fits: no reader recognises this unknown file"):
        identify_format(text)
    fits.HDUList([fits.PrimaryHDU(np.zeros((3, 3)))]).writeto(tmp_path / "image.fits")
    with pytest.raises(UnknownFormatError, match=r"image\.fits: no reader recognises this fits file"):
        read_spectra(tmp_path / "image.fits")
    with open(tmp_path / "other.npz", "wb") as handle:
        np.savez(handle, x=np.ones(3), y=np.ones(3))
    with pytest.raises(UnknownFormatError, match=r"other\.npz: .*saw \['x', 'y'\]"):
        identify_format(tmp_path / "other.npz")
    with pytest.raises(InputError, match=r"missing\.fits: file not found"):
        identify_format(tmp_path / "missing.fits")


@pytest.mark.filterwarnings("ignore:File may have been truncated")  # astropy, from the registry's probe
@pytest.mark.filterwarnings("ignore:Error validating header")
def test_truncated_and_corrupt_fits(tmp_path):
    data = shared_file("desi_quasarnp_everest/coadd-0-80605-first25fibers.fits").read_bytes()
    half = tmp_path / "half.fits"
    half.write_bytes(data[: len(data) // 2])
    assert identify_format(half) == "desi"  # the headers that survive look like DESI...
    with pytest.raises(InputError, match=r"half\.fits: truncated or corrupt FITS file"):
        read_spectra(half)  # ...but the reader refuses to serve a partial file
    stub = tmp_path / "stub.fits"
    stub.write_bytes(data[:100])
    with pytest.raises(InputError, match=r"stub\.fits: "):
        read_spectra(stub)
    broken_gz = tmp_path / "cube.fits.gz"
    broken_gz.write_bytes(gzip.compress(data)[:2000])
    with pytest.raises(InputError, match=r"cube\.fits\.gz: "):
        read_spectra(broken_gz)


def test_format_and_options_are_passed(tmp_path):
    path = shared_file("desi_fastspecfit/coadd-special-dark-27247.fits")
    ds = read_spectra(path, "desi", keep_resolution=True)
    assert ds.resolution.shape == (1, 11, 7781)
    with pytest.raises(InputError, match="unknown reader 'nope'"):
        read_spectra(path, "nope")
    with pytest.raises(InputError, match=r"coadd-special-dark-27247\.fits: no MUSE 1-D spectrum"):
        read_spectra(path, "muse")
