import ast
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dzspec.kernels import airvac
from dzspec.kernels.airvac import VACUUM_MIN_ANGSTROM, air_to_vacuum, vacuum_to_air

# Vacuum wavelengths of the SDSS line list and their standard air values (Morton 2000 / NIST), Angstrom.
LINES = {
    "[OII]3727": (3727.092, 3726.032),
    "[OIII]5007": (5008.240, 5006.843),
    "Halpha": (6564.614, 6562.801),
    "[SII]6731": (6732.673, 6730.816),
}


@pytest.mark.parametrize(("vacuum", "air"), LINES.values(), ids=LINES.keys())
def test_reference_lines(vacuum, air):
    assert vacuum_to_air(vacuum) == pytest.approx(air, abs=2e-3)
    assert air_to_vacuum(air) == pytest.approx(vacuum, abs=2e-3)


def test_krypton_line_of_astrolib():
    assert air_to_vacuum(6056.125) == pytest.approx(6057.8019, abs=1e-4)


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=VACUUM_MIN_ANGSTROM, max_value=1.0e5, allow_nan=False))
def test_round_trip_from_vacuum(wave):
    assert abs(float(air_to_vacuum(vacuum_to_air(wave))) - wave) < 1e-8


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=float(vacuum_to_air(VACUUM_MIN_ANGSTROM)), max_value=1.0e5, allow_nan=False))
def test_round_trip_from_air(wave):
    assert abs(float(vacuum_to_air(air_to_vacuum(wave))) - wave) < 1e-8


def test_round_trip_on_muse_and_desi_grids():
    muse_air = 4749.890625 + 1.25 * np.arange(3681)
    desi_vac = 3600.0 + 0.8 * np.arange(7781)
    assert np.max(np.abs(vacuum_to_air(air_to_vacuum(muse_air)) - muse_air)) < 1e-8
    assert np.max(np.abs(air_to_vacuum(vacuum_to_air(desi_vac)) - desi_vac)) < 1e-8


def test_shapes_dtypes_and_monotonicity():
    wave = np.linspace(3000.0, 11000.0, 24, dtype=np.float32).reshape(4, 6)
    out = air_to_vacuum(wave)
    assert out.shape == (4, 6) and out.dtype == np.float64
    assert np.all(np.diff(air_to_vacuum(np.linspace(2000.0, 3e4, 5000))) > 0)
    assert np.all(np.diff(vacuum_to_air(np.linspace(2000.0, 3e4, 5000))) > 0)
    assert isinstance(vacuum_to_air(5000.0), np.float64)
    assert np.all(air_to_vacuum(wave) > wave)  # air wavelengths are shorter


def test_uv_nan_and_nonpositive_pass_through():
    wave = np.array([912.0, 1215.67, 1999.0, np.nan, 0.0, -5.0])
    np.testing.assert_array_equal(vacuum_to_air(wave), wave)
    np.testing.assert_array_equal(air_to_vacuum(wave[[0, 1, 3, 4, 5]]), wave[[0, 1, 3, 4, 5]])


def test_kernel_module_imports_only_numpy():
    tree = ast.parse(Path(airvac.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}  # fmt: skip
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}  # fmt: skip
    assert imported <= {"numpy", "__future__"}
