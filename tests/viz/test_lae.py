import numpy as np

from dzspec.engines.madgics.injection import recovery_by_snr
from dzspec.kernels.metrics import purity_completeness
from dzspec.viz.lae import plot_dchi2_vs_dz, plot_purity_completeness, plot_recovery


def _is_png(path):
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_lae_figures(tmp_path):
    rng = np.random.default_rng(0)
    snr = rng.uniform(0, 25, 500)
    correct = rng.random(500) < 1 / (1 + np.exp(-(snr - 3)))
    plot_recovery({"white noise": recovery_by_snr(snr, correct)}, {"white noise": rng.normal(size=400)},
                  tmp_path / "recovery.png")
    score = rng.lognormal(3, 1.5, 500)
    thresholds = np.logspace(0, 3, 31)
    purity, completeness = purity_completeness(score, correct, thresholds)
    plot_purity_completeness(thresholds, {"scan": (purity, completeness), "vetoed": (purity, 0.9 * completeness)},
                             tmp_path / "pc.png", title="t")
    labels = np.array(["lae", "sky_residual"])[rng.integers(0, 2, 500)]
    plot_dchi2_vs_dz(rng.normal(0, 0.3, 500), score, labels, tmp_path / "dz.png")
    for name in ("recovery.png", "pc.png", "dz.png"):
        assert _is_png(tmp_path / name)
