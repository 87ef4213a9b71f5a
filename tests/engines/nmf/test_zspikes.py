import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dzspec.engines.nmf.zspikes import find_spikes, spike_members, trial_index

TRIAL_Z = np.round(np.arange(13401) * 0.0005, 10)  # B26's grid


def _survey(seed, n=5000):
    rng = np.random.default_rng(seed)
    z = rng.gamma(2.0, 0.6, n)  # a smooth n(z)
    untrusted = rng.random(n) < 0.3
    deltachi2 = np.where(untrusted, rng.uniform(0, 20, n), rng.uniform(50, 5000, n))
    return z, untrusted, deltachi2, rng


def test_an_instrumental_spike_is_found_and_its_weak_members_flagged():
    z, untrusted, deltachi2, rng = _survey(0)
    attractor = np.full(150, 5.872) + rng.integers(-1, 2, 150) * 0.0005  # faint LAEs drawn to one residual
    z = np.r_[z, attractor]
    untrusted = np.r_[untrusted, rng.random(150) < 0.7]
    deltachi2 = np.r_[deltachi2, np.where(np.arange(150) < 5, 400.0, rng.uniform(0, 30, 150))]
    index = trial_index(z, TRIAL_Z)
    spikes = find_spikes(index, TRIAL_Z.size, untrusted)
    assert spikes["trial"].size == 1 and abs(TRIAL_Z[spikes["trial"][0]] - 5.872) <= 0.0005
    assert spikes["count"][0] >= 150 and spikes["untrusted_fraction"][0] > 0.5
    members = spike_members(index, spikes["trial"], deltachi2)
    assert members[-150:].sum() == 145 and not members[-150:][:5].any()  # decisive fits are kept
    assert members[:-150].sum() <= 2  # the smooth survey is (almost) untouched


def test_a_galaxy_cluster_is_not_a_spike():
    """Many confident fits at one redshift (e.g. the A478 members at z = 0.086) make a peak, not a spike."""
    z, untrusted, _, rng = _survey(1)
    z = np.r_[z, 0.086 + rng.normal(0, 0.003, 300)]
    untrusted = np.r_[untrusted, rng.random(300) < 0.15]
    index = trial_index(z, TRIAL_Z)
    assert find_spikes(index, TRIAL_Z.size, untrusted)["trial"].size == 0


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(100, 20_000))
def test_a_smooth_survey_has_no_spikes(seed, n):
    z, untrusted, _, _ = _survey(seed, n)
    assert find_spikes(trial_index(z, TRIAL_Z), TRIAL_Z.size, untrusted)["trial"].size == 0
