"""The per-spectrum metrics of an NMF chi2 curve: B26's significance, robustness and candidates, and Redrock's
DELTACHI2 (METHODS §1.4)."""

from __future__ import annotations

import numpy as np

from dzspec.kernels.trials import local_minima

__all__ = ["chi2_metrics", "delta_chi2"]


def chi2_metrics(chi2: np.ndarray, *, exclusion_steps: int = 25, n_minima: int = 5) -> dict[str, np.ndarray | float]:
    """B26 §3.4 metrics of one chi2 curve over the trial grid (METHODS §1.4).

    ``significance = 1 - chi2_min / Q1`` (numpy linear percentile), ``robustness = (min2 - min1) / sigma_Q1`` with
    ``sigma_Q1`` the ddof=1 std of chi2 <= Q1 (ties within 1e-9 relative of Q1 included) and ``min2`` the lowest
    chi2 outside +-``exclusion_steps`` trials of the argmin. ``minima_index`` lists up to ``n_minima`` local
    minima, lowest first, each at least
    ``exclusion_steps + 1`` trials from the ones before it (padded with -1).

    Examples
    --------
    >>> chi2 = np.full(200, 10.0); chi2[50] = 2.0; chi2[150] = 4.0; chi2[::7] += 1
    >>> m = chi2_metrics(chi2)
    >>> int(m["index"]), float(m["significance"]), m["minima_index"][:3].tolist()
    (50, 0.8, [50, 150, 1])
    """
    chi2 = np.asarray(chi2, dtype=np.float64)
    out: dict[str, np.ndarray | float] = {
        "index": -1, "chi2_min": np.nan, "significance": np.nan, "robustness": np.nan,
        "minima_index": np.full(n_minima, -1, dtype=np.int64), "minima_chi2": np.full(n_minima, np.nan),
        "minima_significance": np.full(n_minima, np.nan),
    }  # fmt: skip
    if chi2.size == 0 or not np.all(np.isfinite(chi2)):
        return out
    i1 = int(np.argmin(chi2))
    q1 = float(np.percentile(chi2, 25))
    # Curves often hold plateaus of identical chi2 (trials where no basis row meets the data, chi2 = c) sitting at
    # Q1; a rounding-level tolerance keeps such ties together, otherwise 1e-13 noise flips members of the set and
    # moves sigma_Q1 (and R) by several per cent.
    low = chi2[chi2 <= q1 + 1e-9 * abs(q1)]
    sigma = float(np.std(low, ddof=1)) if low.size > 1 else np.nan
    far = np.ones(chi2.size, dtype=bool)
    far[max(i1 - exclusion_steps, 0) : i1 + exclusion_steps + 1] = False
    min2 = float(np.min(chi2[far])) if far.any() else np.nan
    if not q1 > 0:  # a curve that is 0 on a quarter of the trials (exact fits) has no defined significance
        q1 = np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        out["significance"] = 1.0 - chi2[i1] / q1
        out["robustness"] = (min2 - chi2[i1]) / sigma if sigma > 0 else np.nan
    out["index"] = i1
    out["chi2_min"] = float(chi2[i1])
    # local minima (plateaus count once), lowest first, separated by the exclusion window
    chosen = local_minima(chi2, exclusion=exclusion_steps, count=n_minima)
    mi = out["minima_index"]
    mi[: len(chosen)] = chosen
    mc = out["minima_chi2"]
    mc[: len(chosen)] = chi2[chosen]
    with np.errstate(divide="ignore", invalid="ignore"):
        out["minima_significance"] = 1.0 - mc / q1
    return out


#: Speed of light (km/s), for Redrock's velocity windows.
_C_KMS = 299792.458


def delta_chi2(chi2: np.ndarray, z: np.ndarray, best: int, *, window_kms: float = 1000.0) -> float:
    """Redrock's DELTACHI2: chi2 of the lowest local minimum more than ``window_kms`` from the best, minus the best.

    Minima are found on the whole curve (plateaus count once) and those within ``|c (z - z_best) / (1 + z_best)| <=
    window_kms`` are dropped, as Redrock drops candidates within 1000 km/s of its best. NaN when no minimum lies
    outside the window (e.g. a one-trial grid).

    Examples
    --------
    >>> z = np.linspace(0.0, 0.1, 101)
    >>> chi2 = 100 - 60 * np.exp(-0.5 * ((z - 0.05) / 0.002) ** 2) - 20 * np.exp(-0.5 * ((z - 0.08) / 0.002) ** 2)
    >>> round(delta_chi2(chi2, z, int(np.argmin(chi2))), 6)
    40.0
    """
    chi2 = np.asarray(chi2, dtype=np.float64)
    minima = local_minima(chi2)
    far = np.abs(_C_KMS * (np.asarray(z)[minima] - z[best]) / (1.0 + z[best])) > window_kms
    if not far.any():
        return float("nan")
    return float(np.min(chi2[minima[far]]) - chi2[best])
