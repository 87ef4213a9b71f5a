"""Simulators of MUSE-like and DESI-like spectra with known truth (pure NumPy)."""
