"""Synthetic LAION-like data for the data-loading tests, laid out as the LAION tools write it.

``make_dataset`` writes, for the same images, both img2dataset output formats (``part_<N>/00000.tar``
and ``part_<N>/00000/`` folders) plus ``part_<N>.csv`` (``dir,text``) and ``part_<N>_stats.csv``
(``file_path,num_samples``). tests/test_data_synthetic.py checks that layout against the contract.
"""

from __future__ import annotations

import io
import json
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

BOS, EOS = 49406, 49407


def fake_tokenizer(texts: list[str]) -> np.ndarray:
    """Deterministic stand-in for SDTokenizer: word hashes between BOS and EOS, zero padded to 77."""
    out = np.zeros((len(texts), 77), dtype=np.int32)
    for row, text in enumerate(texts):
        ids = [BOS] + [zlib.crc32(w.encode()) % 49000 + 1 for w in text.split()][:75] + [EOS]
        out[row, : len(ids)] = ids
    return out


def image_bytes(seed: int, size: tuple[int, int], fmt: str = "JPEG") -> bytes:
    """A smooth random colour image (compresses and resizes like a photo, unlike noise)."""
    rng = np.random.default_rng(seed)
    w, h = size
    small = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format=fmt, quality=90)
    return buf.getvalue()


@dataclass
class Member:
    key: str
    image: bytes | None
    caption: str | None
    meta: dict = field(default_factory=dict)
    good: bool = True  # expected to survive loading (with no filters)


@dataclass
class SyntheticData:
    root: Path
    shards: list[list[Member]]
    part: int = 1

    @property
    def good_keys(self) -> list[str]:
        return [m.key for shard in self.shards for m in shard if m.good]


def regular_member(shard: int, i: int, seed: int = 0, size: tuple[int, int] | None = None) -> Member:
    key = f"{shard:05d}{i:04d}"
    rng = np.random.default_rng([seed, shard, i])
    if size is None:
        size = (int(rng.integers(36, 72)), int(rng.integers(36, 72)))
    caption = f"photo {key} of a  thing number {i} &amp; more"
    meta = {"key": key, "caption": caption, "width": size[0], "height": size[1], "original_width": size[0] * 4,
            "original_height": size[1] * 4, "similarity": float(rng.random()), "pwatermark": float(rng.random()),
            "AESTHETIC_SCORE": float(rng.uniform(3, 7)), "punsafe": 0.01}
    return Member(key, image_bytes(zlib.crc32(key.encode()) + seed, size), caption, meta)


def write_dataset(root: Path, shards: list[list[Member]], part: int = 1, truncate: dict[int, float] | None = None) -> SyntheticData:
    """Write both formats and both annotation csvs; ``truncate`` cuts tar ``s`` to a fraction of its bytes."""
    part_dir = root / f"part_{part}"
    part_dir.mkdir(parents=True, exist_ok=True)
    csv_rows, stats_rows = [], []
    for s, members in enumerate(shards):
        tar_path = part_dir / f"{s:05d}.tar"
        folder = part_dir / f"{s:05d}"
        folder.mkdir(exist_ok=True)
        with tarfile.open(tar_path, "w") as tar:
            for m in members:
                files = {}
                if m.image is not None:
                    files["jpg"] = m.image
                if m.caption is not None:
                    files["txt"] = m.caption.encode()
                files["json"] = json.dumps(m.meta).encode()
                for ext, data in files.items():
                    info = tarfile.TarInfo(f"{m.key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                    (folder / f"{m.key}.{ext}").write_bytes(data)
                if m.image is not None:
                    csv_rows.append({"dir": f"part_{part}/{s:05d}/{m.key}.jpg", "text": m.caption or ""})
        # what laion_gen_data_stats.py counts (mindone.data.wds_sample): members with an image and a caption
        samples = sum(1 for m in members if m.image is not None and m.caption is not None)
        stats_rows.append({"file_path": f"part_{part}/{s:05d}.tar", "num_samples": samples})
        if truncate and s in truncate:
            data = tar_path.read_bytes()
            tar_path.write_bytes(data[: int(len(data) * truncate[s])])
    pd.DataFrame(csv_rows, columns=["dir", "text"]).to_csv(root / f"part_{part}.csv", index=False)
    pd.DataFrame(stats_rows, columns=["file_path", "num_samples"]).to_csv(root / f"part_{part}_stats.csv", index=False)
    return SyntheticData(root, shards, part)


def make_clean_dataset(root: Path, num_shards: int = 4, per_shard: int = 10, part: int = 1, seed: int = 0) -> SyntheticData:
    shards = [[regular_member(s, i, seed) for i in range(per_shard)] for s in range(num_shards)]
    return write_dataset(root, shards, part)


def make_dirty_dataset(root: Path) -> SyntheticData:
    """Clean shards plus every kind of bad data the loader must survive.

    shard 0: corrupt JPEG (garbage bytes), truncated JPEG, tiny 4x4 image, missing caption (empty .txt,
    json without caption), caption only in the json (empty .txt: good), png image (good);
    shard 1: clean; shard 2: every sample corrupt (a shard with no good sample);
    shard 3: tar truncated mid-way (the samples it loses are bad); shard 4: clean.
    """
    shards = [[regular_member(s, i) for i in range(10)] for s in range(5)]
    s0 = shards[0]
    s0[1].image, s0[1].good = b"\xff\xd8\xff\xe0 definitely not a jpeg", False
    s0[2].image, s0[2].good = s0[2].image[: len(s0[2].image) // 3], False
    s0[3].image, s0[3].good = image_bytes(3, (4, 4)), False
    s0[4].caption, s0[4].good = "", False
    s0[4].meta.pop("caption")
    s0[5].caption = ""  # caption still in the json: good
    s0[6].image = image_bytes(6, (50, 40), "PNG")
    for m in shards[2]:
        m.image, m.good = b"garbage" * 10, False
    data = write_dataset(root, shards, truncate={3: 0.5})
    tar3 = tarfile.open(root / "part_1" / "00003.tar", "r")
    survived = set()
    try:
        for info in tar3:
            survived.add(info.name)
    except tarfile.TarError:
        pass
    for m in shards[3]:  # a sample survives only when its image, txt and json all made it
        m.good = all(f"{m.key}.{e}" in survived for e in ("jpg", "txt", "json"))
    return data
