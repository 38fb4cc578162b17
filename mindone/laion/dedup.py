"""Deduplication by URL, (URL, TEXT) or the LAION ``hash`` column, one bucket at a time.

Rows are first hash-partitioned on their key (see :mod:`mindone.laion.shuffle_external`), so every copy
of a key lands in the same bucket and a bucket can be deduplicated alone in memory.

Semantics (identical in both engines): among rows with the same key, the one that comes first in the
input (files in natural name order, then row order) is kept. A row whose key has a null part has no
identity and is always kept.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

ORD = "__laion_ord"  # global input position, added while scattering and dropped before output

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads every input bit over the output (wrapping uint64 arithmetic)."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * _M1
        x = x ^ (x >> np.uint64(27))
        x = x * _M2
        return x ^ (x >> np.uint64(31))


def _column_hash(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    if pa.types.is_integer(col.type):
        return _mix(pc.fill_null(col, 0).to_numpy().astype(np.int64).view(np.uint64))
    values = pc.fill_null(col, "").to_numpy(zero_copy_only=False)
    return pd.util.hash_array(values.astype(object), categorize=False)


def key_hash(table: pa.Table, key_columns: list[str], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hash of each row's key (salted with ``seed``) and a mask of rows whose key has a null."""
    h = np.full(table.num_rows, (seed * int(_GOLDEN)) % 2**64, np.uint64)
    has_null = np.zeros(table.num_rows, bool)
    with np.errstate(over="ignore"):
        for name in key_columns:
            col = table.column(name)
            h = _mix(h * _GOLDEN + _column_hash(col))
            if col.null_count:
                has_null |= col.is_null().to_numpy(zero_copy_only=False)
    return h, has_null


def dedup_table(table: pa.Table, key_columns: list[str]) -> pa.Table:
    """Keep, for each non-null key, the row with the smallest ``ORD``; keep null-key rows; input order kept."""
    if table.num_rows == 0:
        return table
    valid = None
    for name in key_columns:
        v = pc.is_valid(table.column(name))
        valid = v if valid is None else pc.and_(valid, v)
    keyed = table.filter(valid).select(key_columns + [ORD])
    firsts = keyed.group_by(key_columns, use_threads=False).aggregate([(ORD, "min")]).column(f"{ORD}_min")
    keep = pc.or_(pc.is_in(table.column(ORD), value_set=firsts.combine_chunks()), pc.invert(valid))
    return table.filter(keep)
