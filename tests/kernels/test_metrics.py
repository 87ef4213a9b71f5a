import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dzspec.kernels.metrics import good_fraction, mae_with_rejection, wilson_interval


def test_good_fraction_forms_and_boundaries():
    z_true = np.array([0.0, 1.0, 3.0, 5.0])
    z_pred = z_true + np.array([0.004, 0.009, 0.019, 0.5])
    assert good_fraction(z_pred, z_true) == (0.75, 3, 4)  # 0.005(1+z): 0.005, 0.010, 0.020, 0.030
    assert good_fraction(z_pred, z_true, form="absolute") == (0.25, 1, 4)
    assert good_fraction(z_pred, z_true, tol=0.0042)[1] == 1


def test_mae_rejects_catastrophic_failures_only():
    rng = np.random.default_rng(0)
    z_true = rng.uniform(0, 6, 1000)
    z_pred = z_true + rng.normal(0, 1e-4, 1000) * (1 + z_true)
    z_pred[:30] = rng.uniform(0, 6, 30)  # catastrophic
    mae, kept = mae_with_rejection(z_pred, z_true)
    assert 930 < kept <= 970
    assert abs(mae - 1e-4 * np.sqrt(2 / np.pi)) < 2e-5  # mean |N(0, 1e-4)| for the clean ones
    mae_c, kept_c = mae_with_rejection(z_pred, z_true, rule="centred")
    assert kept_c <= kept + 30 and mae_c > 0


@settings(max_examples=50, deadline=None)
@given(k=st.integers(0, 200), extra=st.integers(1, 200))
def test_wilson_interval_stays_inside_unit_interval_and_contains_the_estimate(k, extra):
    n = k + extra
    centre, half = wilson_interval(k, n)
    assert 0 <= centre - half <= k / n + 1e-12
    assert k / n - 1e-12 <= centre + half <= 1
