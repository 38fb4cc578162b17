"""Near-duplicate removal (issue 14): planted near duplicates are found, look-alikes are kept, the grouping
equals brute force, and the drop list is honoured alike by the stats csv, the files csv and the loader."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw, ImageFont

from mindone.data.drop_list import DropList, files_sample_id, read_ids, shard_name
from mindone.data.loader import build_sample_stream
from mindone.demo.scenes import draw_scene
from mindone.laion.hash_groups import colour_distance, near_groups, popcount
from mindone.laion.near_dups import Signatures, choose_kept
from tests.helpers.photos import jpeg, photo_like
from tests.helpers.synthetic_data import Member, fake_tokenizer, write_dataset
from tests.helpers.tools import load_tool

TOOL = load_tool("laion_find_near_dups")


def variants(img: Image.Image) -> dict[str, bytes]:
    """The planted near duplicates of ``img``."""
    w, h = img.size
    c = max(1, round(w * 0.015))
    marked = img.copy()
    ImageDraw.Draw(marked).text((w // 20, h - h // 8), "stock", fill=(255, 255, 255),
                                font=ImageFont.load_default(size=max(10, h // 12)))
    return {"resized": jpeg(img.resize((w * 2 // 3, h * 2 // 3), Image.BILINEAR)), "quality30": jpeg(img, 30),
            "cropped": jpeg(img.crop((c, c, w - c, h - c))), "watermarked": jpeg(marked)}


def member(key: str, image: bytes, **meta) -> Member:
    return Member(key, image, f"caption {key}", {"key": key, **meta})


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """part_1 and part_2 (same keys in both): 4 originals with 4 near duplicates each, spread over shards and
    parts; look-alikes (one scene in two colours) and 8 unrelated images. Returns (root, expected groups)."""
    root = tmp_path_factory.mktemp("planted")
    shards: dict[int, list[list[Member]]] = {1: [[], []], 2: [[]]}
    groups: list[set[str]] = []
    place = [(1, 0), (1, 1), (2, 0)]
    for g in range(4):
        img = photo_like(100 + g)
        ids = []
        for v, (name, data) in enumerate([("original", jpeg(img)), *variants(img).items()]):
            part, shard = place[(g + v) % 3]
            members = shards[part][shard]
            key = f"{shard:05d}{len(members):04d}"
            meta = {"AESTHETIC_SCORE": 5.0 + v} if g == 0 else {}  # group 0: the last variant scores highest
            if g == 1:
                meta = {"original_width": 100 * (v + 1), "original_height": 100}
            members.append(member(key, data, **meta))
            ids.append(f"part_{part}/{shard:05d}/{key}")
        groups.append(set(ids))
    rnd = random.Random(7)
    for i, (shape, c1, c2, bg) in enumerate([("circle", "red", "blue", "white"), ("square", "green", "yellow", "black"),
                                             ("triangle", "purple", "orange", "white")]):  # fmt: skip
        for colour in (c1, c2):
            members = shards[1][i % 2]
            members.append(member(f"{i % 2:05d}{len(members):04d}", jpeg(draw_scene(shape, colour, bg, random.Random(i)))))
    for i in range(8):
        members = shards[2][0]
        members.append(member(f"00000{len(members):04d}", jpeg(photo_like(500 + i, size=rnd.choice([128, 192, 256])))))
    for part, part_shards in shards.items():
        write_dataset(root, part_shards, part=part)
        for s, members in enumerate(part_shards):
            stats = json.dumps({"count": len(members), "successes": len(members)})
            (root / f"part_{part}" / f"{s:05d}_stats.json").write_text(stats)
    return root, groups


def run_tool(root, *flags):
    assert TOOL.main(["--data_dir", str(root), "--processes", "1", *flags]) == 0
    report = json.loads((root / "near_duplicates_report.json").read_text())
    return read_ids(root / "near_duplicates_drop.txt"), report


def test_planted_near_duplicates_are_found_and_look_alikes_kept(planted):
    root, groups = planted
    dropped, report = run_tool(root)
    expected_groups = [sorted(g) for g in groups]
    found = [sorted([e["kept"], *e["dropped"]]) for e in report["example_groups"]]
    assert sorted(found) == sorted(expected_groups)  # the look-alikes and unrelated images are in no group
    assert report["groups"] == 4 and report["dropped"] == 16 == len(dropped)
    assert report["max_distance"] == 8 and report["hash"].startswith("dhash64")
    assert report["per_part"]["part_1"]["dropped"] + report["per_part"]["part_2"]["dropped"] == 16
    kept = {e["kept"] for e in report["example_groups"]}
    g0, g1 = sorted(groups[0]), sorted(groups[1])
    # keep rule: group 0 by aesthetic score (the last variant, 9.0), group 1 by original size (the last, 500 px)
    assert len(kept & groups[0]) == 1 and len(kept & groups[1]) == 1
    scores = {}
    for part in (1, 2):
        for shard in (root / f"part_{part}").glob("*.tar"):
            for path in (root / f"part_{part}" / shard.stem).glob("*.json"):
                scores[f"part_{part}/{shard.stem}/{path.stem}"] = json.loads(path.read_text())
    (keep0,) = kept & groups[0]
    assert scores[keep0]["AESTHETIC_SCORE"] == max(scores[i]["AESTHETIC_SCORE"] for i in g0)
    (keep1,) = kept & groups[1]
    assert scores[keep1]["original_width"] == max(scores[i]["original_width"] for i in g1)
    for group in groups[2:]:  # no scores, no sizes: the smallest id is kept
        assert min(group) in kept


def test_keep_rule_prefers_score_then_size_then_id():
    ids = np.asarray(["part_2/00000/000000000", "part_1/00000/000000001", "part_1/00000/000000000",
                      "part_1/00000/000000002", "part_1/00000/000000003"])  # fmt: skip
    sig = Signatures(ids, np.zeros(5, np.uint64), np.zeros(5, np.uint64),
                     np.asarray([np.nan, 4.0, 4.0, np.nan, np.nan]), np.asarray([10, 5, 9, 0, 0]))
    labels = np.asarray([0, 0, 0, 3, 3])
    assert choose_kept(labels, sig).tolist() == [True, True, False, False, True]  # 9 px beats 5, NaN loses to 4.0
    sig.aesthetic[:] = np.nan
    assert choose_kept(labels, sig).tolist() == [False, True, True, False, True]  # then the largest, then first id


def reference_groups(hashes, colours, k, max_colour):
    """All pairs compared, union-find in Python: the brute-force reference."""
    near = (popcount(hashes[:, None] ^ hashes[None, :]) <= k) & (colour_distance(colours[:, None], colours[None, :]) <= max_colour)
    parent = list(range(len(hashes)))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in zip(*np.nonzero(np.triu(near, 1))):
        ra, rb = find(int(a)), find(int(b))
        parent[max(ra, rb)] = min(ra, rb)
    return np.asarray([find(i) for i in range(len(hashes))])


@pytest.mark.parametrize("k, blocks", [(0, None), (3, None), (6, None), (8, None), (8, 9), (10, 14)])
def test_banded_grouping_equals_all_pairs(k, blocks):
    rng = np.random.default_rng(k)
    n = 3000
    hashes = rng.integers(0, 1 << 62, n, dtype=np.int64).astype(np.uint64) << np.uint64(2)
    colours = rng.integers(0, 3, n).astype(np.uint64)  # colour codes 0..2: distance 1 passes, 2 does not
    for i in range(0, 900, 3):  # planted chains: 0..12 bit flips, and a third member one bit further
        flips = rng.choice(64, int(rng.integers(0, 13)), replace=False)
        hashes[i + 1] = hashes[i] ^ np.uint64(sum(1 << int(f) for f in flips))
        hashes[i + 2] = hashes[i + 1] ^ np.uint64(1 << int(rng.integers(64)))
        colours[i + 1] = colours[i]
    hashes[900:1000] = hashes[900]  # exact duplicates: one signature
    colours[900:1000] = 1
    labels, stats = near_groups(hashes, colours, max_distance=k, max_colour_distance=1, blocks=blocks)
    assert labels.tolist() == reference_groups(hashes, colours, k, 1).tolist()
    assert stats.distinct_signatures <= n - 99 and stats.capped_buckets == 0
    assert len(set(labels.tolist())) < n - 99 - (k > 0) * 100  # the planted pairs were found


def test_a_huge_bucket_is_capped_and_reported():
    rng = np.random.default_rng(1)
    # 3000 different hashes sharing their top 32 bits: one huge bucket in the bands over those bits
    hashes = (np.uint64(0xDEADBEEF) << np.uint64(32)) | rng.integers(0, 1 << 32, 3000).astype(np.uint64)
    colours = np.zeros(3000, np.uint64)
    capped, stats = near_groups(hashes, colours, max_distance=1, max_colour_distance=0, max_bucket=100)
    assert stats.capped_buckets >= 1 and stats.capped_items >= 3000
    full, _ = near_groups(hashes, colours, max_distance=1, max_colour_distance=0, max_bucket=5000)
    assert full.tolist() == reference_groups(hashes, colours, 1, 0).tolist()
    # within 1 bit, pairs share the low band too, which is not capped: nothing is missed here
    assert capped.tolist() == full.tolist()
    same, stats = near_groups(np.zeros(50_000, np.uint64), np.zeros(50_000, np.uint64), max_distance=8,
                              max_colour_distance=1, max_bucket=100)
    assert set(same.tolist()) == {0} and stats.distinct_signatures == 1 and stats.candidates == 0


def test_sample_ids_name_the_part_and_shard():
    for location in ("/data/part_1/00000.tar", "https://h/laion/part_1/00000.tar?token=x", "part_1/00000.tar",
                     "pipe:aws s3 cp s3://b/laion/part_1/00000.tar -", "pipe:curl -s 'http://h/part_1/00000.tar'"):
        assert shard_name(location) == "part_1/00000", location
    assert files_sample_id("/data/part_12/00003/000030001.jpg") == "part_12/00003/000030001"
    drop = DropList(["part_1/00000/000000001"])
    assert "part_1/00000/000000001" in drop and "part_2/00000/000000001" not in drop


def loader_keys(root, dataset_type, **kw):
    args = dict(image_size=32, batch_size=1, rank=0, world_size=1, num_workers=0, shuffle=False, drop_remainder=False)
    stream = build_sample_stream(dataset_type, root, fake_tokenizer, **{**args, **kw})
    return [x["key"] for x in stream], stream


def test_stats_csv_files_csv_and_loader_drop_the_same_samples(planted, tmp_path):
    root, _ = planted
    dropped, _ = run_tool(root)
    drop_list = str(root / "near_duplicates_drop.txt")
    every = {files_sample_id(str(p)) for p in root.glob("part_*/*/*.jpg")}
    kept = every - set(dropped)
    # the loader, both layouts, from the unfiltered data (the csvs write_dataset wrote list every sample); keys
    # repeat across parts, so one part at a time. An epoch refills skipped positions (repeats): the distinct
    # samples are what the stats / files csvs count.
    for part in (1, 2):
        expected = {i.rsplit("/", 1)[1] for i in kept if i.startswith(f"part_{part}/")}
        part_dropped = sum(i.startswith(f"part_{part}/") for i in dropped)
        for dataset_type in ("webdataset", "files"):
            keys, stream = loader_keys(root, dataset_type, parts=[part], filters={"drop_list": drop_list})
            assert set(keys) == expected, (part, dataset_type)
            assert stream.last_epoch_counts["filtered_drop_list"] >= part_dropped > 0
    # stats csv: the filtered copies hold exactly the samples not dropped
    out = tmp_path / "filtered"
    stats_tool = load_tool("laion_gen_data_stats")
    assert stats_tool.main(["--data_dir", str(root), "--drop_list", drop_list, "--filtered_output_dir", str(out)]) == 0
    assert sum(pd.read_csv(out / f"part_{p}_stats.csv")["num_samples"].sum() for p in (1, 2)) == len(kept)
    assert sum(len(set(loader_keys(out, "webdataset", parts=[p])[0])) for p in (1, 2)) == len(kept)
    # files csv, into a copy of the data (the csvs above stay whole for the other tests)
    csv_tool = load_tool("laion_gen_csv_annot")
    files = tmp_path / "files"
    shutil.copytree(root, files, ignore=shutil.ignore_patterns("*.tar", "*.csv"))
    assert csv_tool.main(["--data_dir", str(files), "--drop_list", drop_list]) == 0
    rows = pd.concat([pd.read_csv(files / f"part_{p}.csv") for p in (1, 2)])
    assert {files_sample_id(d) for d in rows["dir"]} == kept


def test_a_killed_run_redoes_only_unfinished_shards(planted, tmp_path):
    root, _ = planted
    cache = tmp_path / "cache"
    first, report = run_tool(root, "--cache_dir", str(cache))
    assert report["shards_from_cache"] == 0 and report["shards"] == 3
    (cache / "part_1" / "00001.npz").unlink()  # this shard was being hashed when the run was killed
    (cache / "part_1" / ".00000.npz.123.tmp").write_bytes(b"half")  # a temp file a killed run left
    again, report = run_tool(root, "--cache_dir", str(cache))
    assert report["shards_from_cache"] == 2 and again == first
    (cache / "part_2" / "00000.npz").write_bytes(b"garbage")  # a damaged cache file is redone, not trusted
    assert run_tool(root, "--cache_dir", str(cache))[0] == first


def test_bad_input_is_one_line(tmp_path, capsys):
    from mindone.utils.cli import ONE_LINE_ERRORS

    with pytest.raises(ONE_LINE_ERRORS, match="is not a folder"):
        TOOL.main(["--data_dir", str(tmp_path / "nothing")])
    with pytest.raises(ONE_LINE_ERRORS, match="has no part_<id> folders"):
        TOOL.main(["--data_dir", str(tmp_path)])
    with pytest.raises(ONE_LINE_ERRORS, match="--spark_master needs --distributor pyspark"):
        TOOL.main(["--data_dir", str(tmp_path), "--spark_master", "local[2]"])


def test_spark_local_gives_the_same_drop_list(planted, tmp_path):
    root, _ = planted
    local, _ = run_tool(root, "--cache_dir", str(tmp_path / "a"))
    spark, report = run_tool(root, "--cache_dir", str(tmp_path / "b"), "--distributor", "pyspark",
                             "--spark_master", "local[2]")
    assert spark == local and report["distributor"] == "pyspark" and report["dropped"] == 16
