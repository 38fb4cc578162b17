"""The demo's embedded sample: LAION-format metadata whose URLs point at generated images.

Images are simple scenes (a coloured shape on a coloured background) whose captions say what they show,
so that even the tiny model trained in the demo learns something visible from the text. The metadata uses
the improved_aesthetics_4.5plus schema, and a share of rows is made to fail each of seed 001's filter
conditions (small size, NaN width, unsafe, low aesthetic score) so the filter report has something to say.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

COLORS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (240, 210, 40),
    "purple": (140, 60, 190), "orange": (245, 140, 30), "white": (245, 245, 245), "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle")
IMAGE_PX = 512


def draw_scene(shape: str, color: str, background: str, rng: random.Random, size: int = IMAGE_PX) -> Image.Image:
    img = Image.new("RGB", (size, size), COLORS[background])
    draw = ImageDraw.Draw(img)
    half = int(size * rng.uniform(0.22, 0.32))
    cx, cy = (int(size * rng.uniform(0.4, 0.6)) for _ in range(2))
    box = (cx - half, cy - half, cx + half, cy + half)
    if shape == "circle":
        draw.ellipse(box, fill=COLORS[color])
    elif shape == "square":
        draw.rectangle(box, fill=COLORS[color])
    else:
        draw.polygon([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], fill=COLORS[color])
    return img


def make_sample(root: Path, n_rows: int, base_url: str, n_files: int = 2, seed: int = 0) -> dict:
    """Write ``root/images/*.jpg`` (+ ``metadata.jsonl`` captions) and ``root/metadata/2B-en-4.5_{1..n_files}.parquet``."""
    rng = random.Random(seed)
    images_dir = root / "images"
    meta_dir = root / "metadata"
    images_dir.mkdir(parents=True, exist_ok=True)
    meta_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_rows):
        shape = rng.choice(SHAPES)
        color, background = rng.sample(sorted(COLORS), 2)
        caption = f"a {color} {shape} on a {background} background"
        buf = io.BytesIO()
        draw_scene(shape, color, background, rng).save(buf, format="JPEG", quality=90)
        (images_dir / f"{i:06d}.jpg").write_bytes(buf.getvalue())
        width = height = float(IMAGE_PX)
        punsafe, aesthetic = rng.uniform(0.0, 0.3), rng.uniform(4.6, 7.0)
        fault = i % 10
        if fault == 1:
            width = 340.0  # too small for the width condition
        elif fault == 2:
            width = float("nan")  # NaN fails any condition on its column
        elif fault == 3:
            punsafe = 0.995
        elif fault == 4:
            aesthetic = 4.1
        rows.append({
            "URL": f"{base_url}/images/{i:06d}.jpg", "TEXT": caption, "WIDTH": width, "HEIGHT": height,
            "similarity": rng.uniform(0.25, 0.4), "punsafe": punsafe, "pwatermark": rng.uniform(0.0, 0.5),
            "AESTHETIC_SCORE": aesthetic, "hash": rng.getrandbits(63), "__index_level_0__": i,
        })
    schema = pa.schema([
        ("URL", pa.string()), ("TEXT", pa.string()), ("WIDTH", pa.float64()), ("HEIGHT", pa.float64()),
        ("similarity", pa.float64()), ("punsafe", pa.float64()), ("pwatermark", pa.float64()),
        ("AESTHETIC_SCORE", pa.float64()), ("hash", pa.int64()), ("__index_level_0__", pa.int64()),
    ])
    # The same captions in the Hugging Face imagefolder convention, so the folder doubles as an example
    # of "your own captioned images" (make_dataset_from_images.py) in the tutorial.
    with open(images_dir / "metadata.jsonl", "w", encoding="utf-8") as fh:
        for i, row in enumerate(rows):
            fh.write(json.dumps({"file_name": f"{i:06d}.jpg", "text": row["TEXT"]}) + "\n")
    for k, chunk in enumerate(np.array_split(np.arange(n_rows), n_files), start=1):
        table = pa.Table.from_pylist([rows[j] for j in chunk], schema=schema)
        pq.write_table(table, meta_dir / f"2B-en-4.5_{k}.parquet")
    return {"rows": n_rows, "files": n_files, "expected_kept": sum(1 for i in range(n_rows) if i % 10 not in (1, 2, 3, 4))}
