import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dzspec.engines.nmf.confidence import FEATURES, ConfidenceModel, fit_confidence, scan_features, threshold_for_purity


def test_exported_trees_predict_what_scikit_learn_predicts_and_learn_an_interaction():
    from sklearn.ensemble import GradientBoostingClassifier

    rng = np.random.default_rng(3)
    x = rng.normal(size=(3000, 3))
    right = (x[:, 0] * x[:, 1] > 0) ^ (rng.random(3000) < 0.05)  # no linear model separates this
    model = fit_confidence(x, right, ["a", "b", "c"], n_trees=60, seed=4)
    booster = GradientBoostingClassifier(n_estimators=60, max_depth=3, learning_rate=0.05, min_samples_leaf=20,
                                         random_state=4).fit(x, right)
    fresh = rng.normal(size=(5000, 3))  # rows the fit never saw, some beyond its range
    fresh[:10] *= 100
    np.testing.assert_allclose(model.predict(fresh, rows_per_pass=777), booster.predict_proba(fresh)[:, 1],
                               rtol=0, atol=1e-12)
    truth = fresh[:, 0] * fresh[:, 1] > 0
    assert ((model.predict(fresh) > 0.5) == truth).mean() > 0.85
    again = fit_confidence(x, right, ["a", "b", "c"], n_trees=60, seed=4)
    np.testing.assert_array_equal(again.predict(fresh), model.predict(fresh))  # deterministic


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), purity=st.floats(0.5, 0.999))
def test_threshold_keeps_the_target_purity_with_the_most_spectra(seed, purity):
    rng = np.random.default_rng(seed)
    confidence = np.round(rng.random(300), 2)  # ties on purpose
    right = rng.random(300) < confidence
    cut = threshold_for_purity(confidence, right, purity)
    kept = confidence >= cut["threshold"]
    if cut["kept_fraction"] > 0:
        assert right[kept].mean() >= purity and cut["purity"] == pytest.approx(right[kept].mean())
        lower = np.unique(confidence[confidence < cut["threshold"]])
        for t in lower:  # every lower cut misses the purity
            assert right[confidence >= t].mean() < purity


def test_model_round_trips_as_plain_numbers_and_refuses_other_features():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, len(FEATURES)))
    model = fit_confidence(x, x[:, 0] > 0, n_trees=20)
    back = ConfidenceModel.from_attrs(model.as_attrs())
    np.testing.assert_array_equal(back.predict(x), model.predict(x))
    attrs = model.as_attrs()
    attrs["features"] = ["snr"]
    with pytest.raises(ValueError, match="features"):
        ConfidenceModel.from_attrs(attrs)
    logistic = {"features": list(FEATURES), "mean": [0.0], "coef": [1.0], "intercept": 0.0, "threshold": 0.5}
    with pytest.raises(ValueError, match="calibrate-confidence"):  # the model older dzspec versions stored
        ConfidenceModel.from_attrs(logistic)
    with pytest.raises(ValueError, match="both right and wrong"):
        fit_confidence(x, np.ones(100, bool))


def test_features_are_finite_for_undefined_values():
    n = 3
    results = {"z": np.array([0.5, np.nan, 2.0]), "chi2": np.array([100.0, np.nan, 50.0]),
               "npixels": np.array([3000, -1, 0]), "nmf_significance": np.array([0.1, np.nan, -0.2]),
               "nmf_robustness": np.array([4.0, np.nan, np.nan]), "deltachi2": np.array([30.0, np.nan, np.nan]),
               "candidate_significance": np.full((n, 5), np.nan), "candidate_z": np.full((n, 5), np.nan),
               "candidate_chi2": np.full((n, 5), np.nan), "zwarn": np.array([0, 512, 1 << 15], np.uint32)}
    x = scan_features(results, spike_bit=1 << 15, npixels_max=3681)
    assert x.shape == (n, len(FEATURES)) and np.isfinite(x).all()
    assert x[2, FEATURES.index("on_spike")] == 1.0 and x[0, FEATURES.index("on_spike")] == 0.0


def test_a_line_confusion_runner_up_is_found_at_the_ratio_of_its_lines():
    """Lya at z = 4 against [O II] at (1 + 4) 1215.67 / 3728.48 - 1; an unrelated runner-up is no confusion."""
    z_oii = 5.0 * 1215.67 / 3728.48 - 1.0
    results = {"z": np.array([4.0, 4.0]), "chi2": np.array([3000.0, 3000.0]), "npixels": np.array([3000, 3000]),
               "nmf_significance": np.array([0.2, 0.2]), "nmf_robustness": np.array([1.0, 1.0]),
               "deltachi2": np.array([40.0, 40.0]), "candidate_z": np.array([[4.0, 2.2, z_oii], [4.0, 2.2, 1.1]]),
               "candidate_chi2": np.array([[3000.0, 3040.0, 3090.0], [3000.0, 3040.0, 3090.0]]),
               "candidate_significance": np.full((2, 3), 0.1), "zwarn": np.zeros(2, np.uint32)}
    x = scan_features(results, spike_bit=1 << 15, npixels_max=3000)[:, FEATURES.index("asinh_confusion_deltachi2")]
    assert x[0] == pytest.approx(np.arcsinh(9.0)) and x[1] > 20
