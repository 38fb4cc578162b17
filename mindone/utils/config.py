"""One config module for every entry script: yaml holds defaults, flags override, the result is saved.

An entry script declares its options once, as a list of :class:`Option`. From that list come the
argparse flags (each with a default and help text), the validation of yaml files (unknown keys and
values of the wrong type are user errors naming the file and the key) and the resolved config that is
written beside the run's outputs, so that a run can be repeated with ``--config <output>/config.yaml``.

Precedence, lowest to highest: the option's default, its environment variable (only options that declare
one, ``Option.env``; the variable is shown in the option's help), the ``--config`` yaml, the command-line
flags. Whatever is written on the command line (the yaml it names, the flags) beats the environment.

A yaml file or an environment variable that cannot be used raises :class:`OptionError`, a
:class:`mindone.errors.ConfigError` whose one-line message names the file and key or the variable
(``run_main`` shows it as the CLI's error line, exit status 2). Bad flags are argparse's to report (its
usage line and exit status 2).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from mindone.errors import ConfigError
from mindone.utils.atomic import atomic_write_text

CONFIG_HELP = "yaml file of defaults; flags given here override it"
ACTIONS = ("store", "store_true", "boolean_optional")


class OptionError(ConfigError):
    """A yaml key or environment variable the options refuse; the message is one line naming it (the CLIs'
    ``run_main`` prints it as one line, exit status 2)."""


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

    ``type``: any callable from one flag string or yaml value to the value (``int``, ``Path``, a parser
    of the script's own); it raises ValueError (or TypeError) for a value it does not take.
    ``type=bool`` makes a flag that works bare (``--use_ema``) or with a value (``--use_ema false``);
    ``action="store_true"`` a bare switch that is off unless given (``--shuffle``), ``"boolean_optional"``
    a ``--name`` / ``--no-name`` pair. All three read true/false (yes/no, 1/0, on/off) from yaml or the
    environment.
    ``multiple=True`` makes a list (``--validation_prompts "a cat" "a dog"``; a yaml list).
    ``positional=True``: given without ``--name`` (with ``multiple``: zero or more of them).
    ``required=True``: must come from a flag, the yaml or the environment (argparse's own error otherwise).
    ``group``: the heading in ``--help`` (None: the parser's main section).
    ``aliases``: old names still accepted as flags and yaml keys; the saved config uses ``name``.
    ``short``: a one-letter flag too (``"-v"``), listed first as argparse does.
    ``env``: an environment variable that sets the option when neither the yaml nor a flag does; the help
    text names it (see :attr:`help_text`), so a tool reads no variable its ``--help`` does not show.
    """

    name: str
    type: Callable[[Any], Any]
    default: Any
    help: str
    choices: Sequence[Any] | None = None
    multiple: bool = False
    group: str | None = "options"
    metavar: str | None = field(default=None, repr=False)
    aliases: tuple[str, ...] = ()
    action: str = "store"
    positional: bool = False
    required: bool = False
    short: str | None = None
    env: str | None = None

    def __post_init__(self) -> None:
        assert self.action in ACTIONS, f"{self.name}: action {self.action!r} is not one of {ACTIONS}"
        assert self.action == "store" or self.type is bool, f"{self.name}: action {self.action!r} needs type=bool"
        assert self.action != "store_true" or self.default is False, f"{self.name}: a store_true switch is off by default"
        assert not self.positional or not (self.aliases or self.short or self.required or self.group), \
            f"{self.name}: a positional argument has no flags, is never required and sits in the main section"

    @property
    def flags(self) -> list[str]:
        """The option strings: ``[-s,] --name, --alias...`` (empty for a positional argument)."""
        if self.positional:
            return []
        return ([self.short] if self.short else []) + [f"--{n}" for n in (self.name, *self.aliases)]

    @property
    def help_text(self) -> str:
        """The help, naming the environment variable (if any): in brackets, ``[LAION_X]`` / ``[LAION_Y=1|0]``,
        unless the text already names it (``(default: $HF_TOKEN)``)."""
        if self.env is None or self.env in self.help:
            return self.help
        return f"{self.help} [{self.env}=1|0]" if self.type is bool else f"{self.help} [{self.env}]"

    def convert(self, value: Any) -> Any:
        """Convert one yaml/flag value (or a list of them) to the option's type; ValueError when it cannot."""
        if value is None:
            return None
        if self.multiple:
            items = value if isinstance(value, (list, tuple)) else [value]
            return [self._convert_one(v) for v in items]
        return self._convert_one(value)

    def _convert_one(self, value: Any) -> Any:
        out = self._typed(value)
        if self.choices is not None and out not in self.choices:
            raise ValueError(f"{out!r} is not one of {', '.join(map(str, self.choices))}")
        return out

    @property
    def _type_name(self) -> str:
        return getattr(self.type, "__name__", "value")

    def _typed(self, value: Any) -> Any:
        kind = str2bool if self.type is bool else self.type
        if self.type in (int, float) and isinstance(value, bool):
            raise ValueError(f"expected {self._type_name}, got {value!r}")
        if self.type is int and isinstance(value, float):
            if not value.is_integer():
                raise ValueError(f"expected int, got {value!r}")
        try:
            return kind(value)
        except (TypeError, ValueError) as err:
            raise ValueError(f"expected {self._type_name}, got {value!r}") from err

    def from_env(self, environ: Mapping[str, str]) -> Any:
        """The value of the option's environment variable (unset or empty: None); OptionError naming the variable.

        A multiple option splits the variable on whitespace (``LAION_PARTS="1 2 3"``).
        """
        raw = environ.get(self.env) if self.env else None
        if raw is None or raw == "":
            return None
        items = raw.split() if self.multiple else [raw]
        out = []
        for item in items:
            try:
                value = self._typed(item)
            except ValueError:
                kind = "boolean (use 1/0 or true/false)" if self.type is bool else f"valid {self._type_name}"
                raise OptionError(f"environment variable {self.env}={raw!r} is not a {kind}") from None
            if self.choices is not None and value not in self.choices:
                raise OptionError(f"environment variable {self.env}={raw!r} is not one of "
                                f"{', '.join(map(str, self.choices))}")
            out.append(value)
        return out if self.multiple else out[0]


def _add(container: Any, opt: Option, *, required: bool, default: Any) -> None:
    """Add one option's argument to a parser or an argument group."""
    kwargs: dict[str, Any] = dict(default=default, help=opt.help_text)
    if not opt.positional:
        kwargs.update(dest=opt.name, required=required)
    if opt.action == "store_true":
        container.add_argument(*opt.flags, action="store_true", **kwargs)
        return
    if opt.action == "boolean_optional":
        container.add_argument(*opt.flags, action=argparse.BooleanOptionalAction, **kwargs)
        return
    metavar = opt.metavar
    if opt.choices is not None:
        kwargs["choices"] = list(opt.choices)
        metavar = metavar or "{" + ",".join(map(str, opt.choices)) + "}"
    if metavar is not None:
        kwargs["metavar"] = metavar
    if opt.type is bool:
        kwargs.update(type=str2bool, nargs="?", const=True)
    elif opt.multiple:
        kwargs.update(type=opt.type, nargs="*")
    else:
        kwargs.update(type=opt.type)
    container.add_argument(*(opt.flags or [opt.name]), **kwargs)


def build_parser(
    options: Sequence[Option],
    description: str,
    prog: str | None = None,
    *,
    formatter_class: type[argparse.HelpFormatter] = argparse.ArgumentDefaultsHelpFormatter,
    epilog: str | None = None,
    config_flag: str = "config",
    config_help: str = CONFIG_HELP,
    provided: Sequence[str] = (),
) -> argparse.ArgumentParser:
    """An argparse parser with ``--<config_flag>`` plus one flag per option, grouped as declared.

    ``config_flag``: the name of the yaml flag (``config``, unless a script's ``--config`` means something
    else). ``provided``: options the yaml or the environment already set, so not required on the command line.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                     formatter_class=formatter_class)
    parser.add_argument(f"--{config_flag}", default=None, help=config_help)
    _add_options(parser, options, provided=provided, suppress=False)
    return parser


def _given_on_command_line(options: Sequence[Option], argv: Sequence[str] | None, config_flag: str) -> set[str]:
    """The options ``argv`` sets (parsed once more with no defaults, so only those get an attribute).

    Called after the real parser accepted ``argv``, so this parse cannot fail.
    """
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument(f"--{config_flag}", default=argparse.SUPPRESS)
    _add_options(probe, options, provided=(), suppress=True)
    return set(vars(probe.parse_args(argv)))


def _add_options(parser: argparse.ArgumentParser, options: Sequence[Option], *, provided: Sequence[str],
                 suppress: bool) -> None:
    groups: dict[str, Any] = {}
    for opt in options:
        if opt.group is None:
            container = parser
        else:
            container = groups.get(opt.group) or groups.setdefault(opt.group, parser.add_argument_group(opt.group))
        if suppress:
            _add(container, opt, required=False, default=argparse.SUPPRESS)
        else:
            _add(container, opt, required=opt.required and opt.name not in provided, default=opt.default)


def load_yaml_defaults(path: str | os.PathLike, options: Sequence[Option],
                       config_flag: str = "config") -> dict[str, Any]:
    """Read a config yaml, check every key is a known option and every value converts; returns the values."""
    import yaml  # ~12 ms of start-up, paid only when a yaml is given

    path = Path(path)
    where = f"--{config_flag} {path}"
    if not path.is_file():
        raise OptionError(f"{where}: file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark is not None else ""
        raise OptionError(f"{where}: invalid yaml{line}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise OptionError(f"{where}: cannot read ({str(err).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise OptionError(f"{where}: expected a mapping of option: value, got {type(data).__name__}")
    by_name = {name: opt for opt in options for name in (opt.name, *opt.aliases)}
    values: dict[str, Any] = {}
    given_as: dict[str, str] = {}
    for key, value in data.items():
        if key not in by_name:
            raise OptionError(f"{where}: unknown key {key!r} (see --help for the options)")
        opt = by_name[key]
        if opt.name in given_as:
            raise OptionError(f"{where}: keys {given_as[opt.name]!r} and {key!r} are one option: give one")
        given_as[opt.name] = key
        try:
            values[opt.name] = opt.convert(value)
        except ValueError as err:
            raise OptionError(f"{where}: key {key!r}: {err}") from None
    return values


def resolve_config(
    options: Sequence[Option],
    argv: Sequence[str] | None,
    description: str,
    prog: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    **parser_kwargs: Any,
) -> argparse.Namespace:
    """Defaults < environment < ``--config`` yaml < flags. One attribute per option (+ the config flag's).

    ``parser_kwargs``: as :func:`build_parser` (``formatter_class``, ``epilog``, ``config_flag``,
    ``config_help``). ``environ``: where ``Option.env`` variables are read (default ``os.environ``). A
    variable is converted only when it is used, so a flag or yaml key still wins over a bad variable.
    """
    config_flag = parser_kwargs.get("config_flag", "config")
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument(f"--{config_flag}", default=None)
    known, _ = pre.parse_known_args(argv)
    config_path = getattr(known, config_flag)
    from_yaml = load_yaml_defaults(config_path, options, config_flag) if config_path else {}
    environ = os.environ if environ is None else environ
    with_env = [o.name for o in options if o.env and environ.get(o.env)]
    parser = build_parser(options, description, prog, provided=[*from_yaml, *with_env], **parser_kwargs)
    args = parser.parse_args(argv)  # --help, and every error in the flags, reported as argparse does
    # which options the command line gave: parsed again with no defaults, so only those are set
    given = _given_on_command_line(options, argv, config_flag)
    for opt in options:
        if opt.name in given:
            continue
        if opt.name in from_yaml:
            setattr(args, opt.name, from_yaml[opt.name])
        elif opt.name in with_env:
            setattr(args, opt.name, opt.from_env(environ))
    return args


def config_to_dict(args: argparse.Namespace, options: Sequence[Option]) -> dict[str, Any]:
    """The option values of ``args`` in declaration order (what :func:`save_config` writes)."""
    return {opt.name: getattr(args, opt.name) for opt in options}


def save_config(args: argparse.Namespace, options: Sequence[Option], path: str | os.PathLike) -> Path:
    """Write the resolved config as yaml (atomically); it loads back with ``--config`` to the same values."""
    import yaml

    path = Path(path)
    text = yaml.safe_dump(config_to_dict(args, options), sort_keys=False, allow_unicode=True)
    atomic_write_text(path, text)
    return path
