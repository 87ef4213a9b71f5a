"""Figures (matplotlib, imported lazily): simulation galleries, NMF and LAE engine figures; and the spectral
inspector in the browser (:mod:`dzspec.viz.inspector`, a Bokeh server application)."""

from __future__ import annotations

from typing import Any


def pyplot() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend (figures are written to files, also on workers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
