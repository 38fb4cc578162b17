"""Helpers shared by the metadata filter/download tests: synthetic inputs and an independent reference."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from mindone.laion.synthetic_metadata import write_synthetic_metadata

REPO = Path(__file__).resolve().parents[2]
FILTER_CLI = REPO / "tools" / "laion_data_utils" / "laion_filter_metadata.py"
DOWNLOAD_CLI = REPO / "tools" / "laion_data_utils" / "laion_download_metadata.py"

# physical column of each seed-001 condition per variant (written out by hand: an independent reference)
AESTHETIC = {"improved_aesthetics_4.5plus": "AESTHETIC_SCORE", "laion-art": "aesthetic"}


def make_inputs(folder: Path, variant: str, files: int, rows: int, seed: int = 0) -> list[Path]:
    paths = []
    for i in range(files):
        p = folder / f"{variant}_{i + 1}.parquet"
        write_synthetic_metadata(p, rows, variant, seed=seed * 100 + i, chunk_rows=max(1, rows // 2 + 1),
                                 row_group_rows=max(1, rows // 3))
        paths.append(p)
    return paths


def read_dir(folder: Path, pattern: str = "*.parquet") -> pd.DataFrame:
    files = sorted(Path(folder).glob(pattern), key=lambda p: [int(t) if t.isdigit() else t
                                                                for t in __import__("re").split(r"(\d+)", p.name)])
    return pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True)


def canonical(df: pd.DataFrame) -> list[tuple]:
    """Rows as sorted tuples (NaN/None -> None, floats as float64) so two outputs compare as multisets."""
    def norm(v):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return None
        if isinstance(v, (np.floating, float)):
            return float(v)
        if isinstance(v, np.integer):
            return int(v)
        return v
    cols = sorted(df.columns)
    rows = [tuple(norm(v) for v in row) for row in df[cols].itertuples(index=False, name=None)]
    return sorted(rows, key=lambda r: tuple((x is None, str(type(x)), x if x is not None else 0) for x in r))


def reference_filter(df: pd.DataFrame, variant: str, min_size=512, max_punsafe=0.98, min_aes=4.5) -> pd.DataFrame:
    """Seed 001's filter written directly in pandas (NaN compares False)."""
    keep = (df["WIDTH"].astype("float64") >= min_size) & (df["HEIGHT"].astype("float64") >= min_size)
    keep &= df["punsafe"].astype("float64") <= max_punsafe
    if variant in AESTHETIC:
        keep &= df[AESTHETIC[variant]].astype("float64") >= min_aes
    return df[keep.fillna(False).astype(bool)]


def run_cli(script: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=timeout)


VARIANTS = ("improved_aesthetics_4.5plus", "laion-art", "laion2B-en-joined", "laion-high-resolution")


def make_variant_inputs(root: Path, rows: int) -> dict[str, Path]:
    """A folder of 3 synthetic parquet files per LAION variant (seeded by the variant's index)."""
    out = {}
    for seed, variant in enumerate(VARIANTS):
        out[variant] = root / variant
        make_inputs(out[variant], variant, files=3, rows=rows, seed=seed)
    return out


def run_filter_main(cli, *args: str) -> dict:
    """Run the filter CLI's main() in-process without progress bars; returns its filter_report.json."""
    import json

    cli.main([*args, "--no_progress"])
    out = Path(args[args.index("--output_dir") + 1])
    return json.loads((out / "filter_report.json").read_text())
