"""Behaviour unchanged: every engine's outputs on small fixed stores equal the recorded golden ones (see
:mod:`tests.golden`; re-record only for an intended change of results, and say so in the commit)."""

import json

import numpy as np
import pytest

from tests.golden import DATA, REAL_INPUTS, SHARED, condensed, golden_outputs


@pytest.fixture(scope="module")
def outputs(client, tmp_path_factory):
    for name in REAL_INPUTS:
        if not (SHARED / name).exists():
            pytest.skip(f"real data file not available: {SHARED / name}")
    return golden_outputs(tmp_path_factory.mktemp("golden"), client)


def test_every_engine_writes_the_golden_outputs(outputs):
    recorded = np.load(DATA / "golden.npz")
    assert sorted(outputs) == sorted(recorded.files) == sorted(json.loads((DATA / "golden.json").read_text()))
    for key in recorded.files:
        expected, got = recorded[key], condensed(outputs[key])
        assert got.dtype == expected.dtype and got.shape == expected.shape, key
        if got.dtype.kind == "f":
            np.testing.assert_allclose(got, expected, rtol=1e-9, atol=0, equal_nan=True, err_msg=key)
        else:
            np.testing.assert_array_equal(got, expected, err_msg=key)
