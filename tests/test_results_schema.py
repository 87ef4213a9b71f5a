"""The results vocabulary: every engine output is named there once, and results under older names still open."""

import numpy as np
import pytest
import xarray as xr

from dzspec.engines.madgics.adapter import LAE_SCAN
from dzspec.engines.nmf.adapter import ZFIND
from dzspec.io.store import upgrade_results
from dzspec.results_schema import ENGINES, FIELDS, RENAMES, LAEWarn, ZNote, ZWarn, output_specs, upgrade_names


@pytest.mark.parametrize(("kernel", "params"), [
    (ZFIND, {"rank": 7, "store_chi2": True, "chi2_decimate": 10}),
    (ZFIND, {"rank": 4, "refine": False, "nuisance_order": -1}),
    (LAE_SCAN, {"n_lae": 2}),
])
def test_every_engine_output_comes_from_the_vocabulary(kernel, params):
    specs = kernel.output_specs(params)
    for name, spec in specs.items():
        field = FIELDS[name]
        assert kernel.name in field.engines
        assert spec.dtype == field.dtype and spec.attrs["units"] == field.units and spec.attrs["description"]
        assert spec.dims == (() if field.dim is None else (field.dim,))
    assert {"z", "zwarn", "deltachi2", "candidate_z"} <= set(specs)
    assert specs["candidate_z"].dims == ("candidate",)
    flags = ZWarn if kernel is ZFIND else LAEWarn
    assert specs["zwarn"].attrs["flag_meanings"].split() == [m.name for m in flags]


def test_output_specs_refuses_names_outside_the_vocabulary():
    with pytest.raises(KeyError, match="lae_warn"):
        output_specs("madgics_lae", ["lae_warn"])
    with pytest.raises(KeyError, match="nmf_significance"):
        output_specs("madgics_lae", ["nmf_significance"])
    with pytest.raises(ValueError, match="unknown engine"):
        output_specs("redrock", ["z"])


def test_renames_lead_into_the_vocabulary_and_redrock_columns_are_unique():
    assert set(RENAMES) <= set(ENGINES)
    for engine, renames in RENAMES.items():
        for old, (new, _) in renames.items():
            assert old not in FIELDS and engine in FIELDS[new].engines
    columns = [f.redrock for f in FIELDS.values() if f.redrock]
    assert len(columns) == len(set(columns)) and {"Z", "ZERR", "ZWARN", "CHI2", "DELTACHI2", "COEFF"} <= set(columns)
    # every zwarn bit means "do not trust"; the informational finding lives in znote
    assert "NEGATIVE_MEDIAN_FLUX" not in ZWarn.__members__ and "NEGATIVE_MEDIAN_FLUX" in ZNote.__members__


def test_upgrade_names_leaves_todays_results_alone():
    assert upgrade_names("nmf_zfind", ["z", "zchi2", "candidate_z"]) == ({}, {})
    assert upgrade_names("summary", ["z_unc"]) == ({}, {})


def test_old_lae_results_open_in_todays_vocabulary():
    old = xr.Dataset({
        "z": ("spectrum", [3.1, 2.5]), "z_unc": ("spectrum", [1e-4, 2e-4]),
        "z_coarse": ("spectrum", [3.0999, 2.5001]), "lae_dchi2_coarse": ("spectrum", [-80.0, -30.0]),
        "z_alt": (("spectrum", "alternative"), [[4.2, 2.2], [3.3, np.nan]]),
        "lae_dchi2_alt": (("spectrum", "alternative"), [[-20.0, -10.0], [-25.0, np.nan]]),
        "lae_warn": ("spectrum", np.array([0, int(LAEWarn.NO_LINE)], np.uint32)),
    })
    new = upgrade_results(old, "madgics_lae")
    assert {"zerr", "zwarn", "candidate_z", "candidate_lae_dchi2", "deltachi2"} <= set(new.data_vars)
    assert not {"z_unc", "lae_warn", "z_alt", "z_coarse", "lae_dchi2_alt", "lae_dchi2_coarse"} & set(new.data_vars)
    assert new.candidate_z.dims == ("spectrum", "candidate")
    np.testing.assert_array_equal(new.candidate_z.values, [[3.0999, 4.2, 2.2], [2.5001, 3.3, np.nan]])
    np.testing.assert_array_equal(new.deltachi2.values, [60.0, 5.0])
    np.testing.assert_array_equal(new.zerr.values, old.z_unc.values)
    assert upgrade_results(new, "madgics_lae").identical(new)


def test_old_nmf_results_open_in_todays_vocabulary():
    old_negative_median = 1 << 12
    old = xr.Dataset({
        "z": ("spectrum", [0.5, 1.2, 3.3]),
        "zwarn": ("spectrum", np.array([0, old_negative_median | int(ZWarn.LOW_ROBUSTNESS), old_negative_median],
                                       np.uint32)),
        "cand_z": (("spectrum", "candidate"), np.zeros((3, 5))),
        "cand_score": (("spectrum", "candidate"), np.zeros((3, 5), np.float32)),
        "chi2_curve": (("spectrum", "trial"), np.ones((3, 11), np.float32)),
    })
    new = upgrade_results(old, "nmf_zfind")
    assert new.zchi2.dims == ("spectrum", "redshift") and new.candidate_significance.shape == (3, 5)
    np.testing.assert_array_equal(new.zwarn.values, [0, int(ZWarn.LOW_ROBUSTNESS), 0])
    note = int(ZNote.NEGATIVE_MEDIAN_FLUX)
    np.testing.assert_array_equal(new.znote.values, [0, note, note])
    assert "SMALL_DELTA_CHI2" in new.zwarn.attrs["flag_meanings"]
