"""The layer boundaries hold: kernels import no dask/xarray/zarr; nothing outside parallel/ and cluster.py
imports dask or distributed."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dzspec"


def test_kernels_import_no_dask_xarray_or_zarr():
    code = (
        "import sys, dzspec.kernels, dzspec.kernels.summary, dzspec.kernels.airvac\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'dask', 'distributed', 'xarray', 'zarr'})\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_only_the_parallel_layer_imports_dask():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith("parallel/") or relative == "cluster.py":
            continue
        if _imports(path) & {"dask", "distributed"}:
            offenders.append(relative)
    assert offenders == []


def test_kernels_import_only_numerical_libraries():
    # sklearn: fitting the confidence trees (kernels/confidence.py); predicting with them needs NumPy only
    allowed = {"numpy", "scipy", "numba", "sklearn", "dzspec", "__future__", "collections", "dataclasses", "typing",
               "math", "enum", "functools"}
    for path in (PACKAGE / "kernels").rglob("*.py"):
        assert _imports(path) <= allowed, path
