"""Command-line conventions shared by every tool and example script.

User mistakes (a missing file, a bad flag value, a column the input lacks) raise :class:`UserError`
with one line that names the input and what is wrong. :func:`run_main` prints that line to stderr
and exits with status 2, with no stack trace; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import sys
from typing import Callable, Sequence


class UserError(Exception):
    """An error caused by the user's input; its message is the one line shown to them."""


def run_main(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Run a CLI ``main(argv)`` and turn :class:`UserError` into ``error: <message>`` + exit 2."""
    prog = sys.argv[0].rsplit("/", 1)[-1]
    try:
        code = main(argv)
    except UserError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


def setup_cli_logging(verbose: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
