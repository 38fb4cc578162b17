"""Filter conditions, null/NaN semantics, column resolution across the LAION schema variants, options."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from mindone.errors import ConfigError, DataError
from mindone.laion.conditions import Condition, build_conditions
from mindone.laion.filter_common import part_sizes
from mindone.laion.schema import resolve_column, resolve_columns
from mindone.laion.subsets import SUBSETS, get_subset, parse_parts
from mindone.laion.synthetic_metadata import VARIANTS, generate_table


@pytest.mark.parametrize("typ", [pa.float64(), pa.float32(), pa.int64(), pa.int32()])
def test_null_and_nan_fail_numeric_conditions(typ):
    values = [600, None, 512, 100] + ([math.nan] if pa.types.is_floating(typ) else [])
    col = pa.array(values, type=typ)
    ge = Condition("width", ">=", 512.0)
    le = Condition("width", "<=", 512.0)
    expected_ge = [True, False, True, False] + [False] * (len(values) - 4)
    expected_le = [False, False, True, True] + [False] * (len(values) - 4)
    for cond, exp in ((ge, expected_ge), (le, expected_le)):
        assert cond.numpy_mask(col).tolist() == exp
        assert cond.arrow_mask(col).to_pylist() == exp


def test_float32_compares_in_float64():
    # float32(0.98) = 0.98000001907... > 0.98: Arrow and Spark compare in float64; the fast path must too
    col = pa.array([0.98, 0.97], pa.float32())
    cond = Condition("punsafe", "<=", 0.98)
    assert cond.numpy_mask(col).tolist() == [False, True] == cond.arrow_mask(col).to_pylist()


def test_language_and_caption_length_conditions():
    lang = Condition("language", "in", ("en", "de"))
    assert lang.numpy_mask(pa.array(["en", None, "fr", "de", ""])).tolist() == [True, False, False, True, False]
    texts = pa.array(["abc", None, "", "東京の夜景", "x" * 10])
    assert Condition("text", "len>=", 3.0).numpy_mask(texts).tolist() == [True, False, False, True, True]
    assert Condition("text", "len<=", 5.0).numpy_mask(texts).tolist() == [True, False, True, True, False]


def test_build_conditions_defaults_are_seed_001_and_none_turns_off():
    names = [c.name for c in build_conditions({})]
    assert names == ["width>=512", "height>=512", "punsafe<=0.98", "aesthetic>=4.5"]
    conds = build_conditions({"min_aesthetic": "none", "max_pwatermark": "0.8", "language": "en,de",
                              "min_caption_length": 5})
    assert [c.name for c in conds] == ["width>=512", "height>=512", "punsafe<=0.98", "pwatermark<=0.8",
                                       "language in en,de", "len(text)>=5"]
    with pytest.raises(ConfigError, match="--min_width"):
        build_conditions({"min_width": "big"})


@pytest.mark.parametrize("variant", VARIANTS)
def test_columns_resolve_in_every_variant(variant):
    schema = generate_table(10, variant, 0).schema
    cols = resolve_columns(schema, ["url", "text", "width", "height", "punsafe", "pwatermark", "similarity"],
                           "f.parquet", skip_missing=False)
    assert cols["url"] == "URL" and cols["width"] == "WIDTH" and cols["punsafe"] == "punsafe"
    aes = resolve_column(schema, "aesthetic")
    assert aes == {"improved_aesthetics_4.5plus": "AESTHETIC_SCORE", "laion-art": "aesthetic"}.get(variant)
    if aes is None:
        with pytest.raises(DataError, match=r"f\.parquet: no column AESTHETIC_SCORE/aesthetic"):
            resolve_columns(schema, ["aesthetic"], "f.parquet", skip_missing=False)
        assert resolve_columns(schema, ["aesthetic"], "f.parquet", skip_missing=True) == {"aesthetic": None}


def test_wrong_column_type_names_file_and_column():
    schema = pa.schema([("WIDTH", pa.string())])
    with pytest.raises(DataError, match=r"bad\.parquet: column 'WIDTH' has type string, expected a number"):
        resolve_columns(schema, ["width"], "bad.parquet", skip_missing=False)


def test_synthetic_data_has_the_hard_cases():
    t = generate_table(20_000, "improved_aesthetics_4.5plus", 3)
    width = t["WIDTH"].to_numpy(zero_copy_only=False)
    assert t["WIDTH"].null_count > 0 and np.isnan(width).sum() > t["WIDTH"].null_count  # NaN and null
    texts = t["TEXT"].to_pylist()
    assert "" in texts and None in texts and any(s and not s.isascii() for s in texts)
    assert any(s and "Ã" in s for s in texts)  # mojibake
    assert any(s and s.startswith("http") for s in texts)  # URL as caption
    urls = t["URL"].to_pylist()
    assert len(set(urls)) < len(urls)  # duplicated URLs
    lengths = [len(u) for u in urls if u]
    assert 80 < np.mean(lengths) < 140


def test_subset_file_names_and_parts():
    assert get_subset("improved_aesthetics_4.5plus").file_name(64) == "2B-en-4.5_64.parquet"
    joined = SUBSETS["laion2B-en-joined"]
    assert joined.num_parts == 128
    assert joined.file_name(1) == "part-00000-4cfd6e30-f032-46ee-9105-8696034a8373-c000.snappy.parquet"
    assert SUBSETS["laion-art"].file_name(1) == "laion-art.parquet"
    assert parse_parts("1-3,12,2", 64) == [1, 2, 3, 12]
    assert parse_parts("all", 3) == [1, 2, 3]
    for bad in ("0", "65", "3-1", "x"):
        with pytest.raises(ConfigError, match="--parts"):
            parse_parts(bad, 64)


def test_part_sizes():
    assert part_sizes(10, 3, None) == [4, 3, 3]
    assert part_sizes(2, 5, None) == [1, 1]
    assert part_sizes(0, 5, None) == [0]
    assert part_sizes(10, None, 4) == [4, 4, 2]
