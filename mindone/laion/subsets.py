"""The LAION metadata subsets: where they live and how their files are named.

Each subset is a list of parquet files on the Hugging Face Hub. A file is addressed by a 1-based part
number, so ``--parts 1-8,12`` means the same thing for every subset, whatever the on-disk numbering
(``2B-en-4.5_1.parquet`` starts at 1, ``part-00000-...`` starts at 0).

What still exists (docs/data_preparation.md cites the sources): LAION took every LAION-5B dataset down on
2023-12-19 and re-released the collection in 2024 as Re-LAION-5B, gated on the Hub (accept the terms on the
dataset page, then pass a token: ``--token`` / ``$HF_TOKEN``). The Re-LAION subsets here are the English
ones whose file names were confirmed (128 files ``part-000NN-<uuid>-c000.snappy.parquet``, lowercase
img2dataset columns, no aesthetic score). The withdrawn subsets keep their names for users who hold a
mirror: they need ``--base_url``; without it the tool stops with a line saying what to use instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from mindone.errors import ConfigError

HF = "https://huggingface.co/datasets"


@dataclass(frozen=True)
class Subset:
    """A LAION metadata subset: ``pattern.format(n=...)`` gives the file name of on-disk part ``n``."""

    name: str
    base_url: str
    pattern: str
    num_parts: int
    first_index: int  # on-disk number of part 1
    columns: tuple[str, ...]
    withdrawn: str | None = None  # why the Hub URL no longer serves it (then a --base_url mirror is needed)
    gated: bool = False  # the Hub wants the terms accepted and a token

    def file_name(self, part: int) -> str:
        """File name of 1-based ``part``: one plain name, so the file lands in the output folder itself."""
        if not 1 <= part <= self.num_parts:
            raise ConfigError(f"--parts: part {part} is out of range for subset {self.name} (1-{self.num_parts})")
        name = self.pattern.format(n=part - 1 + self.first_index)
        if name in ("", ".", "..") or any(c in name for c in "/\\\0"):
            raise ConfigError(f"--file_pattern: part {part} gives {name!r}, not a plain file name "
                              "(it would be written outside --output_dir)")
        return name


WITHDRAWN = "withdrawn by LAION on 2023-12-19 (LAION-5B safety review)"
# Re-LAION's columns (an img2dataset output): url, caption, the resized and original sizes, and the scores.
RELAION_COLUMNS = ("url", "similarity", "hash", "pwatermark", "punsafe", "caption", "key", "status", "error_message",
                   "width", "height", "original_width", "original_height", "exif", "md5")

SUBSETS: dict[str, Subset] = {
    s.name: s
    for s in (
        # Re-LAION-5B research-safe, English: the default (rows with p_unsafe > 0.45 removed).
        Subset(
            "relaion2B-en-research-safe",
            f"{HF}/laion/relaion2B-en-research-safe/resolve/main",
            "part-{n:05d}-339dc23d-0869-4dc0-9390-b4036fcc80c2-c000.snappy.parquet",
            128,
            0,
            RELAION_COLUMNS,
            gated=True,
        ),
        # Re-LAION-5B research, English (a superset of research-safe; for research use, see its terms).
        Subset(
            "relaion2B-en-research",
            f"{HF}/laion/relaion2B-en-research/resolve/main",
            "part-{n:05d}-b31ba513-fc6b-4450-9ba4-a1bba183f408-c000.snappy.parquet",
            128,
            0,
            RELAION_COLUMNS,
            gated=True,
        ),
        Subset(
            "improved_aesthetics_4.5plus",
            f"{HF}/ChristophSchuhmann/improved_aesthetics_4.5plus/resolve/main",
            "2B-en-4.5_{n}.parquet",
            64,
            1,
            ("URL", "TEXT", "WIDTH", "HEIGHT", "similarity", "punsafe", "pwatermark", "AESTHETIC_SCORE", "hash",
             "__index_level_0__"),
            withdrawn=WITHDRAWN,
        ),
        Subset(
            "laion-art",
            f"{HF}/laion/laion-art/resolve/main",
            "laion-art.parquet",
            1,
            1,
            ("URL", "TEXT", "WIDTH", "HEIGHT", "similarity", "LANGUAGE", "hash", "pwatermark", "punsafe", "aesthetic"),
            withdrawn=WITHDRAWN,
        ),
        Subset(
            "laion2B-en-joined",
            f"{HF}/laion/laion2B-en-joined/resolve/main",
            "part-{n:05d}-4cfd6e30-f032-46ee-9105-8696034a8373-c000.snappy.parquet",
            128,
            0,
            ("URL", "TEXT", "WIDTH", "HEIGHT", "similarity", "hash", "punsafe", "pwatermark"),
            withdrawn=WITHDRAWN,
        ),
        # File pattern as published in img2dataset's laion-high-resolution guide (128 files, 170M rows).
        Subset(
            "laion-high-resolution",
            f"{HF}/laion/laion-high-resolution/resolve/main",
            "part-{n:05d}-5d6701c4-b238-4c0a-84e4-fe8e9daea963-c000.snappy.parquet",
            128,
            0,
            ("URL", "TEXT", "WIDTH", "HEIGHT", "similarity", "LANGUAGE", "hash", "pwatermark", "punsafe"),
            withdrawn=WITHDRAWN,
        ),
    )
}


DEFAULT_SUBSET = "relaion2B-en-research-safe"


def get_subset(name: str, pattern: str | None = None, num_parts: int | None = None,
               first_index: int | None = None) -> Subset:
    """Look up a subset by name, optionally overriding its file pattern / part count (for new mirrors)."""
    if name not in SUBSETS:
        raise ConfigError(f"--subset: unknown subset {name!r}; known: {', '.join(SUBSETS)}")
    s = SUBSETS[name]
    return Subset(s.name, s.base_url, pattern or s.pattern, num_parts or s.num_parts,
                  s.first_index if first_index is None else first_index, s.columns, s.withdrawn, s.gated)


def check_source(subset: Subset, base_url: str | None) -> None:
    """A withdrawn subset needs a mirror: ConfigError naming the replacement when no ``base_url`` is given."""
    if subset.withdrawn and not base_url:
        raise ConfigError(f"--subset {subset.name}: {subset.withdrawn}; its Hub files are gone. Pass --base_url "
                          f"<your mirror>, or use --subset {DEFAULT_SUBSET} (Re-LAION-5B, docs/data_preparation.md)")


def parse_parts(spec: str | None, num_parts: int) -> list[int]:
    """Parse ``"1-8,12"`` into sorted unique 1-based part numbers; ``None``/``"all"`` means every part."""
    if spec is None or spec.strip().lower() in ("", "all"):
        return list(range(1, num_parts + 1))
    parts: set[int] = set()
    for item in spec.split(","):
        item = item.strip()
        try:
            if "-" in item:
                lo_s, hi_s = item.split("-", 1)
                lo, hi = int(lo_s), int(hi_s)
                if lo > hi:
                    raise ValueError
                parts.update(range(lo, hi + 1))
            else:
                parts.add(int(item))
        except ValueError:
            raise ConfigError(f"--parts: cannot parse {item!r} in {spec!r} (expected e.g. 1-8,12)") from None
    bad = [p for p in sorted(parts) if not 1 <= p <= num_parts]
    if bad:
        raise ConfigError(f"--parts: {bad[0]} is out of range 1-{num_parts}")
    return sorted(parts)
