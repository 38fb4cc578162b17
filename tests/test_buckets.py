"""Aspect-ratio buckets: bucket sizes, window composition, and the bucketed stream's epoch promises."""

from __future__ import annotations

import numpy as np
import pytest

from mindone.data.buckets import BucketSpec, compose_window
from mindone.data.loader import build_sample_stream
from mindone.errors import ConfigError
from tests.helpers.synthetic_data import fake_tokenizer, make_clean_dataset

SPEC = BucketSpec(resolution=32, min_side=16, max_side=64, step=8)


def test_bucket_sizes_follow_sd_scripts_at_512():
    spec = BucketSpec(resolution=512)  # min 256, max 1024, step 64, aspect <= 4: sd-scripts' defaults
    # sd-scripts' list at 512: for each width the tallest height of area <= 512^2, both orientations
    assert spec.sizes == ((256, 1024), (256, 960), (256, 896), (256, 832), (320, 768), (320, 704), (384, 640),
                          (448, 576), (512, 512), (576, 448), (640, 384), (704, 320), (768, 320), (832, 256),
                          (896, 256), (960, 256), (1024, 256))
    assert all(w * h <= 512 * 512 and w % 64 == 0 and h % 64 == 0 for w, h in spec.sizes)
    assert BucketSpec(resolution=512, max_aspect=2.0).sizes == ((384, 640), (448, 576), (512, 512), (576, 448),
                                                               (640, 384))
    assert spec.sizes[int(spec.nearest(np.log(1920 / 1080)))] == (640, 384)
    with pytest.raises(ConfigError, match="multiples of the step"):
        BucketSpec(resolution=500)


@pytest.mark.parametrize("seed", range(5))
def test_a_window_becomes_whole_batches_of_one_bucket_each_with_every_sample_once(seed):
    rng = np.random.default_rng(seed)
    batch = 4
    aspects = np.log(rng.uniform(0.4, 2.5, size=12 * batch))
    batches = compose_window(aspects, SPEC, batch)
    assert len(batches) == 12
    members = np.concatenate([b.members for b in batches])
    assert sorted(members.tolist()) == list(range(12 * batch))  # each sample exactly once
    own = SPEC.nearest(aspects)
    for b in batches:
        assert len(b.members) == batch
        assert b.moved == int(np.sum(own[b.members] != b.bucket))
        if b.moved:  # moved samples go to a neighbouring bucket, never across the range
            assert np.all(np.abs(own[b.members] - b.bucket) <= len(SPEC.sizes) - 1)
    assert sum(b.moved for b in batches) < len(SPEC.sizes) * batch  # only the per-bucket leftovers move
    firsts = [int(b.members.min()) for b in batches]
    assert firsts == sorted(firsts)  # emitted in stream order
    again = compose_window(aspects, SPEC, batch)
    assert all(np.array_equal(a.members, b.members) and a.bucket == b.bucket for a, b in zip(batches, again))


def _stream(root, **kw):
    args = dict(image_size=32, batch_size=2, world_size=2, num_workers=0, seed=3, buckets=SPEC, bucket_window=3,
                random_crop=True, random_flip=True)
    return build_sample_stream("webdataset", root, fake_tokenizer, **{**args, **kw})


@pytest.mark.parametrize("num_workers", [0, 2])
def test_bucketed_epochs_keep_the_plan_promises_and_resume_exactly(tmp_path, num_workers):
    data = make_clean_dataset(tmp_path, num_shards=3, per_shard=8)  # 24 images, sides 36-71 px
    ranks = [_stream(tmp_path, rank=r, num_workers=num_workers) for r in range(2)]
    assert ranks[0].steps_per_epoch == ranks[1].steps_per_epoch == 6
    epochs = [[list(s) for s in ranks] for _ in range(2)]
    for epoch in epochs:
        keys = [k for rank in epoch for batch in rank for k in batch["keys"]]
        assert sorted(keys) == sorted(data.good_keys)  # each sample once per epoch, over both ranks
        for rank in epoch:
            assert len(rank) == 6
            for batch in rank:
                h, w = batch["images"].shape[2:]
                assert (w, h) in SPEC.sizes and batch["images"].shape[:2] == (2, 3)
                assert batch["images"].dtype == np.float32 and -1.0 <= batch["images"].min() <= batch["images"].max() <= 1.0
    assert len({batch["images"].shape for rank in epochs[0] for batch in rank}) > 1  # several buckets used
    assert [b["keys"] for b in epochs[0][0]] != [b["keys"] for b in epochs[1][0]]  # reshuffled per epoch
    # Resume at every step of epoch 1 (mid-window and at window starts): the tail of the uninterrupted run.
    for step in range(1, 6):
        resumed = list(_stream(tmp_path, rank=1, num_workers=num_workers, start_step=step, epoch=1))
        want = epochs[1][1][step:]
        assert [b["keys"] for b in resumed] == [b["keys"] for b in want]
        assert all(np.array_equal(a["images"], b["images"]) for a, b in zip(resumed, want))


def test_buckets_refuse_cached_latents(tmp_path):
    with pytest.raises(ConfigError, match="need images"):
        build_sample_stream("latents", tmp_path, fake_tokenizer, buckets=SPEC)
