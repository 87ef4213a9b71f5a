import numpy as np
import xarray as xr

from dzspec.viz.nmf import plot_chi2_curves, plot_rank_selection, plot_zp_zt


def _is_png(path):
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_rank_selection_figure(tmp_path):
    rng = np.random.default_rng(0)
    ranks = np.arange(6, 14)
    gf = 0.9 - 0.1 * np.exp(-(ranks - 6))[:, None] + rng.normal(0, 0.01, (8, 5))
    ds = xr.Dataset({"gf": (("rank", "fold"), gf), "mae": (("rank", "fold"), 1e-4 * (1 + gf))},
                    coords={"rank": ranks}, attrs={"chosen_rank": 8, "folds": 5})
    ds = ds.assign(gf_mean=ds.gf.mean("fold"), gf_std=ds.gf.std("fold"), mae_mean=ds.mae.mean("fold"),
                   mae_std=ds.mae.std("fold"), z_true=("spectrum", np.zeros(40)))
    plot_rank_selection(ds, tmp_path / "cv.png")
    assert _is_png(tmp_path / "cv.png")


def test_zp_zt_and_chi2_figures(tmp_path):
    rng = np.random.default_rng(1)
    z_true = rng.uniform(0, 6.5, 300)
    z_pred = np.where(rng.random(300) < 0.9, z_true, rng.uniform(0, 6.5, 300))
    plot_zp_zt(z_pred, z_true, tmp_path / "zz.png", color=rng.random(300), color_label="x", title="t")
    trials = np.linspace(0, 6.7, 500)
    curves = 100 + rng.normal(0, 1, (2, 500))
    curves[:, 200] -= 30
    plot_chi2_curves(trials, curves, ["a", "b"], tmp_path / "c.png", z_true=np.array([trials[200], np.nan]))
    assert _is_png(tmp_path / "zz.png") and _is_png(tmp_path / "c.png")
