"""Trial redshifts and the local minima of curves over them: the two pieces both engines' scans share.

The NMF scan (:mod:`dzspec.engines.nmf`) evaluates chi2 on a grid of nominal trial redshifts
(:func:`trial_redshifts`) and keeps the lowest local minima of the curve as candidates; the MADGICS scan
(:mod:`dzspec.engines.madgics`) keeps the lowest local minima of its coarse dchi2 curve as alternatives to its best.
:func:`local_minima` finds and ranks them for both, each with its own convention for plateaus and for the curve's
ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

__all__ = ["local_minima", "trial_redshifts"]


def trial_redshifts(z_min: float, z_max: float, dz: float) -> np.ndarray:
    """The nominal trial redshifts ``z_min, z_min + dz, ..., z_max`` (B26: 0, 0.0005, ..., 6.7).

    Examples
    --------
    >>> z = trial_redshifts(0.0, 6.7, 0.0005)
    >>> z.size, float(z[1]), float(z[-1])
    (13401, 0.0005, 6.7)
    """
    return z_min + dz * np.arange(round((z_max - z_min) / dz) + 1)


def local_minima(curve: np.ndarray, *, plateaus: Literal["once", "all"] = "once", ends: bool = True,
                 exclusion: int | None = None, count: int | None = None, taken: Sequence[int] = ()) -> np.ndarray:
    """Indices (int64) of the local minima of ``curve``.

    Parameters
    ----------
    curve
        A 1-D curve (chi2 or dchi2 over trials). NaN is never a minimum, nor the neighbour a minimum is below.
    plateaus
        ``"once"``: a point is a minimum when it is below its left neighbour and not above its right one, so a flat
        bottom counts once, at its first point (the NMF scan's candidates); ``"all"``: when it is above neither, so
        every point of a flat bottom counts (the MADGICS scan's alternatives).
    ends
        Whether the first and last points can be minima (against an infinitely high neighbour outside the curve).
    exclusion, count, taken
        Without ``exclusion``: every minimum, in index order. With it: the minima lowest first (ties in index order),
        each kept only when more than ``exclusion`` steps from every one kept before it and from each index in
        ``taken``, at most ``count`` of them (all when None).

    Examples
    --------
    >>> curve = np.array([3.0, 1.0, 1.0, 4.0, 2.0, 5.0, 0.5])
    >>> local_minima(curve).tolist(), local_minima(curve, plateaus="all", ends=False).tolist()
    ([1, 4, 6], [1, 2, 4])
    >>> local_minima(curve, exclusion=2, count=2).tolist()
    [6, 1]
    >>> local_minima(curve, plateaus="all", ends=False, exclusion=1, taken=[1]).tolist()
    [4]
    """
    left = np.r_[np.inf, curve[:-1]]
    right = np.r_[curve[1:], np.inf]
    below_left = curve < left if plateaus == "once" else curve <= left
    minimum = below_left & (curve <= right)
    if not ends and minimum.size:
        minimum[0] = minimum[-1] = False
    found = np.flatnonzero(minimum)
    if exclusion is None:
        return found
    chosen = [int(index) for index in taken]
    kept: list[int] = []
    for index in found[np.argsort(curve[found], kind="stable")]:
        if count is not None and len(kept) >= count:
            break
        if all(abs(int(index) - c) > exclusion for c in chosen):
            chosen.append(int(index))
            kept.append(int(index))
    return np.asarray(kept, dtype=np.int64)
