"""Issue 17, tools side, for the folders the tools walk: a symlink never leads make_dataset_from_images, the
stats csv or the files csv out of the folder the user named (unless a flag allows it), a FIFO is never
opened, an oversized or deeply nested side file (_stats.json, caption, json) is refused without being
read whole, and the csvs list only relative paths inside the data folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from mindone.utils.cli import ONE_LINE_ERRORS
from tests.helpers.tars import webdataset_shard
from tests.helpers.tools import load_tool

REPO = Path(__file__).resolve().parent.parent
TOOLS = REPO / "tools" / "laion_data_utils"


# -- 2. links never lead a tool out of the folder it was given ----------------------------------------------------


def make_image_folder(tmp_path: Path) -> tuple[Path, Path]:
    """An image folder whose links lead outside it to a private image, caption and folder; plus a FIFO caption."""
    from tests.helpers.image_server import make_jpeg

    private, images = tmp_path / "private", tmp_path / "images"
    (private / "album").mkdir(parents=True)
    images.mkdir()
    (private / "secret.jpg").write_bytes(make_jpeg(24, 20, seed=7))
    (private / "secret.txt").write_text("PRIVATE CAPTION")
    (private / "album" / "d.jpg").write_bytes(make_jpeg(24, 20, seed=8))
    (private / "album" / "d.txt").write_text("PRIVATE ALBUM")
    for name in ("a", "c", "e"):
        (images / f"{name}.jpg").write_bytes(make_jpeg(24, 20, seed=ord(name)))
    (images / "a.txt").write_text("a cat")
    (images / "b.jpg").symlink_to(private / "secret.jpg")
    (images / "b.txt").write_text("a harmless caption")
    (images / "c.txt").symlink_to(private / "secret.txt")
    (images / "album").symlink_to(private / "album", target_is_directory=True)
    os.mkfifo(images / "e.txt")  # opening it would block forever
    (images / "f.jpg").symlink_to(images / "a.jpg")  # a link that stays inside is fine
    (images / "f.txt").write_text("a linked cat")
    return images, private


@pytest.mark.timeout(60)
def test_own_images_never_follow_links_out_of_the_image_folder(tmp_path, caplog):
    make_dataset_from_images = load_tool("make_dataset_from_images")

    caplog.set_level("INFO")
    images, private = make_image_folder(tmp_path)
    secrets = [(private / "secret.jpg").read_bytes(), (private / "album" / "d.jpg").read_bytes(), b"PRIVATE"]
    for name, extra in (("default", []), ("allowed", ["--allow_outside_image_dir"])):
        out = tmp_path / name
        caplog.clear()
        make_dataset_from_images.main(["--image_dir", str(images), "--output_dir", str(out), *extra])
        with tarfile.open(out / "part_1" / "00000.tar") as tar:
            blobs = [tar.extractfile(m).read() for m in tar.getmembers()]
        leaked = [s for s in secrets if any(s in blob for blob in blobs)]
        if name == "default":
            assert leaked == [] and len(blobs) == 2 * 3  # a and f (jpg, txt, json each)
            assert "'symlink leading out of --image_dir': 2" in caplog.text and "'no caption file': 1" in caplog.text
        else:  # the flag reads what the links point at (the folder link is still not searched)
            assert leaked == secrets[:1] + secrets[2:] and len(blobs) == 4 * 3


@pytest.mark.timeout(30)
def test_caption_table_that_leads_out_is_one_line(tmp_path):
    make_dataset_from_images = load_tool("make_dataset_from_images")

    images, private = make_image_folder(tmp_path)
    (private / "metadata.jsonl").write_text(json.dumps({"file_name": "a.jpg", "text": "x"}) + "\n")
    (images / "metadata.jsonl").symlink_to(private / "metadata.jsonl")
    with pytest.raises(ONE_LINE_ERRORS, match=r"metadata.jsonl is a symlink leading out of --image_dir"):
        make_dataset_from_images.main(["--image_dir", str(images), "--output_dir", str(tmp_path / "out")])


# -- 8. the stats and files csvs list only relative paths inside the data folder ---------------------------------


def csv_rows(path: Path) -> list[list[str]]:
    import csv

    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))[1:]


def assert_inside(data: Path, relative_paths: list[str]) -> None:
    for rel in relative_paths:
        assert not os.path.isabs(rel) and ".." not in rel.split("/"), rel
        assert os.path.realpath(data / rel).startswith(os.path.realpath(data) + os.sep), rel


@pytest.mark.timeout(60)
def test_csv_writers_list_nothing_a_link_leads_out_to(tmp_path):
    laion_gen_csv_annot = load_tool("laion_gen_csv_annot")
    laion_gen_data_stats = load_tool("laion_gen_data_stats")

    data, private = tmp_path / "data", tmp_path / "private"
    webdataset_shard(data / "part_1", "00000", [{"jpg": b"\xff\xd8", "txt": b"in"}])
    outside_tar = webdataset_shard(private, "00009", [{"jpg": b"\xff\xd8", "txt": b"out"}])
    (data / "part_1" / "00001.tar").symlink_to(outside_tar)
    (data / "part_1" / "00001_stats.json").write_text(json.dumps({"count": 1, "successes": 1}))
    shard = data / "part_2" / "00000"
    shard.mkdir(parents=True)
    (private / "caption.txt").write_text("PRIVATE CAPTION")
    (private / "photo.jpg").write_bytes(b"\xff\xd8 private")
    for key in ("0", "1", "2", "3"):
        (shard / f"{key}.jpg").write_bytes(b"\xff\xd8")
    (shard / "2.jpg").unlink()
    (shard / "2.jpg").symlink_to(private / "photo.jpg")
    (shard / "0.txt").write_text("inside")
    (shard / "1.txt").symlink_to(private / "caption.txt")
    (shard / "2.txt").write_text("inside too")
    os.mkfifo(shard / "3.txt")  # never opened: reading it would block
    (data / "part_2" / "00000_stats.json").write_text(json.dumps({"count": 4, "successes": 4}))
    for extra in ([], ["--allow_outside_data_dir"]):
        laion_gen_data_stats.main(["--data_dir", str(data), "--parts", "1", *extra])
        laion_gen_csv_annot.main(["--data_dir", str(data), "--parts", "2", *extra])
        tars, files = csv_rows(data / "part_1_stats.csv"), csv_rows(data / "part_2.csv")
        if not extra:
            assert tars == [["part_1/00000.tar", "1"]] and files == [["part_2/00000/0.jpg", "inside"]]
            assert_inside(data, [row[0] for row in tars + files])
        else:  # what the flag lets through (and the default kept out)
            assert [row[0] for row in tars] == ["part_1/00000.tar", "part_1/00001.tar"]
            assert sorted(text for _, text in files) == ["PRIVATE CAPTION", "inside", "inside too"]


@pytest.mark.timeout(60)
def test_stats_cli_names_the_shard_a_link_leads_out_of(tmp_path):
    data = tmp_path / "data"
    webdataset_shard(data / "part_1", "00000", [{"jpg": b"\xff\xd8", "txt": b"in"}])
    (data / "part_1" / "00001.tar").symlink_to(webdataset_shard(tmp_path / "else", "00001", [{"jpg": b"\xff\xd8", "txt": b"x"}]))
    (data / "part_1" / "00001_stats.json").write_text(json.dumps({"count": 1, "successes": 1}))
    proc = subprocess.run([sys.executable, str(TOOLS / "laion_gen_data_stats.py"), "--data_dir", str(data), "--strict"],
                          capture_output=True, text=True, timeout=50)  # fmt: skip
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "part_1/00001.tar: a symlink leading out of" in last and "Traceback" not in proc.stderr



# -- side files: never a FIFO, never read whole past 1 MiB, never nested into a crash ---------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("stats_json", ["fifo", "nested", "huge"])
def test_bad_stats_json_leaves_the_shard_out_without_hanging(tmp_path, stats_json):
    laion_gen_data_stats = load_tool("laion_gen_data_stats")

    part = tmp_path / "data" / "part_1"
    webdataset_shard(part, "00000", [{"jpg": b"\xff\xd8", "txt": b"fine"}])
    webdataset_shard(part, "00001", [{"jpg": b"\xff\xd8", "txt": b"fine"}])
    target = part / "00001_stats.json"
    target.unlink()
    if stats_json == "fifo":
        os.mkfifo(target)  # opening it for reading would block until a writer came
    elif stats_json == "nested":
        target.write_text("[" * 100_000 + "]" * 100_000)
    else:
        target.write_text(json.dumps({"count": 1, "successes": 1, "pad": " " * (2 << 20)}))
    laion_gen_data_stats.main(["--data_dir", str(tmp_path / "data")])
    assert (tmp_path / "data" / "part_1_stats.csv").read_text().splitlines()[1:] == ["part_1/00000.tar,1"]


@pytest.mark.timeout(60)
def test_oversized_caption_is_skipped_unread(tmp_path):
    from mindone.laion.annotations import files_part_annotations

    shard = tmp_path / "part_1" / "00000"
    shard.mkdir(parents=True)
    from mindone.data.filters import SampleFilters

    for key, caption in (("0", b"short"), ("1", b"x" * ((1 << 20) + 1)), ("2", b"nested json")):
        (shard / f"{key}.jpg").write_bytes(b"\xff\xd8")
        (shard / f"{key}.txt").write_bytes(caption)
    (shard / "2.json").write_text("[" * 100_000 + "]" * 100_000)  # deeper than json goes: no metadata, no crash
    (tmp_path / "part_1" / "00000_stats.json").write_text(json.dumps({"count": 3, "successes": 3}))
    annot = files_part_annotations(tmp_path, tmp_path / "part_1", SampleFilters(min_aesthetic=1.0))
    assert annot.rows == [("part_1/00000/0.jpg", "short"), ("part_1/00000/2.jpg", "nested json")]
    assert annot.skipped["caption file not a regular file of at most 1 MiB"] == 1


@pytest.mark.timeout(30)
def test_resume_cleanup_removes_links_not_what_they_point_at(tmp_path):
    from mindone.laion.shard_state import prepare_resume

    part, elsewhere = tmp_path / "out" / "part_1", tmp_path / "elsewhere"
    (elsewhere / "album").mkdir(parents=True)
    (elsewhere / "album" / "photo.jpg").write_bytes(b"\xff\xd8 keep me")
    (elsewhere / "keep.tar").write_bytes(b"keep me too")
    webdataset_shard(part, "00000", [{"jpg": b"\xff\xd8", "txt": b"done"}])
    (part / "00001").symlink_to(elsewhere / "album", target_is_directory=True)  # "partial" shards: no _stats.json
    (part / "00002.tar").symlink_to(elsewhere / "keep.tar")
    report = prepare_resume(part, "files")
    assert sorted(report.partial_removed) == ["00001", "00002"] and not (part / "00001").is_symlink()
    assert (elsewhere / "album" / "photo.jpg").read_bytes() == b"\xff\xd8 keep me" and (elsewhere / "keep.tar").exists()
