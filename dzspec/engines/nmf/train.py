"""Weighted non-negative matrix factorisation of data with missing values and negative entries.

Nearly-NMF and Shift-NMF of Green & Bailey (2024), in dzspec's orientation (B26): ``X`` is ``n`` spectra x
``l`` rest pixels (entries may be negative), ``V >= 0`` the inverse variances (0 = missing), and
``X ~ W H`` with coefficients ``W >= 0`` (n x k) and basis ``H >= 0`` (k x l). The objective is
``chi2 = sum V (X - W H)^2``; both algorithms never increase it.

One nearly-NMF iteration (coefficients first, as Green & Bailey), with ``[A]+ = (|A|+A)/2``, ``[A]- = (|A|-A)/2``::

    Q = (V*X) H^T :   W <- W * [Q]+ / ((V*(W H)) H^T + [Q]-)
    P = W^T (V*X) :   H <- H * [P]+ / (W^T (V*(W H)) + [P]-)

after each half-step NaN and +inf become 1e-6 (the reference code's rule, needed where 0/0 occurs). Shift-NMF adds
``y0 = max(0, -min X)`` to the data and fits ``W H + y0`` with the plain weighted multiplicative rules.

A rest pixel that no training spectrum covers ends with an arbitrary basis value (0/0 -> 1e-6); :func:`train_nmf`
zeroes the basis there and returns the ``covered`` mask. Multiplicative updates never revive an exact zero
("zero-locking"); that is the published behaviour and is kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

__all__ = [
    "Checkpoint",
    "NMFResult",
    "basis_half_step",
    "basis_terms",
    "chi2_per_pixel",
    "coefficient_half_step",
    "nearly_nmf_step",
    "run_schedule",
    "shift_nmf_step",
    "shift_offset",
    "train_nmf",
]

Method = Literal["nearly", "shift"]
_FLOOR = 1e-6


def _repair(a: np.ndarray) -> np.ndarray:
    a[~np.isfinite(a) & ~(a == -np.inf)] = _FLOOR  # NaN and +inf, as the reference implementation
    return a


def _pos(a: np.ndarray) -> np.ndarray:
    return (np.abs(a) + a) / 2


def _neg(a: np.ndarray) -> np.ndarray:
    return (np.abs(a) - a) / 2


def coefficient_half_step(vx: np.ndarray, v: np.ndarray, w: np.ndarray, h: np.ndarray,
                          y0: float | None = None) -> np.ndarray:
    """Update the coefficients of a block of spectra (rows are independent, so blocks can live on different
    workers). Nearly-NMF when ``y0`` is None (``vx = V*X``), Shift-NMF otherwise (``vx = V*(X + y0)``)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if y0 is None:
            q = vx @ h.T
            return _repair(w * _pos(q) / ((v * (w @ h)) @ h.T + _neg(q)))
        return _repair(w * (vx @ h.T) / ((v * (w @ h + y0)) @ h.T))


def basis_terms(vx: np.ndarray, v: np.ndarray, w: np.ndarray, h: np.ndarray,
                y0: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A block's additive share ``(W^T V X, W^T V (W H [+ y0]))`` of the basis update: summed over blocks,
    they give :func:`basis_half_step` its inputs (the sign split must follow the sum, not precede it)."""
    model = w @ h if y0 is None else w @ h + y0
    return w.T @ vx, w.T @ (v * model)


def basis_half_step(h: np.ndarray, projection: np.ndarray, model_projection: np.ndarray,
                    shift: bool = False) -> np.ndarray:
    """Update the basis from the summed :func:`basis_terms`."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if shift:
            return _repair(h * projection / model_projection)
        return _repair(h * _pos(projection) / (model_projection + _neg(projection)))


def nearly_nmf_step(vx: np.ndarray, v: np.ndarray, w: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One nearly-NMF iteration (coefficients, then basis). ``vx`` is ``V*X`` precomputed.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(1.0, 0.5, (6, 8)); v = np.ones_like(x)
    >>> w, h = rng.uniform(size=(6, 2)), rng.uniform(size=(2, 8))
    >>> before = chi2_per_pixel(x, v, w, h)
    >>> w, h = nearly_nmf_step(v * x, v, w, h)
    >>> bool(chi2_per_pixel(x, v, w, h) <= before)
    True
    """
    w = coefficient_half_step(vx, v, w, h)
    return w, basis_half_step(h, *basis_terms(vx, v, w, h))


def shift_offset(x: np.ndarray) -> float:
    """The Shift-NMF offset ``y0 = max(0, -min X)`` that makes the shifted data non-negative."""
    return float(max(0.0, -np.min(x)))


def shift_nmf_step(vx_shifted: np.ndarray, v: np.ndarray, w: np.ndarray, h: np.ndarray,
                   y0: float) -> tuple[np.ndarray, np.ndarray]:
    """One Shift-NMF iteration on ``V*(X + y0)`` with the model ``W H + y0`` (coefficients, then basis)."""
    w = coefficient_half_step(vx_shifted, v, w, h, y0)
    return w, basis_half_step(h, *basis_terms(vx_shifted, v, w, h, y0), shift=True)


def chi2_per_pixel(x: np.ndarray, v: np.ndarray, w: np.ndarray, h: np.ndarray) -> float:
    """``sum V (X - W H)^2 / #(V > 0)``, the quantity whose relative decrease stops the training.

    For Shift-NMF this is also the objective: ``(X + y0) - (W H + y0) = X - W H``.
    """
    resid = x - (w @ h)
    return float(np.sum(v * resid * resid) / max(1, np.count_nonzero(v)))


@dataclass
class NMFResult:
    """A trained basis and how it was obtained.

    Attributes
    ----------
    basis
        ``H`` (k x l), non-negative, zero outside ``covered``.
    coefficients
        ``W`` (n x k) of the training spectra.
    covered
        Rest pixels where at least one training spectrum has ``V > 0``.
    chi2_history
        chi2 per pixel after every iteration, all ranks in order.
    iterations
        Iterations run at each stage (one entry per rank, plus the final re-run for the sequential schedule).
    offset
        The Shift-NMF offset ``y0`` (0 for nearly-NMF).
    rank_bases
        Sequential schedule: the basis at the end of each rank's stage, ``rank_bases[r - 1]`` of shape ``(r, l)``
        (before the final full-rank re-run). Sequential training to rank k is training to every rank r < k up to
        that re-run, so one run serves a rank scan (cross-validation over ranks).
    """

    basis: np.ndarray
    coefficients: np.ndarray
    covered: np.ndarray
    chi2_history: list[float] = field(default_factory=list)
    iterations: list[int] = field(default_factory=list)
    offset: float = 0.0
    method: str = "nearly"
    seed: int | None = None
    rank_bases: list[np.ndarray] = field(default_factory=list)


Iterate = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, float]]


#: Called after every completed sequential stage with (stages done, W, H): a checkpoint to resume from.
Checkpoint = Callable[[int, np.ndarray, np.ndarray], None]


def run_schedule(
    n: int, npix: int, rank: int, iterate: Iterate, result: NMFResult, *,
    schedule: Literal["sequential", "fixed"], max_iter: int, tol: float, seed: int,
    init: tuple[np.ndarray, np.ndarray] | None,
    checkpoint: Checkpoint | None = None,
    resume: tuple[int, np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The training schedule, independent of where the iterations run (one process or a cluster).

    ``iterate(W, H) -> (W, H, chi2)`` performs one full iteration and returns chi2 per pixel afterwards. The
    initial draws come from ``default_rng(seed)`` in a fixed order, so a distributed run starts exactly where a
    local one does. A stage stops when the relative decrease between successive iterations is <= ``tol``
    (never after its first iteration). Appends to ``result.chi2_history``, ``result.iterations`` and (sequential)
    ``result.rank_bases``.

    Sequential schedule only: ``checkpoint(stages, W, H)`` is called after each rank's stage; ``resume =
    (stages, W, H)`` from such a call (with ``result`` holding the history up to it) skips those stages and replays
    their random draws, so a resumed training equals an uninterrupted one bit for bit.
    """
    rng = np.random.default_rng(seed)

    def run(w: np.ndarray, h: np.ndarray, stop: bool) -> tuple[np.ndarray, np.ndarray]:
        previous = np.inf
        for it in range(1, max_iter + 1):
            w, h, current = iterate(w, h)
            if not np.isfinite(current):
                raise FloatingPointError(f"NMF chi2 became {current} at iteration {it} (rank {h.shape[0]})")
            result.chi2_history.append(current)
            if stop and np.isfinite(previous) and previous > 0 and (previous - current) / previous <= tol:
                break
            previous = current
        result.iterations.append(it)
        return w, h

    if schedule == "fixed":
        if resume is not None:
            raise ValueError("only the sequential schedule resumes from a checkpoint")
        w, h = init if init is not None else (rng.uniform(size=(n, rank)), np.ones((rank, npix)))
        return run(np.array(w, dtype=np.float64), np.array(h, dtype=np.float64), stop=False)
    w, h = np.zeros((n, 0)), np.zeros((0, npix))
    done = 0
    if resume is not None:
        done, w, h = resume
        for _ in range(done):  # the draws of the finished stages, so that the next ones are the same
            rng.uniform(size=(n, 1))
            rng.uniform(size=(1, npix))
    for stage in range(done, rank):
        w = np.hstack([w, rng.uniform(size=(n, 1))])
        h = np.vstack([h, rng.uniform(size=(1, npix))])
        w, h = run(w, h, stop=True)
        result.rank_bases.append(h.copy())
        if checkpoint is not None:
            checkpoint(stage + 1, w, h)
    return run(w, h, stop=True)  # the final re-run at full rank (Moose's sequential schedule)


def train_nmf(
    x: np.ndarray,
    v: np.ndarray,
    rank: int,
    *,
    method: Method = "nearly",
    schedule: Literal["sequential", "fixed"] = "sequential",
    max_iter: int = 1300,
    tol: float = 1e-3,
    seed: int = 100921,
    init: tuple[np.ndarray, np.ndarray] | None = None,
) -> NMFResult:
    """Train a rank-``rank`` non-negative basis on spectra with weights (missing data: ``V = 0``).

    Parameters
    ----------
    x, v
        Data and inverse variances, ``n`` spectra x ``l`` pixels; ``x`` is set to 0 where ``v == 0``.
    rank
        Number of basis vectors k.
    method
        ``"nearly"`` (default) or ``"shift"`` (needs about twice the iterations).
    schedule
        ``"sequential"`` (default, Ren et al. 2018 / B26): grow the rank one component at a time, each new
        coefficient column and basis row drawn U(0, 1), iterate all components until the relative chi2 decrease
        is <= ``tol`` or ``max_iter``, then re-run once at full rank. ``"fixed"``: exactly ``max_iter``
        iterations from ``init`` (or U(0,1) coefficients and a unit basis), no stop rule (regression tests).
    max_iter, tol
        Iteration cap per stage and relative-decrease stop rule.
    seed
        Seed of the uniform initial draws; recorded in the result.
    init
        ``(W0, H0)`` for the fixed schedule.

    Returns
    -------
    NMFResult

    Raises
    ------
    FloatingPointError
        chi2 became non-finite (diverging data scale: normalise the spectra first).

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> truth = rng.uniform(size=(40, 2)) @ rng.uniform(size=(2, 30))
    >>> fit = train_nmf(truth, np.ones_like(truth), 2, tol=1e-6, max_iter=3000)
    >>> fit.basis.shape, bool(fit.chi2_history[-1] < 1e-4 * fit.chi2_history[0])
    ((2, 30), True)
    """
    x = np.where(v > 0, np.asarray(x, dtype=np.float64), 0.0)
    v = np.asarray(v, dtype=np.float64)
    if np.any(v < 0) or not np.all(np.isfinite(v)):
        raise ValueError("weights must be finite and non-negative")
    shift = method == "shift"
    y0 = shift_offset(x) if shift else 0.0
    vx = v * (x + y0)

    def iterate(w: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        w = coefficient_half_step(vx, v, w, h, y0 if shift else None)
        h = basis_half_step(h, *basis_terms(vx, v, w, h, y0 if shift else None), shift=shift)
        return w, h, chi2_per_pixel(x, v, w, h)

    result = NMFResult(np.zeros((0, x.shape[1])), np.zeros((x.shape[0], 0)), (v > 0).any(axis=0), method=method,
                       seed=seed, offset=y0)
    w, h = run_schedule(x.shape[0], x.shape[1], rank, iterate, result, schedule=schedule, max_iter=max_iter,
                        tol=tol, seed=seed, init=init)
    h[:, ~result.covered] = 0.0
    for snapshot in result.rank_bases:
        snapshot[:, ~result.covered] = 0.0
    result.basis, result.coefficients = h, w
    return result
