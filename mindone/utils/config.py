"""One config module for every entry script: yaml holds defaults, flags override, the result is saved.

An entry script declares its options once, as a list of :class:`Option`. From that list come the
argparse flags (each with a default and help text), the validation of yaml files (unknown keys and
values of the wrong type are user errors naming the file and the key) and the resolved config that is
written beside the run's outputs, so that a run can be repeated with ``--config <output>/config.yaml``.

Precedence, lowest to highest: the option's default, the ``--config`` yaml, the command-line flags.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from mindone.utils.atomic import atomic_write_text
from mindone.utils.cli import UserError


def str2bool(value: Any) -> bool:
    """``true/false/yes/no/1/0`` (any case) or a bool, as a bool; anything else is an error."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off"):
        return False
    raise ValueError(f"not a boolean: {value!r}")


@dataclass
class Option:
    """One setting: its flag ``--name``, the type each value converts with, its default and help text.

    ``type=bool`` makes a flag that works bare (``--use_ema``) or with a value (``--use_ema false``).
    ``multiple=True`` makes a list (``--validation_prompts "a cat" "a dog"``; a yaml list).
    ``aliases``: old names still accepted as flags and yaml keys; the saved config uses ``name``.
    """

    name: str
    type: Callable[[Any], Any]
    default: Any
    help: str
    choices: Sequence[Any] | None = None
    multiple: bool = False
    group: str = "options"
    metavar: str | None = field(default=None, repr=False)
    aliases: tuple[str, ...] = ()

    def convert(self, value: Any) -> Any:
        """Convert one yaml/flag value (or a list of them) to the option's type; ValueError when it cannot."""
        if value is None:
            return None
        if self.multiple:
            items = value if isinstance(value, (list, tuple)) else [value]
            return [self._convert_one(v) for v in items]
        return self._convert_one(value)

    def _convert_one(self, value: Any) -> Any:
        kind = str2bool if self.type is bool else self.type
        if self.type in (int, float) and isinstance(value, bool):
            raise ValueError(f"expected {self.type.__name__}, got {value!r}")
        if self.type is int and isinstance(value, float):
            if not value.is_integer():
                raise ValueError(f"expected int, got {value!r}")
        try:
            out = kind(value)
        except (TypeError, ValueError) as err:
            raise ValueError(f"expected {getattr(self.type, '__name__', 'value')}, got {value!r}") from err
        if self.choices is not None and out not in self.choices:
            raise ValueError(f"{out!r} is not one of {', '.join(map(str, self.choices))}")
        return out


def build_parser(options: Sequence[Option], description: str, prog: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with ``--config`` plus one flag per option, grouped as declared."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--config", default=None, help="yaml file of defaults; flags given here override it")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for opt in options:
        group = groups.setdefault(opt.group, parser.add_argument_group(opt.group))
        kwargs: dict[str, Any] = dict(default=opt.default, help=opt.help, dest=opt.name, metavar=opt.metavar)
        if opt.choices is not None:
            kwargs["choices"] = list(opt.choices)
            kwargs["metavar"] = kwargs["metavar"] or "{" + ",".join(map(str, opt.choices)) + "}"
        if opt.type is bool:
            kwargs.update(type=str2bool, nargs="?", const=True)
        elif opt.multiple:
            kwargs.update(type=opt.type, nargs="*")
        else:
            kwargs.update(type=opt.type)
        group.add_argument(f"--{opt.name}", *(f"--{a}" for a in opt.aliases), **kwargs)
    return parser


def load_yaml_defaults(path: str | os.PathLike, options: Sequence[Option]) -> dict[str, Any]:
    """Read a config yaml, check every key is a known option and every value converts; returns the values."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--config {path}: file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise UserError(f"--config {path}: invalid yaml{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"--config {path}: expected a mapping of option: value, got {type(data).__name__}")
    by_name = {name: opt for opt in options for name in (opt.name, *opt.aliases)}
    values: dict[str, Any] = {}
    given_as: dict[str, str] = {}
    for key, value in data.items():
        if key not in by_name:
            raise UserError(f"--config {path}: unknown key {key!r} (see --help for the options)")
        opt = by_name[key]
        if opt.name in given_as:
            raise UserError(f"--config {path}: keys {given_as[opt.name]!r} and {key!r} are one option: give one")
        given_as[opt.name] = key
        try:
            values[opt.name] = opt.convert(value)
        except ValueError as err:
            raise UserError(f"--config {path}: key {key!r}: {err}") from None
    return values


def resolve_config(
    options: Sequence[Option], argv: Sequence[str] | None, description: str, prog: str | None = None
) -> argparse.Namespace:
    """Defaults < ``--config`` yaml < flags. Returns a namespace with one attribute per option (+ ``config``)."""
    parser = build_parser(options, description, prog)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config:
        parser.set_defaults(**load_yaml_defaults(known.config, options))
    return parser.parse_args(argv)


def config_to_dict(args: argparse.Namespace, options: Sequence[Option]) -> dict[str, Any]:
    """The option values of ``args`` in declaration order (what :func:`save_config` writes)."""
    return {opt.name: getattr(args, opt.name) for opt in options}


def save_config(args: argparse.Namespace, options: Sequence[Option], path: str | os.PathLike) -> Path:
    """Write the resolved config as yaml (atomically); it loads back with ``--config`` to the same values."""
    path = Path(path)
    text = yaml.safe_dump(config_to_dict(args, options), sort_keys=False, allow_unicode=True)
    atomic_write_text(path, text)
    return path
