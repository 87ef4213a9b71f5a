"""Redshift spikes: trial redshifts that an implausible share of a store's spectra land on (METHODS §5.7).

A feature at a fixed *observed* wavelength (a sky-subtraction residual, a detector or flat-field artefact) that a
basis row can fit pulls every faint spectrum onto the one redshift that puts a rest-frame line there, so the store's
redshift histogram grows a spike, well known from SDSS and DESI. A real structure (a galaxy cluster) also makes a
peak, but its members are mostly confident fits; a spike's members mostly are not.

:func:`find_spikes` histograms the best trials, compares each group of ``2 half_width + 1`` trials with the density
of the trials around it (Poisson tail probability below ``p_max``) and keeps the over-dense groups most of whose
members are already untrusted (``untrusted``: any ``zwarn`` bit). :func:`spike_members` then names the members to
flag: those within the group without a decisive fit (``deltachi2`` below ``keep_deltachi2``).

Examples
--------
>>> trial_z = np.arange(0.0, 3.0, 0.001)
>>> rng = np.random.default_rng(0)
>>> z = np.r_[rng.uniform(0, 3, 3000), np.full(60, 1.5)]  # a smooth n(z) and 60 faint spectra at z = 1.5
>>> index = trial_index(z, trial_z)
>>> untrusted = np.r_[rng.random(3000) < 0.2, np.ones(60, bool)]
>>> spikes = find_spikes(index, trial_z.size, untrusted)
>>> [round(float(trial_z[s]), 3) for s in spikes["trial"]]
[1.5]
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage
import scipy.stats

__all__ = ["find_spikes", "spike_members", "trial_index"]


def trial_index(z: np.ndarray, trial_z: np.ndarray) -> np.ndarray:
    """The trial of each redshift (nearest nominal trial; -1 for NaN).

    Examples
    --------
    >>> trial_index(np.array([0.0004, 0.0011, np.nan]), np.array([0.0, 0.0005, 0.001])).tolist()
    [1, 2, -1]
    """
    z = np.asarray(z, dtype=np.float64)
    trial_z = np.asarray(trial_z, dtype=np.float64)
    mid = 0.5 * (trial_z[1:] + trial_z[:-1])
    out = np.searchsorted(mid, np.where(np.isfinite(z), z, 0.0)).astype(np.int64)
    out[~np.isfinite(z)] = -1
    return out


def find_spikes(index: np.ndarray, ntrial: int, untrusted: np.ndarray, *, half_width: int = 2,
                background_half_width: int = 200, p_max: float = 1e-6, min_count: int = 8,
                min_untrusted_fraction: float = 0.5) -> dict[str, np.ndarray]:
    """Over-dense trial groups whose members are mostly untrusted.

    Parameters
    ----------
    index
        Best trial of each spectrum (:func:`trial_index`; -1 = none).
    ntrial
        Trials in the grid.
    untrusted
        Per spectrum: the fit is already not trusted (e.g. ``zwarn != 0``).
    half_width
        A group is the trials within ``half_width`` of its centre.
    background_half_width
        The expected count of a group is the mean density of the trials within this many of its centre, the
        group itself left out, times the group's width.
    p_max, min_count
        A group is over-dense when it holds at least ``min_count`` spectra and the Poisson probability of so many
        or more is below ``p_max``.
    min_untrusted_fraction
        ... and a spike when at least this fraction of its members is untrusted.

    Returns
    -------
    dict
        ``trial`` (centres, int64: the most populated trial of each run of neighbouring spike groups), ``count``,
        ``expected``, ``untrusted_fraction`` (per spike).
    """
    index = np.asarray(index)
    untrusted = np.asarray(untrusted, dtype=bool)
    used = index >= 0
    counts = np.bincount(index[used], minlength=ntrial).astype(np.float64)[:ntrial]
    bad = np.bincount(index[used & untrusted], minlength=ntrial).astype(np.float64)[:ntrial]
    width = 2 * half_width + 1
    group = scipy.ndimage.uniform_filter1d(counts, width, mode="constant") * width
    group_bad = scipy.ndimage.uniform_filter1d(bad, width, mode="constant") * width
    around = 2 * background_half_width + 1
    total = scipy.ndimage.uniform_filter1d(counts, around, mode="constant") * around
    expected = np.maximum(total - group, 0.0) / (around - width) * width
    expected = np.maximum(expected, counts.sum() / ntrial * width * 0.1)  # never 0: a sparse survey's floor
    probability = scipy.stats.poisson.sf(group - 1, expected)
    dense = (group >= min_count) & (probability < p_max)
    with np.errstate(invalid="ignore", divide="ignore"):
        fraction = np.where(group > 0, group_bad / group, 0.0)
    candidate = dense & (fraction >= min_untrusted_fraction)
    # one centre per run of neighbouring candidate groups: its most populated trial
    centres = []
    for run in np.split(np.flatnonzero(candidate), np.flatnonzero(np.diff(np.flatnonzero(candidate)) > 1) + 1):
        if run.size:
            centres.append(int(run[np.argmax(counts[run])]))
    trial = np.asarray(centres, dtype=np.int64)
    return {"trial": trial, "count": group[trial].astype(np.int64), "expected": expected[trial],
            "untrusted_fraction": fraction[trial]}


def spike_members(index: np.ndarray, spikes: np.ndarray, deltachi2: np.ndarray, *, half_width: int = 2,
                  keep_deltachi2: float = 100.0) -> np.ndarray:
    """Spectra to flag: within ``half_width`` trials of a spike and without a decisive fit
    (``deltachi2 < keep_deltachi2``; NaN counts as not decisive).

    Examples
    --------
    >>> spike_members(np.array([10, 11, 13, 30]), np.array([10]), np.array([5.0, 500.0, 5.0, 5.0])).tolist()
    [True, False, False, False]
    """
    index = np.asarray(index)
    near = np.zeros(index.shape, dtype=bool)
    for centre in np.asarray(spikes):
        near |= (index >= 0) & (np.abs(index - centre) <= half_width)
    with np.errstate(invalid="ignore"):
        decisive = np.asarray(deltachi2, dtype=np.float64) >= keep_deltachi2
    return near & ~decisive
