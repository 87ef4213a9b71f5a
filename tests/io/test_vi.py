"""Visual inspections in the store: saved per spectrum beside the results they judge, latest wins, read back as
columns an astropy Table takes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

from dzspec.errors import StoreError
from dzspec.io import store as zstore
from dzspec.io import vi as zvi
from dzspec.results_schema import output_specs
from dzspec.testing import write_synthetic_store

N = 10


def _results(root, spectra: str, kernel: str, z: np.ndarray) -> str:
    path = f"results/{spectra.removeprefix('spectra/')}/{kernel}"
    group = zstore.create_results_group(root, path, zstore.BlockPlan(N, 4), output_specs(kernel, ["z"]),
                                        {"kernel": kernel, "input_group": spectra}, root[spectra]["targetid"][:])
    zstore.write_block(group, 0, {"z": z})
    return path


@pytest.fixture
def store(tmp_path):
    path = write_synthetic_store(tmp_path / "s.zarr", nspectrum=N, nwave=30, chunk_rows=4)
    root = zstore.open_root(path, mode="r+")
    spectra = zstore.spectra_groups(root)[0]
    nmf = _results(root, spectra, "nmf_zfind", np.linspace(0.1, 1.0, N))
    lae = _results(root, spectra, "madgics_lae", np.linspace(2.0, 3.0, N))
    return path, spectra, nmf, lae


def test_saved_inspections_read_back_latest_wins(store):
    path, spectra, nmf, lae = store
    assert (zvi.inspection_flags(path, nmf) == -1).all() and zvi.inspection_flags(path, nmf).shape == (N,)
    first = zvi.save_inspection(path, group=spectra, results=nmf, row=7, flag=2, z=None, comment="one line",
                                who="ada", when="2025-01-02T03:04:05+00:00")
    assert first["z_vi"] == pytest.approx(0.8) and math.isnan(first["z_override"]) and first["targetid"] == 10000007
    zvi.save_inspection(path, results=nmf, row=2, flag=4, z=0.301, comment="[O II] résolu ✓", who="bob")
    zvi.save_inspection(path, results=nmf, row=7, flag=3, z=1.23, comment="", who="bob")  # replaces ada's
    zvi.save_inspection(path, results=lae, row=0, flag=1, who="ada")
    table = zvi.load_inspections(path)
    assert list(table) == list(zvi.VI_COLUMNS)
    assert table["results"].tolist() == [lae, nmf, nmf] and table["row"].tolist() == [0, 2, 7]
    assert table["flag"].tolist() == [1, 4, 3] and table["who"].tolist() == ["ada", "bob", "bob"]
    np.testing.assert_allclose(table["z_vi"], [2.0, 0.301, 1.23])
    np.testing.assert_allclose(table["z_results"], [2.0, 0.3, 0.8])
    assert table["comment"].tolist() == ["", "[O II] résolu ✓", ""]
    assert table["comment"].dtype.kind == "U" and table["group"].tolist() == [spectra] * 3
    assert table["targetid"].tolist() == [10000000, 10000002, 10000007]
    assert all(when.endswith("+00:00") for when in table["when"])

    assert zvi.load_inspections(path, results=nmf)["row"].tolist() == [2, 7]
    assert zvi.load_inspections(path, group=spectra.removeprefix("spectra/"))["row"].size == 3
    assert zvi.load_inspections(path, group="spectra/other")["row"].size == 0
    every = zvi.load_inspections(path, results=nmf, inspected_only=False)
    assert every["row"].tolist() == list(range(N)) and (every["flag"] == -1).sum() == N - 2
    assert zvi.inspection_flags(path, nmf).tolist() == [-1, -1, 4, -1, -1, -1, -1, 3, -1, -1]
    record = zvi.inspection_of(path, nmf, 2)
    assert record is not None and record["flag"] == 4 and record["comment"] == "[O II] résolu ✓"
    assert zvi.inspection_of(path, nmf, 3) is None and zvi.inspection_of(path, "results/none", 3) is None


def test_the_columns_make_an_astropy_table_and_a_fits_file(store, tmp_path):
    from astropy.table import Table

    path, _, nmf, _ = store
    zvi.save_inspection(path, results=nmf, row=1, flag=6, comment="a star", who="ada")
    table = Table(zvi.load_inspections(path))
    assert len(table) == 1 and table["flag"][0] == 6 and table["comment"][0] == "a star"
    table.write(tmp_path / "vi.fits")
    assert Table.read(tmp_path / "vi.fits")["who"][0] == "ada"
    empty = Table(zvi.load_inspections(path, results="results/none"))
    assert len(empty) == 0 and empty.colnames == list(zvi.VI_COLUMNS)


def test_the_vi_group_is_pre_sized_beside_the_results_and_opens_in_xarray(store):
    path, _, nmf, lae = store
    zvi.save_inspection(path, results=nmf, row=5, flag=4, who="ada")
    vi = zstore.open_root(path)[zvi.vi_path(nmf)]
    assert zvi.vi_path(nmf) == "vi/" + nmf.removeprefix("results/")
    assert {name for name, _ in vi.arrays()} == {"targetid", "flag", "z_override", "z_results", "comment", "who",
                                                 "when"}
    assert all(array.shape == (N,) for _, array in vi.arrays())
    assert vi["flag"].attrs["flag_values"] == list(zvi.VI_FLAGS) and vi.attrs["results"] == nmf
    ds = xr.open_zarr(path, group=zvi.vi_path(nmf), consolidated=False)
    assert ds.flag.dims == ("spectrum",) and int(ds.flag[5]) == 4 and str(ds.who.values[5]) == "ada"
    assert "targetid" in ds.coords
    # the vi group is not a results group, and the spectra and results are as they were
    assert [p for p, _ in zstore.results_groups(zstore.open_root(path))] == sorted([nmf, lae])
    assert zstore.open_results(path, nmf).z.values[5] == pytest.approx(0.6)


def test_bad_inspections_are_refused(store):
    path, _, nmf, _ = store
    with pytest.raises(ValueError, match="flag must be one of"):
        zvi.save_inspection(path, results=nmf, row=0, flag=5)
    with pytest.raises(ValueError, match="outside"):
        zvi.save_inspection(path, results=nmf, row=N, flag=3)
    with pytest.raises(ValueError, match="finite"):
        zvi.save_inspection(path, results=nmf, row=0, flag=3, z=math.inf)
    with pytest.raises(StoreError, match="no results group"):
        zvi.save_inspection(path, results="results/none", row=0, flag=3)
    with pytest.raises(StoreError, match="computed on"):
        zvi.save_inspection(path, group="other", results=nmf, row=0, flag=3)
    with pytest.raises(ValueError, match="not a results group"):
        zvi.vi_path("results/")
    assert zvi.load_inspections(path)["row"].size == 0


def test_a_save_waits_for_another_inspector_and_takes_over_a_dead_ones_lock(store, monkeypatch):
    path, _, nmf, _ = store
    lock = path / f"{zvi.vi_path(nmf)}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        import socket

        lock.write_text(json.dumps({"host": socket.gethostname(), "pid": holder.pid}))
        monkeypatch.setattr(zvi, "_LOCK_WAIT_S", 0.3)
        with pytest.raises(StoreError, match="being written by another run"):
            zvi.save_inspection(path, results=nmf, row=0, flag=3)
    finally:
        holder.kill()
        holder.wait()
    zvi.save_inspection(path, results=nmf, row=0, flag=3)  # its holder is gone: taken over
    assert not lock.exists() and zvi.load_inspections(path)["flag"].tolist() == [3]
    assert os.path.isdir(path / zvi.vi_path(nmf))


def test_the_default_inspector_is_the_login_name(monkeypatch):
    monkeypatch.setenv("LOGNAME", "someone")
    monkeypatch.setenv("USER", "someone")
    assert zvi.default_inspector() == "someone"
