"""Format detection by content: every real file finds its reader, whatever its name; junk is refused clearly."""

import gzip
import importlib
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from dzspec.errors import InputError, ReaderPluginWarning, UnknownFormatError
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


# ------------------------------------------------------------------------ how readers are found (plug-ins)

TOY_MAGIC = b"TOYSPEC\n"


def _toy_identify(probe):
    with open(probe.path, "rb") as handle:
        return handle.read(len(TOY_MAGIC)) == TOY_MAGIC


def _toy_read(path):
    from dzspec.schema import make_spectra_dataset

    flux = np.loadtxt(path, skiprows=1, ndmin=2)
    wave = 5000.0 + np.arange(flux.shape[1], dtype=float)
    return make_spectra_dataset(wave, flux, np.ones_like(flux), source_file=path, reader="toy",
                                coords={"targetid": np.arange(len(flux))})


def _register_toy():
    from dzspec.io.registry import register_reader

    register_reader("toy", _toy_identify, _toy_read, priority=50, description="a third-party toy format")


def _toy_file(tmp_path):
    path = tmp_path / "spectra.toy"
    path.write_bytes(TOY_MAGIC + b"\n".join(b" ".join([b"1.0"] * 12) for _ in range(2)) + b"\n")
    return path


@pytest.fixture
def plugins(monkeypatch):
    """Install fake ``dzspec.readers`` entry points; the table is loaded afresh (built-ins kept) and restored."""
    import importlib.metadata
    import types

    from dzspec.io import registry

    monkeypatch.setattr(registry, "_READERS", dict(registry.readers()))  # built-ins already imported
    monkeypatch.setattr(registry, "_LOADED", False)
    module = types.ModuleType("dzspec_toy_plugin")
    module.register = _register_toy
    module.register_then_fail = lambda: (_register_toy(), 1 / 0)
    module.replace_desi = lambda: registry.register_reader("desi", lambda probe: False, _toy_read)
    monkeypatch.setitem(sys.modules, "dzspec_toy_plugin", module)

    def install(**values):
        points = [importlib.metadata.EntryPoint(name, value, registry.ENTRY_POINT_GROUP)
                  for name, value in values.items()]
        monkeypatch.setattr(importlib.metadata, "entry_points",
                            lambda group=None, **kw: [p for p in points if p.group == group])

    return install


def test_a_third_party_reader_comes_through_an_entry_point(tmp_path, plugins, capsys):
    from dzspec.cli import main

    plugins(toy="dzspec_toy_plugin:register")
    path = _toy_file(tmp_path)
    assert identify_format(path) == "toy"
    ds = read_spectra(path)
    assert ds.attrs["reader"] == "toy" and ds.sizes["spectrum"] == 2
    assert list(readers()) == ["desi", "sdss", "muse_cube", "muse", "toy", "generic"]  # by priority (toy: 50)
    assert identify_format(shared_file("desi_fastspecfit/coadd-special-dark-27247.fits")) == "desi"
    assert main(["formats"]) == 0
    assert "a third-party toy format" in capsys.readouterr().out


def test_an_entry_point_may_name_a_module_that_registers_on_import(tmp_path, plugins, monkeypatch):
    (tmp_path / "dzspec_toy_module.py").write_text(
        "from dzspec.io.registry import register_reader\n"
        "from tests.io.test_registry import _toy_identify, _toy_read\n"
        "register_reader('toy', _toy_identify, _toy_read, description='a module plug-in')\n"
    )
    monkeypatch.syspath_prepend(tmp_path)
    plugins(toy="dzspec_toy_module")
    try:
        assert identify_format(_toy_file(tmp_path)) == "toy"
        assert readers()["toy"].description == "a module plug-in"
    finally:
        sys.modules.pop("dzspec_toy_module", None)


def test_a_broken_plugin_warns_naming_it_and_the_builtins_still_work(tmp_path, plugins):
    plugins(missing="dzspec_no_such_plugin", halfway="dzspec_toy_plugin:register_then_fail",
            greedy="dzspec_toy_plugin:replace_desi")
    with pytest.warns(ReaderPluginWarning) as caught:
        names = list(readers())
    messages = [str(w.message) for w in caught]
    assert any("'missing' (dzspec_no_such_plugin) failed to load (ModuleNotFoundError" in m for m in messages)
    assert any("'halfway' (dzspec_toy_plugin:register_then_fail) failed to load (ZeroDivisionError" in m
               for m in messages)
    assert any("'greedy'" in m and "built-in reader names ['desi']" in m for m in messages)
    assert names == ["desi", "sdss", "muse_cube", "muse", "generic"]  # the half-registered toy was undone
    assert identify_format(shared_file("desi_fastspecfit/coadd-special-dark-27247.fits")) == "desi"
    assert read_spectra(shared_file("desi_fastspecfit/coadd-special-dark-27247.fits")).attrs["reader"] == "desi"
    with pytest.raises(UnknownFormatError):
        identify_format(_toy_file(tmp_path))


def _imports_of(module):
    import ast

    spec = importlib.util.find_spec(module)
    tree = ast.parse(Path(spec.origin).read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_registry_imports_no_reader_and_no_reader_imports_another():
    from dzspec.io.registry import BUILTIN_READERS

    assert not _imports_of("dzspec.io.registry") & set(BUILTIN_READERS)
    for module in BUILTIN_READERS:
        assert not _imports_of(module) & (set(BUILTIN_READERS) - {module}), module
    code = ("import sys, dzspec.io.registry as r; "
            "print(sorted(m for m in sys.modules if m in r.BUILTIN_READERS)); r.readers(); "
            "print(sorted(m for m in sys.modules if m in r.BUILTIN_READERS))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "[]"  # importing the registry loads no reader...
    assert out[1] == str(sorted(BUILTIN_READERS))  # ...consulting it loads them all
