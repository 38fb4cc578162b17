"""laion_download_imgs: values from LAION_* variables meet the same choices as the flags."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parent.parent
TOOL = REPO / "tools" / "laion_data_utils" / "laion_download_imgs.py"


def run_tool(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LAION_")}
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=120,
                          env={**clean, "NO_ALBUMENTATIONS_UPDATE": "1", **env}, cwd=REPO)


@pytest.fixture()
def meta(tmp_path) -> Path:
    pq.write_table(pa.table({"URL": ["http://x/a.jpg"], "TEXT": ["a"]}), tmp_path / "part_1.parquet")
    return tmp_path


@pytest.mark.parametrize(("variable", "value", "choices"), [
    ("LAION_DISTRIBUTOR", "x", "multiprocessing, pyspark"),
    ("LAION_RESIZE_MODE", "keep-ratio", "keep_ratio, center_crop, border, keep_ratio_largest, no"),
])
def test_env_value_outside_the_choices_is_one_line_naming_the_variable(meta, variable, value, choices):
    proc = run_tool(["1", "--dry_run", "--metadata_dir", str(meta), "--output_dir", "out"], {variable: value})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0] == f"laion_download_imgs.py: error: environment variable {variable}={value!r} is not one of {choices}"
    assert proc.stdout == ""


def test_valid_env_value_is_used_and_a_flag_still_wins(meta):
    args = ["1", "--dry_run", "--metadata_dir", str(meta), "--output_dir", "out"]
    proc = run_tool(args, {"LAION_RESIZE_MODE": "center_crop"})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[0])["img2dataset"]["resize_mode"] == "center_crop"
    proc = run_tool([*args, "--distributor", "multiprocessing"], {"LAION_DISTRIBUTOR": "x"})
    assert proc.returncode == 0, proc.stderr  # the command line wins over the (bad) variable
    assert json.loads(proc.stdout.splitlines()[0])["img2dataset"]["distributor"] == "multiprocessing"
