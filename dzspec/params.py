"""Engine parameters as frozen dataclasses: the one source of each default and its help text.

An engine declares its scan parameters once (``dzspec/engines/<engine>/params.py``) with :func:`param`; from that
class come the ``defaults`` of its :class:`~dzspec.kernels.base.KernelSpec` (:func:`defaults_of`, so the configuration
hash, the TOML check of ``dzspec run`` and the kernel see the same values) and the command-line flags of its
command (:func:`add_flags`, :func:`from_args`). Standard library only, so the CLI imports it without loading the
engines.

Examples
--------
>>> import argparse
>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class Scan:
...     dz: float = param(0.0005, "trial step")
...     refine: bool = param(True, "refine the best trial")
...     threshold: float = param(25.0, "detection threshold", flag="cut")
>>> defaults_of(Scan)
{'dz': 0.0005, 'refine': True, 'threshold': 25.0}
>>> parser = argparse.ArgumentParser()
>>> add_flags(parser, Scan)
>>> from_args(parser.parse_args(["--no-refine", "--cut", "9"]), Scan)
{'dz': 0.0005, 'refine': False, 'threshold': 9.0}
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
from collections.abc import Sequence
from typing import Any

__all__ = ["add_flags", "defaults_of", "from_args", "param"]


def param(default: Any, help: str, *, flag: str | None = None, cli: bool = True,
          choices: Sequence[Any] | None = None) -> Any:
    """A parameter field: its default and help; ``flag`` names the command-line option when it differs from the
    field's name, ``cli=False`` keeps it out of the command line (set by the driver, e.g. a model's checksum)."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default),
                                 metadata={"help": help, "flag": flag, "cli": cli, "choices": choices})
    return dataclasses.field(default=default, metadata={"help": help, "flag": flag, "cli": cli, "choices": choices})


def _default(field: dataclasses.Field) -> Any:
    return field.default_factory() if field.default is dataclasses.MISSING else field.default  # type: ignore[misc]


def defaults_of(cls: type) -> dict[str, Any]:
    """Every parameter of ``cls`` with its default, as a KernelSpec's ``defaults``."""
    return {field.name: _default(field) for field in dataclasses.fields(cls)}


def _flag(field: dataclasses.Field) -> str:
    return field.metadata.get("flag") or field.name


def add_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One option per command-line parameter of ``cls``: ``--name VALUE`` with the default in its help, or for a
    boolean ``--name`` (default False) / ``--no-name`` (default True)."""
    for field in dataclasses.fields(cls):
        if not field.metadata.get("cli", True):
            continue
        default, name = _default(field), _flag(field)
        option = "--" + name.replace("_", "-")
        if isinstance(default, bool):
            option = option if not default else "--no-" + name.replace("_", "-")
            parser.add_argument(option, dest=name, action="store_false" if default else "store_true",
                                help=field.metadata["help"])
            continue
        parser.add_argument(option, dest=name, type=type(default), default=default,
                            choices=field.metadata.get("choices"), help=f"{field.metadata['help']} (default {default})")


def from_args(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The command-line parameters of ``cls`` as parsed into ``args``, by field name."""
    return {field.name: getattr(args, _flag(field)) for field in dataclasses.fields(cls)
            if field.metadata.get("cli", True)}
