"""make_dataset_from_images.py: your own captioned images -> the layout a LAION download has."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
TOOL = REPO / "tools" / "laion_data_utils" / "make_dataset_from_images.py"


def run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=120)


def make_images(folder: Path, n: int, size=(48, 40)) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        name = f"img_{i:02d}.{'png' if i % 2 else 'jpg'}"
        Image.new("RGB", size, (i * 20 % 256, 80, 160)).save(folder / name)
        names.append(name)
    return names


def tar_samples(path: Path) -> dict[str, dict[str, bytes]]:
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for m in tar:
            key, ext = m.name.split(".", 1)
            out.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return out


@pytest.mark.parametrize("caption_source", ["jsonl", "csv", "txt"])
def test_webdataset_from_each_caption_source(tmp_path, caption_source):
    src = tmp_path / "pokemon"
    names = make_images(src, 7)
    captions = {n: f"a drawing of pokemon {i}, green" for i, n in enumerate(names)}
    del captions[names[5]]  # no caption: skipped
    captions[names[6]] = " "  # empty caption: skipped
    if caption_source == "jsonl":
        (src / "metadata.jsonl").write_text("".join(json.dumps({"file_name": n, "text": t}) + "\n" for n, t in captions.items()))
    elif caption_source == "csv":
        pd.DataFrame({"file_name": list(captions), "text": list(captions.values())}).to_csv(src / "metadata.csv", index=False)
    else:
        for n, t in captions.items():
            (src / n).with_suffix(".txt").write_text(t)
    (src / "broken.jpg").write_bytes(b"not an image")
    if caption_source == "txt":
        (src / "broken.txt").write_text("caption of a broken file")
    out = tmp_path / "data"
    proc = run_tool("--image_dir", str(src), "--output_dir", str(out), "--samples_per_shard", "3")
    assert proc.returncode == 0, proc.stderr
    stats = pd.read_csv(out / "part_1_stats.csv")
    assert list(stats["file_path"]) == ["part_1/00000.tar", "part_1/00001.tar"]
    got = {}
    for rel, n in zip(stats["file_path"], stats["num_samples"], strict=True):
        samples = tar_samples(out / rel)
        assert n == len(samples)
        for s in samples.values():
            meta = json.loads(s["json"])
            got[meta["source"]] = s["txt"].decode()
            img_ext = next(e for e in s if e in ("jpg", "png"))
            assert Path(meta["source"]).suffix in (".jpg", ".png") and (src / meta["source"]).read_bytes() == s[img_ext]
    assert got == {n: t for n, t in captions.items() if t.strip()}
    assert "unreadable image" in proc.stderr or caption_source != "txt"


def test_files_format_with_resize(tmp_path):
    src = tmp_path / "imgs"
    names = make_images(src / "sub", 4, size=(200, 100))
    for i, n in enumerate(names):
        (src / "sub" / n).with_suffix(".txt").write_text(f"caption {i}")
    out = tmp_path / "data"
    proc = run_tool("--image_dir", str(src), "--output_dir", str(out), "--output_format", "files", "--image_size", "64", "--part_id", "7")
    assert proc.returncode == 0, proc.stderr
    annot = pd.read_csv(out / "part_7.csv")
    assert list(annot["text"]) == [f"caption {i}" for i in range(4)]
    for rel in annot["dir"]:
        with Image.open(out / rel) as img:
            assert img.size == (128, 64) and img.format == "JPEG"


def test_no_captioned_images_is_one_line(tmp_path):
    make_images(tmp_path / "x", 2)
    proc = run_tool("--image_dir", str(tmp_path / "x"), "--output_dir", str(tmp_path / "o"))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "no captioned image" in proc.stderr


def test_training_loader_reads_what_the_tools_write(tmp_path):
    """Writer then reader: mindone.data's annotation readers and tar reader on this tool's output."""
    from mindone.data.annotations import read_files_annotations, read_shard_list, resolve_annotation_files
    from mindone.data.tar_stream import read_samples

    src = tmp_path / "imgs"
    names = make_images(src, 5)
    (src / "metadata.jsonl").write_text("".join(json.dumps({"file_name": n, "text": f"cap {i}"}) + "\n" for i, n in enumerate(names)))
    web, files = tmp_path / "web", tmp_path / "files"
    assert run_tool("--image_dir", str(src), "--output_dir", str(web), "--samples_per_shard", "2").returncode == 0
    assert run_tool("--image_dir", str(src), "--output_dir", str(files), "--output_format", "files").returncode == 0
    shards = read_shard_list(resolve_annotation_files(web, "webdataset"))
    assert shards.num_samples == 5 and list(shards.sizes) == [2, 2, 1]
    captions = []
    for url, size in zip(shards.urls, shards.sizes, strict=True):
        got = list(read_samples(url, list(range(size))))
        assert all(not isinstance(sample, str) for _, sample in got), got  # no truncated/unreadable index
        captions += [sample.files["txt"].decode() for _, sample in got]
    assert captions == [f"cap {i}" for i in range(5)]
    annot = read_files_annotations(resolve_annotation_files(files, "files"))
    assert len(annot) == 5 and all(Path(p).is_file() for p in annot.paths)
    assert list(annot.captions) == [f"cap {i}" for i in range(5)]


# A run killed (os._exit: no cleanup runs, as with SIGKILL) at one of these points of the tool.
_KILL_AT = {
    "building": "write_shards",  # before any new shard exists
    "built": "write_shards:after",  # every new shard written, not yet swapped in
    "swapped": "write_annotation_csv",  # the new part in place, its csv not yet written
}
_KILLED_RUN = """
import os
from tests.helpers.tools import load_tool  # run with the checkout as working directory
tool = load_tool("make_dataset_from_images")
name, when = {target!r}.partition(":")[::2]
real = getattr(tool, name)
def killed(*args, **kwargs):
    if when == "after":
        real(*args, **kwargs)
    os._exit(137)
setattr(tool, name, killed)
tool.main({argv!r})
"""


def listed_files_exist(out: Path) -> list[str]:
    """Problems with the csvs of ``out``: a listed file that is missing, or a count the tar does not hold."""
    problems = []
    for csv_path in out.glob("part_*.csv"):
        frame = pd.read_csv(csv_path, keep_default_na=False)
        column = "file_path" if "file_path" in frame.columns else "dir"
        for i, rel in enumerate(frame[column]):
            if not (out / rel).is_file():
                problems.append(f"{csv_path.name}: {rel} missing")
            elif column == "file_path" and len(tar_samples(out / rel)) != frame["num_samples"][i]:
                problems.append(f"{csv_path.name}: {rel} holds another count")
    return problems


@pytest.mark.parametrize("kill_at", sorted(_KILL_AT))
@pytest.mark.parametrize("second_format", ["webdataset", "files"])
def test_rebuild_killed_at_any_point_leaves_no_csv_pointing_at_missing_shards(tmp_path, kill_at, second_format):
    src = tmp_path / "imgs"
    for i, name in enumerate(make_images(src, 5)):
        (src / name).with_suffix(".txt").write_text(f"caption {i}")
    out = tmp_path / "data"
    first = run_tool("--image_dir", str(src), "--output_dir", str(out), "--samples_per_shard", "1")  # 5 shards
    assert first.returncode == 0, first.stderr
    before = (out / "part_1_stats.csv").read_bytes()
    argv = ["--image_dir", str(src), "--output_dir", str(out), "--samples_per_shard", "3", "--output_format", second_format]
    code = _KILLED_RUN.format(target=_KILL_AT[kill_at], argv=argv)
    killed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert killed.returncode == 137, killed.stderr
    assert listed_files_exist(out) == []
    if kill_at != "swapped":  # not swapped in yet: the old part and its csv are still whole and usable
        assert (out / "part_1_stats.csv").read_bytes() == before
    # a rerun completes and sweeps what the killed run left
    proc = run_tool(*argv)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["part_1", "part_1.csv" if second_format == "files" else "part_1_stats.csv"]
    assert listed_files_exist(out) == []


def test_image_dir_inside_the_part_it_would_replace_is_refused(tmp_path):
    src = tmp_path / "data" / "part_1" / "raw"
    for i, name in enumerate(make_images(src, 2)):
        (src / name).with_suffix(".txt").write_text(f"caption {i}")
    proc = run_tool("--image_dir", str(src), "--output_dir", str(tmp_path / "data"))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "which this run replaces" in proc.stderr
    assert len(list(src.iterdir())) == 4  # the images are untouched
