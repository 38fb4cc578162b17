"""Stream record batches into ``part_1.parquet``, ``part_2.parquet``... of planned sizes.

Only one part is open at a time and rows are buffered only up to one row group, so memory does not
depend on the size of the output. Dictionary encoding is used only for low-cardinality columns (LANGUAGE): for URL/TEXT it triples the
write cost and falls back to plain encoding anyway. Writing runs in a background thread (pyarrow releases the GIL), so
reading/filtering the next batches overlaps with compressing and writing the previous ones.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

DICTIONARY_COLUMNS = {"LANGUAGE", "language", "lang"}


class PartitionWriter:
    """Write rows, in order, into ``out_dir/part_<N>.parquet`` (1-based) with ``sizes[N-1]`` rows each."""

    def __init__(self, out_dir: Path, schema: pa.Schema, sizes: list[int], row_group_rows: int = 131_072,
                 compression: str = "snappy", queue_depth: int = 4) -> None:
        self.out_dir = Path(out_dir)
        self.schema = schema
        self.sizes = list(sizes)
        self.row_group_rows = row_group_rows
        self.compression = compression
        self._part = 0  # index into sizes of the part being filled
        self._filled = 0
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=queue_depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    # -- producer side ---------------------------------------------------------------------------
    def write(self, data: pa.Table | pa.RecordBatch) -> None:
        """Append rows; they are split across part boundaries as needed."""
        table = data if isinstance(data, pa.Table) else pa.Table.from_batches([data])
        offset = 0
        while offset < table.num_rows:
            if self._part >= len(self.sizes):
                raise ValueError("more rows written than the planned part sizes hold")
            room = self.sizes[self._part] - self._filled
            take = min(room, table.num_rows - offset)
            self._buffer(table.slice(offset, take))
            offset += take
            self._filled += take
            if self._filled == self.sizes[self._part]:
                self._flush(close=True)

    def close(self) -> list[int]:
        """Finish every part (empty planned parts are written too); returns rows per part."""
        while self._part < len(self.sizes):
            if self._filled != self.sizes[self._part] and self.sizes[self._part] != 0:
                self._put(None)
                raise ValueError(f"part {self._part + 1}: got {self._filled} rows, planned {self.sizes[self._part]}")
            self._flush(close=True)
        self._put(None)
        self._thread.join()
        self._raise_if_failed()
        return self.sizes

    def abort(self) -> None:
        """Stop the writer thread after an error (files are left for the caller's cleanup)."""
        self._put(None, check=False)
        self._thread.join()

    def _buffer(self, table: pa.Table) -> None:
        if table.num_rows:
            self._pending.append(table)
            self._pending_rows += table.num_rows
        if self._pending_rows >= self.row_group_rows:
            self._flush(close=False)

    def _flush(self, close: bool) -> None:
        if self._pending or close:
            table = pa.concat_tables(self._pending) if self._pending else self.schema.empty_table()
            self._put(("rows", self._part, table, close))
        self._pending, self._pending_rows = [], 0
        if close:
            self._part += 1
            self._filled = 0

    def _put(self, item, check: bool = True) -> None:
        if check:
            self._raise_if_failed()
        self._queue.put(item)

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    # -- writer thread ---------------------------------------------------------------------------
    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is not None:
                continue
            try:
                _, part, table, close = item
                if self._writer is None:
                    path = self.out_dir / f"part_{part + 1}.parquet"
                    dict_cols = [n for n in self.schema.names if n in DICTIONARY_COLUMNS]
                    self._writer = pq.ParquetWriter(path, self.schema, compression=self.compression,
                                                    use_dictionary=dict_cols or False)
                if table.num_rows:
                    self._writer.write_table(table.cast(self.schema), row_group_size=self.row_group_rows)
                if close:
                    self._writer.close()
                    self._writer = None
            except BaseException as err:  # reported to the producer on its next call
                self._error = err
