"""Writer then reader: the LAION annotation tools' outputs feed the training loader as they are."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mindone.data.loader import build_sample_stream
from mindone.models.tokenizer import SDTokenizer
from tests.helpers.synthetic_data import make_clean_dataset
from tests.helpers.tools import load_tool

laion_gen_csv_annot = load_tool("laion_gen_csv_annot")
laion_gen_data_stats = load_tool("laion_gen_data_stats")


def as_img2dataset_output(data) -> None:
    """Drop the test's own csvs and add the ``_stats.json`` img2dataset writes for each finished shard."""
    for name in ("part_1.csv", "part_1_stats.csv"):
        (data.root / name).unlink()
    for s, members in enumerate(data.shards):
        stats = {"count": len(members), "successes": len(members), "failed_to_download": 0, "failed_to_resize": 0}
        (data.root / "part_1" / f"{s:05d}_stats.json").write_text(json.dumps(stats))


@pytest.mark.timeout(120)
def test_tool_annotations_load_with_the_real_tokenizer(tmp_path):
    data = make_clean_dataset(tmp_path, num_shards=3, per_shard=6)
    as_img2dataset_output(data)
    for tool in (laion_gen_data_stats, laion_gen_csv_annot):
        assert tool.main(["--data_dir", str(tmp_path)]) in (0, None)
    tokenizer = SDTokenizer()
    captions = {m.key: m.caption for shard in data.shards for m in shard}
    for dataset_type in ("webdataset", "files"):
        samples = list(build_sample_stream(dataset_type, tmp_path, tokenizer, image_size=32, batch_size=3, rank=0,
                                           world_size=1, num_workers=2))
        assert sorted(x["key"] for x in samples) == data.good_keys
        for x in samples[:4]:
            # "photo 000000001 of a  thing number 1 &amp; more" -> cleaned, then SD tokenized
            expected = tokenizer([" ".join(captions[x["key"]].replace("&amp;", "&").split())])[0]
            assert np.array_equal(x["token_ids"], expected) and x["token_ids"][0] == 49406


@pytest.mark.timeout(120)
def test_stats_tool_filtered_copies_load_without_loader_filters(tmp_path):
    data = make_clean_dataset(tmp_path / "raw", num_shards=2, per_shard=8)
    as_img2dataset_output(data)
    out = tmp_path / "filtered"
    code = laion_gen_data_stats.main(["--data_dir", str(data.root), "--filtered_output_dir", str(out),
                                      "--min_aesthetic", "5"])
    assert code in (0, None)
    passing = sorted(m.key for shard in data.shards for m in shard if m.meta["AESTHETIC_SCORE"] >= 5)
    stream = build_sample_stream("webdataset", out, SDTokenizer(), image_size=32, batch_size=1, rank=0,
                                 world_size=1, num_workers=0, shuffle=False)
    assert [x["key"] for x in stream] == passing


def test_annotation_csv_writer_and_reader_agree_on_names_and_quoting(tmp_path):
    """One owner writes and reads both csv kinds: captions and file names with commas and quotes survive,
    and the part number comes back from the name the writer chose."""
    from mindone.data.annotations import (annotation_csv_name, part_of, read_files_annotations, read_shard_list,
                                          resolve_annotation_files, write_annotation_csv)

    (tmp_path / "part_7").mkdir()
    odd = ["a, b.jpg", 'say "hi".jpg']
    for name in odd:
        (tmp_path / "part_7" / name).write_bytes(b"x")
        (tmp_path / "part_7" / name.replace(".jpg", ".tar")).write_bytes(b"x")
    captions = ['a red, round "thing"', "line one\nline two"]
    files_csv = write_annotation_csv(tmp_path / annotation_csv_name(7, "files"), "files",
                                     [(f"part_7/{n}", c) for n, c in zip(odd, captions)])
    stats_csv = write_annotation_csv(tmp_path / annotation_csv_name(7, "latents"), "latents",
                                     [(f"part_7/{n.replace('.jpg', '.tar')}", k + 1) for k, n in enumerate(odd)])
    assert (files_csv.name, stats_csv.name) == ("part_7.csv", "part_7_stats.csv")
    assert (part_of(files_csv), part_of(stats_csv), part_of(tmp_path / "all_stats.csv")) == (7, 7, None)
    assert resolve_annotation_files(tmp_path, "webdataset") == [stats_csv]
    files = read_files_annotations([files_csv])
    assert [files.captions[i] for i in range(2)] == captions
    assert [files.paths[i] for i in range(2)] == [str((tmp_path / "part_7" / n).resolve()) for n in odd]
    shards = read_shard_list([stats_csv])
    assert shards.sizes.tolist() == [1, 2]
    assert [u.rsplit("/", 1)[1] for u in shards.urls] == ["a, b.tar", 'say "hi".tar']
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left
