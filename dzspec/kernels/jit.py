"""numba's ``njit`` when numba is installed, an identity decorator otherwise: the one switch every compiled kernel of
both engines imports, so that a machine without numba runs the same code, correct but slow."""

from __future__ import annotations

try:
    from numba import njit

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - pure-Python fallback, correct but slow
    HAVE_NUMBA = False

    def njit(*args, **kwargs):  # type: ignore[no-redef]
        """Identity decorator standing in for :func:`numba.njit`."""
        if len(args) == 1 and callable(args[0]) and not kwargs:
            return args[0]
        return lambda f: f


__all__ = ["HAVE_NUMBA", "njit"]
