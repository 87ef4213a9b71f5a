import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dzspec.kernels.confidence import FEATURES, ConfidenceModel, fit_confidence, scan_features, threshold_for_purity


def test_fit_recovers_a_logistic_model():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(20000, 3))
    truth = np.array([2.0, -1.0, 0.0])
    right = rng.random(20000) < 1 / (1 + np.exp(-(x @ truth + 0.5)))
    model = fit_confidence(x, right, ["a", "b", "c"], l2=0.0)
    np.testing.assert_allclose(model.coef / model.scale, truth, atol=0.1)
    again = fit_confidence(x, right, ["a", "b", "c"], l2=0.0)
    np.testing.assert_array_equal(again.coef, model.coef)  # deterministic


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
    model = fit_confidence(x, x[:, 0] > 0)
    back = ConfidenceModel.from_attrs(model.as_attrs())
    np.testing.assert_array_equal(back.predict(x), model.predict(x))
    attrs = model.as_attrs()
    attrs["features"] = ["snr"]
    with pytest.raises(ValueError, match="features"):
        ConfidenceModel.from_attrs(attrs)
    with pytest.raises(ValueError, match="both right and wrong"):
        fit_confidence(x, np.ones(100, bool))


def test_features_are_finite_for_undefined_values():
    n = 3
    results = {"z": np.array([0.5, np.nan, 2.0]), "chi2": np.array([100.0, np.nan, 50.0]),
               "npixels": np.array([3000, -1, 0]), "nmf_significance": np.array([0.1, np.nan, -0.2]),
               "nmf_robustness": np.array([4.0, np.nan, np.nan]), "deltachi2": np.array([30.0, np.nan, np.nan]),
               "candidate_significance": np.full((n, 5), np.nan), "zwarn": np.array([0, 512, 1 << 15], np.uint32)}
    x = scan_features(results, spike_bit=1 << 15, npixels_max=3681)
    assert x.shape == (n, len(FEATURES)) and np.isfinite(x).all()
    assert x[2, FEATURES.index("on_spike")] == 1.0 and x[0, FEATURES.index("on_spike")] == 0.0
