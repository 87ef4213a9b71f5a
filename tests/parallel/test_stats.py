"""Survey statistics over stores: the lazy block reductions equal the in-memory metrics, tables land in
stats/<name>, and `dzspec stats` writes them with its figures."""

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from dzspec.errors import StoreError
from dzspec.io import store as zstore
from dzspec.kernels.metrics import good_fraction, mae_with_rejection, purity_completeness
from dzspec.parallel.stats import (
    class_histograms,
    good_fraction_table,
    survey_report,
    threshold_table,
    zp_zt_table,
)
from dzspec.simulate import simulate

GROUP = "desi-brz-3600-9824-0.8"


@pytest.fixture(scope="module")
def survey(tmp_path_factory, client):
    """A simulated DESI store (small chunks: many blocks) with a made-up result group: 75 % of the known redshifts
    right to 1e-4, the rest anywhere, and a score that separates LAEs from the other classes imperfectly."""
    store = tmp_path_factory.mktemp("stats") / "desi.zarr"
    simulate(store, "desi", 300, client, seed=5, chunk_rows=64, progress=False)
    spectra = zstore.open_spectra(store, GROUP)
    rng = np.random.default_rng(0)
    z_true = spectra.z_true.values
    z = np.where(rng.random(z_true.size) < 0.75, z_true + rng.normal(0, 1e-4, z_true.size), rng.uniform(0, 4, 300))
    is_lae = spectra.sim_class.values <= 1
    score = rng.normal(np.where(is_lae, 40.0, 15.0), 12.0)
    results = xr.Dataset({"z": ("spectrum", z), "score": ("spectrum", score)}).chunk({"spectrum": 50})
    results.attrs["input_group"] = f"spectra/{GROUP}"
    results.to_zarr(store, group=f"results/{GROUP}/fake", mode="w", consolidated=False)
    return store, z, z_true, score, is_lae, spectra


def test_lazy_tables_equal_the_in_memory_metrics(survey, client):
    store, z, z_true, score, is_lae, spectra = survey
    columns = zstore.open_results(store, f"results/{GROUP}/fake")
    assert isinstance(columns.z.data, da.Array) and columns.z.data.numblocks[0] == 6
    lazy_truth = spectra.z_true.chunk({"spectrum": 64})
    table = good_fraction_table(columns.z, lazy_truth)
    gf, good, n = good_fraction(z, z_true)
    assert (int(table.n[0]), int(table.n_good[0])) == (n, good) and float(table.gf[0]) == pytest.approx(gf)
    known = np.isfinite(z_true)
    mae, kept = mae_with_rejection(z[known], z_true[known])
    assert float(table.mae[0]) == pytest.approx(mae, rel=0.02) and abs(int(table.n_mae[0]) - kept) <= 2
    snr = spectra.snr_lines.values
    binned = good_fraction_table(columns.z, lazy_truth, spectra.snr_lines.chunk({"spectrum": 64}), [0, 5, 20, np.inf])
    for i, (lo, hi) in enumerate([(0, 5), (5, 20), (20, np.inf)]):
        inside = (snr >= lo) & (snr < hi)
        assert int(binned.n_good[i]) == good_fraction(z[inside], z_true[inside])[1]
    thresholds = np.array([10.0, 25.0, 40.0])
    sweep = threshold_table(columns.score, xr.DataArray(is_lae, dims="spectrum"), thresholds)
    purity, completeness = purity_completeness(score, is_lae, thresholds)
    np.testing.assert_allclose(sweep.purity, purity)
    np.testing.assert_allclose(sweep.completeness, completeness)
    names = spectra.sim_class.attrs["flag_meanings"].split()
    hist = class_histograms(columns.score, spectra.sim_class, names, np.linspace(-50, 100, 16))
    assert int(hist["count"].sum()) == int(((score >= -50) & (score <= 100)).sum())
    edges = np.linspace(0, 4, 41)
    density = zp_zt_table(columns.z, lazy_truth, edges)
    expected, _, _ = np.histogram2d(z_true, z, bins=[edges, edges])
    np.testing.assert_array_equal(density["count"].values, expected)


def test_survey_report_writes_tables_and_figures(survey, client, tmp_path):
    store, z, z_true, _, _, spectra = survey
    tables = survey_report(store, f"results/{GROUP}/fake", by=["snr_lines:0,5,20,inf", "z_true"], split="sim_class",
                           score="score", thresholds=np.linspace(0, 60, 31), marked=25.0, positive="source",
                           false_classes=["oii_interloper", "galaxy", "sky_residual"], figures=tmp_path)
    assert {"gf_all", "gf_snr_lines", "gf_z_true", "threshold_score", "hist_score", "gf_all_sim_class0"} <= set(tables)
    stored = xr.open_zarr(store, group="stats/fake/gf_snr_lines", consolidated=False)
    xr.testing.assert_identical(stored.load(), tables["gf_snr_lines"])
    lae = spectra.sim_class.values == 0
    assert int(tables["gf_all_sim_class0"].n_good[0]) == good_fraction(z[lae], z_true[lae])[1]
    assert tables["gf_z_true"].sizes["bin"] == 8  # equal bins between the finite extremes
    for name in ("gf_snr_lines", "threshold_score", "hist_score", "zp_zt"):
        assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(StoreError, match="no per-spectrum column 'nonsense'"):
        survey_report(store, f"results/{GROUP}/fake", by=["nonsense"], write=False)
    with pytest.raises(StoreError, match="distinct values"):
        survey_report(store, f"results/{GROUP}/fake", split="snr_lines", write=False)


def test_cli_stats(survey, client, tmp_path, capsys):
    from dzspec.cli import main

    store = survey[0]
    code = main(["stats", str(store), "--results", f"results/{GROUP}/fake", "--by", "snr_lines:0,5,20,inf",
                 "--rows", "100:", "--score", "score", "--thresholds=0:60:31", "--marked", "25", "--positive",
                 "correct", "--name", "cli", "--figures", str(tmp_path), "--workers", "1"])
    out = capsys.readouterr().out
    assert code == 0 and "gf_snr_lines (relative tol 0.005)" in out and "threshold_score: AUC" in out
    assert "purity" in out and (tmp_path / "gf_snr_lines.png").exists()
    stored = xr.open_zarr(store, group="stats/cli/gf_all", consolidated=False)
    z, z_true = survey[1][100:], survey[2][100:]
    assert stored.attrs["rows"] == "100:" and int(stored.n_good[0]) == good_fraction(z, z_true)[1]
    assert xr.open_zarr(store, group="stats/cli/threshold_score", consolidated=False).attrs["marked"] == 25.0
    bad = ["stats", str(store), "--results", f"results/{GROUP}/fake", "--by", "snr_lines:1,0", "--workers", "1"]
    assert main(bad) == 2
    assert "edges must be at least two increasing values" in capsys.readouterr().err
