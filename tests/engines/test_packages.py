"""Each engine package re-exports the public names of its modules, one by one, and nothing else."""

import importlib

import pytest

PACKAGES = {
    "dzspec.engines.nmf": ["adapter", "blends", "confidence", "grams", "metrics", "model_spectra", "nnls", "params",
                           "refine", "scan", "train", "zerr", "zfind", "zspikes"],
    "dzspec.engines.madgics": ["adapter", "compiled", "exposure_convergence", "injection", "interlopers", "params",
                               "priors", "scan"],
}


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_engine_package_reexports_its_modules_public_names(package):
    pkg = importlib.import_module(package)
    expected = set()
    for name in PACKAGES[package]:
        module = importlib.import_module(f"{package}.{name}")
        expected |= set(module.__all__)
        for public in module.__all__:
            assert getattr(pkg, public) is getattr(module, public), (name, public)
    assert set(pkg.__all__) == expected
    assert pkg.__all__ == sorted(pkg.__all__)
    with pytest.raises(AttributeError):
        pkg.no_such_name  # noqa: B018
