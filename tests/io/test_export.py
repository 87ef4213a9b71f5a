"""dzspec export: Redrock-style FITS, Parquet and CSV read back with astropy and pyarrow, and checked against real
Redrock outputs."""

import csv
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.io import fits
from astropy.table import Table

from dzspec.cli import main
from dzspec.engines.madgics.adapter import LAE_SCAN
from dzspec.engines.nmf.adapter import ZFIND
from dzspec.errors import StoreError
from dzspec.io import store as zstore
from dzspec.io.export import REDROCK_COLUMNS, fibermap_table, redshift_table, write_export
from dzspec.kernels.base import OutputSpec
from dzspec.parallel.runner import config_sha256
from dzspec.results_schema import FIELDS, LAEWarn, ZWarn
from dzspec.testing import write_synthetic_store
from tests.conftest import SHARED_DATA

N = 10  # spectra of the main group: rows 0-3 ok, 4-7 failed, 8-9 not run (nmf_zfind); all ok (madgics_lae)
NMF_PARAMS = {"rank": 3, "store_chi2": True, "chi2_decimate": 1000, "basis_name": "toy", "basis_sha256": "b" * 64}
LAE_PARAMS = {"n_lae": 2, "prior_name": "lae", "prior_sha256": "p" * 64}


def _results(root, spectra, kernel, params, blocks, *, name=None, block_rows=4):
    """A results group of ``kernel`` as the runner makes it; ``blocks`` maps done blocks to the values that are not
    just a per-output constant (a field this version of the kernel does not declare is added)."""
    path = f"results/{spectra.removeprefix('spectra/')}/{name or kernel.name}"
    specs = kernel.output_specs(params)
    for field in {key for values in blocks.values() for key in values} - set(specs):
        specs[field] = OutputSpec(FIELDS[field].dtype, fill=FIELDS[field].fill)
    plan = zstore.BlockPlan(int(root[spectra]["targetid"].shape[0]), block_rows)
    attrs = {"kernel": kernel.name, "params": {**kernel.defaults, **params},
             "config_sha256": config_sha256(kernel, params), "input_group": spectra,
             "input_id": zstore.input_id(root[spectra])}
    group = zstore.create_results_group(root, path, plan, specs, attrs, root[spectra]["targetid"][:])
    for block, values in blocks.items():
        start, stop = plan.bounds(block)
        outputs = {out: np.full((stop - start, *spec.sizes), 7, spec.dtype) for out, spec in specs.items()}
        zstore.write_block(group, start, {**outputs, **values})
        zstore.mark_block_done(group, block, (start, stop))
    return path


@pytest.fixture(scope="module")
def made_store(tmp_path_factory):
    path = write_synthetic_store(tmp_path_factory.mktemp("export") / "s.zarr", nspectrum=N, nwave=30, chunk_rows=4)
    root = zstore.open_root(path, mode="r+")
    spectra = zstore.spectra_groups(root)[0]
    nmf = {"z": np.array([0.1, 0.2, np.nan, 0.4]), "zwarn": np.array([0, 4, ZWarn.NODATA, 0], np.uint32),
           "coeff": np.arange(12.0).reshape(4, 3), "npixels": np.array([30, 29, 0, 28]),
           "zerr": np.array([1e-4, 2e-4, np.nan, 4e-4]), "z_refined": np.array([0.1001, 0.2002, np.nan, 0.4004])}
    zstore.mark_rows_failed(root[_results(root, spectra, ZFIND, NMF_PARAMS, {0: nmf})], (4, 8))
    lae = {b: {"z": 2.5 + np.arange(b * 4, min(N, b * 4 + 4)) / 10,
               "zwarn": np.array([0, LAEWarn.LOW_SIGNIFICANCE] * 2, np.uint32)[: min(4, N - b * 4)]}
           for b in range(3)}
    _results(root, spectra, LAE_SCAN, LAE_PARAMS, lae)
    return path


@pytest.fixture
def store(made_store, tmp_path):
    """A copy of the store (tests add results and groups to it)."""
    return Path(shutil.copytree(made_store, tmp_path / "s.zarr"))


def _read(path, hdu):
    return Table.read(path, hdu=hdu, mask_invalid=False)  # NaN stays NaN


def _grid(store, i=0):
    return zstore.spectra_groups(zstore.open_root(store))[i].removeprefix("spectra/")


def test_fits_has_redrock_columns_every_row_and_provenance(store, tmp_path):
    out = write_export(store, tmp_path / "z.fits")
    with fits.open(out) as hdul:
        assert [hdu.name for hdu in hdul] == ["PRIMARY", "REDSHIFTS", "FIBERMAP"]
        primary, header = hdul[0].header, hdul["REDSHIFTS"].header
        units = {header[f"TTYPE{i}"]: header.get(f"TUNIT{i}") for i in range(1, header["TFIELDS"] + 1)}
    z = _read(out, "REDSHIFTS")
    assert z.colnames[: len(REDROCK_COLUMNS)] == list(REDROCK_COLUMNS)
    for name, dtype in REDROCK_COLUMNS.items():
        assert z[name].dtype.kind == np.dtype(dtype).kind.replace("U", "S"), name
        assert z[name].dtype.itemsize == np.dtype(dtype).itemsize // (4 if dtype[0] == "U" else 1), name
    targetid = zstore.open_root(store)[f"spectra/{_grid(store)}"]["targetid"][:]
    assert len(z) == N and z["TARGETID"].tolist() == targetid.tolist()  # every input row, in store order
    assert z["RUN_STATUS"].tolist() == ["ok"] * 4 + ["failed"] * 4 + ["not_run"] * 2
    ok = np.arange(N) < 4
    np.testing.assert_array_equal(z["Z"][:4], [0.1001, 0.2002, np.nan, 0.4004])  # NMF's Z: z_refined, ZERR's z
    np.testing.assert_array_equal(z["Z_TRIAL"][:4], [0.1, 0.2, np.nan, 0.4])
    np.testing.assert_array_equal(z["ZERR"], [1e-4, 2e-4, np.nan, 4e-4] + [np.nan] * 6)  # read where written
    assert np.isnan(z["Z"][~ok]).all() and np.isnan(z["DELTACHI2"][~ok]).all()
    assert z["ZWARN"].tolist() == [0, 4, 512, 0] + [int(ZWarn.NODATA)] * 6  # ZWARN == 0 stays the trust cut
    assert z["SPECTYPE"].tolist() == ["GALAXY", "GALAXY", "", "GALAXY"] + [""] * 6
    assert z["FITMETHOD"].tolist() == ["NMF", "NMF", "", "NMF"] + [""] * 6 and set(z["SUBTYPE"].tolist()) == {""}
    assert z["COEFF"].shape == (N, 3) and (z["COEFF"][~ok] == 0).all() and z["COEFF"][1].tolist() == [3, 4, 5]
    assert z["NCOEFF"].tolist() == [3] * 4 + [0] * 6 and z["NPIXELS"].tolist() == [30, 29, 0, 28] + [-1] * 6
    # dzspec's own columns after RUN_STATUS, then the LAE scan's under its prefix; no chi2 curve
    assert z.colnames[len(REDROCK_COLUMNS)] == "RUN_STATUS"
    for name in ("NMF_SIGNIFICANCE", "NMF_ROBUSTNESS", "CONFIDENCE", "ZNOTE", "Z_TRIAL", "NUISANCE_COEFF",
                 "LAE_Z", "LAE_ZERR", "LAE_ZWARN", "LAE_RUN_STATUS", "LAE_DCHI2", "LAE_LINE_FLUX", "LAE_EW_REST",
                 "LAE_CANDIDATE_Z", "LAE_LOWZ_HYPOTHESIS"):
        assert name in z.colnames, name
    assert not {"ZCHI2", "NMF_ZCHI2", "Z_REFINED"} & set(z.colnames)
    assert z["CANDIDATE_Z"].shape == (N, 5) and np.isnan(z["CANDIDATE_Z"][~ok]).all()
    assert z["CANDIDATE_Z"][0].tolist() == [7] * 5 and z["ZNOTE"][~ok].tolist() == [0] * 6
    assert z["LAE_RUN_STATUS"].tolist() == ["ok"] * N
    np.testing.assert_allclose(z["LAE_Z"], 2.5 + np.arange(N) / 10)
    assert z["LAE_ZWARN"].tolist() == [0, int(LAEWarn.LOW_SIGNIFICANCE)] * 5
    assert z["LAE_LOWZ_HYPOTHESIS"].dtype.str[1:] == "i2"  # FITS has no signed byte
    assert units["LAE_LINE_FLUX"] and units["LAE_EW_REST"] == "Angstrom" and units["Z"] is None
    # provenance: in the primary header and in REDSHIFTS, one numbered entry per results group
    root = zstore.open_root(store)
    grid = _grid(store)
    for head in (primary, header):
        assert head["DZVER"] and head["NRESULTS"] == 2
        assert head["RESNAM00"] == f"results/{grid}/nmf_zfind" and head["RESKER00"] == "nmf_zfind"
        assert head["MODNAM00"] == "toy" and head["MODSHA00"] == "b" * 64 and head["RESPFX00"] == ""
        assert head["PARSHA00"] == config_sha256(ZFIND, NMF_PARAMS)
        assert head["INPTID00"] == zstore.input_id(root[f"spectra/{grid}"])
        assert head["RESKER01"] == "madgics_lae" and head["MODSHA01"] == "p" * 64 and head["RESPFX01"] == "LAE_"
    fibermap = _read(out, "FIBERMAP")
    assert fibermap["TARGETID"].tolist() == targetid.tolist()
    assert fibermap.colnames[:10] == ["TARGETID", "RA", "DEC", "EXPTIME", "Z_TRUE", "SURVEY", "INSTRUMENT",
                                      "SOURCE_FILE", "SOURCE_ROW", "INGEST_WARN"]
    assert set(fibermap["SURVEY"].tolist()) == {"simulated"}
    assert set(fibermap["SOURCE_FILE"].tolist()) == {"<synthetic>"}  # the manifest's file name
    assert fibermap["SOURCE_ROW"].tolist() == list(range(N))


@pytest.mark.parametrize("name", ["redrock-4-80613-thru20210324.fits", "redrock-special-dark-27247.fits"])
def test_redshifts_columns_match_real_redrock_files(store, tmp_path, name):
    real_path = SHARED_DATA / "desi_fastspecfit" / name
    if not real_path.exists():
        pytest.skip(f"real Redrock output not available: {real_path}")
    real = Table.read(real_path, hdu="REDSHIFTS")
    ours = _read(write_export(store, tmp_path / "z.fits"), "REDSHIFTS")
    # the same columns in the same order (Redrock 0.17 has no FITMETHOD, 0.20 has): ours start with the newest
    assert [c for c in ours.colnames if c in real.colnames] == real.colnames
    assert set(real.colnames) <= set(REDROCK_COLUMNS) == set(ours.colnames[: len(REDROCK_COLUMNS)])
    for column in real.colnames:
        mine, theirs = ours[column], real[column]
        assert (mine.dtype.kind, mine.dtype.itemsize) == (theirs.dtype.kind, theirs.dtype.itemsize), column
        assert mine.ndim == theirs.ndim, column  # COEFF is a vector per row in both
    # every result field that has a Redrock name maps onto a Redrock column
    assert {f.redrock for f in FIELDS.values() if f.redrock} <= set(REDROCK_COLUMNS)


def test_parquet_and_csv_hold_the_same_rows(store, tmp_path):
    table = pq.read_table(write_export(store, tmp_path / "z.parquet"))
    assert table.column_names[: len(REDROCK_COLUMNS)] == list(REDROCK_COLUMNS)
    assert table.num_rows == N and table.column_names.count("TARGETID") == 1
    coeff = table.schema.field("COEFF").type
    assert pa.types.is_fixed_size_list(coeff) and coeff.list_size == 3 and coeff.value_type == pa.float64()
    assert table.column("COEFF").to_pylist()[1] == [3, 4, 5]
    assert {"RA", "SURVEY", "SOURCE_FILE", "INGEST_WARN"} <= set(table.column_names)  # FIBERMAP joined
    assert table.column("RUN_STATUS").to_pylist()[3:5] == ["ok", "failed"]
    assert table.schema.metadata[b"RESKER01"] == b"madgics_lae" and b"DZVER" in table.schema.metadata
    assert table.schema.field("LAE_EW_REST").metadata[b"unit"] == b"Angstrom"

    with open(write_export(store, tmp_path / "z.csv"), newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == N and "COEFF" not in rows[0]
    assert [rows[1][f"COEFF_{k}"] for k in range(3)] == ["3.0", "4.0", "5.0"]
    assert {f"CANDIDATE_Z_{k}" for k in range(5)} <= set(rows[0]) and "LAE_CANDIDATE_Z_2" in rows[0]
    assert [r["RUN_STATUS"] for r in rows] == ["ok"] * 4 + ["failed"] * 4 + ["not_run"] * 2
    assert rows[9]["SPECTYPE"] == "" and rows[0]["SPECTYPE"] == "GALAXY" and rows[0]["SURVEY"] == "simulated"


def test_results_order_prefixes_and_fills(store):
    root = zstore.open_root(store, mode="r+")
    grid = _grid(store)
    # the LAE scan as the primary: Redrock's columns it does not write hold Redrock's fill values
    z = redshift_table(store, results=[f"results/{grid}/madgics_lae", "nmf_zfind"])
    np.testing.assert_allclose(z["Z"], 2.5 + np.arange(N) / 10)
    assert set(z["SPECTYPE"]) == {"LAE"} and set(z["FITMETHOD"]) == {"MADG"}
    assert np.isnan(z["CHI2"]).all() and (z["COEFF"] == 0).all() and set(z["NCOEFF"]) == {0}
    assert set(z["NPIXELS"]) == {-1} and z["ZERR"].tolist() == [7.0] * N
    assert {"LAE_DCHI2", "CANDIDATE_Z", "NMF_Z", "NMF_ZWARN", "NMF_SIGNIFICANCE", "NMF_COEFF", "NMF_RUN_STATUS",
            "NMF_CANDIDATE_Z"} <= set(z.colnames)
    assert z["NMF_RUN_STATUS"].tolist()[3:5] == ["ok", "failed"] and np.isnan(z["NMF_Z"][4:]).all()
    assert z.meta["RESNAM00"].endswith("/madgics_lae") and z.meta["RESPFX01"] == "NMF_"
    # a results group of another name gets its name as prefix, the engine's default one the engine's
    _results(root, f"spectra/{grid}", ZFIND, NMF_PARAMS, {0: {}, 1: {}, 2: {}}, name="nmf_sky")
    z = redshift_table(store, results=["nmf_sky", "nmf_zfind"])
    assert z["Z"].tolist() == [7.0] * N and {"NMF_Z", "NMF_ZERR", "NMF_SIGNIFICANCE"} <= set(z.colnames)
    z = redshift_table(store, results=["nmf_zfind", "nmf_sky"])
    assert {"NMF_SKY_Z", "NMF_SKY_ZERR", "NMF_SKY_NMF_SIGNIFICANCE"} <= set(z.colnames)
    # results written before run_status existed: the status comes from the block flags
    del root[f"results/{grid}/nmf_zfind"]["run_status"]
    assert redshift_table(store)["RUN_STATUS"].tolist() == ["ok"] * 4 + ["not_run"] * 6


def test_several_spectra_groups_give_one_table_with_a_group_column(store, tmp_path):
    write_synthetic_store(store, nspectrum=6, nwave=24, chunk_rows=4, seed=1)  # a second grid, LAE results only
    root = zstore.open_root(store, mode="r+")
    groups = zstore.spectra_groups(root)
    second = next(g for g in groups if root[g]["targetid"].shape[0] == 6)
    _results(root, second, LAE_SCAN, LAE_PARAMS, {0: {}, 1: {}})
    z = redshift_table(store)
    sizes = [int(root[g]["targetid"].shape[0]) for g in groups]
    assert len(z) == sum(sizes)
    assert z["GROUP"].tolist() == [g[8:] for g, n in zip(groups, sizes, strict=True) for _ in range(n)]
    assert z.colnames.index("GROUP") > z.colnames.index("RUN_STATUS")  # Redrock's columns stay first
    rows = z["GROUP"] == second[8:]
    assert set(z["RUN_STATUS"][rows]) == {"not_run"} and np.isnan(z["Z"][rows]).all()  # no NMF run there
    assert set(z["ZWARN"][rows]) == {int(ZWarn.NODATA)} and (z["COEFF"][rows] == 0).all()
    assert set(z["LAE_RUN_STATUS"][rows]) == {"ok"} and set(z["LAE_Z"][rows]) == {7.0}
    fibermap = fibermap_table(store)
    assert fibermap["TARGETID"].tolist() == z["TARGETID"].tolist() and fibermap["GROUP"].tolist() == z["GROUP"].tolist()
    # one group: its default engine is the primary, and no GROUP column
    alone = redshift_table(store, group=second[8:])
    assert "GROUP" not in alone.colnames and set(alone["SPECTYPE"]) == {"LAE"} and len(alone) == 6
    out = write_export(store, tmp_path / "both.fits")
    assert len(_read(out, "FIBERMAP")) == len(_read(out, "REDSHIFTS")) == sum(sizes)


def test_errors_name_the_store_and_the_problem(store, tmp_path):
    with pytest.raises(StoreError, match=r"s\.zarr: no results group 'nope'.*the store has"):
        redshift_table(store, results=["nmf_zfind", "nope"])
    bare = write_synthetic_store(tmp_path / "bare.zarr", nspectrum=3, nwave=20)
    with pytest.raises(StoreError, match=r"bare\.zarr: no nmf_zfind or madgics_lae results.*run dzspec zfind"):
        write_export(bare, tmp_path / "bare.fits")
    out = write_export(store, tmp_path / "z.fits")
    with pytest.raises(StoreError, match=r"z\.fits exists: pass overwrite"):
        write_export(store, out)
    assert write_export(store, out, overwrite=True) == out
    with pytest.raises(ValueError, match="unknown export format"):
        write_export(store, tmp_path / "z.txt")
    root = zstore.open_root(store, mode="r+")
    grid = _grid(store)
    zstore.create_results_group(root, f"results/{grid}/summary", zstore.BlockPlan(N, 4), {}, {"kernel": "summary"},
                                np.arange(N))
    with pytest.raises(StoreError, match=r"kernel.*summary.*not by one redshift engine"):
        redshift_table(store, results="summary")
    zstore.create_results_group(root, f"results/{grid}/stale", zstore.BlockPlan(N, 4),
                                ZFIND.output_specs(NMF_PARAMS), {"kernel": "nmf_zfind"}, np.arange(N))
    with pytest.raises(StoreError, match=r"stale: targetids differ from those of spectra/.*--overwrite"):
        redshift_table(store, results="stale")
    assert not list(tmp_path.glob(".partial-*"))


def test_cli_export(store, tmp_path, capsys):
    out = tmp_path / "z.fits.gz"
    assert main(["export", str(store), "-o", str(out), "--results", "madgics_lae"]) == 0
    assert "redshifts written to" in capsys.readouterr().out and _read(out, "REDSHIFTS")["SPECTYPE"][0] == "LAE"
    assert main(["export", str(store), "-o", str(out)]) == 2
    assert "dzspec export: error:" in capsys.readouterr().err
    assert main(["export", str(store), "-o", str(out), "--overwrite"]) == 0
