import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dzspec.engines.nmf.train import chi2_per_pixel, nearly_nmf_step, shift_nmf_step, shift_offset, train_nmf
from tests.conftest import shared_file


@pytest.mark.parametrize("method", ["nearly", "shift"])
def test_reproduces_green_and_bailey_regression_arrays(method):
    """300 fixed iterations from GB's start reproduce their truths (GB orientation transposed) to 1e-12."""
    x = np.load(shared_file("nearly_nmf/test_data/doublet_dataset.npy"))
    v = np.load(shared_file("nearly_nmf/test_data/doublet_weights.npy"))
    templates = np.load(shared_file(f"nearly_nmf/test_data/W_{method}_truth.npy"))
    coefficients = np.load(shared_file(f"nearly_nmf/test_data/H_{method}_truth.npy"))
    start = (np.random.default_rng(100921).uniform(size=(2, 500)).T, np.ones((2, 510)))
    fit = train_nmf(x.T, v.T, 2, method=method, schedule="fixed", max_iter=300, init=start)
    # 1e-12 relative to each array's scale (measured: ~6e-15). Entry by entry, values that decay towards 0 under
    # the multiplicative rule (down to 1e-250) differ in their last bits, because the matrix products sum in
    # another order in this orientation; entries above 1e-3 of the scale agree to 1e-11.
    for got, want in ((fit.basis, templates.T), (fit.coefficients, coefficients.T)):
        assert np.max(np.abs(got - want)) <= 1e-12 * np.max(np.abs(want))
        large = np.abs(want) > 1e-3 * np.max(np.abs(want))
        np.testing.assert_allclose(got[large], want[large], rtol=1e-11, atol=0)
    assert fit.iterations == [300] and len(fit.chi2_history) == 300


def _problem(seed, n=12, npix=20, k=2, missing=0.2):
    rng = np.random.default_rng(seed)
    truth = rng.uniform(size=(n, k)) @ rng.uniform(size=(k, npix))
    sigma = rng.uniform(0.2, 1.0, size=(n, npix))
    x = truth + rng.normal(size=(n, npix)) * sigma  # many negative entries, as in faint spectra
    v = np.where(rng.random((n, npix)) < missing, 0.0, 1 / sigma**2)
    return np.where(v > 0, x, 0.0), v, rng.uniform(size=(n, k)), rng.uniform(size=(k, npix))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), missing=st.floats(0.0, 0.5))
def test_chi2_never_increases_and_factors_stay_non_negative(seed, missing):
    x, v, w, h = _problem(seed, missing=missing)
    vx = v * x
    previous = chi2_per_pixel(x, v, w, h)
    for _ in range(30):
        w, h = nearly_nmf_step(vx, v, w, h)
        current = chi2_per_pixel(x, v, w, h)
        assert current <= previous * (1 + 1e-12)
        previous = current
    assert (w >= 0).all() and (h >= 0).all()

    y0 = shift_offset(x)
    w2, h2 = _problem(seed)[2:]
    previous = chi2_per_pixel(x, v, w2, h2)
    for _ in range(30):
        w2, h2 = shift_nmf_step(v * (x + y0), v, w2, h2, y0)
        current = chi2_per_pixel(x, v, w2, h2)
        assert current <= previous * (1 + 1e-12)
        previous = current


def test_sequential_schedule_recovers_an_exact_low_rank_set_and_stops():
    rng = np.random.default_rng(3)
    truth = rng.uniform(size=(60, 3)) @ rng.uniform(size=(3, 40))
    fit = train_nmf(truth, np.ones_like(truth), 3, tol=1e-7, max_iter=5000, seed=1)
    assert len(fit.iterations) == 4  # ranks 1, 2, 3 and the final re-run
    assert all(it < 5000 for it in fit.iterations[:2])
    rel = np.linalg.norm(fit.coefficients @ fit.basis - truth) / np.linalg.norm(truth)
    assert rel < 1e-2
    assert fit.seed == 1 and fit.method == "nearly"


def test_uncovered_pixels_get_a_zero_basis_and_bad_weights_raise():
    x, v, _, _ = _problem(5)
    v[:, 7] = 0.0  # no training spectrum covers pixel 7
    fit = train_nmf(x, v, 2, max_iter=50)
    assert not fit.covered[7] and fit.covered.sum() == 19
    assert (fit.basis[:, 7] == 0).all()
    with pytest.raises(ValueError, match="non-negative"):
        train_nmf(x, -v, 2)


def test_sequential_training_keeps_every_rank_on_the_way():
    rng = np.random.default_rng(3)
    x = rng.uniform(size=(30, 3)) @ rng.uniform(size=(3, 25)) + rng.normal(0, 0.01, (30, 25))
    v = np.ones_like(x)
    v[:, :4] = 0  # an uncovered column stays zero in every snapshot
    three = train_nmf(x, v, 3, max_iter=200, tol=1e-5)
    two = train_nmf(x, v, 2, max_iter=200, tol=1e-5)
    assert [b.shape for b in three.rank_bases] == [(1, 25), (2, 25), (3, 25)]
    # rank 3 passes through exactly the rank-2 run's stages; only the final re-run differs
    for a, b in zip(two.rank_bases, three.rank_bases[:2], strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(two.basis, two.rank_bases[-1]) or two.iterations[-1] == 1
    assert all((b[:, :4] == 0).all() for b in three.rank_bases)
