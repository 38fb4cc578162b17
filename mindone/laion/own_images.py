"""Turn a folder of captioned images into the on-disk layout of an img2dataset download.

Captions come from (first found): ``metadata.jsonl`` (one ``{"file_name": ..., "text": ...}`` per line, the
Hugging Face imagefolder convention; ``caption`` is accepted for ``text``), ``metadata.csv`` (columns
``file_name`` and ``text``/``caption``), else a ``.txt`` file beside each image. The result is
``<out>/part_<id>/00000.tar`` (webdataset) or ``<out>/part_<id>/00000/`` (files), each with its
``00000_stats.json`` written last, exactly like img2dataset, so the same stats / csv tools and the same
training loader apply.

Only what lies inside the image folder is read: an image, caption or caption table that is a symlink
leading out of it is skipped and counted (``allow_outside=True``, ``--allow_outside_image_dir``, reads
it); folders reached through a symlink are not searched; FIFOs and devices are never opened.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import shutil
import tarfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from mindone.data.locations import inside_root
from mindone.data.wds_sample import CAPTION_EXT, IMAGE_EXTS, META_EXT
from mindone.errors import DataError
from mindone.utils.atomic import TMP_SUFFIX, atomic_path, atomic_write_text

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = tuple(f".{ext}" for ext in IMAGE_EXTS)  # the images a shard sample may hold (wds_sample)


@dataclass
class Sample:
    source: Path
    caption: str


@dataclass
class CollectReport:
    samples: list[Sample] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)


def _readable(path: Path, image_dir: Path, allow_outside: bool) -> bool | None:
    """For a file of a folder walked without following links: True for a regular file that is, or is a
    symlink to something, inside ``image_dir``; None for a symlink leading out of it; False otherwise."""
    if not path.is_file():  # follows links; False for a FIFO, a device, a folder, a dangling link
        return False
    if allow_outside or not path.is_symlink() or inside_root(str(path), str(image_dir)):
        return True
    return None


def _caption_table(image_dir: Path, allow_outside: bool = False) -> dict[str, str] | None:
    """``{relative file name: caption}`` from metadata.jsonl / metadata.csv, or None if neither exists."""
    jsonl, table_csv = image_dir / "metadata.jsonl", image_dir / "metadata.csv"
    for candidate in (jsonl, table_csv):
        if _readable(candidate, image_dir, allow_outside) is None:
            raise DataError(f"{candidate} is a symlink leading out of --image_dir (--allow_outside_image_dir reads it)")
    table: dict[str, str] = {}
    if jsonl.is_file():
        for lineno, line in enumerate(jsonl.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (ValueError, RecursionError):
                raise DataError(f"{jsonl}:{lineno}: not a json object") from None
            if not isinstance(row, dict) or "file_name" not in row:
                raise DataError(f"{jsonl}:{lineno}: needs a 'file_name' key")
            text = row.get("text", row.get("caption"))
            table[str(row["file_name"])] = text if isinstance(text, str) else ""
        return table
    if table_csv.is_file():
        with open(table_csv, encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            fields = reader.fieldnames or []
            text_col = "text" if "text" in fields else "caption" if "caption" in fields else None
            if "file_name" not in fields or text_col is None:
                raise DataError(f"{table_csv}: needs columns file_name and text (or caption); has {', '.join(fields)}")
            for row in reader:
                table[row["file_name"]] = row[text_col] or ""
        return table
    return None


def _image_files(image_dir: Path, allow_outside: bool, skipped: Counter) -> list[Path]:
    """The image files under ``image_dir``, sorted; folders reached through a symlink are not searched."""
    found = []
    for folder, _, names in os.walk(image_dir):  # followlinks=False: a folder link is listed, not entered
        for name in names:
            path = Path(folder) / name
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            readable = _readable(path, image_dir, allow_outside)
            if readable is None:
                skipped["symlink leading out of --image_dir"] += 1
            elif readable:
                found.append(path)
    return sorted(found)


def collect_samples(image_dir: Path, allow_outside: bool = False) -> CollectReport:
    """Every image under ``image_dir`` with its caption, sorted by path; uncaptioned ones skipped and counted.

    An image or ``.txt`` caption that is a symlink leading out of ``image_dir`` is skipped and counted
    unless ``allow_outside``.
    """
    if not image_dir.is_dir():
        raise DataError(f"--image_dir {image_dir} is not a folder")
    report = CollectReport()
    images = _image_files(image_dir, allow_outside, report.skipped)
    table = _caption_table(image_dir, allow_outside)
    for image in images:
        rel = image.relative_to(image_dir).as_posix()
        if table is not None:
            caption = table.get(rel)
            if caption is None:
                report.skipped["no caption entry"] += 1
                continue
        else:
            txt = image.with_suffix(".txt")
            readable = _readable(txt, image_dir, allow_outside)
            if not readable:
                report.skipped["no caption file" if readable is False else "symlink leading out of --image_dir"] += 1
                continue
            caption = txt.read_text(encoding="utf-8", errors="replace")
        caption = caption.strip()
        if not caption:
            report.skipped["empty caption"] += 1
            continue
        report.samples.append(Sample(image, caption))
    if table is not None:
        known = {p.relative_to(image_dir).as_posix() for p in images}
        report.skipped["caption entry without image"] += sum(1 for name in table if name not in known)
    return report


def encode_image(path: Path, image_size: int | None) -> tuple[bytes, str, dict] | None:
    """(bytes, extension, size info) — original bytes unless a resize is asked for and needed; None if unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            width, height = img.size
            info = {"original_width": width, "original_height": height, "width": width, "height": height}
            if image_size is None or min(width, height) <= image_size:
                ext = path.suffix.lower().lstrip(".")
                return path.read_bytes(), "jpg" if ext == "jpeg" else ext, info
            scale = image_size / min(width, height)
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            resized = img.convert("RGB").resize(size, Image.Resampling.LANCZOS)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        return None
    buf = io.BytesIO()
    resized.save(buf, format="JPEG", quality=95)
    info.update(width=size[0], height=size[1])
    return buf.getvalue(), "jpg", info


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
    member = tarfile.TarInfo(name)
    member.size, member.mtime, member.mode = len(data), mtime, 0o644
    tar.addfile(member, io.BytesIO(data))


def _shards(samples: list[Sample], per_shard: int) -> Iterator[tuple[int, list[Sample]]]:
    for shard_id in range(math.ceil(len(samples) / per_shard)):
        yield shard_id, samples[shard_id * per_shard : (shard_id + 1) * per_shard]


def write_shards(samples: list[Sample], part_dir: Path, output_format: str, per_shard: int = 10000,
                 image_size: int | None = None, image_dir: Path | None = None) -> Counter:  # fmt: skip
    """Write the shards of ``part_dir`` (data first, ``_stats.json`` last, each atomically); returns skip counts."""
    if output_format not in ("webdataset", "files"):
        raise ValueError(f"--output_format {output_format!r}: use webdataset or files")
    part_dir.mkdir(parents=True, exist_ok=True)
    skipped: Counter = Counter()
    digits_sample = max(1, math.ceil(math.log10(per_shard))) if per_shard > 1 else 1
    for shard_id, shard in _shards(samples, per_shard):
        name = f"{shard_id:05d}"
        start, successes, failed = time.time(), 0, 0
        records: list[tuple[str, bytes, str, dict]] = []
        for index, sample in enumerate(shard):
            key = f"{name}{index:0{digits_sample}d}"
            encoded = encode_image(sample.source, image_size)
            if encoded is None:
                failed += 1
                skipped["unreadable image"] += 1
                continue
            data, ext, info = encoded
            source = sample.source.relative_to(image_dir).as_posix() if image_dir else sample.source.name
            meta = {"key": key, "caption": sample.caption, "source": source, "status": "success", **info}
            records.append((key, data, ext, meta))
            successes += 1
        mtime = time.time()
        if output_format == "webdataset":
            with atomic_path(part_dir / f"{name}.tar") as tmp:
                with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
                    for key, data, ext, meta in records:
                        _tar_add(tar, f"{key}.{ext}", data, mtime)
                        _tar_add(tar, f"{key}.{CAPTION_EXT}", meta["caption"].encode("utf-8"), mtime)
                        _tar_add(tar, f"{key}.{META_EXT}", json.dumps(meta, ensure_ascii=False).encode("utf-8"), mtime)
        else:
            final = part_dir / name
            tmp_dir = part_dir / f".{name}.{os.getpid()}.tmp"
            tmp_dir.mkdir()
            for key, data, ext, meta in records:
                (tmp_dir / f"{key}.{ext}").write_bytes(data)
                (tmp_dir / f"{key}.{CAPTION_EXT}").write_text(meta["caption"], encoding="utf-8")
                (tmp_dir / f"{key}.{META_EXT}").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp_dir, final)
        stats = {"count": len(shard), "successes": successes, "failed_to_download": 0, "failed_to_resize": failed,
                 "duration": time.time() - start, "start_time": start, "end_time": time.time(),
                 "status_dict": {"success": successes, **({"unreadable image": failed} if failed else {})}}  # fmt: skip
        atomic_write_text(part_dir / f"{name}_stats.json", json.dumps(stats, indent=4))
    return skipped


def build_dir_for(part_dir: Path) -> Path:
    """Where a new build of ``part_dir`` is written: a hidden sibling no annotation tool or loader lists."""
    return part_dir.parent / f".{part_dir.name}.build.{os.getpid()}{TMP_SUFFIX}"


def sweep_leftovers(part_dir: Path) -> list[Path]:
    """Remove the build and old folders a killed run of this part left beside it; returns them."""
    if not part_dir.parent.is_dir():
        return []
    found = [p for kind in ("build", "old") for p in part_dir.parent.glob(f".{part_dir.name}.{kind}.*{TMP_SUFFIX}")]
    for path in found:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    return found


def publish_part(build_dir: Path, part_dir: Path, stale_csvs: list[Path]) -> None:
    """Replace ``part_dir`` by the finished ``build_dir``.

    The csvs listing the old part are removed first, so whenever the run is killed no csv points at a
    folder that is missing or swapped: before that step the old part and its csv are intact, after it
    there is no csv until the caller writes the new one (a rerun sweeps the leftover folders).
    """
    for csv_path in stale_csvs:
        csv_path.unlink(missing_ok=True)
    old = part_dir.parent / f".{part_dir.name}.old.{os.getpid()}{TMP_SUFFIX}"
    if part_dir.exists():
        os.replace(part_dir, old)
    os.replace(build_dir, part_dir)
    if old.exists():
        shutil.rmtree(old)


def merge_counts(*counters: Counter) -> dict[str, int]:
    """Sum skip counters, dropping zero entries (for one log line)."""
    total: Counter = Counter()
    for counter in counters:
        total.update(counter)
    return {k: v for k, v in total.items() if v}
