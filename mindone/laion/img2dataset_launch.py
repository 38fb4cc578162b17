"""Build img2dataset's keyword arguments from the launcher's settings, and run it for one part.

img2dataset's CLI *is* the keyword arguments of ``img2dataset.download``; this module only decides the
defaults that suit LAION for SD training, forwards any other option unchanged (typed from ``download``'s
own signature), prepares the part folder for a safe resume and reports what is left to do.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import os
import sys
import typing
from pathlib import Path
from typing import Any, Iterator, Sequence

from mindone.data.filter_vocab import COLUMN_ALIASES
from mindone.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

# Names img2dataset reserves for its own json fields (it refuses them in save_additional_columns).
RESERVED_COLUMNS = {"key", "caption", "url", "width", "height", "original_width", "original_height", "status",
             "error_message", "exif", "md5", "sha256", "sha512"}  # fmt: skip
# The logical metadata columns worth keeping in each sample's json (post-download filters read them), in
# this order. Not url / text (the url and caption columns) nor width / height (img2dataset records the
# original size itself, as original_width / original_height).
SAVED_COLUMNS = ("similarity", "hash", "punsafe", "pwatermark", "aesthetic", "language")
# What "auto" keeps when the input has it: every name the filter vocabulary knows for those columns.
DEFAULT_EXTRA_COLUMNS = tuple(name for column in SAVED_COLUMNS for name in COLUMN_ALIASES[column]
                              if name not in RESERVED_COLUMNS)


def default_processes() -> int:
    """Processes img2dataset may use: the CPUs this process is allowed to run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def default_threads() -> int:
    """Download threads per process: downloads wait on the network, so many per core (img2dataset's advice)."""
    return min(256, 32 * default_processes())


def parse_part_ids(tokens: Sequence[str]) -> list[int]:
    """``["1-3"]``, ``["1", "2", "3"]``, ``["1,2,3"]`` -> [1, 2, 3]; part ids start at 1."""
    ids: list[int] = []
    for token in tokens:
        for piece in str(token).split(","):
            piece = piece.strip()
            if not piece:
                continue
            try:
                if "-" in piece.lstrip("-"):
                    lo, hi = piece.split("-", 1)
                    first, last = int(lo), int(hi)
                else:
                    first = last = int(piece)
            except ValueError:
                raise ConfigError(f"part id {piece!r} is not a number or a range like 1-3") from None
            if last < first:  # outside the try: a ConfigError is a ValueError too
                raise ConfigError(f"part range {piece!r} is empty (end before start)")
            ids.extend(range(first, last + 1))
    if not ids:
        raise ConfigError("no part id given (e.g. 1, 1-3 or '1 2 3')")
    bad = [i for i in ids if i < 1]
    if bad:
        raise ConfigError(f"part id {bad[0]} is invalid: LAION parts are numbered from 1 (part_1.parquet)")
    return list(dict.fromkeys(ids))


def part_file(metadata_dir: str | os.PathLike, part_id: int, input_format: str) -> Path:
    """``<metadata_dir>/part_<id>.<input_format>``, or a DataError naming the missing file."""
    path = Path(metadata_dir) / f"part_{part_id}.{input_format}"
    if not path.is_file():
        raise DataError(f"metadata file {path} not found (part {part_id}; check --metadata_dir / LAION_METADATA_DIR)")
    return path


def input_columns(path: Path, input_format: str) -> list[str] | None:
    """Column names of a parquet/csv/tsv input, read from its schema or header; None if unknown."""
    if input_format == "parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    if input_format in ("csv", "tsv"):
        with open(path, encoding="utf-8") as fh:
            return fh.readline().rstrip("\r\n").split("," if input_format == "csv" else "\t")
    return None


def choose_extra_columns(requested: str | None, columns: list[str] | None, url_col: str, caption_col: str | None) -> list[str] | None:
    """The columns to save in each sample's json.

    ``requested`` None/"auto": the LAION score columns the input has. "none": nothing. Otherwise a comma list,
    every name of which must exist in the input.
    """
    if requested is not None and requested.strip().lower() == "none":
        return None
    if requested is None or requested.strip().lower() == "auto":
        if columns is None:
            return None
        wanted = [c for c in DEFAULT_EXTRA_COLUMNS if c in columns]
    else:
        wanted = [c.strip() for c in requested.split(",") if c.strip()]
        if columns is not None:
            missing = [c for c in wanted if c not in columns]
            if missing:
                raise ConfigError(f"--save_additional_columns: column {missing[0]!r} is not in the input (has: {', '.join(columns)})")
    reserved = [c for c in wanted if c in RESERVED_COLUMNS]
    if reserved:
        raise ConfigError(f"--save_additional_columns: {reserved[0]!r} is reserved by img2dataset for its own field")
    wanted = [c for c in wanted if c not in (url_col, caption_col)]
    return wanted or None


# img2dataset's own switch for --insecure_ssl, in its git master after 1.47.0 (PR #397, not yet released).
NATIVE_INSECURE_OPTION = "ignore_ssl_certificate"


def _download_signature() -> inspect.Signature:
    from img2dataset import download

    return inspect.signature(download)


def _convert(flag: str, value: str, annotation: Any, default: Any) -> Any:
    """Turn a command-line string into the type ``download`` declares for that option."""
    args = typing.get_args(annotation)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), annotation) if optional else annotation
    if optional and value.lower() == "none":
        return None
    origin = typing.get_origin(base)
    try:
        if base is bool or isinstance(default, bool):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if origin in (list, typing.List):
            if value.startswith("["):
                return [str(v) for v in json.loads(value)]
            return [v.strip() for v in value.split(",") if v.strip()]
        if base is int:
            return int(value)
        if base is float:
            return float(value)
        return value
    except ValueError:
        raise ConfigError(f"img2dataset option --{flag}: cannot read {value!r} as {getattr(base, '__name__', base)}") from None


def parse_passthrough(tokens: Sequence[str]) -> dict[str, Any]:
    """``["--encode_quality", "90", "--extract_exif=false"]`` -> typed kwargs for ``img2dataset.download``."""
    kwargs: dict[str, Any] = {}
    if not tokens:
        return kwargs
    params = _download_signature().parameters
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--"):
            raise ConfigError(f"img2dataset option {token!r}: expected --name value (options after -- go to img2dataset)")
        name, eq, value = token[2:].partition("=")
        name = name.replace("-", "_")
        if name not in params or name == "url_list":
            raise ConfigError(f"img2dataset has no option --{name} (see `img2dataset --help`)")
        if not eq:
            if i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
                value = tokens[i + 1]
                i += 1
            elif isinstance(params[name].default, bool):
                value = "true"
            else:
                raise ConfigError(f"img2dataset option --{name} needs a value")
        kwargs[name] = _convert(name, value, params[name].annotation, params[name].default)
        i += 1
    return kwargs


def count_input_rows(path: Path, input_format: str) -> int | None:
    """Rows of a parquet input (from its footer); None for other formats."""
    if input_format != "parquet":
        return None
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


@contextlib.contextmanager
def spark_session(master: str, app_name: str = "laion_download_imgs") -> Iterator[Any]:
    """A SparkSession on ``master`` that img2dataset's pyspark distributor picks up as the active one."""
    from mindone.laion.spark_session import create_session

    spark = create_session(app_name=app_name, master=master)
    try:
        yield spark
    finally:
        spark.stop()


def run_img2dataset(kwargs: dict[str, Any], insecure_ssl: bool = False, spark_master: str | None = None) -> None:
    """Call ``img2dataset.download(**kwargs)`` with the optional certificate patch and Spark session.

    img2dataset answers Ctrl-C with ``sys.exit(0)``; that is turned into KeyboardInterrupt so callers do
    not mistake an interrupted part for a finished one.
    """
    import signal

    from img2dataset import download

    from mindone.laion import cert_patch

    if kwargs.get("distributor") == "pyspark" and (spark_master is None or spark_master.startswith("local")):
        # local executors must run this interpreter (it has img2dataset), not whatever python3 is on PATH
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    previous_sigint = signal.getsignal(signal.SIGINT)
    with contextlib.ExitStack() as stack:
        if spark_master:
            stack.enter_context(spark_session(spark_master))
        if insecure_ssl and NATIVE_INSECURE_OPTION in _download_signature().parameters:
            # img2dataset after 1.47.0 (rom1504/img2dataset#397) skips certificate checks itself
            cert_patch.logger.warning(cert_patch.WARNING)
            kwargs = {**kwargs, NATIVE_INSECURE_OPTION: True}
        elif insecure_ssl:  # 1.47.0 (pinned) has no such option: the Downloader subclass of cert_patch
            stack.enter_context(cert_patch.insecure_downloads(pyspark=kwargs.get("distributor") == "pyspark"))
        try:
            download(**kwargs)
        except SystemExit as stop:
            raise KeyboardInterrupt from stop
        finally:
            signal.signal(signal.SIGINT, previous_sigint)


def expected_shards(rows: int | None, number_sample_per_shard: int) -> int | None:
    return None if rows is None else math.ceil(rows / number_sample_per_shard)


# What decides which input rows a shard id holds: a rerun that changes any of these would resume shards
# against different rows (silently skipping or duplicating samples). Not a *.json name on purpose:
# img2dataset treats every *.json of the output folder as a finished shard's stats.
SETTINGS_FILE = ".laion_download_settings"
SHARD_LAYOUT_KEYS = ("url_list", "input_format", "number_sample_per_shard", "output_format", "oom_shard_count")


def check_resume_settings(part_dir: Path, kwargs: dict[str, Any], input_rows: int | None) -> None:
    """Refuse to resume ``part_dir`` with a shard layout other than the one it was started with; record it."""
    from mindone.utils.atomic import atomic_write_text

    current = {k: kwargs.get(k) for k in SHARD_LAYOUT_KEYS}
    current["url_list"] = os.path.abspath(str(current["url_list"]))
    current["input_rows"] = input_rows
    record = part_dir / SETTINGS_FILE
    if record.is_file():
        try:
            previous = json.loads(record.read_text(encoding="utf-8"))
        except (ValueError, RecursionError):
            previous = {}
        if not isinstance(previous, dict):
            previous = {}
        changed = [k for k, v in current.items() if k in previous and previous[k] != v and v is not None]
        if changed:
            k = changed[0]
            raise ConfigError(
                f"{part_dir} was started with {k}={previous[k]!r}, now {current[k]!r}: resuming would mix shard "
                "layouts; rerun with the original settings or use a new --output_dir"
            )
    part_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(record, json.dumps(current, indent=2))
