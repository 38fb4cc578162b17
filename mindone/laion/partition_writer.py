"""Stream record batches into ``part_1.parquet``, ``part_2.parquet``... of planned sizes.

Only one part is open at a time and rows are buffered only up to one row group, so memory does not
depend on the size of the output. Filtering (by a row mask), splitting at part boundaries, encoding
and writing all run in a background thread (pyarrow releases the GIL), so the caller's reading of the
next batches overlaps with them. Dictionary encoding is used only for low-cardinality columns
(LANGUAGE): for URL/TEXT it triples the write cost and falls back to plain encoding anyway.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

DICTIONARY_COLUMNS = {"LANGUAGE", "language", "lang"}
_DONE = object()


def bool_array(mask: np.ndarray) -> pa.BooleanArray:
    """A numpy bool mask as an Arrow array, built from its packed bits (``pa.array`` would import pandas)."""
    bits = np.packbits(np.asarray(mask, bool), bitorder="little")
    return pa.BooleanArray.from_buffers(pa.bool_(), len(mask), [None, pa.py_buffer(bits)])


class PartitionWriter:
    """Write rows, in order, into ``out_dir/part_<N>.parquet`` (1-based) with ``sizes[N-1]`` rows each."""

    def __init__(self, out_dir: Path, schema: pa.Schema, sizes: list[int], row_group_rows: int = 131_072,
                 compression: str = "snappy", queue_depth: int = 4,
                 transform: Callable[[pa.Table], pa.Table] | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.schema = schema
        self.sizes = list(sizes)
        self.row_group_rows = row_group_rows
        self.compression = compression
        self.transform = transform  # applied (in the writer thread) after the mask, e.g. schema alignment
        self._part = 0  # index into sizes of the part being filled
        self._filled = 0
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=queue_depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    # -- caller side -----------------------------------------------------------------------------
    def write(self, data: pa.Table | pa.RecordBatch, mask: np.ndarray | None = None,
              extra: pa.Table | None = None) -> None:
        """Queue rows (only those where ``mask`` is True); they are split across parts as needed.

        ``extra``: more columns of the same rows, already filtered (one row per True in ``mask``),
        appended after the mask is applied (the ``transform`` puts columns in the schema's order).

        Data bigger than a row group (a whole shuffle bucket) is queued in row-group slices, so the
        bounded queue holds back the caller until the writer is near the end of it: the caller then
        has at most this table and the next one in memory, however fast it reads.
        """
        self._raise_if_failed()
        if mask is None and data.num_rows > self.row_group_rows:
            for start in range(0, data.num_rows, self.row_group_rows):
                part = None if extra is None else extra.slice(start, self.row_group_rows)
                self._queue.put((data.slice(start, self.row_group_rows), None, part))
            return
        self._queue.put((data, mask, extra))

    def close(self) -> list[int]:
        """Finish every part (empty planned parts are written too); returns rows per part."""
        self._queue.put(_DONE)
        self._thread.join()
        self._raise_if_failed()
        return self.sizes

    def abort(self) -> None:
        """Stop the writer thread after an error (files are left for the caller's cleanup)."""
        self._error = self._error or RuntimeError("aborted")
        self._queue.put(_DONE)
        self._thread.join()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    # -- writer thread ---------------------------------------------------------------------------
    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            if item is _DONE:
                if self._error is None:
                    try:
                        self._finish()
                    except BaseException as err:  # reported by close()
                        self._error = err
                self._close_writer()
                return
            if self._error is not None:
                continue  # keep draining so the producer never blocks
            try:
                data, mask, extra = item
                if mask is not None:
                    data = data.filter(bool_array(mask))
                table = data if isinstance(data, pa.Table) else pa.Table.from_batches([data])
                if extra is not None:
                    for name, column in zip(extra.column_names, extra.columns):
                        table = table.append_column(name, column)
                if self.transform is not None:
                    table = self.transform(table)
                self._add(table)
            except BaseException as err:  # reported to the producer on its next call
                self._error = err

    def _add(self, table: pa.Table) -> None:
        offset = 0
        while offset < table.num_rows:
            if self._part >= len(self.sizes):
                raise ValueError("more rows written than the planned part sizes hold")
            take = min(self.sizes[self._part] - self._filled, table.num_rows - offset)
            if take:
                self._pending.append(table.slice(offset, take))
                self._pending_rows += take
                offset += take
                self._filled += take
            if self._filled == self.sizes[self._part]:
                self._flush(close=True)
            elif self._pending_rows >= self.row_group_rows:
                self._flush(close=False)

    def _finish(self) -> None:
        while self._part < len(self.sizes):
            if self._filled != self.sizes[self._part]:
                raise ValueError(f"part {self._part + 1}: got {self._filled} rows, planned {self.sizes[self._part]}")
            self._flush(close=True)

    def _flush(self, close: bool) -> None:
        if self._writer is None:
            dict_cols = [n for n in self.schema.names if n in DICTIONARY_COLUMNS]
            # min/max statistics of free text (URL, TEXT) cost time and never prune anything
            stats_cols = [f.name for f in self.schema
                          if f.name in DICTIONARY_COLUMNS or not (pa.types.is_string(f.type)
                                                                  or pa.types.is_large_string(f.type))]
            self._writer = pq.ParquetWriter(self.out_dir / f"part_{self._part + 1}.parquet", self.schema,
                                            compression=self.compression, use_dictionary=dict_cols or False,
                                            write_statistics=stats_cols or False)
        if self._pending:
            table = pa.concat_tables(self._pending)
            if not table.schema.equals(self.schema):
                table = table.cast(self.schema)
            self._writer.write_table(table, row_group_size=self.row_group_rows)
        self._pending, self._pending_rows = [], 0
        if close:
            self._close_writer()
            self._part += 1
            self._filled = 0

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
