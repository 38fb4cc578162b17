"""SDTokenizer: open_clip's BPE ids on messy captions, truncation, padding, vocabulary lookup."""

from __future__ import annotations

import importlib.util
import random
import subprocess
import sys

import numpy as np
import pytest

from mindone.errors import ConfigError, DataError
from mindone.models.tokenizer import SDTokenizer, find_bpe_vocab


def messy_captions(n: int = 400, seed: int = 0) -> list[str]:
    """Captions in the style of LAION alt-texts: scripts, emoji, entities, mojibake, junk, extremes."""
    rng = random.Random(seed)
    words = ["a", "photo", "of", "the", "Cat", "DOG's", "they're", "I'll", "we've", "café", "naïve", "Straße",
             "東京", "猫の写真", "中文标题", "Привет", "мир", "مرحبا", "नमस्ते", "한국어", "ελληνικά", "עברית",
             "🐱", "🐶🐕", "👩‍👩‍👧‍👦", "👍🏽", "🇫🇷🇯🇵", "❤️", "☕", "&amp;", "&lt;b&gt;bold&lt;/b&gt;", "&#39;",
             "&quot;quoted&quot;", "&amp;amp;", "&nbsp;", "&eacute;t&eacute;", "Ã©tÃ©", "â€™s", "Ã¼ber",
             "<end_of_text>", "<START_OF_TEXT>", "http://example.com/a?b=1&c=2", "#hashtag", "@user",
             "3.14159", "1,000,000", "x" * 40, "--...!!!???", "((nested))", "e\u0301", "ﬁne", "ＦＵＬＬ",
             "zero\u200bwidth", "tab\there", "new\nline", "\u00a0nbsp", "C++", "50%", "$9.99", "½", "²",
             "Ⅻ", "🀄", "\u0000", "\x7f", "dont", "don't", "DON'T", "rock'n'roll", "y'all"]
    captions = ["", "   ", "\n\t", "a", "A" * 1000, "word " * 200, "<end_of_text>", "&amp;" * 30,
                "🐱" * 100, "東京" * 60]
    while len(captions) < n:
        k = rng.choice([1, 2, 3, 5, 8, 13, 30, 90])
        text = rng.choice([" ", "", "  ", ", "]).join(rng.choice(words) for _ in range(k))
        if rng.random() < 0.15:
            text = text.encode("utf-8").decode("latin-1")  # fresh mojibake
        if rng.random() < 0.1:
            text = text.upper()
        captions.append(text)
    return captions


@pytest.fixture(scope="module")
def tokenizer() -> SDTokenizer:
    return SDTokenizer()


@pytest.mark.torch
def test_ids_equal_open_clip_on_messy_captions(tokenizer):
    pytest.importorskip("torch")
    spec = importlib.util.find_spec("open_clip")
    if spec is None:
        pytest.skip("open_clip_torch is not installed")
    # Load open_clip's tokenizer module alone: the package __init__ pulls in torchvision.
    module_spec = importlib.util.spec_from_file_location(
        "open_clip_tokenizer_ref", f"{spec.submodule_search_locations[0]}/tokenizer.py")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    reference = module.SimpleTokenizer()
    captions = messy_captions()
    expected = reference(captions, context_length=77).numpy()
    got = tokenizer(captions)
    assert got.dtype == np.int32 and got.shape == (len(captions), 77)
    mismatched = [c for c, a, b in zip(captions, got, expected) if not np.array_equal(a, b)]
    assert mismatched == []
    # the corpus really exercises truncation, empty captions and multi-byte text
    lengths = (got != 0).sum(1)
    assert lengths.max() == 77 and lengths.min() == 2 and (got >= 256).any()


def test_special_ids_padding_and_truncation(tokenizer):
    ids = tokenizer(["a photo of a cat", "", "cat " * 200])
    assert ids.dtype == np.int32 and ids.shape == (3, 77)
    assert list(ids[0, :7]) == [49406, 320, 1125, 539, 320, 2368, 49407] and not ids[0, 7:].any()
    assert list(ids[1, :2]) == [49406, 49407] and not ids[1, 2:].any()
    assert ids[2, 0] == 49406 and ids[2, 76] == 49407 and (ids[2, 1:76] == 2368).all()
    assert tokenizer.vocab_size == 49408
    assert np.array_equal(tokenizer("a photo of a cat"), ids[:1])


def test_context_length_is_configurable(tokenizer):
    short = SDTokenizer(context_length=8)(["one two three four five six seven eight nine"])
    assert short.shape == (1, 8) and short[0, 0] == 49406 and short[0, -1] == 49407
    assert np.array_equal(short[0, 1:7], tokenizer(["one two three four five six"])[0, 1:7])


def test_vocab_lookup_explicit_path_and_errors(tmp_path, monkeypatch):
    shipped = find_bpe_vocab()
    assert shipped.name == "bpe_simple_vocab_16e6.txt.gz"
    copy = tmp_path / "vocab.txt.gz"
    copy.write_bytes(shipped.read_bytes())
    assert np.array_equal(SDTokenizer(copy)(["hello world"]), SDTokenizer()(["hello world"]))
    with pytest.raises(DataError, match="nope.gz: no such file"):
        SDTokenizer(tmp_path / "nope.gz")
    (tmp_path / "plain.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match="plain.gz: not a gzipped merges file"):
        SDTokenizer(tmp_path / "plain.gz")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="pip install --no-deps open_clip_torch"):
        find_bpe_vocab()


def test_tokenizer_import_does_not_load_mindspore():
    code = ("import sys; from mindone.models.tokenizer import SDTokenizer; SDTokenizer()(['x']); "
            "print('mindspore' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

