"""Pass 1's spill: each input file's keep mask and its kept rows' condition columns, in scratch files.

The plain filter's first pass reads only the condition columns; writing what it decoded to disk lets
the second pass decode only the other columns and join these back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from mindone.errors import DataError
from mindone.laion.filter_common import InputFile
from mindone.laion.partition_writer import bool_array


class ConditionSpill:
    """Pass 1's output per input file: its keep mask and the kept rows' condition columns, in scratch files.

    Pass 2 then reads only the other columns of that file; :meth:`cursor` hands the spilled rows back
    in order. The files hold a byte per input row plus the condition values of the kept rows (24 bytes
    a kept row for seed 001's four conditions), so memory does not grow with the input.
    """

    def __init__(self, directory: Path, inputs: list[InputFile]) -> None:
        self.directory = Path(directory)
        self.columns: dict[Path, list[str]] = {}  # input file -> its spilled (physical) columns
        self._index = {f.path: i for i, f in enumerate(inputs)}

    def _paths(self, f: InputFile) -> tuple[Path, Path]:
        i = self._index[f.path]
        return self.directory / f"keep_{i:05d}.bool", self.directory / f"conditions_{i:05d}.arrows"

    def writer(self, f: InputFile, schema: pa.Schema | None) -> "SpillWriter":
        """``schema``: of the condition columns to spill, or None to keep only the mask."""
        self.columns[f.path] = list(schema.names) if schema is not None else []
        return SpillWriter(*self._paths(f), schema)

    def keep_mask(self, f: InputFile) -> np.ndarray:
        return np.fromfile(self._paths(f)[0], bool)

    def cursor(self, f: InputFile) -> "RowCursor":
        return RowCursor(self._paths(f)[1], f.path)


class SpillWriter:
    """Streams one input file's keep mask (a byte a row) and kept condition rows (Arrow IPC) to disk."""

    def __init__(self, bits_path: Path, rows_path: Path, schema: pa.Schema | None) -> None:
        self._bits = open(bits_path, "wb")
        self._sink = self._rows = None
        if schema is not None:  # None: only the mask (pass 2 reads every column of this file)
            self._sink = pa.OSFile(str(rows_path), "wb")
            self._rows = pa.ipc.new_stream(self._sink, schema)

    def add(self, batch: pa.RecordBatch | pa.Table, keep: np.ndarray) -> None:
        keep.tofile(self._bits)
        kept = int(np.count_nonzero(keep))
        if kept and self._rows is not None:
            self._rows.write(batch if kept == batch.num_rows else batch.filter(bool_array(keep)))

    def close(self) -> None:
        if self._rows is not None:
            self._rows.close()
            self._sink.close()
        self._bits.close()


class RowCursor:
    """Hands out the next ``k`` rows of one input file's spilled rows, in order.

    Pass 2 must ask for exactly the rows pass 1 kept: more or fewer means the input changed between
    the two passes, a one-line error naming it.
    """

    def __init__(self, path: Path, source: Path) -> None:
        self.source = source
        self._fh = pa.OSFile(str(path))
        self._reader = pa.ipc.open_stream(self._fh)
        self._batch: pa.RecordBatch | None = None
        self._pos = 0

    def _next_batch(self) -> bool:
        try:
            self._batch, self._pos = self._reader.read_next_batch(), 0
            return True
        except StopIteration:
            return False

    def take(self, k: int) -> pa.Table:
        pieces = []
        while k:
            if self._batch is None or self._pos == self._batch.num_rows:
                if not self._next_batch():
                    raise DataError(f"{self.source}: fewer rows pass on the second read (changed during the run?)")
                continue
            n = min(k, self._batch.num_rows - self._pos)
            pieces.append(self._batch.slice(self._pos, n))
            self._pos += n
            k -= n
        return pa.Table.from_batches(pieces, schema=self._reader.schema)

    def finish(self) -> None:
        """Close; an error if rows are left over."""
        try:
            left = self._batch is not None and self._pos < self._batch.num_rows
            while not left and self._next_batch():
                left = self._batch.num_rows > 0
            if left:
                raise DataError(f"{self.source}: more rows pass on the second read (changed during the run?)")
        finally:
            self._fh.close()
