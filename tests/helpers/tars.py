"""Tars built byte by byte for the tools' tests: members from bytes, and webdataset shards with their stats json."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path


def tar_bytes(members: list[tuple[str, bytes]], fmt: int = tarfile.USTAR_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write(tmp_path: Path, data: bytes, name: str = "00000.tar") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def webdataset_shard(part: Path, name: str, samples: list[dict[str, bytes]], compress: str = "") -> Path:
    """``samples`` as a tar (``compress``: "gz"/"xz" to compress it) with its ``_stats.json``."""
    part.mkdir(parents=True, exist_ok=True)
    members = [(f"{i:09d}.{ext}", data) for i, sample in enumerate(samples) for ext, data in sample.items()]
    data = tar_bytes(members)
    if compress:
        import gzip
        import lzma

        data = gzip.compress(data) if compress == "gz" else lzma.compress(data)
    path = write(part, data, f"{name}.tar")
    images = sum(1 for sample in samples if "jpg" in sample)
    (part / f"{name}_stats.json").write_text(json.dumps({"count": len(samples), "successes": images}))
    return path
