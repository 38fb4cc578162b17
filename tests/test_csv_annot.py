"""laion_gen_csv_annot.py on files-format parts laid out the way img2dataset writes them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent
TOOL = REPO / "tools" / "laion_data_utils" / "laion_gen_csv_annot.py"


def write_files_shard(part_dir: Path, shard: int, samples: list[dict], stats: bool = True) -> None:
    """``part_dir/00000/{key}.jpg/.txt/.json`` + ``00000_stats.json``; a sample may omit jpg or txt."""
    folder = part_dir / f"{shard:05d}"
    folder.mkdir(parents=True)
    for i, s in enumerate(samples):
        key = f"{shard:05d}{i:04d}"
        if s.get("jpg", True):
            (folder / f"{key}.jpg").write_bytes(b"\xff\xd8fake")
        if "txt" in s:
            (folder / f"{key}.txt").write_text(s["txt"], encoding="utf-8")
        (folder / f"{key}.json").write_text(json.dumps(s.get("meta", {})))
    if stats:
        successes = sum(1 for s in samples if s.get("jpg", True))
        (part_dir / f"{shard:05d}_stats.json").write_text(json.dumps({"count": len(samples), "successes": successes}))


def run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=120)


def test_csv_lists_captioned_images_with_existing_relative_paths(tmp_path):
    tricky = 'a "quoted", comma-separated\ncaption with a newline — ünïcode'
    write_files_shard(tmp_path / "part_1", 0, [
        {"txt": "a red car"},
        {"txt": tricky},
        {"jpg": False, "txt": "caption without image"},
        {"jpg": True},  # image without caption file
        {"txt": "   "},  # empty caption: skipped, never invented
        {"txt": "a blue boat"},
    ])  # fmt: skip
    write_files_shard(tmp_path / "part_1", 1, [{"txt": "unfinished shard"}], stats=False)
    write_files_shard(tmp_path / "part_12", 0, [{"txt": "part twelve"}])
    proc = run_tool("--data_dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    annot = pd.read_csv(tmp_path / "part_1.csv", keep_default_na=False)
    assert list(annot.columns) == ["dir", "text"]
    assert list(annot["text"]) == ["a red car", tricky.strip(), "a blue boat"]
    assert list(annot["dir"]) == ["part_1/00000/000000000.jpg", "part_1/00000/000000001.jpg", "part_1/00000/000000005.jpg"]
    for rel in annot["dir"]:
        assert (tmp_path / rel).is_file()
    assert "'no caption file': 1" in proc.stderr and "'no image file': 1" in proc.stderr and "'empty caption': 1" in proc.stderr
    assert "part_1/00001: missing or unreadable _stats.json" in proc.stderr
    assert pd.read_csv(tmp_path / "part_12.csv")["dir"].tolist() == ["part_12/00000/000000000.jpg"]
    assert not list(tmp_path.glob(".*.tmp"))


def test_filters_and_strict(tmp_path):
    metas = [{"original_width": w, "original_height": 600, "pwatermark": p} for w, p in ((700, 0.1), (300, 0.1), (800, 0.9))]
    write_files_shard(tmp_path / "part_1", 0, [{"txt": f"c{i}", "meta": m} for i, m in enumerate(metas)])
    proc = run_tool("--data_dir", str(tmp_path), "--min_size", "512", "--max_watermark", "0.5")
    assert proc.returncode == 0, proc.stderr
    assert pd.read_csv(tmp_path / "part_1.csv")["text"].tolist() == ["c0"]
    write_files_shard(tmp_path / "part_1", 1, [{"txt": "x"}], stats=False)
    proc = run_tool("--data_dir", str(tmp_path), "--strict")
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "error: 1 shard(s) left out" in last
    assert "no csv for part(s) 1 (removed the earlier" in last and not (tmp_path / "part_1.csv").exists()


def test_missing_part_is_one_line_naming_it(tmp_path):
    write_files_shard(tmp_path / "part_1", 0, [{"txt": "a"}])
    proc = run_tool("--data_dir", str(tmp_path), "--parts", "1", "99")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0] == f"laion_gen_csv_annot.py: error: --parts: no folder part_99 in {tmp_path}"
    assert not (tmp_path / "part_1.csv").exists()  # nothing written for the parts that do exist


def test_part_with_no_sample_left_gets_a_header_only_csv(tmp_path):
    from mindone.data.annotations import read_files_annotations, resolve_annotation_files

    write_files_shard(tmp_path / "part_1", 0, [{"txt": "a"}, {"txt": "b"}])
    write_files_shard(tmp_path / "part_2", 0, [{"txt": "c"}])
    assert run_tool("--data_dir", str(tmp_path)).returncode == 0
    assert len(pd.read_csv(tmp_path / "part_1.csv")) == 2
    (tmp_path / "part_1" / "00000_stats.json").unlink()  # the shard is no longer a finished one
    proc = run_tool("--data_dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    annot = pd.read_csv(tmp_path / "part_1.csv")
    assert list(annot.columns) == ["dir", "text"] and len(annot) == 0
    loaded = read_files_annotations(resolve_annotation_files(tmp_path, "files"))  # the loader skips the empty part
    assert list(loaded.captions) == ["c"]


def test_missing_data_dir(tmp_path):
    proc = run_tool("--data_dir", str(tmp_path))
    assert proc.returncode == 2 and "has no part_<id> folders" in proc.stderr


def test_drop_list_names_part_shard_and_key(tmp_path):
    for part in (1, 2):
        write_files_shard(tmp_path / f"part_{part}", 0, [{"txt": f"p{part} c{i}"} for i in range(3)])
    drop = tmp_path / "drop.txt"
    drop.write_text("# near duplicates\npart_1/00000/000000001\n")
    proc = run_tool("--data_dir", str(tmp_path), "--drop_list", str(drop))
    assert proc.returncode == 0, proc.stderr
    assert pd.read_csv(tmp_path / "part_1.csv")["text"].tolist() == ["p1 c0", "p1 c2"]
    assert pd.read_csv(tmp_path / "part_2.csv")["text"].tolist() == ["p2 c0", "p2 c1", "p2 c2"]  # same key, other part
    assert "'filtered_drop_list': 1" in proc.stderr
