"""Filter conditions on LAION metadata columns, evaluated the same way by the arrow and spark engines.

Null semantics: a row whose value is null (or NaN, for float columns) fails every condition on that
column. So a row with NaN WIDTH never passes ``width>=512``, and a null caption fails a caption-length
condition (an empty caption has length 0 and is compared as such).

Which conditions exist (a flag per filter name, on its logical column with its operator, in the fixed
order used to attribute removed rows, with seed 001's defaults: WIDTH>=512, HEIGHT>=512, punsafe<=0.98,
AESTHETIC_SCORE>=4.5) is the filter vocabulary's :data:`mindone.data.filter_vocab.METADATA_FILTERS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mindone.data.filter_vocab import METADATA_FILTERS

@dataclass(frozen=True)
class Condition:
    """One predicate ``<logical column> <op> <value>``; ``value`` is a tuple of strings for ``in``."""

    logical: str
    op: str
    value: Any

    @property
    def name(self) -> str:
        shown = ",".join(self.value) if self.op == "in" else f"{self.value:g}"
        if self.op.startswith("len"):
            return f"len({self.logical}){self.op[3:]}{shown}"
        return f"{self.logical}{' in ' if self.op == 'in' else self.op}{shown}"

    def numpy_mask(self, column: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Boolean numpy mask: True where the row passes (the fast path of the arrow engine)."""
        typ = column.type
        if self.op in (">=", "<=") and (pa.types.is_floating(typ) or pa.types.is_integer(typ)):
            chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
            if not chunks:
                return np.zeros(0, bool)
            masks = [self._numeric_mask(c) for c in chunks]
            return masks[0] if len(masks) == 1 else np.concatenate(masks)
        return self.arrow_mask(column).to_numpy(zero_copy_only=False)

    def _numeric_mask(self, arr: pa.Array) -> np.ndarray:
        """Compare the values buffer in numpy (in float64, like Arrow and Spark: 0.98f > 0.98), then drop nulls.

        Straight from the buffers: ``to_numpy`` with nulls would go through pyarrow's pandas shim
        (importing pandas, 0.2 s) and a NaN-filled copy. NaN compares False, so NaN rows fail.
        """
        typ, n, off = arr.type, len(arr), arr.offset
        validity, data = arr.buffers()[:2]
        if n == 0 or data is None:
            return np.zeros(n, bool)
        kind = "f" if pa.types.is_floating(typ) else "i" if pa.types.is_signed_integer(typ) else "u"
        values = np.frombuffer(data, np.dtype(f"{kind}{typ.bit_width // 8}"), count=off + n)[off:]
        if values.dtype != np.float64:
            values = values.astype(np.float64)
        with np.errstate(invalid="ignore"):
            ok = values >= self.value if self.op == ">=" else values <= self.value
        if arr.null_count and validity is not None:
            ok &= np.unpackbits(np.frombuffer(validity, np.uint8), count=off + n, bitorder="little")[off:].view(bool)
        return ok

    def arrow_mask(self, column: pa.Array | pa.ChunkedArray) -> pa.Array:
        """Boolean mask without nulls: True where the row passes."""
        typ = column.type
        if self.op == "in":
            mask = pc.is_in(column, value_set=pa.array(list(self.value), type=typ))
            valid = pc.is_valid(column)
            return pc.and_(mask, valid)
        if self.op.startswith("len"):
            column = pc.utf8_length(column)
        if self.op.endswith(">="):
            mask = pc.greater_equal(column, pa.scalar(self.value, pa.float64()))
        else:
            mask = pc.less_equal(column, pa.scalar(self.value, pa.float64()))
        # Arrow comparisons with NaN are already False; nulls become False here.
        return pc.fill_null(mask, False)

    def spark_column(self, physical: str, is_float: bool):
        """The same predicate as a pyspark Column, never null (null/NaN -> False)."""
        from pyspark.sql import functions as F

        col = F.col(f"`{physical}`")
        if self.op == "in":
            expr = col.isin(list(self.value))
        else:
            lhs = F.length(col) if self.op.startswith("len") else col
            expr = lhs >= F.lit(self.value) if self.op.endswith(">=") else lhs <= F.lit(self.value)
            if is_float:
                # Spark orders NaN above every number (NaN >= 512 is true): exclude it explicitly.
                expr = expr & ~F.isnan(col)
        return F.coalesce(expr, F.lit(False))


def _parse_value(op: str, raw: Any) -> Any:
    if raw is None or (isinstance(raw, str) and raw.strip().lower() in ("", "none", "off")):
        return None
    if op == "in":
        items = raw if isinstance(raw, (list, tuple)) else str(raw).split(",")
        return tuple(str(x).strip() for x in items if str(x).strip())
    return float(raw)


def build_conditions(options: dict[str, Any]) -> list[Condition]:
    """Conditions from flag/yaml values keyed by filter name (missing keys take seed 001's defaults; None
    turns one off)."""
    from mindone.errors import ConfigError

    conds = []
    for spec in METADATA_FILTERS:
        raw = options.get(spec.name, spec.metadata_default)
        try:
            value = _parse_value(spec.op, raw)
        except ValueError:
            raise ConfigError(f"--{spec.name}: expected a number or 'none', got {raw!r}") from None
        if value is not None:
            conds.append(Condition(spec.column, spec.op, value))
    return conds
