"""filter_report.json and the ``--task check`` figures.

Report fields:
- ``files``: per input file, ``rows_in`` and ``rows_kept`` (rows passing every condition).
- ``removed_by_condition``: each removed row counted once, under the FIRST condition it fails, in the
  order of ``conditions`` (so these sum to ``rows_in - rows_after_conditions``).
- ``failed_by_condition``: each condition counted independently (a row failing two counts twice).
- ``dedup_removed``, ``rows_out``, ``parts`` (rows per ``part_<N>.parquet``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from mindone.errors import DataError
from mindone.laion.filter_common import FilterPlan, FilterStats, list_parquet_files
from mindone.laion.schema import resolve_column
from mindone.utils.atomic import atomic_write_text

REPORT_NAME = "filter_report.json"
NULL_SEMANTICS = "a null or NaN value fails every condition on its column"
ATTRIBUTION = "removed_by_condition: first failing condition in the listed order; failed_by_condition: independent"


def build_report(plan: FilterPlan, stats: FilterStats, parts: list[int], engine: str, elapsed_s: float,
                 skipped: dict[str, list[str]]) -> dict[str, Any]:
    rows_in = sum(stats.rows_in.values())
    after = sum(stats.rows_kept.values())
    return {
        "engine": engine,
        "conditions": stats.condition_names,
        "null_semantics": NULL_SEMANTICS,
        "attribution": ATTRIBUTION,
        "skipped_conditions": skipped,
        "files": [{"file": f.path.name, "rows_in": stats.rows_in[f.path.name], "rows_kept": stats.rows_kept[f.path.name]}
                  for f in plan.inputs],
        "rows_in": rows_in,
        "removed_by_condition": dict(zip(stats.condition_names, map(int, stats.removed_first))),
        "failed_by_condition": dict(zip(stats.condition_names, map(int, stats.failed_any))),
        "rows_after_conditions": after,
        "dedup": plan.dedup,
        "dedup_removed": int(stats.dedup_removed),
        "shuffle": plan.shuffle,
        "seed": plan.seed if plan.shuffle else None,
        "buckets": stats.shuffle_buckets,
        "rows_out": int(sum(parts)),
        "parts": [{"file": f"part_{i}.parquet", "rows": int(n)} for i, n in enumerate(parts, 1)],
        "elapsed_s": round(elapsed_s, 3),
    }


def write_report(out_dir: Path, report: dict[str, Any]) -> None:
    atomic_write_text(out_dir / REPORT_NAME, json.dumps(report, indent=2) + "\n")
    umask = os.umask(0)
    os.umask(umask)
    (out_dir / REPORT_NAME).chmod(0o666 & ~umask)


def check_figures(data_dir: Path, batch_rows: int = 262_144) -> dict[str, float | int | None]:
    """Seed 001's check: count, min aesthetic, max punsafe, fraction similarity<0.28, fraction pwatermark>0.8.

    Min/max ignore null and NaN; fractions are over all rows (a null/NaN value counts as not matching).
    A figure whose column is absent is None.
    """
    count = 0
    min_aes, max_unsafe = math.inf, -math.inf
    low_sim = high_wm = 0
    present = {"aesthetic": False, "punsafe": False, "similarity": False, "pwatermark": False}
    for path in list_parquet_files(data_dir):
        try:
            pf = pq.ParquetFile(path)
            schema = pf.schema_arrow
            cols = {k: resolve_column(schema, k) for k in present}
            wanted = [c for c in cols.values() if c]
            for k, c in cols.items():
                present[k] |= c is not None
            if not wanted:
                count += pf.metadata.num_rows
                continue
            for batch in pf.iter_batches(batch_size=batch_rows, columns=wanted):
                count += batch.num_rows
                get = {k: np.asarray(batch.column(c).to_numpy(zero_copy_only=False), dtype=np.float64)
                       for k, c in cols.items() if c}
                if "aesthetic" in get and np.isfinite(get["aesthetic"]).any():
                    min_aes = min(min_aes, float(np.nanmin(get["aesthetic"])))
                if "punsafe" in get and np.isfinite(get["punsafe"]).any():
                    max_unsafe = max(max_unsafe, float(np.nanmax(get["punsafe"])))
                if "similarity" in get:
                    low_sim += int(np.count_nonzero(get["similarity"] < 0.28))
                if "pwatermark" in get:
                    high_wm += int(np.count_nonzero(get["pwatermark"] > 0.8))
        except (OSError, ValueError, TypeError) as err:
            raise DataError(f"{path}: cannot read for check ({str(err).splitlines()[0]})") from None
    return {
        "count": count,
        "min_aesthetic": min_aes if present["aesthetic"] and math.isfinite(min_aes) else None,
        "max_punsafe": max_unsafe if present["punsafe"] and math.isfinite(max_unsafe) else None,
        "frac_similarity_lt_0.28": low_sim / count if present["similarity"] and count else None,
        "frac_pwatermark_gt_0.8": high_wm / count if present["pwatermark"] and count else None,
    }


def format_check(fig: dict[str, Any]) -> str:
    def show(v):
        return "n/a (column absent)" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v))
    return "\n".join([
        f"count: {fig['count']}",
        f"min aesthetic score: {show(fig['min_aesthetic'])}",
        f"max punsafe: {show(fig['max_punsafe'])}",
        f"fraction with similarity < 0.28: {show(fig['frac_similarity_lt_0.28'])}",
        f"fraction with pwatermark > 0.8: {show(fig['frac_pwatermark_gt_0.8'])}",
    ])
