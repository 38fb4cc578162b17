"""Decode, resize/crop/flip, caption clean-up, json filters, per-sample processing."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from mindone.data.caption import caption_of, clean_caption, parse_meta
from mindone.data.decode import BadImage, decode_image
from mindone.data.filters import SampleFilters
from mindone.data.processing import SampleProcessor
from mindone.data.tar_stream import RawSample
from mindone.data.transforms import hwc_to_chw, resize_crop, to_model_input
from mindone.errors import ConfigError
from tests.helpers.synthetic_data import fake_tokenizer, image_bytes


def gradient(w: int, h: int) -> Image.Image:
    x = np.linspace(0, 255, w)[None, :, None]
    y = np.linspace(0, 255, h)[:, None, None]
    arr = np.concatenate([np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)), np.full((h, w, 1), 90.0)], 2)
    return Image.fromarray(arr.astype(np.uint8))


def test_center_crop_matches_resize_then_crop():
    img = gradient(120, 80)
    out = resize_crop(img, 40)
    ref = np.asarray(img.resize((60, 40), Image.Resampling.BICUBIC))[:, 10:50]
    assert out.shape == (40, 40, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 3


def test_random_crop_and_flip():
    img = gradient(200, 50)
    crops = {resize_crop(img, 50, np.random.default_rng(s))[0, 0, 0] for s in range(20)}
    assert len(crops) > 5  # crops at different offsets along the long side
    flipped = resize_crop(img, 50, flip=True)
    assert np.array_equal(flipped, resize_crop(img, 50)[:, ::-1])
    tall = resize_crop(gradient(30, 90), 60)  # upscales the short side too
    assert tall.shape == (60, 60, 3)


def test_to_model_input_range_and_layout():
    pixels = np.array([[[0, 255, 127], [1, 2, 3]]], dtype=np.uint8)  # HWC 1x2x3
    chw = hwc_to_chw(pixels)
    assert chw.shape == (3, 1, 2) and chw.flags.c_contiguous and chw[:, 0, 1].tolist() == [1, 2, 3]
    x = to_model_input(chw)
    assert x.shape == (3, 1, 2) and x.dtype == np.float32 and x.flags.c_contiguous
    np.testing.assert_allclose(x[:, 0, 0], [-1.0, 1.0, 127 / 127.5 - 1], atol=1e-6)


def test_decode_rejects_corrupt_and_tiny_and_drafts_big_jpegs():
    with pytest.raises(BadImage) as bad:
        decode_image(b"not an image")
    assert bad.value.reason == "corrupt_image"
    data = image_bytes(1, (64, 64))
    with pytest.raises(BadImage) as bad:
        decode_image(data[: len(data) // 2])
    assert bad.value.reason == "corrupt_image"
    with pytest.raises(BadImage) as bad:
        decode_image(image_bytes(1, (10, 300)), min_size=32)
    assert bad.value.reason == "tiny_image"
    big = image_bytes(2, (1024, 800))
    drafted = decode_image(big, target_short_side=200)
    assert min(drafted.size) >= 200 and drafted.size[0] < 1024  # decoded at 1/2 or 1/4 scale, never below
    assert decode_image(image_bytes(3, (50, 40), "PNG")).mode == "RGB"
    rgba = io.BytesIO()
    Image.new("RGBA", (40, 40), (1, 2, 3, 0)).save(rgba, "WEBP")
    assert decode_image(rgba.getvalue()).size == (40, 40)


def test_caption_cleanup_and_sources():
    assert clean_caption("  Caf\u00c3\u00a9  &amp;amp;\n  bar\t") == "Café & bar"
    meta = parse_meta(b'{"caption": "from json", "width": 5}')
    assert caption_of(b"from txt", meta) == "from txt"
    assert caption_of(b"  ", meta) == "from json"
    assert caption_of(None, {"caption": None}) is None
    assert parse_meta(b"[1, 2]") is None and parse_meta(b"{broken") is None


def test_filters_thresholds_and_unjudged_counts():
    f = SampleFilters.from_config({"min_size": 512, "min_aesthetic": 5, "max_watermark": 0.5, "min_similarity": 0.28})
    counts: dict[str, int] = {}
    good = {"original_width": 600, "original_height": 512, "AESTHETIC_SCORE": 5.5, "pwatermark": 0.1, "similarity": 0.3}
    assert f.check(good, counts) is None
    assert f.check({**good, "original_height": 500}, counts) == "filtered_min_size"
    assert f.check({**good, "AESTHETIC_SCORE": None, "aesthetic": 4.0}, counts) == "filtered_min_aesthetic"
    assert f.check({**good, "pwatermark": 0.9}, counts) == "filtered_max_pwatermark"
    assert f.check({**good, "similarity": 0.1}, counts) == "filtered_min_similarity"
    assert f.check({k: v for k, v in good.items() if k != "similarity"}, counts) is None
    assert counts == {"unjudged_min_similarity": 1}
    assert not SampleFilters.from_config(None).active
    with pytest.raises(ConfigError, match="unknown key"):
        SampleFilters.from_config({"min_aesthetics": 5})


def test_processor_is_deterministic_per_key_and_epoch_and_drops_captions():
    raw = RawSample("000000007", {"jpg": image_bytes(7, (90, 40)), "txt": b"a  red   car"})
    proc = SampleProcessor(fake_tokenizer, image_size=32, random_crop=True, random_flip=True, seed=3)
    counts: dict[str, int] = {}
    key, pixels, tokens = proc(raw, 0, counts)
    assert key == "000000007" and pixels.shape == (3, 32, 32) and pixels.dtype == np.uint8
    assert np.array_equal(tokens, fake_tokenizer(["a red car"])[0])
    again = proc(raw, 0, counts)
    assert np.array_equal(again[1], pixels)
    per_epoch = {proc(raw, e, counts)[1].tobytes() for e in range(8)}
    assert len(per_epoch) > 2  # crops/flips change with the epoch
    dropper = SampleProcessor(fake_tokenizer, image_size=32, caption_dropout=0.3, seed=0)
    empty = fake_tokenizer([""])[0]
    dropped = [np.array_equal(dropper(RawSample(f"{i:09d}", raw.files), 0, counts)[2], empty) for i in range(400)]
    assert 0.22 < np.mean(dropped) < 0.38
    assert proc(RawSample("k", {"txt": b"x"}), 0, counts) == "missing_image"
    assert proc(RawSample("k", {"jpg": raw.files["jpg"]}), 0, counts) == "missing_caption"
