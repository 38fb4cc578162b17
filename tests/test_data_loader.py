"""End to end: annotations -> rank streams with real worker processes -> MindSpore batches."""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pytest

from mindone.data.loader import build_dataset, build_sample_stream
from tests.helpers.synthetic_data import (
    fake_tokenizer,
    make_clean_dataset,
    make_dirty_dataset,
    regular_member,
    write_dataset,
)

SIZE = 32


def epoch_of(stream) -> list[dict]:
    return list(stream)


def stream(root, dataset_type="webdataset", **kw):
    args = dict(image_size=SIZE, batch_size=4, rank=0, world_size=1, num_workers=2, seed=5, shuffle_buffer=6)
    args.update(kw)
    return build_sample_stream(dataset_type, root, fake_tokenizer, **args)


@pytest.fixture(scope="module")
def uneven_clean(tmp_path_factory):
    """32 samples in shards of 7, 9, 8 and 8: divides by 2 ranks x batch 4, shards do not line up."""
    root = tmp_path_factory.mktemp("clean")
    shards = [[regular_member(s, i) for i in range(n)] for s, n in enumerate([7, 9, 8, 8])]
    return write_dataset(root, shards)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("dataset_type", ["webdataset", "files"])
def test_two_ranks_two_workers_see_each_key_once_per_epoch(uneven_clean, dataset_type):
    ranks = [stream(uneven_clean.root, dataset_type, rank=r, world_size=2) for r in range(2)]
    assert [len(s) for s in ranks] == [16, 16] and [s.steps_per_epoch for s in ranks] == [4, 4]
    orders = []
    for _ in range(2):  # two epochs
        keys = [[x["key"] for x in epoch_of(s)] for s in ranks]
        assert sorted(keys[0] + keys[1]) == sorted(uneven_clean.good_keys)
        orders.append(keys)
    assert orders[0] != orders[1] and orders[0][0] != orders[1][0]
    again = stream(uneven_clean.root, dataset_type, rank=1, world_size=2)
    assert [x["key"] for x in epoch_of(again)] == orders[0][1]  # same seed, same order


@pytest.mark.timeout(120)
def test_files_and_webdataset_yield_the_same_samples(uneven_clean):
    kw = dict(shuffle=False, random_crop=True, random_flip=True, caption_dropout=0.2)
    wds = epoch_of(stream(uneven_clean.root, "webdataset", **kw))
    files = epoch_of(stream(uneven_clean.root, "files", **kw))
    assert [x["key"] for x in wds] == [x["key"] for x in files]
    assert sorted(x["key"] for x in wds) == uneven_clean.good_keys
    in_process = epoch_of(stream(uneven_clean.root, "webdataset", num_workers=0, **kw))
    assert [x["key"] for x in in_process] == uneven_clean.good_keys  # unshuffled, one worker: csv order
    for a, b in zip(wds, files):
        assert a["image"].shape == (3, SIZE, SIZE) and a["image"].dtype == np.float32
        assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["token_ids"], b["token_ids"])
    # shuffled: different orders, the same samples and the same pixels per key
    wds_s = {x["key"]: x for x in epoch_of(stream(uneven_clean.root, "webdataset", random_crop=True))}
    files_s = {x["key"]: x for x in epoch_of(stream(uneven_clean.root, "files", random_crop=True))}
    assert wds_s.keys() == files_s.keys() == set(uneven_clean.good_keys)
    assert all(np.array_equal(wds_s[k]["image"], files_s[k]["image"]) for k in wds_s)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("dataset_type, start_step", [("webdataset", 1), ("webdataset", 3), ("files", 2)])
def test_resume_yields_the_tail_of_the_uninterrupted_order(uneven_clean, dataset_type, start_step):
    kw = dict(rank=1, world_size=2, batch_size=2, random_crop=True)
    full = epoch_of(stream(uneven_clean.root, dataset_type, epoch=1, **kw))
    resumed = stream(uneven_clean.root, dataset_type, epoch=1, start_step=start_step, **kw)
    tail = epoch_of(resumed)
    assert [x["key"] for x in tail] == [x["key"] for x in full[start_step * 2 :]]
    assert all(np.array_equal(a["image"], b["image"]) for a, b in zip(tail, full[start_step * 2 :]))
    next_epoch = epoch_of(resumed)  # after the resumed epoch comes a full one
    assert len(next_epoch) == len(full)
    assert [x["key"] for x in next_epoch] == [x["key"] for x in epoch_of(stream(uneven_clean.root, dataset_type, epoch=2, **kw))]
    late = stream(uneven_clean.root, dataset_type, epoch=0, start_step=resumed.steps_per_epoch + start_step, **kw)
    assert [x["key"] for x in epoch_of(late)] == [x["key"] for x in tail]  # step past an epoch -> next epoch


@pytest.mark.timeout(120)
@pytest.mark.parametrize("dataset_type", ["webdataset", "files"])
def test_bad_data_is_skipped_counted_and_refilled(tmp_path, dataset_type, caplog):
    data = make_dirty_dataset(tmp_path)  # 50 listed samples, about 30 good; one shard all bad, one truncated
    caplog.set_level(logging.INFO, logger="mindone.data")
    ranks = [stream(tmp_path, dataset_type, rank=r, world_size=2, batch_size=4, shuffle_buffer=3) for r in range(2)]
    keys = []
    for s in ranks:
        got = [x["key"] for x in epoch_of(s)]
        # 50 samples, 2 ranks x batch 4: pad rounds up to whole batches, 4 * ceil(50 / 8) = 28 on each rank
        assert len(got) == len(s) == 28
        keys += got
        counts = s.last_epoch_counts
        assert counts["yielded"] == 28 and counts["read"] == 28 + sum(
            v for k, v in counts.items() if k not in ("read", "yielded", "refilled")
        )
    bad = {m.key for shard in data.shards for m in shard if not m.good}
    if dataset_type == "files":  # the folders are not truncated; a json-only caption is not in the csv
        bad = {k for k in bad if not k.startswith("00003")} | {"000000005"}
    assert not set(keys) & bad
    good = {m.key for shard in data.shards for m in shard} - bad
    assert set(keys) == good  # every good sample seen; refills only repeat good ones
    total = ranks[0].last_epoch_counts + ranks[1].last_epoch_counts
    assert total["corrupt_image"] >= 12 and total["tiny_image"] >= 1 and total["missing_caption"] >= 1
    if dataset_type == "webdataset":
        assert total["truncated_shard"] >= 1
    assert any("data epoch 0" in r.message and "skipped" in r.message and "corrupt_image" in r.message
               for r in caplog.records)


@pytest.mark.timeout(120)
def test_all_bad_data_raises_instead_of_hanging(tmp_path):
    shards = [[regular_member(0, i) for i in range(4)]]
    for m in shards[0]:
        m.image = b"junk"
    write_dataset(tmp_path, shards)
    with pytest.raises(RuntimeError, match="no usable sample"):
        epoch_of(stream(tmp_path, batch_size=2))
    with pytest.raises(RuntimeError, match="no usable sample"):
        epoch_of(stream(tmp_path, batch_size=2, num_workers=0))


@pytest.mark.timeout(120)
def test_worker_errors_surface_in_the_trainer(tmp_path):
    make_clean_dataset(tmp_path, num_shards=2, per_shard=4)

    def broken_tokenizer(texts):
        raise ValueError("tokenizer exploded")

    s = build_sample_stream("webdataset", tmp_path, broken_tokenizer, image_size=SIZE, batch_size=2, rank=0,
                            world_size=1, num_workers=2)
    with pytest.raises(RuntimeError, match="data worker .* failed: ValueError: tokenizer exploded"):
        epoch_of(s)


@pytest.mark.timeout(120)
def test_filters_on_the_json(uneven_clean):
    s = stream(uneven_clean.root, filters={"min_aesthetic": 5.0, "max_watermark": 0.7}, batch_size=2)
    keys = {x["key"] for x in epoch_of(s)}
    meta = {m.key: m.meta for shard in uneven_clean.shards for m in shard}
    passing = {k for k, m in meta.items() if m["AESTHETIC_SCORE"] >= 5.0 and m["pwatermark"] <= 0.7}
    assert keys == passing and 0 < len(passing) < 32
    counts = s.last_epoch_counts
    assert counts["filtered_min_aesthetic"] + counts["filtered_max_pwatermark"] >= 32 - len(passing)


@pytest.mark.timeout(120)
def test_build_dataset_gives_mindspore_batches(uneven_clean):
    dataset, steps = build_dataset("webdataset", uneven_clean.root, fake_tokenizer, image_size=SIZE, batch_size=4,
                                   rank=0, world_size=2, num_workers=2, seed=5, shuffle_buffer=6, random_flip=True)
    assert steps == 4 and dataset.get_dataset_size() == 4
    reference = stream(uneven_clean.root, rank=0, world_size=2, random_flip=True)
    iterator = dataset.create_dict_iterator(num_epochs=2, output_numpy=True)
    for epoch in range(2):
        batches = list(iterator)
        expected = epoch_of(reference)
        assert len(batches) == 4
        images = np.concatenate([b["images"] for b in batches])
        tokens = np.concatenate([b["token_ids"] for b in batches])
        assert batches[0]["images"].shape == (4, 3, SIZE, SIZE) and images.dtype == np.float32
        assert tokens.dtype == np.int32 and tokens.shape == (16, 77)
        assert -1.0 <= images.min() and images.max() <= 1.0
        assert np.array_equal(images, np.stack([x["image"] for x in expected]))
        assert np.array_equal(tokens, np.stack([x["token_ids"] for x in expected]))
    resumed, _ = build_dataset("files", uneven_clean.root, fake_tokenizer, image_size=SIZE, batch_size=4, rank=0,
                               world_size=2, num_workers=0, seed=5, start_step=3, epoch=1)
    assert resumed.get_dataset_size() == 1  # the resumed epoch: step 3 of 0..3
    assert len(list(resumed.create_tuple_iterator(num_epochs=1))) == 1


@pytest.mark.timeout(120)
def test_resume_on_dirty_data_keeps_the_step_count(tmp_path):
    make_dirty_dataset(tmp_path)
    full = stream(tmp_path, rank=1, world_size=2, batch_size=4)
    resumed = stream(tmp_path, rank=1, world_size=2, batch_size=4, start_step=2)
    keys_full = [x["key"] for x in epoch_of(full)]
    keys_resumed = [x["key"] for x in epoch_of(resumed)]
    assert len(keys_full) == 28 and len(keys_resumed) == 28 - 2 * 4
    # per worker (outputs alternate between the 2 workers), the resumed run is a window of the full run
    # that starts at most "bad samples skipped" places early: exact resume on clean data, a shift here
    shifts = []
    for w in range(2):
        full_w, resumed_w = keys_full[w::2], keys_resumed[w::2]  # 4 outputs of each worker skipped
        shifts.append(next(s for s in range(5) if resumed_w == full_w[4 - s : 14 - s]))
    assert all(0 <= s <= 4 for s in shifts), shifts


RANK_SCRIPT = """
import json, sys
from mindone.data.loader import build_sample_stream
from tests.helpers.synthetic_data import fake_tokenizer  # run with the checkout as working directory
stream = build_sample_stream("webdataset", sys.argv[1], fake_tokenizer, image_size=32, batch_size=4, num_workers=2)
print(json.dumps([x["key"] for x in stream]))
"""


@pytest.mark.timeout(120)
def test_ranks_from_the_environment_in_separate_processes(uneven_clean):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    procs = [
        subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, str(uneven_clean.root)], cwd=repo,
                         env={**os.environ, "RANK_ID": str(r), "RANK_SIZE": "2"}, stdout=subprocess.PIPE, text=True)
        for r in range(2)
    ]
    keys = [json.loads(p.communicate(timeout=100)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len(keys[0]) == len(keys[1]) == 16
    assert sorted(keys[0] + keys[1]) == sorted(uneven_clean.good_keys)
    assert keys[1] == [x["key"] for x in epoch_of(stream(uneven_clean.root, rank=1, world_size=2, seed=0,
                                                         shuffle_buffer=1000))]


@pytest.mark.timeout(120)
def test_one_small_shard_split_over_two_ranks_pads_with_real_samples(tmp_path):
    # 5 samples, 2 ranks x batch 3: the pad policy makes a rank wrap back into the same shard.
    make_clean_dataset(tmp_path, num_shards=1, per_shard=5)
    streams = [stream(tmp_path, batch_size=3, rank=r, world_size=2, num_workers=0, uneven="pad") for r in range(2)]
    per_rank = [epoch_of(s) for s in streams]
    assert [len(x) for x in per_rank] == [3, 3]
    assert all(s.last_epoch_counts["truncated_shard"] == 0 for s in streams)  # the repeat is read, not refilled
    keys = [x["key"] for rank in per_rank for x in rank]
    assert set(keys) == {f"{i:09d}" for i in range(5)}  # every sample seen, the sixth is a repeat


@pytest.mark.timeout(120)
@pytest.mark.parametrize("dataset_type", ["webdataset", "files"])
def test_drop_list_filter(uneven_clean, dataset_type, tmp_path):
    listed = sorted(uneven_clean.good_keys)[::3]
    drop = tmp_path / "drop.txt"
    drop.write_text("".join(f"part_1/{k[:5]}/{k}\n" for k in listed) + "part_2/00000/000000001\n")
    s = stream(uneven_clean.root, dataset_type, filters={"drop_list": str(drop)}, batch_size=2)
    keys = {x["key"] for x in epoch_of(s)}
    assert keys == set(uneven_clean.good_keys) - set(listed)  # part_2's 000000001 is another sample
    assert s.last_epoch_counts["filtered_drop_list"] >= len(listed)
