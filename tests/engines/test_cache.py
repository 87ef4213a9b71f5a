import numpy as np

from dzspec.engines import cache
from dzspec.engines.cache import cache_info, clear_process_caches, process_cache
from dzspec.engines.madgics.adapter import cached_prior
from dzspec.engines.nmf.adapter import cached_basis, cached_first_redshifts, cached_prepared, cached_sky_continuum


def test_every_worker_side_model_loader_is_registered():
    names = set(cache_info())
    for loader in (cached_basis, cached_prepared, cached_sky_continuum, cached_first_redshifts, cached_prior):
        assert f"{loader.__module__}.{loader.__qualname__}" in names
    assert "dzspec.engines.adapter.cached_noise_scale" in names


def test_process_cache_is_keyed_by_every_argument_and_bounded():
    calls = []

    @process_cache(maxsize=2)
    def load(path: str, sha256: str) -> np.ndarray:
        calls.append((path, sha256))
        return np.arange(3)

    try:
        assert load("a", "1") is load("a", "1")
        load("a", "2")  # another checksum is another entry
        load("b", "1")  # evicts ("a", "1")
        load("a", "1")
        assert calls == [("a", "1"), ("a", "2"), ("b", "1"), ("a", "1")]
        clear_process_caches()
        load("a", "1")
        assert len(calls) == 5
    finally:
        cache._CACHES.pop(f"{load.__module__}.{load.__qualname__}")
