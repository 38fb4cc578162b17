"""OpenCLIP's BPE tokenizer (ftfy + regex), producing the ids SD 2.x was trained with.

Pure Python (no MindSpore import) so data pipelines can tokenize in worker processes. The
vocabulary file ``bpe_simple_vocab_16e6.txt.gz`` is read from a given path or from an installed
``open_clip_torch`` package; nothing is downloaded.
"""

from __future__ import annotations

import gzip
import html
import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Iterable

import ftfy
import numpy as np
import regex

from mindone.errors import ConfigError, DataError

VOCAB_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
BOS_TOKEN = "<start_of_text>"
EOS_TOKEN = "<end_of_text>"
NUM_MERGES = 49152 - 256 - 2  # CLIP uses the first 48894 merges of the file
_CACHE_LIMIT = 200_000


def find_bpe_vocab(path: str | Path | None = None) -> Path:
    """The BPE vocabulary: ``path`` if given, else the copy shipped inside the open_clip package."""
    if path is not None:
        vocab = Path(path)
        if not vocab.is_file():
            raise DataError(f"BPE vocabulary {vocab}: no such file")
        return vocab
    spec = importlib.util.find_spec("open_clip")
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            vocab = Path(folder) / VOCAB_FILENAME
            if vocab.is_file():
                return vocab
    raise ConfigError(f"BPE vocabulary {VOCAB_FILENAME} not found: pass its path, or run "
                      "`pip install --no-deps open_clip_torch` (the wheel ships the file; torch is not needed)")


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable character table (printable bytes map to themselves)."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def clean_caption(text: str) -> str:
    """open_clip's 'lower' cleaning: ftfy, double HTML unescape, collapse whitespace, lower-case."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).lower()


class SDTokenizer:
    """Callable: list of captions -> int32 ids [N, context_length] (BOS, tokens, EOS, zero padding)."""

    def __init__(self, vocab_path: str | Path | None = None, context_length: int = 77):
        merges_file = find_bpe_vocab(vocab_path)
        try:
            with gzip.open(merges_file) as fh:
                lines = fh.read().decode("utf-8").split("\n")
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(f"BPE vocabulary {merges_file}: not a gzipped merges file ({err})") from err
        merges = [tuple(line.split()) for line in lines[1:NUM_MERGES + 1]]
        symbols = list(bytes_to_unicode().values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS_TOKEN, EOS_TOKEN]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.bpe_ranks = {pair: i for i, pair in enumerate(merges)}
        self.bos_id = self.encoder[BOS_TOKEN]
        self.eos_id = self.encoder[EOS_TOKEN]
        self.pad_id = 0
        self.vocab_size = len(self.encoder)
        self.context_length = context_length
        self._byte_table = bytes_to_unicode()
        self._cache: dict[str, list[int]] = {}
        # The special tokens come first so that literal "<end_of_text>" in a caption maps to its id,
        # exactly as open_clip does.
        self._pattern = regex.compile(
            rf"{BOS_TOKEN}|{EOS_TOKEN}|'s|'t|'re|'ve|'m|'ll|'d|[\p{{L}}]+|[\p{{N}}]|[^\s\p{{L}}\p{{N}}]+",
            regex.IGNORECASE)

    def _bpe(self, word: str) -> list[str]:
        """Greedy lowest-rank pair merging of one pre-token (already byte-mapped)."""
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            first, second = min(zip(parts, parts[1:]), key=lambda pair: self.bpe_ranks.get(pair, NUM_MERGES))
            if (first, second) not in self.bpe_ranks:
                break
            merged = []
            i = 0
            while i < len(parts):
                if i < len(parts) - 1 and parts[i] == first and parts[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return parts

    def _token_ids(self, piece: str) -> list[int]:
        ids = self._cache.get(piece)
        if ids is None:
            if piece in (BOS_TOKEN, EOS_TOKEN):
                ids = [self.encoder[piece]]
            else:
                mapped = "".join(self._byte_table[b] for b in piece.encode("utf-8"))
                ids = [self.encoder[p] for p in self._bpe(mapped)]
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[piece] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Caption -> BPE ids without BOS/EOS."""
        ids: list[int] = []
        for piece in self._pattern.findall(clean_caption(text)):
            ids.extend(self._token_ids(piece))
        return ids

    def __call__(self, texts: Iterable[str] | str) -> np.ndarray:
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        out = np.full((len(texts), self.context_length), self.pad_id, dtype=np.int32)
        for row, text in enumerate(texts):
            ids = [self.bos_id] + self.encode(text)[: self.context_length - 2] + [self.eos_id]
            out[row, : len(ids)] = ids
        return out
