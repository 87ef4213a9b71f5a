import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dzspec.engines.nmf.scan import trial_grid
from dzspec.kernels.trials import local_minima, trial_redshifts


def _nmf_candidates(chi2, exclusion_steps, n_minima):
    """The NMF scan's candidates as chi2_metrics chose them before the shared routine."""
    left = np.r_[np.inf, chi2[:-1]]
    right = np.r_[chi2[1:], np.inf]
    cand = np.flatnonzero((chi2 < left) & (chi2 <= right))
    cand = cand[np.argsort(chi2[cand], kind="stable")]
    chosen = []
    for i in cand:
        if all(abs(int(i) - j) > exclusion_steps for j in chosen):
            chosen.append(int(i))
            if len(chosen) == n_minima:
                break
    return chosen


def _madgics_alternatives(curve, best, exclusion, count):
    """The MADGICS scan's alternatives as it chose them before the shared routine."""
    interior = np.flatnonzero((curve[1:-1] <= curve[:-2]) & (curve[1:-1] <= curve[2:])) + 1
    chosen = [best]
    for index in interior[np.argsort(curve[interior], kind="stable")]:
        if len(chosen) > count:
            break
        if all(abs(int(index) - c) > exclusion for c in chosen):
            chosen.append(int(index))
    return chosen[1:]


# few distinct values: plateaus and ties are common
curves = st.lists(st.sampled_from([0.0, 1.0, 2.0, 3.0, 5.0, np.nan]), min_size=0, max_size=60).map(np.array)


@settings(max_examples=300, deadline=None)
@given(curves, st.integers(0, 6), st.integers(1, 6))
def test_local_minima_choose_the_nmf_candidates(curve, exclusion, count):
    assert local_minima(curve, exclusion=exclusion, count=count).tolist() == _nmf_candidates(curve, exclusion, count)


@settings(max_examples=300, deadline=None)
@given(curves.filter(lambda c: c.size > 0), st.integers(0, 6), st.integers(0, 4), st.data())
def test_local_minima_choose_the_madgics_alternatives(curve, exclusion, count, data):
    best = data.draw(st.integers(0, curve.size - 1))
    chosen = local_minima(curve, plateaus="all", ends=False, exclusion=exclusion, count=count, taken=[best])
    assert chosen.tolist() == _madgics_alternatives(curve, best, exclusion, count)


def test_all_local_minima_in_index_order():
    curve = np.array([2.0, 1.0, 1.0, 3.0, 0.0, 0.0])
    assert local_minima(curve).tolist() == [1, 4]
    assert local_minima(curve, plateaus="all").tolist() == [1, 2, 4, 5]
    assert local_minima(curve, plateaus="all", ends=False).tolist() == [1, 2, 4]
    assert local_minima(np.array([])).tolist() == []


def test_trial_redshifts_are_the_nmf_trial_grid():
    z = trial_redshifts(0.0, 6.7, 0.0005)
    assert z.size == 13401 and z[0] == 0.0
    grid_z, _, _ = trial_grid(2.215525e-5, 40000)
    np.testing.assert_array_equal(grid_z, z)
    # the float arange the grid once used gives the same bits
    np.testing.assert_array_equal(0.3 + 0.0005 * np.arange(z.size - 600, dtype=np.float64),
                                  trial_redshifts(0.3, 6.7, 0.0005))
