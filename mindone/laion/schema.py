"""Column-name resolution across the LAION schema variants.

Conditions and dedup keys name *logical* columns (``aesthetic``, ``width``...). Each subset spells them
differently (``AESTHETIC_SCORE`` in improved_aesthetics_4.5plus, ``aesthetic`` in laion-art), so every
input file is resolved on its own: the first alias present in the file wins.
"""

from __future__ import annotations

import pyarrow as pa

from mindone.data.filter_vocab import COLUMN_ALIASES
from mindone.errors import DataError

# logical name -> accepted physical names, in order of preference (owned by the filter vocabulary)
ALIASES = COLUMN_ALIASES

NUMERIC = {"width", "height", "punsafe", "pwatermark", "aesthetic", "similarity"}
STRING = {"url", "text", "language"}


def resolve_column(schema: pa.Schema, logical: str) -> str | None:
    """Physical column name for ``logical`` in ``schema`` (an unknown logical name is taken literally)."""
    names = set(schema.names)
    for candidate in ALIASES.get(logical, (logical,)):
        if candidate in names:
            return candidate
    return None


def check_type(schema: pa.Schema, logical: str, physical: str, file: str) -> None:
    """Raise DataError if ``physical`` does not have the type ``logical`` needs (numbers / strings)."""
    typ = schema.field(physical).type
    if logical in NUMERIC and not (pa.types.is_integer(typ) or pa.types.is_floating(typ)):
        raise DataError(f"{file}: column {physical!r} has type {typ}, expected a number")
    if logical in STRING and not (pa.types.is_string(typ) or pa.types.is_large_string(typ)):
        raise DataError(f"{file}: column {physical!r} has type {typ}, expected a string")
    if logical == "hash" and not pa.types.is_integer(typ):
        raise DataError(f"{file}: column {physical!r} has type {typ}, expected an integer")


def resolve_columns(schema: pa.Schema, logicals: list[str], file: str, skip_missing: bool) -> dict[str, str | None]:
    """Resolve and type-check each logical column; a missing one raises unless ``skip_missing``."""
    out: dict[str, str | None] = {}
    for logical in logicals:
        physical = resolve_column(schema, logical)
        if physical is None:
            if not skip_missing:
                tried = "/".join(ALIASES.get(logical, (logical,)))
                raise DataError(f"{file}: no column {tried} for condition on {logical!r} "
                                "(pass --skip_missing_columns to skip conditions on absent columns)")
        else:
            check_type(schema, logical, physical, file)
        out[logical] = physical
    return out
