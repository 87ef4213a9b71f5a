import numpy as np
import pytest
import scipy.fft
import scipy.optimize
from hypothesis import given, settings
from hypothesis import strategies as st

from dzspec.engines.nmf.grams import gram_projections, prepare_basis
from dzspec.engines.nmf.metrics import chi2_metrics, delta_chi2
from dzspec.engines.nmf.nnls import nnls_gram, nnls_gram_batch
from dzspec.engines.nmf.scan import nuisance_vectors, reference_scan, scan_block, scan_chi2, trial_grid
from tests.conftest import shared_file


def _tall_problem(seed, m=40, k=6, degenerate=0, scale=1.0):
    """Random weighted tall problem with active constraints (and optionally zero columns)."""
    rng = np.random.default_rng(seed)
    a = rng.uniform(size=(m, k)) * scale
    a[:, :degenerate] = 0.0
    w = rng.uniform(0.5, 2.0, size=m)
    truth = np.where(rng.random(k) < 0.5, 0.0, rng.uniform(size=k))
    y = a @ truth + rng.normal(0, 0.3 * scale, size=m)
    return a, w, y


def _normal(a, w, y):
    return (a.T * w) @ a, (a.T * w) @ y, float(np.sum(w * y * y))


def _chi2(omega, G, b, c):
    return c - 2 * omega @ b + omega @ G @ omega


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("degenerate", [0, 2])
def test_nnls_gram_matches_scipy_weighted_tall_nnls(seed, degenerate):
    a, w, y = _tall_problem(seed, degenerate=degenerate, scale=10.0 ** ((seed % 7) - 3))
    G, b, c = _normal(a, w, y)
    sw = np.sqrt(w)
    want, _ = scipy.optimize.nnls(sw[:, None] * a, sw * y)
    got, passive = nnls_gram(G, b)
    chi_want = np.sum(w * (y - a @ want) ** 2)
    chi_got = np.sum(w * (y - a @ got) ** 2)
    assert np.all(got >= 0)
    assert not passive[:degenerate].any()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10 * max(np.max(np.abs(want)), 1e-300))
    np.testing.assert_allclose(chi_got, chi_want, rtol=1e-10)
    np.testing.assert_allclose(_chi2(got, G, b, c), chi_want, rtol=1e-10)


def test_some_constraints_are_active():
    """The random problems above do exercise the constraints."""
    active = 0
    for seed in range(40):
        a, w, y = _tall_problem(seed)
        got, _ = nnls_gram(*_normal(a, w, y)[:2])
        active += int(np.sum(got == 0))
    assert active > 20


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 10), degenerate=st.integers(0, 3), warm=st.booleans())
def test_kkt_conditions(seed, k, degenerate, warm):
    a, w, y = _tall_problem(seed, m=30, k=k, degenerate=min(degenerate, k))
    G, b, c = _normal(a, w, y)
    rng = np.random.default_rng(seed)
    passive0 = rng.random(k) < 0.5 if warm else None
    omega, passive = nnls_gram(G, b, passive0=passive0)
    lam = b - G @ omega  # minus half the gradient of w^T G w - 2 b^T w
    tol = 1e-9 * max(np.max(np.abs(b)), 1e-300)
    assert np.all(omega >= 0)
    assert np.all(omega[~passive] == 0)
    assert np.all(lam[~passive] <= tol)  # gradient >= -tol on the active set
    np.testing.assert_allclose(lam[passive], 0, atol=tol)
    # never better than the unconstrained least squares
    sw = np.sqrt(w)
    free, *_ = np.linalg.lstsq(sw[:, None] * a, sw * y, rcond=None)
    assert _chi2(omega, G, b, c) >= np.sum(w * (y - a @ free) ** 2) * (1 - 1e-10) - 1e-12


def test_nnls_gram_batch_equals_single():
    problems = [_normal(*_tall_problem(s)) for s in range(30)]
    G = np.stack([p[0] for p in problems])
    b = np.stack([p[1] for p in problems])
    got = nnls_gram_batch(G, b)
    for i in range(30):
        np.testing.assert_allclose(got[i], nnls_gram(G[i], b[i])[0], rtol=0, atol=1e-12)


def test_nnls_gram_all_zero_and_degenerate():
    omega, passive = nnls_gram(np.zeros((3, 3)), np.zeros(3))
    assert omega.tolist() == [0.0, 0.0, 0.0] and not passive.any()
    # duplicated column: G singular, still the optimal chi2
    a = np.random.default_rng(1).uniform(size=(20, 3))
    a[:, 2] = a[:, 1]
    y = a @ np.array([1.0, 0.5, 0.5])
    G, b, c = _normal(a, np.ones(20), y)
    omega, _ = nnls_gram(G, b)
    assert _chi2(omega, G, b, c) <= 1e-12 * c


# ---------------------------------------------------------------------------------------------------------------------
# FFT scan on a small synthetic problem
# ---------------------------------------------------------------------------------------------------------------------

DELTA = 1e-4
N_REST = 3000
N_OBS = 1200
J0 = 1500


def _basis():
    """k = 4: a continuum and three groups of compact Gaussian lines (exact zeros outside +-5 sigma)."""
    x = np.arange(N_REST, dtype=float)
    rows = [1.0 + 0.5 * np.sin(x / 700.0)]
    for centres in ([300, 900, 1900], [500, 1300, 2400], [700, 1600, 2700]):
        row = np.zeros(N_REST)
        for c0 in centres:
            d = (x - c0) / 4.0
            row += np.where(np.abs(d) < 5, np.exp(-0.5 * d**2), 0.0) * 5
        rows.append(row)
    return np.array(rows)


def _spectrum(h, shift, seed=0, omega=(0.3, 1.0, 0.0, 0.7), sigma=0.1):
    """Observed spectrum (pixel j at rest pixel J0 - shift + j) with noise and a masked stretch."""
    rng = np.random.default_rng(seed)
    s = J0 - shift
    window = np.zeros((h.shape[0], N_OBS))
    lo, hi = max(s, 0), min(s + N_OBS, N_REST)
    window[:, lo - s : hi - s] = h[:, lo:hi]
    f = np.asarray(omega) @ window + rng.normal(0, sigma, N_OBS)
    w = np.full(N_OBS, 1 / sigma**2) * rng.uniform(0.5, 1.5, N_OBS)
    w[400:450] = 0.0
    f[400:450] = np.nan
    return f, w


@pytest.fixture(scope="module")
def problem():
    h = _basis()
    return h, prepare_basis(h, N_OBS)


def test_fft_gram_and_projections_equal_direct_sums(problem):
    h, prepared = problem
    f, w = _spectrum(h, 600)
    rng = np.random.default_rng(3)
    lags = np.r_[rng.integers(-N_OBS + 1, N_REST, 60), -N_OBS + 1, N_REST - 1, 0]
    gp, b, c = gram_projections(prepared, f, w, lags)
    fc = np.where(w > 0, f, 0.0)
    padded = np.zeros((h.shape[0], N_REST + 2 * N_OBS))
    padded[:, N_OBS : N_OBS + N_REST] = h
    assert c == pytest.approx(np.sum(w * fc * fc), rel=1e-14)
    for i, s in enumerate(lags):
        win = padded[:, N_OBS + s : 2 * N_OBS + s]
        G = (win * w) @ win.T
        bd = win @ (w * fc)
        # FFT round-off is global: 1e-12 relative to each entry's Cauchy-Schwarz bound over all lags (a narrow
        # overlap at the edge has a small G but the same absolute error; b is a signed sum where noise cancels)
        bound = prepared.main.hh_norm * np.linalg.norm(w)
        assert np.all(np.abs(gp[i] - G[prepared.pair_a, prepared.pair_b]) <= 1e-12 * bound)
        # and 1e-12 relative to G's largest entry wherever the overlap is substantial
        if G[0, 0] > 0.1 * np.sum(w):
            np.testing.assert_allclose(gp[i], G[prepared.pair_a, prepared.pair_b], rtol=0, atol=1e-12 * G.max())
        bound = np.linalg.norm(h, axis=1) * np.linalg.norm(w * fc)
        assert np.all(np.abs(b[i] - bd) <= 1e-12 * bound)


@pytest.mark.parametrize("true_shift", [200, 900])
def test_scan_equals_reference_and_recovers_shift(problem, true_shift):
    h, prepared = problem
    f, w = _spectrum(h, true_shift, seed=true_shift)
    shifts = np.arange(0, 1500, 3)
    chi2, omega = scan_chi2(prepared, f, w, J0 - shifts)
    sub = np.r_[np.arange(0, shifts.size, 7), np.argmin(chi2)]
    ref_chi2, ref_omega = reference_scan(h, f, w, J0 - shifts[sub])
    np.testing.assert_allclose(chi2[sub], ref_chi2, rtol=1e-8)
    np.testing.assert_allclose(omega[sub], ref_omega, rtol=0, atol=1e-6 * np.max(ref_omega))
    assert abs(shifts[np.argmin(chi2)] - true_shift) <= 3  # within one trial step
    full_ref, _ = reference_scan(h, f, w, J0 - shifts)
    assert np.argmin(full_ref) == np.argmin(chi2)
    np.testing.assert_allclose(chi2, full_ref, rtol=1e-8)


def test_shift_equivariance(problem):
    h, prepared = problem
    shifts = np.arange(0, 1400)
    f, w = _spectrum(h, 700, seed=5)
    base = np.argmin(scan_chi2(prepared, f, w, J0 - shifts)[0])
    for m in (-37, 11, 120):
        # moving the spectrum by m observed pixels == moving its first pixel on the rest grid
        g, v = _spectrum(h, 700 - m, seed=5)
        moved = np.argmin(scan_chi2(prepared, g, v, J0 - shifts)[0])
        assert moved == base - m


def test_scan_block_outputs_and_masked_spectrum(problem):
    h, prepared = problem
    z, shifts, lags = trial_grid(DELTA, J0, z_max=0.35, dz=0.0005)
    assert len(z) == 701 and np.all(np.diff(shifts) > 0) and np.all(lags == J0 - shifts)
    f1, w1 = _spectrum(h, int(shifts[400]), seed=1)
    f2, w2 = _spectrum(h, int(shifts[150]), seed=2)
    flux = np.stack([f1, f2, np.full(N_OBS, np.nan)])
    weights = np.stack([w1, w2, np.zeros(N_OBS)])
    res = scan_block(prepared, flux, weights, shifts, DELTA, J0, return_chi2=True)
    assert res.index[:2].tolist() == [400, 150]
    np.testing.assert_allclose(res.z[:2], 10.0 ** (shifts[[400, 150]] * DELTA) - 1)
    assert res.npixels.tolist() == [N_OBS - 50, N_OBS - 50, 0]
    for i in range(2):
        m = chi2_metrics(res.chi2[i])
        q1 = np.percentile(res.chi2[i], 25)
        assert res.chi2_min[i] == res.chi2[i].min()
        assert res.significance[i] == pytest.approx(1 - res.chi2_min[i] / q1)
        low = res.chi2[i][res.chi2[i] <= q1]
        far = np.abs(np.arange(len(z)) - res.index[i]) > 25
        r = (res.chi2[i][far].min() - res.chi2_min[i]) / np.std(low, ddof=1)
        assert res.robustness[i] == pytest.approx(r)
        assert res.robustness[i] > 0
        assert res.minima_z[i, 0] == res.z[i] and m["minima_chi2"][0] == res.chi2_min[i]
        assert np.all(np.diff(res.minima_chi2[i][np.isfinite(res.minima_chi2[i])]) >= 0)
        np.testing.assert_allclose(res.minima_significance[i], 1 - res.minima_chi2[i] / q1)
        assert np.all(res.omega[i] >= 0)
    assert res.index[2] == -1
    for name in ("z", "chi2_min", "significance", "robustness"):
        assert np.isnan(getattr(res, name)[2])
    assert np.all(np.isnan(res.omega[2])) and np.all(np.isnan(res.minima_z[2])) and np.all(np.isnan(res.chi2[2]))


def test_unweighted_mode_minimises_the_unweighted_objective(problem):
    h, prepared = problem
    f, w = _spectrum(h, 500, seed=9)
    lags = J0 - np.arange(300, 700, 13)
    chi2, omega = scan_chi2(prepared, f, w, lags, weighting="unweighted")
    chi2_w, _ = scan_chi2(prepared, f, w, lags)
    fc = np.where(w > 0, f, 0.0)
    padded = np.zeros((h.shape[0], N_REST + 2 * N_OBS))
    padded[:, N_OBS : N_OBS + N_REST] = h
    for i, s in enumerate(lags):
        win = padded[:, N_OBS + s : 2 * N_OBS + s]
        want, _ = scipy.optimize.nnls(win.T, fc)
        np.testing.assert_allclose(omega[i], want, rtol=0, atol=1e-8 * max(np.max(want), 1.0))
        np.testing.assert_allclose(chi2[i], np.sum(w * (fc - omega[i] @ win) ** 2), rtol=1e-8)
    assert np.all(chi2 >= chi2_w * (1 - 1e-10))  # weighted NNLS minimises the reported chi2


def test_real_qso_basis_conditioning():
    """5 nearly-NMF QSO templates (Green & Bailey 2024): ill-conditioned Gram, scan == reference."""
    templates = np.load(shared_file("nearly_nmf_paper/templates/W_nearly_noisy.npy")).T  # (5, 11050)
    h = np.clip(templates / np.max(templates), 0, None)
    n_obs = 3000
    prepared = prepare_basis(h, n_obs)
    rng = np.random.default_rng(4)
    s0 = 4000
    f = np.array([0.2, 1.0, 0.5, 0.0, 0.3]) @ h[:, s0 : s0 + n_obs]
    sigma = 0.05 * np.max(f)
    f = f + rng.normal(0, sigma, n_obs)
    w = np.full(n_obs, 1 / sigma**2)
    lags = np.r_[np.arange(3000, 5000, 17), s0]
    chi2, omega = scan_chi2(prepared, f, w, lags)
    ref, ref_omega = reference_scan(h, f, w, lags)
    np.testing.assert_allclose(chi2, ref, rtol=1e-8)
    np.testing.assert_allclose(omega, ref_omega, rtol=0, atol=1e-6 * np.max(ref_omega))
    assert lags[np.argmin(chi2)] == s0
    gp, _, _ = gram_projections(prepared, f, w, [s0])
    G = np.zeros((5, 5))
    G[prepared.pair_a, prepared.pair_b] = gp[0]
    G[prepared.pair_b, prepared.pair_a] = gp[0]
    assert np.linalg.cond(G) > 100


def test_weakly_supported_component_is_exact():
    """A line whose far tail alone enters the window: G_aa ~ 1e-12 of its scale, below the FFT round-off of
    the correlation; the direct-sum refinement keeps chi2 and w exact (the reference fits a large w there)."""
    x = np.arange(4000, dtype=float)
    d = (x - 1000) / 20
    h = np.array([1.0 + 0.3 * np.cos(x / 300), np.where(np.abs(d) < 5, 100 * np.exp(-0.5 * d**2), 0.0)])
    n_obs = 800
    prepared = prepare_basis(h, n_obs)
    rng = np.random.default_rng(2)
    lags = np.r_[np.arange(1075, 1101), np.arange(100, 3500, 101)]
    f = 2 + rng.normal(0, 0.1, n_obs)
    w = np.full(n_obs, 100.0)
    chi2, omega = scan_chi2(prepared, f, w, lags)
    ref, ref_omega = reference_scan(h, f, w, lags)
    np.testing.assert_allclose(chi2, ref, rtol=1e-10)
    np.testing.assert_allclose(omega, ref_omega, rtol=1e-6, atol=1e-12)
    assert np.max(ref_omega[:, 1]) > 1.0  # the tail is used


def _count_fallbacks(monkeypatch) -> tuple[list[int], list[int]]:
    """Record the per-spectrum weak-row fallback's calls and the lags summed directly (any path)."""
    import dzspec.engines.nmf.grams as grams

    fallback, summed = [], []
    refine, direct = grams._refine_row, grams._direct_row

    def refining(*args):
        fallback.append(args[4].size)
        return refine(*args)

    def summing(*args):
        summed.append(args[4].size)
        return direct(*args)

    monkeypatch.setattr(grams, "_refine_row", refining)
    monkeypatch.setattr(grams, "_direct_row", summing)
    return fallback, summed


@pytest.mark.parametrize("spike", [1e4, 1e8])
def test_spikes_at_poorly_covered_pixels_are_exact_and_cheap(spike, monkeypatch):
    """Trained bases grow spikes of 1e6-1e8 x their level where few training spectra reach (the grid's blue edge).
    They are summed directly, so the FFTs stay accurate at every lag and spectra rarely need the weak-row fallback."""
    h = _basis()
    h[0, 40:43] *= spike  # a row's spike at the edge, and one inside the lines
    h[1, 1902] *= spike
    prepared = prepare_basis(h, N_OBS)
    assert set(prepared.spike_pixels.tolist()) == {40, 41, 42, 1902}
    shifts = np.arange(0, 2000, 3)
    f, w = _spectrum(h / np.array([spike, 1, 1, 1])[:, None], 900, seed=9)
    fallback, _ = _count_fallbacks(monkeypatch)
    chi2, _ = scan_chi2(prepared, f, w, J0 - shifts)
    ref, _ = reference_scan(h, f, w, J0 - shifts)
    np.testing.assert_allclose(chi2, ref, rtol=1e-9)
    assert np.argmin(chi2) == np.argmin(ref)
    # the per-spectrum fallback only sums the few lags where the masked stretch hides a row's lines
    assert sum(fallback) < 0.1 * shifts.size and max(fallback, default=0) <= 24
    # the Grams themselves equal direct sums wherever a row meets the window
    gp, _, _ = gram_projections(prepared, f, w, J0 - shifts)
    w0 = np.where(np.isfinite(f), w, 0.0)
    lags = J0 - shifts
    padded = np.zeros((4, N_REST + 2 * N_OBS))
    padded[:, N_OBS : N_OBS + N_REST] = h
    wins = np.lib.stride_tricks.sliding_window_view(padded, N_OBS, axis=1)[:, N_OBS + lags]
    direct = np.einsum("asj,j,asj->sa", wins, w0, wins)
    approx = gp[:, np.diagonal(prepared.pair_index)]
    supported = direct > 0
    np.testing.assert_allclose(approx[supported], direct[supported], rtol=1e-9)
    assert np.all(approx[~supported] == 0.0)


def test_bright_region_rows_are_exact_through_a_segment_plan(monkeypatch):
    """A row 1e8 times brighter over 300 pixels (too many to be spikes) than on its floor elsewhere: where the window
    misses the bright part, the global FFT Gram is noise; the basis's segment plan computes that row from FFTs over
    the pixels each range of lags covers, nearly without direct sums and without the per-spectrum fallback."""
    h = _basis()
    h[2] += 1.0
    h[2, 100:400] += 1e8
    prepared = prepare_basis(h, N_OBS)
    assert prepared.spike_pixels.size == 64  # the cap: most of the bright region stays in the FFTs
    assert 2 in {segment.row for segment in prepared.segments} and 2 not in prepared.main.rows
    fallback, summed = _count_fallbacks(monkeypatch)
    shifts = np.arange(0, 2400, 2)
    f, w = _spectrum(h, 300, seed=4, omega=(0.3, 1.0, 1e-8, 0.7))
    chi2, _ = scan_chi2(prepared, f, w, J0 - shifts)
    ref, _ = reference_scan(h, f, w, J0 - shifts)
    np.testing.assert_allclose(chi2, ref, rtol=1e-9)
    assert sum(summed) < 0.1 * shifts.size  # only lags whose window edge touches the bright part
    assert sum(fallback) < 0.1 * shifts.size and max(fallback, default=0) <= 2 * 24  # masked-stretch lags only
    again, _ = scan_chi2(prepared, f, w, J0 - shifts)
    np.testing.assert_array_equal(again, chi2)


def test_prepared_lag_range_is_enforced_and_exact():
    """A basis prepared for the trial lags only (shorter FFTs) gives the Grams of the full preparation, and refuses
    lags outside its range with an error that says so."""
    h = _basis()
    lags = J0 - np.arange(300, 1500, 3)
    full, part = prepare_basis(h, N_OBS), prepare_basis(h, N_OBS, lags=lags)
    assert part.fft_points < full.fft_points
    f, w = _spectrum(h, 900, seed=2)
    for got, want in zip(gram_projections(part, f, w, lags), gram_projections(full, f, w, lags), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9 * np.max(np.abs(want)))
    with pytest.raises(ValueError, match="outside the prepared lags"):
        gram_projections(part, f, w, np.array([lags.max() + 1]))


def test_robustness_is_stable_against_rounding_on_a_plateau_at_q1():
    """A quarter-plus of the trials at exactly chi2 = c (no basis overlap) sits at Q1; 1e-13 noise must not move R."""
    from dzspec.engines.nmf.metrics import chi2_metrics

    rng = np.random.default_rng(1)
    chi2 = np.concatenate([500.0 + 400 * rng.random(200), np.full(400, 1000.0), 1100.0 + 400 * rng.random(400)])
    chi2[100] = 100.0
    noisy = chi2 * (1 + 1e-13 * rng.standard_normal(chi2.size))
    assert chi2_metrics(noisy)["robustness"] == pytest.approx(chi2_metrics(chi2)["robustness"], rel=1e-9)


@pytest.mark.parametrize("weighting", ["weighted", "unweighted"])
def test_refinement_beats_the_trial_grid(problem, weighting):
    """True shifts half-way between trials (6-9 pixels apart): the refined shift lands on them, the coarse cannot."""
    h, prepared = problem
    _, shifts, _ = trial_grid(DELTA, J0, z_max=0.35, dz=0.002)
    true = []
    flux, weights = [], []
    for seed in range(5):
        for k in (45, 70, 95, 120, 145):
            true.append(int(shifts[k] + (shifts[k + 1] - shifts[k]) // 2))
            f, w = _spectrum(h, true[-1], seed=seed)
            flux.append(f)
            weights.append(w)
    true = np.array(true)
    flux.append(np.full(N_OBS, np.nan))
    weights.append(np.zeros(N_OBS))
    res = scan_block(prepared, np.stack(flux), np.stack(weights), shifts, DELTA, J0, weighting=weighting)
    assert np.isnan(res.z_refined[-1]) and np.isnan(res.chi2_refined[-1]) and np.all(np.isnan(res.omega_refined[-1]))
    coarse = np.log10(1 + res.z[:-1]) / DELTA - true
    refined = np.log10(1 + res.z_refined[:-1]) / DELTA - true
    assert np.all(res.chi2_refined[:-1] <= res.chi2_min[:-1])  # exactly: the best trial is among the candidates
    assert np.all(res.omega_refined[:-1] >= 0)
    ok = np.abs(coarse) < 10  # the rest are line aliases (~300 pixels), which refinement does not touch
    assert ok.mean() >= 0.9
    assert np.all(np.abs(coarse[ok]) >= 2.5)
    assert np.all(np.abs(refined[ok]) < 0.5)
    assert np.mean(np.abs(refined[ok])) < 0.05 * np.mean(np.abs(coarse[ok]))
    assert np.all(np.abs(refined[~ok] - coarse[~ok]) <= 10)  # never leaves the +-1 trial window


def test_refinement_is_optional_and_keeps_the_trial_outputs(problem):
    h, prepared = problem
    _, shifts, _ = trial_grid(DELTA, J0, z_max=0.35, dz=0.002)
    f, w = _spectrum(h, int(shifts[80]) + 3, seed=4)
    with_refine = scan_block(prepared, f[None], w[None], shifts, DELTA, J0, return_chi2=True)
    without = scan_block(prepared, f[None], w[None], shifts, DELTA, J0, refine=False)
    assert without.z_refined is None and without.chi2_refined is None and without.omega_refined is None
    for name in ("index", "z", "chi2_min", "omega", "significance", "robustness", "minima_z"):
        np.testing.assert_array_equal(getattr(with_refine, name), getattr(without, name), err_msg=name)
    # chi2_refined is the scan's own chi2 at the chosen integer shift
    s = np.rint(np.log10(1 + with_refine.z_refined[0]) / DELTA).astype(np.int64)
    chi2, _ = scan_chi2(prepared, f, w, np.array([J0 - s]))
    assert with_refine.chi2_refined[0] == pytest.approx(chi2[0], rel=1e-9)


# ---------------------------------------------------------------------------------------------------------------------
# Free-sign nuisance terms beside the non-negative basis (METHODS §5.7)
# ---------------------------------------------------------------------------------------------------------------------


def _hard_basis():
    """:func:`_basis` with spikes (summed directly) and a row whose far tail alone enters some windows (weak rows)."""
    h = _basis()
    h[0, 40:43] *= 1e6
    h[1, 1902] *= 1e6
    x = np.arange(N_REST, dtype=float)
    d = (x - 2950) / 15
    return np.vstack([h, np.where(np.abs(d) < 5, 50 * np.exp(-0.5 * d**2), 0.0)])


def _smooth_basis():
    """:func:`_basis` with its continuum an exponential: on a window it is a quadratic to ~1e-5, so without the
    span rule an exact fit would cancel it against the nuisance terms at coefficients of ~1e6."""
    h = _basis()
    h[0] = np.exp(0.8 * np.arange(N_REST) / N_REST)
    return h


def _sky_like(n: int) -> np.ndarray:
    """A wavy positive observed-frame vector (a night-sky continuum's bands), no polynomial of low order."""
    x = np.linspace(0.0, 1.0, n)
    return 1.0 + 0.6 * np.sin(23 * x) ** 2 + 0.8 * np.exp(-0.5 * ((x - 0.7) / 0.03) ** 2) + 0.5 * x


@pytest.mark.parametrize("order", [0, 1, 2, "sky"])
@pytest.mark.parametrize("kind", ["plain", "hard", "smooth"])
def test_nuisance_scan_equals_bounded_least_squares(order, kind):
    """Basis coefficients >= 0, nuisance coefficients free: the Schur-complement FFT scan equals the per-trial
    bounded least squares (scipy.optimize.lsq_linear, BVLS) to 1e-8 on spectra with a pedestal and a tilt, also
    with a sky-continuum-like vector beside P0 (zfind's sky term)."""
    h = {"plain": _basis, "hard": _hard_basis, "smooth": _smooth_basis}[kind]()
    prepared = prepare_basis(h, N_OBS)
    sky = _sky_like(N_OBS)
    p = np.vstack([nuisance_vectors(N_OBS, 0), sky]) if order == "sky" else nuisance_vectors(N_OBS, order)
    shifts = np.r_[np.arange(0, 2600, 7), np.arange(880, 921)]
    lags = J0 - np.unique(shifts)
    for seed, shift in ((1, 600), (2, 900), (3, 1500)):
        f, w = _spectrum(_basis(), shift, seed=seed)
        # a sky over-subtraction, or a negative pedestal and curvature
        f = f - (0.5 * sky if order == "sky" else 0.8 - 0.3 * np.linspace(-1, 1, N_OBS) ** 2 * (order >= 2))
        chi2, omega, beta = scan_chi2(prepared, f, w, lags, nuisance=p, return_nuisance=True)
        ref, _ = reference_scan(h, f, w, lags, nuisance=p)
        np.testing.assert_allclose(chi2, ref, rtol=1e-8)
        assert np.argmin(chi2) == np.argmin(ref)
        assert np.all(omega >= 0) and beta.shape == (lags.size, p.shape[0])
        assert np.min(beta[:, -1 if order == "sky" else 0]) < 0  # the free sign is used


@settings(max_examples=25, deadline=None)
@given(pedestal=st.floats(-5, 5), tilt=st.floats(-2, 2), seed=st.integers(0, 1000))
def test_chi2_is_invariant_to_what_the_nuisance_terms_span(pedestal, tilt, seed):
    """Adding c P0 + d P1 to a spectrum changes no chi2 at any lag and shifts the nuisance coefficients by (c, d)."""
    h = _basis()
    prepared = prepare_basis(h, N_OBS)
    p = nuisance_vectors(N_OBS, 1)
    lags = J0 - np.arange(0, 2400, 37)
    f, w = _spectrum(h, 700, seed=seed)
    chi2, _, beta = scan_chi2(prepared, f, w, lags, nuisance=p, return_nuisance=True)
    moved, _, beta_moved = scan_chi2(prepared, f + pedestal * p[0] + tilt * p[1], w, lags, nuisance=p,
                                     return_nuisance=True)
    scale = float(np.nansum(w * f * f))
    np.testing.assert_allclose(moved, chi2, rtol=0, atol=1e-10 * scale)
    np.testing.assert_allclose(beta_moved - beta, np.broadcast_to([pedestal, tilt], beta.shape), atol=1e-6)


def test_a_sky_pedestal_no_longer_moves_the_redshift(problem):
    """B26's failure 2: a negative median (sky over-subtraction) pulls the basis-only NNLS off the true shift; with
    the free-sign constant the scan finds it, with chi2 at the noise level."""
    h, prepared = problem
    shifts = np.arange(0, 2400, 2)
    found = {}
    for order in (-1, 0):
        hits = 0
        for seed in range(6):
            f, w = _spectrum(h, 1000, seed=seed, omega=(0.05, 0.3, 0.0, 0.2), sigma=0.2)
            f = f - 1.0  # median now well below zero
            r = scan_block(prepared, f[None], w[None], shifts, DELTA, J0, nuisance=nuisance_vectors(N_OBS, order))
            hits += int(abs(int(shifts[r.index[0]]) - 1000) <= 2)
            if order == 0:
                assert r.chi2_min[0] < 1.3 * r.npixels[0]
                assert r.nuisance_coeff[0, 0] < -0.5  # (the continuum row shares the rest of the constant)
        found[order] = hits
    assert found[0] == 6 and found[-1] < 6


def test_deltachi2_is_redrocks(problem):
    """DELTACHI2: the lowest local minimum more than 1000 km/s from the best, minus the best (brute force)."""
    h, prepared = problem
    shifts = np.arange(0, 2400, 2)
    f, w = _spectrum(h, 1100, seed=3)
    r = scan_block(prepared, f[None], w[None], shifts, DELTA, J0, return_chi2=True)
    z = 10.0 ** (shifts * DELTA) - 1
    chi2, best = r.chi2[0], int(r.index[0])
    minima = [i for i in range(chi2.size) if (i == 0 or chi2[i] < chi2[i - 1]) and (i == chi2.size - 1 or
                                                                                 chi2[i] <= chi2[i + 1])]
    far = [i for i in minima if abs(299792.458 * (z[i] - z[best]) / (1 + z[best])) > 1000]
    assert r.deltachi2[0] == pytest.approx(min(chi2[i] for i in far) - chi2[best], rel=1e-12)
    assert r.deltachi2[0] > 0
    assert delta_chi2(chi2, z, best) == r.deltachi2[0]
