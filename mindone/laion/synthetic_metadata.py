"""Generate LAION-schema metadata parquet for tests, benchmarks and the demo.

Every subset's schema variant is available. The data has what the real files have: null and NaN
values, float widths (340.0), unicode, mojibake and empty captions, URLs used as captions and captions
used as URLs, duplicated URLs / (URL, TEXT) pairs, and string lengths close to LAION's (URL ~100
characters, TEXT ~55 with a long tail). Generation is vectorised so tens of millions of rows take
about a minute.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

VARIANTS = ("improved_aesthetics_4.5plus", "laion-art", "laion2B-en-joined", "laion-high-resolution")

_F64, _F32, _I64, _STR = pa.float64(), pa.float32(), pa.int64(), pa.string()
# column name -> (arrow type, generator key), in the order the real files have them
_SCHEMAS: dict[str, list[tuple[str, pa.DataType, str]]] = {
    "improved_aesthetics_4.5plus": [
        ("URL", _STR, "url"), ("TEXT", _STR, "text"), ("WIDTH", _F64, "width"), ("HEIGHT", _F64, "height"),
        ("similarity", _F64, "similarity"), ("punsafe", _F32, "punsafe"), ("pwatermark", _F32, "pwatermark"),
        ("AESTHETIC_SCORE", _F32, "aesthetic_hi"), ("hash", _I64, "hash"), ("__index_level_0__", _I64, "index"),
    ],
    "laion-art": [
        ("URL", _STR, "url"), ("TEXT", _STR, "text"), ("WIDTH", _F64, "width"), ("HEIGHT", _F64, "height"),
        ("similarity", _F64, "similarity"), ("LANGUAGE", _STR, "language"), ("hash", _I64, "hash"),
        ("pwatermark", _F64, "pwatermark"), ("punsafe", _F64, "punsafe"), ("aesthetic", _F64, "aesthetic"),
    ],
    "laion2B-en-joined": [
        ("URL", _STR, "url"), ("TEXT", _STR, "text"), ("WIDTH", _I64, "width"), ("HEIGHT", _I64, "height"),
        ("similarity", _F64, "similarity"), ("hash", _I64, "hash"), ("punsafe", _F64, "punsafe"),
        ("pwatermark", _F64, "pwatermark"),
    ],
    "laion-high-resolution": [
        ("URL", _STR, "url"), ("TEXT", _STR, "text"), ("WIDTH", _I64, "width"), ("HEIGHT", _I64, "height"),
        ("similarity", _F64, "similarity"), ("LANGUAGE", _STR, "language"), ("hash", _I64, "hash"),
        ("pwatermark", _F64, "pwatermark"), ("punsafe", _F64, "punsafe"),
    ],
}

_DOMAINS = [
    "https://i.pinimg.com/originals/", "https://img1.etsystatic.com/", "https://cdn.shopify.com/s/files/1/",
    "http://www.example-shop.com/media/catalog/product/cache/", "https://images-na.ssl-images-amazon.com/images/I/",
    "https://i.ebayimg.com/images/g/", "https://ae01.alicdn.com/kf/", "http://static.flickr.com/",
    "https://upload.wikimedia.org/wikipedia/commons/thumb/", "https://live.staticflickr.com/",
    "https://media.istockphoto.com/photos/", "https://s3.amazonaws.com/images.example/",
]
_EXTS = [".jpg", ".jpeg", ".png", ".webp", ".JPG", ".jpg?v=1532410"]
_LETTERS = np.frombuffer(b"abcdefghijklmnopqrstuvwxyzeeeeaaaoootttnnsshrrddlcu      ABCDEFGHIJKLMNOPRSTW0123", np.uint8)
_PATH_CHARS = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz0123456789_-/ABCDEFGHIJKLMNOPQRSTUVWXYZ", np.uint8)
_SPECIAL_TEXTS = [
    "", "café à Paris — vue de nuit", "東京の夜景 写真 高画質", "Ünïcödé ßtraße 🌸🌸", "cafÃ© Ã  Paris â€” vue",
    "Ð¡Ð¾Ð±Ð°ÐºÐ° Ð² Ð¿Ð°Ñ€ÐºÐµ", "https://example.com/this-caption-is-a-url.jpg", "   ", "\u00a0\u200b",
    "A" * 2000,
]
_LANGS = ["en"] * 6 + ["de", "fr", "es", "ja", "zh", "ru", "nolang"]


def _random_strings(rng: np.random.Generator, n: int, mean: float, sigma: float, lo: int, hi: int,
                    chars: np.ndarray) -> pa.Array:
    """``n`` random ASCII strings with lognormal lengths (mean ``mean``) clipped to [lo, hi]."""
    mu = np.log(mean) - sigma**2 / 2
    lengths = np.clip(rng.lognormal(mu, sigma, n), lo, hi).astype(np.int64)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    data = chars[rng.integers(0, len(chars), int(offsets[-1]), dtype=np.int32)]
    return pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data)).cast(pa.string())


def _urls(rng: np.random.Generator, n: int, start: int, url_template: str | None) -> pa.Array:
    if url_template is not None:
        before, sep, after = url_template.partition("{i}")
        if not sep:
            raise ValueError(f"url_template {url_template!r} must contain '{{i}}'")
        idx = pa.array(np.arange(start, start + n)).cast(pa.string())
        return pc.binary_join_element_wise(pa.scalar(before), idx, pa.scalar(after), "")
    prefix = pa.array(_DOMAINS).take(pa.array(rng.integers(0, len(_DOMAINS), n)))
    path = _random_strings(rng, n, 70.0, 0.45, 8, 900, _PATH_CHARS)
    ext = pa.array(_EXTS).take(pa.array(rng.integers(0, len(_EXTS), n)))
    return pc.binary_join_element_wise(prefix, path, ext, "")


def _sizes(rng: np.random.Generator, n: int) -> np.ndarray:
    common = np.array([256, 300, 340, 400, 474, 500, 512, 600, 640, 736, 800, 1000, 1024, 1200, 1500, 1920, 2048])
    sizes = common[rng.integers(0, len(common), n)].astype(np.float64)
    jitter = rng.random(n) < 0.4
    sizes[jitter] = np.round(rng.lognormal(np.log(550), 0.5, int(jitter.sum())))
    return sizes


def _numeric(rng: np.random.Generator, key: str, n: int, start: int) -> np.ndarray:
    if key in ("width", "height"):
        return _sizes(rng, n)
    if key == "similarity":
        return rng.normal(0.31, 0.04, n)
    if key == "punsafe":
        return np.where(rng.random(n) < 0.03, rng.uniform(0.9, 1.0, n), rng.beta(0.3, 8, n))
    if key == "pwatermark":
        return rng.beta(0.6, 2.0, n)
    if key == "aesthetic_hi":  # improved_aesthetics_4.5plus is (mostly) >= 4.5 already
        return 4.45 + rng.exponential(0.6, n)
    if key == "aesthetic":
        return rng.normal(5.2, 0.9, n)
    if key == "hash":
        return rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, n, dtype=np.int64)
    if key == "index":
        return np.arange(start, start + n, dtype=np.int64)
    raise KeyError(key)


def generate_table(n_rows: int, variant: str, seed: int, url_template: str | None = None, start: int = 0,
                   specials: bool = True) -> pa.Table:
    """One table of ``n_rows`` synthetic rows of ``variant``; ``specials`` adds nulls/NaN/odd captions/dups."""
    if variant not in _SCHEMAS:
        raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    rng = np.random.default_rng([seed, start])
    n = n_rows
    cols: dict[str, pa.Array] = {}
    for name, typ, key in _SCHEMAS[variant]:
        if key == "url":
            arr = _urls(rng, n, start, url_template)
        elif key == "text":
            arr = _random_strings(rng, n, 55.0, 0.7, 1, 1500, _LETTERS)
        elif key == "language":
            arr = pa.array(_LANGS).take(pa.array(rng.integers(0, len(_LANGS), n)))
        else:
            values = _numeric(rng, key, n, start)
            mask = None
            if specials and key not in ("hash", "index"):
                mask = rng.random(n) < 0.02  # nulls
                if pa.types.is_floating(typ):
                    values[rng.random(n) < 0.02] = np.nan
            if pa.types.is_integer(typ):
                values = np.round(values).astype(np.int64)
            arr = pa.array(values, type=typ, mask=mask)
        cols[name] = arr
    if specials and n:
        cols = _add_specials(rng, cols, n, url_template is None)
    return pa.table(cols, schema=pa.schema([(name, typ) for name, typ, _ in _SCHEMAS[variant]]))


def _add_specials(rng: np.random.Generator, cols: dict[str, pa.Array], n: int, swap_urls: bool) -> dict:
    """Odd captions, captions that are URLs (and vice versa), and duplicated rows."""
    text = cols["TEXT"]
    pick = rng.random(n) < 0.05
    special = pa.array(_SPECIAL_TEXTS).take(pa.array(rng.integers(0, len(_SPECIAL_TEXTS), int(pick.sum()))))
    text = pc.replace_with_mask(text, pa.array(pick), special)
    text = pc.if_else(pa.array(rng.random(n) < 0.01), pa.scalar(None, pa.string()), text)  # null captions
    if swap_urls:
        swap = pa.array(rng.random(n) < 0.005)
        text, cols["URL"] = pc.if_else(swap, cols["URL"], text), pc.if_else(swap, text, cols["URL"])
    cols["TEXT"] = text
    # duplicates: 2% copy (URL, TEXT, hash) of an earlier row, 1% copy only the URL
    src_full = np.arange(n)
    src_url = np.arange(n)
    r = rng.random(n)
    for src, sel in ((src_full, r < 0.02), (src_url, (r >= 0.02) & (r < 0.03))):
        idx = np.nonzero(sel)[0]
        idx = idx[idx > 0]
        src[idx] = (rng.random(len(idx)) * idx).astype(np.int64)
    cols["URL"] = cols["URL"].take(pa.array(np.where(src_url != np.arange(n), src_url, src_full)))
    cols["TEXT"] = cols["TEXT"].take(pa.array(src_full))
    cols["hash"] = cols["hash"].take(pa.array(src_full))
    return cols


def write_synthetic_metadata(path: str | os.PathLike, n_rows: int, variant: str = "improved_aesthetics_4.5plus",
                             seed: int = 0, url_template: str | None = None, specials: bool = True,
                             chunk_rows: int = 1_000_000, row_group_rows: int = 131_072, first_row: int = 0) -> Path:
    """Write ``n_rows`` synthetic rows of ``variant`` to the parquet file ``path`` (snappy, like LAION).

    ``url_template`` (e.g. ``"http://127.0.0.1:8000/{i}.jpg"``) makes every URL point at a local server,
    ``{i}`` being the row number counted from ``first_row`` (give each file its own range for URLs unique
    across files); caption/URL swaps are then left out so every URL stays valid.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([(name, typ) for name, typ, _ in _SCHEMAS[variant]])
    with pq.ParquetWriter(path, schema, compression="snappy") as writer:
        for start in range(0, max(n_rows, 1), chunk_rows):
            count = min(chunk_rows, n_rows - start)
            table = generate_table(count, variant, seed, url_template, first_row + start, specials)
            writer.write_table(table, row_group_size=row_group_rows)
    return path
