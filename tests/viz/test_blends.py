import numpy as np
import pytest

from dzspec.engines.nmf.blends import ROC_THRESHOLDS, detect_blend
from dzspec.engines.nmf.grams import prepare_basis
from dzspec.kernels.restframe import LogGrid
from dzspec.kernels.survey_stats import nearest_to_corner, rank_auc, roc_curve
from dzspec.viz.blends import plot_blend_example, plot_roc


def _is_png(path):
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_roc_figure_draws_the_kernel_numbers(tmp_path):
    rng = np.random.default_rng(0)
    positive = rng.random(400) < 0.3
    score = np.where(positive, rng.lognormal(np.log(0.02), 0.8, 400), rng.lognormal(np.log(0.006), 0.6, 400))
    score[:5] = np.nan  # spectra without a score
    numbers = plot_roc(score, positive, tmp_path / "roc.png")
    assert _is_png(tmp_path / "roc.png")
    tpr, fpr = roc_curve(score, positive, ROC_THRESHOLDS)
    assert numbers["auc"] == rank_auc(score, positive)
    best = nearest_to_corner(fpr, tpr)
    assert (numbers["threshold"], numbers["tpr"], numbers["fpr"]) == (ROC_THRESHOLDS[best], tpr[best], fpr[best])
    assert 0.8 < numbers["auc"] < 1.0 and numbers["auc_sweep"] <= numbers["auc"]


def test_blend_example_figure(tmp_path):
    grid = LogGrid.spanning(3000.0, 9000.0, 1e-4)
    rest = grid.wavelength()
    h = np.vstack([np.exp(-0.5 * ((rest - 5008.0) / 2.0) ** 2), np.ones(grid.size)])
    j0, n = 3000, grid.size - 3000
    obs = rest[j0:]
    flux = np.exp(-0.5 * ((obs - 5008.0 * 1.2) / 2.4) ** 2) + 2 * np.exp(-0.5 * ((obs - 5008.0 * 1.5) / 3) ** 2)
    shifts = grid.shift_of(np.arange(0.0, 0.8, 0.001))
    r = detect_blend(flux, np.full(n, 1e4), 0.5, prepared=prepare_basis(h, n), grid=grid, j0=j0, shifts=shifts,
                     wave_range=(obs[0], obs[-1]), lines={"oiii": 5008.24}, lsf_fwhm=None)
    assert r.z2 == pytest.approx(0.2, abs=0.002)
    plot_blend_example(r, grid.redshift_of(shifts), tmp_path / "example.png", z1=0.5, title="toy")
    assert _is_png(tmp_path / "example.png")
