"""Keep metadata rows whose URL is not http(s) away from img2dataset.

img2dataset fetches every URL with ``urllib.request.urlopen``, which also opens ``file://`` (any file this
user can read), ``ftp://`` and ``data:`` URLs; whatever it reads lands in the shards as a downloaded
image. A metadata file is data, so its rows must not choose what this machine reads: before a part is
handed to img2dataset (whatever the distributor), its rows are checked, and when any URL is not
http(s) a copy without those rows is written and downloaded instead. The refused rows are counted and
reported, never silently lost; ``--allow_non_http_urls`` turns the check off.

The scheme is judged the way urllib will see the URL: surrounding spaces and a ``<URL:...>`` wrapper are
removed first (``urllib.parse.unwrap``), then the scheme is compared case-insensitively. A null URL is
kept (img2dataset records it as a failed download; it reads nothing).
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from mindone.errors import DataError

ALLOWED_SCHEMES = frozenset({"http", "https"})
COPY_NAME = ".http_urls_only.parquet"  # hidden, and not *.json: img2dataset takes those for finished shards


class UrlGuardError(DataError):
    """A metadata file that cannot be checked, or none of whose rows may be downloaded."""


@dataclass
class UrlScreen:
    """What the check found in one metadata file."""

    rows: int = 0
    refused: int = 0
    schemes: dict[str, int] = field(default_factory=dict)  # refused rows per scheme ("" for none)

    def describe(self) -> str:
        labels = {"": "without a scheme", UNPARSABLE: UNPARSABLE}
        kinds = ", ".join(f"{n} {labels.get(s, s + ':')}" for s, n in sorted(self.schemes.items()))
        return f"{self.refused} of {self.rows} rows have a URL that is not http(s) ({kinds})"


UNPARSABLE = "(unparsable)"


def url_scheme(url: str) -> str:
    """The scheme urllib will act on, lower-cased ("" when there is none, UNPARSABLE when urllib cannot parse it)."""
    try:
        return urllib.parse.urlsplit(urllib.parse.unwrap(url)).scheme.lower()
    except ValueError:  # e.g. an unclosed "[" of an IPv6 host
        return UNPARSABLE


def read_metadata(path: Path, input_format: str):
    """The metadata as a pyarrow Table, read with the same readers img2dataset uses for each format."""
    import pyarrow as pa
    import pyarrow.csv as csv_pa
    import pyarrow.json as json_pa
    import pyarrow.parquet as pq

    if input_format == "parquet":
        return pq.read_table(path)
    compression = "gzip" if input_format.endswith(".gz") else None
    base = input_format[: -len(".gz")] if compression else input_format
    with pa.input_stream(str(path), compression=compression) as stream:
        if base == "txt":
            return csv_pa.read_csv(stream, read_options=csv_pa.ReadOptions(column_names=["url"]))
        if base == "csv":
            return csv_pa.read_csv(stream)
        if base == "tsv":
            return csv_pa.read_csv(stream, parse_options=csv_pa.ParseOptions(delimiter="\t"))
        if base == "jsonl":
            return json_pa.read_json(stream)
        if base == "json":
            import pandas as pd

            return pa.Table.from_pandas(pd.read_json(stream))
    raise ValueError(f"unknown input format {input_format!r}")


def screen_urls(table, url_col: str):
    """``(mask of the rows to keep, UrlScreen)`` for the ``url_col`` column of ``table``.

    Plain ``http://`` / ``https://`` URLs are accepted in one vectorised pass; only the others (other
    schemes, upper case, spaces, wrappers) are parsed one by one.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    urls = table.column(url_col)
    if not pa.types.is_string(urls.type) and not pa.types.is_large_string(urls.type):
        urls = pc.cast(urls, pa.string())
    plain = pc.or_(pc.starts_with(urls, "http://"), pc.starts_with(urls, "https://"))
    keep = pc.fill_null(plain, True).to_numpy(zero_copy_only=False).copy()
    screen = UrlScreen(rows=table.num_rows)
    for index in np.flatnonzero(~keep):
        scheme = url_scheme(urls[int(index)].as_py())
        if scheme in ALLOWED_SCHEMES:
            keep[index] = True
        else:
            screen.refused += 1
            screen.schemes[scheme] = screen.schemes.get(scheme, 0) + 1
    return keep, screen


def write_http_only_copy(table, keep, destination: str) -> None:
    """Write the kept rows of ``table`` as parquet to ``destination`` (a local path, or an fsspec URL)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    kept = table.filter(pa.array(keep))
    if "://" not in destination:
        from mindone.utils.atomic import atomic_path

        Path(destination).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(Path(destination)) as tmp:
            pq.write_table(kept, tmp)
        return
    import fsspec

    with fsspec.open(destination, "wb") as fh:  # remote output (s3://, hdfs://): where the executors read
        pq.write_table(kept, fh)


def http_only_kwargs(kwargs: dict, input_path: Path, input_format: str, dry_run: bool = False) -> tuple[dict, UrlScreen]:
    """img2dataset kwargs that download only the http(s) rows of ``input_path``, and what was refused.

    Nothing refused: ``kwargs`` unchanged. Otherwise they point at a parquet copy without the refused rows
    (``<output_folder>/.http_urls_only.parquet``, rewritten on every run from the same input, so a rerun
    resumes against the same rows); ``dry_run`` says so without writing it.
    """
    import pyarrow.parquet as pq

    url_col = kwargs["url_col"] if input_format not in ("txt", "txt.gz") else "url"
    try:
        if input_format == "parquet":  # the url column is enough to decide
            table = pq.read_table(input_path, columns=[url_col])
        else:
            table = read_metadata(input_path, input_format)
        keep, screen = screen_urls(table, url_col)
    except (OSError, ValueError, KeyError) as err:  # pyarrow's ArrowInvalid is a ValueError
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UrlGuardError(f"{input_path}: cannot check its {url_col!r} column as {input_format}: {reason}") from None
    if not screen.refused:
        return kwargs, screen
    if screen.refused == screen.rows:
        raise UrlGuardError(f"{input_path}: {screen.describe()}: nothing to download (--allow_non_http_urls keeps them)")
    destination = f"{kwargs['output_folder'].rstrip('/')}/{COPY_NAME}"
    if not dry_run:
        if input_format == "parquet":
            table = pq.read_table(input_path)  # every column goes into the copy
        write_http_only_copy(table, keep, destination)
    changed = dict(kwargs, url_list=destination, input_format="parquet")
    if input_format in ("txt", "txt.gz"):  # a url-only input: the copy's one column is "url"
        changed.update(url_col="url", caption_col=None, save_additional_columns=None)
    return changed, screen
