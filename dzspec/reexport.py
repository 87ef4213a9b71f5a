"""Packages that re-export their modules' public names, each imported on first use (PEP 562).

A package lists ``{name: module}`` once and gets its ``__getattr__`` and ``__dir__`` from :func:`lazy_reexports`, so
importing the package (or one of its modules) loads none of the others.

Examples
--------
>>> getattr_, dir_ = lazy_reexports("demo", {"sqrt": "math"})
>>> getattr_("sqrt")(9.0)
3.0
>>> getattr_("cbrt")
Traceback (most recent call last):
...
AttributeError: module 'demo' has no attribute 'cbrt'
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any

__all__ = ["lazy_reexports"]


def lazy_reexports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``, which re-exports ``exports`` (name -> module)."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        module = sys.modules.get(package)
        return sorted({*(vars(module) if module is not None else ()), *exports})

    return __getattr__, __dir__
