"""Survey-statistics figures are written from the tables."""

import numpy as np
import xarray as xr

from dzspec.kernels.survey_stats import threshold_from_partials, threshold_partial
from dzspec.viz.stats import plot_class_histograms, plot_good_fraction, plot_threshold


def _is_png(path):
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_stats_figures(tmp_path):
    gf = xr.Dataset({"bin_lo": ("bin", [0.0, 3.0, 7.0]), "bin_hi": ("bin", [3.0, 7.0, np.inf]),
                     "gf": ("bin", [0.2, 0.6, 0.9]), "gf_lo": ("bin", [0.15, 0.55, 0.88]),
                     "gf_hi": ("bin", [0.25, 0.65, 0.92]), "n": ("bin", [100, 80, 300])}, attrs={"by": "snr_lines"})
    plot_good_fraction({"all": gf, "deep": gf * 0.9}, tmp_path / "gf.png")
    hist = xr.Dataset({"count": (("class", "bin"), [[1, 5, 2], [0, 0, 0], [4, 1, 0]]),
                       "bin_lo": ("bin", [-3.0, -2.0, -1.0]), "bin_hi": ("bin", [-2.0, -1.0, 0.0])},
                      coords={"class": [0, 1, 2]}, attrs={"flag_meanings": "lae empty false_source"})
    plot_class_histograms(hist, tmp_path / "hist.png", marked=-2.0)
    rng = np.random.default_rng(0)
    positive = rng.random(400) < 0.5
    thresholds = np.linspace(-3, 3, 31)
    table = threshold_from_partials(threshold_partial(rng.normal(positive * 2.0, 1.0), positive, thresholds))
    sweep = xr.Dataset({k: ("threshold", v) for k, v in table.items()}, coords={"threshold": thresholds},
                       attrs={"auc": 0.9, "best_threshold": 1.0, "best_tpr": 0.8, "best_fpr": 0.2, "marked": 1.0})
    plot_threshold(sweep, tmp_path / "roc.png")
    for name in ("gf.png", "hist.png", "roc.png"):
        assert _is_png(tmp_path / name)
