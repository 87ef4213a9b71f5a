"""The worker-side model cache: what a block kernel loads once per process instead of receiving with every task.

Bases with their FFTs, priors, sky continua, noise calibrations and first-scan redshift columns are large and
read-only, so they never travel inside task arguments (STYLE §3.2): each process loads them through a function
decorated with :func:`process_cache`, keyed by every argument (the store path, the name and the checksum the run was
started with, so a changed model is a different key and the loader refuses it). The registry of those caches lets a
test or a long-lived worker empty them all at once (:func:`clear_process_caches`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["cache_info", "clear_process_caches", "process_cache"]

F = TypeVar("F", bound=Callable[..., Any])

#: Every cached loader, by its qualified name.
_CACHES: dict[str, Any] = {}


def process_cache(maxsize: int) -> Callable[[F], F]:
    """Decorate a loader so that each process keeps its ``maxsize`` most recently used results, keyed by all its
    (hashable) arguments; the cached function is registered under ``module.qualname``.

    Examples
    --------
    >>> calls = []
    >>> @process_cache(maxsize=2)
    ... def load(path: str, sha256: str) -> str:
    ...     calls.append(path)
    ...     return path.upper()
    >>> load("a", "x"), load("a", "x"), len(calls)
    ('A', 'A', 1)
    >>> clear_process_caches(); load("a", "x"), len(calls)
    ('A', 2)
    """

    def decorate(func: F) -> F:
        cached = functools.lru_cache(maxsize=maxsize)(func)
        _CACHES[f"{func.__module__}.{func.__qualname__}"] = cached
        return cached  # type: ignore[return-value]

    return decorate


def clear_process_caches() -> None:
    """Empty every cache made by :func:`process_cache` in this process."""
    for cached in _CACHES.values():
        cached.cache_clear()


def cache_info() -> dict[str, Any]:
    """``{qualified name: functools cache statistics}`` of every registered cache."""
    return {name: cached.cache_info() for name, cached in sorted(_CACHES.items())}
