"""Command-line conventions shared by every tool and example script.

User mistakes (a missing file, a bad flag value, a column the input lacks) are one line that names
the input and what is wrong. The library raises them as :class:`mindone.errors.MindoneError` (a
``ValueError``); a CLI script raises :class:`UserError` for the argument checks it does itself.
:func:`run_main` is the one place that turns either into that line on stderr and exit status 2, with
no stack trace; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Callable, Sequence

from mindone.errors import MindoneError


class UserError(Exception):
    """An error in a CLI script's own arguments; its message is the one line shown to the user.

    Library code raises :mod:`mindone.errors` instead; under ``mindone/`` the class appears only here and
    as the second base of :class:`mindone.utils.config.OptionError` (a ConfigError), kept for the callers
    that still catch this class for a yaml or environment error.
    """


ONE_LINE_ERRORS = (UserError, MindoneError)
"""What :func:`run_main` shows as one line (also what a test of a CLI's ``main`` expects it to raise)."""


def run_main(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Run a CLI ``main(argv)``; :class:`UserError` and :class:`~mindone.errors.MindoneError` become
    ``<prog>: error: <message>`` on stderr + exit 2."""
    prog = sys.argv[0].rsplit("/", 1)[-1]
    try:
        code = main(argv)
    except ONE_LINE_ERRORS as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


def setup_cli_logging(verbose: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def existing_folder(value: str, flag: str) -> Path:
    """``value`` as a Path; a :class:`UserError` naming ``flag`` when it is not an existing folder."""
    path = Path(value)
    if not path.is_dir():
        raise UserError(f"{flag} {path} is not a folder")
    return path
