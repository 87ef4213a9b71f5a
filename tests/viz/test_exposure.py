import numpy as np

from dzspec.engines.madgics.exposure_convergence import converged_fraction_grid
from dzspec.viz.exposure import plot_exposure_convergence


def _is_png(path):
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_exposure_convergence_figure(tmp_path):
    rng = np.random.default_rng(0)
    nt, n = 60, 8
    flux = rng.lognormal(1.5, 1.0, nt)
    time = np.cumsum(rng.uniform(700, 1300, (nt, n)), axis=1)
    sigma = 0.05 / (flux[:, None] * time / 1000) ** 2
    sigma[rng.random((nt, n)) < 0.05] = 0.0
    sigma[0] = np.nan  # a target without data
    edges, thresholds = np.arange(0, 10801, 1800.0), np.array([0.0, 2.0, 5.0, 10.0])
    fraction, count = converged_fraction_grid(sigma, time, flux, edges, thresholds)
    plot_exposure_convergence(fraction, count, edges, thresholds, tmp_path / "both.png", sigma_z=sigma,
                              exptime=time, line_flux=flux)
    plot_exposure_convergence(fraction, count, edges, thresholds, tmp_path / "grid.png")
    plot_exposure_convergence(fraction, count, edges, thresholds, tmp_path / "noflux.png", sigma_z=sigma,
                              exptime=time)
    for name in ("both.png", "grid.png", "noflux.png"):
        assert _is_png(tmp_path / name)
