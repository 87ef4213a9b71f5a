import re
import warnings

import numpy as np
import pytest
from astropy.io import fits

from dzspec.cli import main
from dzspec.cluster import make_client
from dzspec.errors import BadSpectrumWarning
from dzspec.io import store as zstore
from dzspec.io.validate import validate_store
from dzspec.parallel.ingest import ingest
from dzspec.schema import IngestWarn
from dzspec.testing import synthetic_arrays, write_synthetic_files

pytestmark = pytest.mark.cluster
WAVE = 4750.0 + 1.25 * np.arange(120)


@pytest.fixture(scope="module")
def client():
    # One worker thread: warnings.catch_warnings (used per task) is not thread-safe within one process.
    with make_client(n_workers=1, processes=False) as c:
        yield c


def _files(tmp_path, name, nfiles, per_file, seed=0, wave=WAVE):
    return write_synthetic_files(tmp_path / name, nfiles=nfiles, spectra_per_file=per_file, seed=seed,
                                 wavelength=wave)


def _ingest(paths, store, client, **kw):
    return ingest(paths, store, client, progress=False, chunk_rows=16, **kw)


def test_ingest_values_match_the_files_and_rerun_is_a_no_op(tmp_path, client):
    paths = _files(tmp_path, "in", nfiles=3, per_file=10)  # 30 rows over chunks of 16: files straddle chunks
    store = tmp_path / "s.zarr"
    report = _ingest(paths, store, client)
    assert report.ok and sum(report.ingested.values()) == 30 and not report.skipped
    ds = zstore.open_spectra(store).compute()
    expected = synthetic_arrays(np.arange(30), WAVE, seed=0)
    np.testing.assert_array_equal(ds.flux.values, expected["flux"])
    np.testing.assert_array_equal(ds.ivar.values, expected["ivar"])
    np.testing.assert_array_equal(ds.targetid.values, expected["targetid"])
    np.testing.assert_array_equal(ds.wavelength.values, WAVE)
    np.testing.assert_array_equal(ds.source_file.values, np.repeat([0, 1, 2], 10))
    np.testing.assert_array_equal(ds.source_row.values, np.tile(np.arange(10), 3))
    manifest = ds.attrs["manifest"]
    assert [m["status"] for m in manifest] == ["done"] * 3
    assert [m["path"] for m in manifest] == [str(p.resolve()) for p in paths]
    assert validate_store(store) == []

    again = _ingest(paths, store, client)
    assert again.ingested == {}
    assert len(again.skipped) == 3
    assert "already in the store" in next(iter(again.skipped.values()))
    np.testing.assert_array_equal(zstore.open_spectra(store).flux.values, expected["flux"])


def test_new_files_are_added_without_touching_old_rows(tmp_path, client):
    store = tmp_path / "s.zarr"
    _ingest(_files(tmp_path, "a", nfiles=2, per_file=7), store, client)
    before = zstore.open_spectra(store).flux.values
    more = write_synthetic_files(tmp_path / "b", nfiles=2, spectra_per_file=9, seed=1, wavelength=WAVE, first_row=14)
    report = _ingest([tmp_path / "a", tmp_path / "b"], store, client)  # directories; old files skipped
    assert sum(report.ingested.values()) == 18 and len(report.skipped) == 2
    ds = zstore.open_spectra(store)
    assert ds.sizes["spectrum"] == 32
    np.testing.assert_array_equal(ds.flux.values[:14], before)
    np.testing.assert_array_equal(ds.flux.values[14:23], np.load(more[0])["flux"])
    assert len(np.unique(ds.targetid.values)) == 32
    assert validate_store(store) == []


def test_interrupted_ingest_rewrites_the_same_rows(tmp_path, client):
    paths = _files(tmp_path, "in", nfiles=2, per_file=12)
    store = tmp_path / "s.zarr"
    _ingest(paths, store, client)
    group = zstore.open_root(store, mode="r+")[zstore.spectra_groups(zstore.open_root(store))[0]]
    manifest = zstore.manifest_of(group)
    manifest[1]["status"] = "pending"  # as if killed while writing the second file
    zstore.set_manifest(group, manifest)
    flux = group["flux"][:]
    flux[12:] = np.nan
    group["flux"][:] = flux
    assert any("pending" in str(p) for p in validate_store(store))
    report = _ingest(paths, store, client)
    assert report.ingested == {str(paths[1].resolve()): 12} and len(report.skipped) == 1
    ds = zstore.open_spectra(store)
    assert ds.sizes["spectrum"] == 24
    np.testing.assert_array_equal(ds.flux.values[12:], np.load(paths[1])["flux"])
    assert validate_store(store) == []


@pytest.mark.filterwarnings("ignore::astropy.io.fits.verify.VerifyWarning")  # astropy's own, on the truncated file
def test_bad_files_are_reported_and_the_rest_ingested(tmp_path, client):
    paths = _files(tmp_path, "in", nfiles=2, per_file=5)
    (tmp_path / "in" / "notes.txt").write_text("not a spectrum")
    np.savez(tmp_path / "in" / "short.npz", wave=WAVE, flux=np.ones((2, 100)), ivar=np.ones((2, 100)))
    (tmp_path / "in" / "truncated.fits").write_bytes(b"SIMPLE  =                    T" + b" " * 50)
    report = _ingest([tmp_path / "in", tmp_path / "missing.fits"], tmp_path / "s.zarr", client)
    assert sum(report.ingested.values()) == 10
    failed = {name.rsplit("/", 1)[-1]: error for name, error in report.failed.items()}
    assert set(failed) == {"notes.txt", "short.npz", "truncated.fits", "missing.fits"}
    assert "no reader recognises" in failed["notes.txt"] and "notes.txt" in failed["notes.txt"]
    assert "short.npz" in failed["short.npz"] and "120" in failed["short.npz"]
    assert "missing.fits" in failed["missing.fits"]
    assert not report.ok and "FAILED" in report.summary()
    assert all(paths[0].name not in name for name in report.failed)

    lenient = _ingest([tmp_path / "in"], tmp_path / "s.zarr", client, skip_unknown=True)
    skipped = {name.rsplit("/", 1)[-1] for name in lenient.skipped}
    assert skipped == {"notes.txt", *(p.name for p in paths)}  # unknown, and already ingested
    assert {name.rsplit("/", 1)[-1] for name in lenient.failed} == {"short.npz", "truncated.fits"}


def test_bad_spectra_warn_with_file_and_rows_and_duplicates_are_flagged(tmp_path, client):
    arrays = synthetic_arrays(np.arange(4), WAVE)
    arrays["flux"][2, 5] = np.nan
    arrays["targetid"][3] = arrays["targetid"][0]
    np.savez(tmp_path / "bad.npz", wave=WAVE, **arrays)
    with pytest.warns(BadSpectrumWarning) as record:
        _ingest([tmp_path / "bad.npz"], tmp_path / "s.zarr", client)
    messages = [str(w.message) for w in record]
    assert any("bad.npz" in m and "rows 2" in m and "NaN/inf flux" in m for m in messages), messages
    assert any("DUPLICATE_TARGETID" in m for m in messages), messages
    flags = zstore.open_spectra(tmp_path / "s.zarr").ingest_warn.values
    assert flags[2] & IngestWarn.NONFINITE_FLUX
    assert [bool(f & IngestWarn.DUPLICATE_TARGETID) for f in flags] == [True, False, False, True]


def _suspect_files(tmp_path):
    """Three small files, each with one problem the readers cannot see but ingest flags (rows still ingested)."""
    targetid = np.array([101, 102, 103])
    few = synthetic_arrays(np.arange(3), WAVE)
    few["ivar"][1, 5:] = 0.0  # 5 usable pixels
    np.savez(tmp_path / "few.npz", wave=WAVE, **{**few, "targetid": targetid})
    nm = synthetic_arrays(np.arange(3), WAVE)
    np.savez(tmp_path / "nm.npz", wave=WAVE / 10, **{**nm, "targetid": targetid + 10})  # nm given as Angstrom
    huge = synthetic_arrays(np.arange(3), WAVE)
    huge["flux"][2, 40] = 1e9  # sigma is 0.5-3
    hdus = [fits.PrimaryHDU(), fits.ImageHDU(WAVE, name="WAVELENGTH"), fits.ImageHDU(huge["flux"], name="FLUX"),
            fits.ImageHDU(huge["ivar"], name="IVAR"), fits.ImageHDU(targetid + 20, name="TARGETID")]
    fits.HDUList(hdus).writeto(tmp_path / "huge.fits")
    return {"few": (tmp_path / "few.npz", IngestWarn.FEW_PIXELS, [1], r"rows 1 \(targetids 102\): fewer than 10 "
                    r"usable pixels"),
            "nm": (tmp_path / "nm.npz", IngestWarn.WAVELENGTH_RANGE, [0, 1, 2],
                   r"rows 0, 1, 2 \(targetids 111, 112, 113\): wavelengths 475-489.875 A reach outside 900-30000 A"),
            "huge": (tmp_path / "huge.fits", IngestWarn.EXTREME_FLUX, [2], r"rows 2 \(targetids 123\): \|flux\| "
                     r"above 1e\+06 times the median sigma")}


@pytest.mark.parametrize("problem", ["few", "nm", "huge"])
def test_suspect_spectra_are_ingested_flagged_and_named(tmp_path, client, problem):
    path, bit, rows, match = _suspect_files(tmp_path)[problem]
    with pytest.warns(BadSpectrumWarning, match=f"{path.name}: {match}.*flagged {bit.name} in ingest_warn"):
        report = _ingest([path], tmp_path / "s.zarr", client)
    assert report.ok and report.ingested == {str(path.resolve()): 3}  # every input row has its output row
    ds = zstore.open_spectra(tmp_path / "s.zarr")
    assert ds.sizes["spectrum"] == 3
    assert np.flatnonzero(ds.ingest_warn.values & bit).tolist() == rows
    assert bit.name in ds.ingest_warn.attrs["flag_meanings"].split()
    assert validate_store(tmp_path / "s.zarr") == []


def test_different_grids_go_to_different_groups(tmp_path, client):
    _files(tmp_path, "in", nfiles=1, per_file=3)
    write_synthetic_files(tmp_path / "in2", nfiles=1, spectra_per_file=4, wavelength=WAVE[:100])
    report = _ingest([tmp_path / "in", tmp_path / "in2"], tmp_path / "s.zarr", client)
    assert sorted(report.groups.values()) == [3, 4] and len(report.groups) == 2


def test_cli_ingest_validate_status_and_run(tmp_path, capsys):
    _files(tmp_path, "in", nfiles=2, per_file=6)
    store = str(tmp_path / "s.zarr")
    assert main(["ingest", str(tmp_path / "in"), "--store", store, "--workers", "1", "--no-progress"]) == 0
    assert main(["validate", store]) == 0
    assert main(["run-kernel", store, "--workers", "1", "--no-progress"]) == 0
    assert main(["run-kernel", store, "--workers", "1", "--no-progress"]) == 2  # exists: needs a flag
    assert main(["run-kernel", store, "--resume", "--workers", "1", "--no-progress"]) == 0
    assert main(["status", store]) == 0
    out = capsys.readouterr()
    assert "dask dashboard: http" in out.out
    assert "12 spectra" in out.out and re.search(r"\b(\d+)/\1 blocks done", out.out)  # however the plan cut them
    assert "exists: pass resume" in out.err
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["ingest", str(tmp_path / "nothing.txt"), "--store", store, "--workers", "1",
                     "--no-progress"]) == 1
    # The error crossed a process boundary (worker -> client) and still names the file and the problem.
    assert f"FAILED {tmp_path / 'nothing.txt'}: file not found" in capsys.readouterr().out
