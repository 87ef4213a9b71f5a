"""The engines' parameter dataclasses are the one source of the kernels' defaults and of their commands' flags."""

import dataclasses

import pytest

from dzspec.cli import build_parser
from dzspec.engines.madgics.adapter import LAE_SCAN
from dzspec.engines.madgics.params import LaeScanParams
from dzspec.engines.nmf.adapter import BLENDS, ZFIND
from dzspec.engines.nmf.params import BlendParams, ZfindParams
from dzspec.params import defaults_of, from_args

CASES = [("zfind", ZfindParams, ZFIND, ["s.zarr"]), ("lae", LaeScanParams, LAE_SCAN, ["s.zarr"]),
         ("blends", BlendParams, BLENDS, ["s.zarr", "--basis", "b.zarr"])]


@pytest.mark.parametrize(("command", "cls", "kernel", "required"), CASES)
def test_a_command_without_options_runs_the_kernel_defaults(command, cls, kernel, required):
    args = build_parser().parse_args([command, *required])
    parsed = from_args(args, cls)
    assert parsed and parsed == {name: kernel.defaults[name] for name in parsed}
    assert {name: kernel.defaults[name] for name in defaults_of(cls)} == defaults_of(cls)


@pytest.mark.parametrize(("command", "cls", "kernel", "required"), CASES)
def test_every_command_line_parameter_has_a_flag_with_its_help(command, cls, kernel, required):
    parser = build_parser()
    sub = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == command)[1]
    helps = {action.dest: action.help or "" for action in sub._actions}
    for field in dataclasses.fields(cls):
        if field.metadata["cli"]:
            assert field.metadata["help"] in helps[field.metadata["flag"] or field.name]


def test_flags_reach_the_parameters_under_their_field_names():
    args = build_parser().parse_args(["lae", "s.zarr", "--threshold", "9", "--n-shifts", "100"])
    assert from_args(args, LaeScanParams)["dchi2_min"] == 9.0 and from_args(args, LaeScanParams)["n_shifts"] == 100
    args = build_parser().parse_args(["zfind", "s.zarr", "--no-refine", "--dz", "0.001", "--weighting", "unweighted"])
    assert {k: from_args(args, ZfindParams)[k] for k in ("refine", "dz", "weighting")} == {
        "refine": False, "dz": 0.001, "weighting": "unweighted"}
    with pytest.raises(SystemExit):
        build_parser().parse_args(["zfind", "s.zarr", "--weighting", "heavy"])
