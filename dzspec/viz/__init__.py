"""Figures (matplotlib, imported lazily): simulation galleries."""
