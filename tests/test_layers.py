"""The layer boundaries hold.

* **Kernel modules**: every module under ``dzspec/kernels/`` and ``dzspec/engines/`` except the engines' adapters.
  They are pure numerics on in-memory arrays: they import only numerical libraries (numpy, scipy, numba, sklearn),
  a few standard-library modules, other kernel modules, :mod:`dzspec.results_schema` (the flag vocabulary) and
  :mod:`dzspec.params` (the parameter dataclass helpers, standard library only), and
  importing all of them loads no dask, distributed, xarray or zarr.
* **Adapter modules**: ``dzspec/engines/**/adapter.py``. They turn a block and a run's parameters into a kernel's
  outputs and load the models the kernels need, so they may in addition import the standard library's path helpers
  and the I/O layer's loaders (``dzspec.io``: bases, priors, noise calibrations, the store for read-only lookups),
  through which zarr comes in; never ``dzspec.parallel``, dask, distributed or xarray.
* Nothing outside ``parallel/`` and ``cluster.py`` imports dask or distributed.
* No module imports another module's private (underscore) names, and the module-level imports of dzspec form no
  cycle.
"""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dzspec"
HEAVY = {"dask", "distributed", "xarray", "zarr"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_adapter(module: str) -> bool:
    return module.startswith("dzspec.engines.") and module.rsplit(".", 1)[-1] == "adapter"


KERNEL_MODULES = sorted(m for m in MODULES
                        if m.startswith(("dzspec.kernels", "dzspec.engines")) and not _is_adapter(m))
ADAPTER_MODULES = sorted(m for m in MODULES if _is_adapter(m))


def test_kernels_import_no_dask_xarray_or_zarr():
    assert {"dzspec.engines.nmf.scan", "dzspec.engines.madgics.scan", "dzspec.kernels.trials"} <= set(KERNEL_MODULES)
    code = (
        f"import sys, importlib\nfor name in {KERNEL_MODULES!r}:\n    importlib.import_module(name)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(HEAVY)!r})\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def _imports(path: Path) -> set[str]:
    """Every module a file imports, anywhere in it (absolute imports: dzspec uses no relative ones)."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _top(names: set[str]) -> set[str]:
    return {name.split(".")[0] for name in names}


def test_only_the_parallel_layer_imports_dask():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith("parallel/") or relative == "cluster.py":
            continue
        if _top(_imports(path)) & {"dask", "distributed"}:
            offenders.append(relative)
    assert offenders == []


#: Standard-library modules a kernel module may import.
KERNEL_STDLIB = {"__future__", "collections", "dataclasses", "typing", "math", "enum", "functools", "importlib"}
#: Numerical libraries. sklearn: fitting the confidence trees (engines/nmf/confidence.py); predicting needs NumPy only.
NUMERICAL = {"numpy", "scipy", "numba", "sklearn"}


def _dzspec_allowed_for_kernels(name: str) -> bool:
    # dzspec.params: the parameter dataclass helpers (standard library only)
    return name in {"dzspec.results_schema", "dzspec.params", "dzspec.reexport"} or (name in KERNEL_MODULES
                                                                   or name in {"dzspec.kernels", "dzspec.engines"})


def test_kernels_import_only_numerical_libraries():
    """Kernel modules: numerical libraries, a few standard-library modules, other kernel modules and the results
    schema only (see the module docstring)."""
    offenders = {}
    for module in KERNEL_MODULES:
        imported = _imports(MODULES[module])
        bad = {name for name in imported if name.split(".")[0] not in NUMERICAL | KERNEL_STDLIB | {"dzspec"}}
        bad |= {name for name in imported if name.startswith("dzspec") and not _dzspec_allowed_for_kernels(name)}
        if bad:
            offenders[module] = sorted(bad)
    assert offenders == {}


def test_adapters_reach_the_store_only_through_the_io_layer():
    """Adapter modules: what kernels may import, plus path and hash helpers and ``dzspec.io``; no
    ``dzspec.parallel``, and no dask, distributed, xarray or zarr of their own."""
    assert ADAPTER_MODULES == ["dzspec.engines.adapter", "dzspec.engines.madgics.adapter",
                               "dzspec.engines.nmf.adapter"]
    stdlib = KERNEL_STDLIB | {"os", "pathlib", "numbers", "hashlib", "logging"}
    offenders = {}
    for module in ADAPTER_MODULES:
        imported = _imports(MODULES[module])
        bad = {name for name in imported if name.split(".")[0] not in NUMERICAL | stdlib | {"dzspec"}}
        bad |= {name for name in imported if name.startswith("dzspec") and not (
            _dzspec_allowed_for_kernels(name) or _is_adapter(name) or name == "dzspec.engines.cache"
            or name == "dzspec.io" or name.startswith("dzspec.io."))}
        if bad:
            offenders[module] = sorted(bad)
    assert offenders == {}
    # whatever the I/O layer loads (zarr, and xarray as long as dzspec.io.store imports it), never the scheduler
    code = (
        f"import sys, importlib\nfor name in {ADAPTER_MODULES!r}:\n    importlib.import_module(name)\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in {'dask', 'distributed'})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def test_no_private_imports_across_modules():
    """``from dzspec.x import _name`` couples a module to another's internals: share it under a public name, or move
    it where it belongs (``dzspec._version`` is the one private module meant to be imported)."""
    offenders = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            source = _absolute(module, node)
            if source.split(".")[0] != "dzspec" or source in (module, "dzspec._version"):
                continue
            offenders += [f"{module}:{node.lineno} imports {alias.name} from {source}"
                          for alias in node.names if alias.name.startswith("_")]
    assert offenders == []


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _module_level_imports(module: str, body: list[ast.stmt]) -> set[str]:
    """The dzspec modules that ``module`` imports when it is imported: statements at module level (inside ``if``
    and ``try`` too, but not under ``if TYPE_CHECKING``), not those inside functions or classes. ``from package
    import name`` counts as importing ``package.name`` when that is a module, else ``package``."""
    found: set[str] = set()
    for node in body:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in MODULES}
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, node)
            for alias in node.names:
                if f"{source}.{alias.name}" in MODULES:
                    found.add(f"{source}.{alias.name}")
                elif source in MODULES:
                    found.add(source)
        elif isinstance(node, ast.If) and not _is_type_checking(node.test):
            found |= _module_level_imports(module, node.body) | _module_level_imports(module, node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                found |= _module_level_imports(module, block)
    found.discard(module)
    return found


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (its modules in import order, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_find_cycle_reports_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    graph = {module: _module_level_imports(module, ast.parse(path.read_text()).body)
             for module, path in MODULES.items()}
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
