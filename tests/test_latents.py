"""Cached latents: encode_latents.py writes the latent dataset, the loader and the trainer read it.

The proof that the cache is faithful: training N steps on a dataset's images and N steps on its cached
latents, from the same weights and seed, ends in the same UNet weights.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mindone.data.latents import MOMENTS_EXT, LatentInfo, read_moments
from mindone.data.loader import build_sample_stream
from mindone.errors import ConfigError
from tests.helpers.synthetic_data import fake_tokenizer, make_clean_dataset, make_dirty_dataset

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "stable_diffusion_v2"
SHAPE = (4, 8, 8)  # the tiny model's latents of 32 px images


def run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, GLOG_v="3")
    result = subprocess.run([sys.executable, str(EXAMPLES / script), *map(str, args)], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def encode(src: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return run("encode_latents.py", "--data_path", src, "--output_dir", out, "--model_config", "tiny",
               "--resolution", "32", "--batch_size", "4", "--mode", "pynative", *extra, cwd=src.parent)


def tiny_weights(path: Path) -> Path:
    import mindspore as ms

    from mindone.models.config import build_model, load_model_config
    from mindone.train.checkpoint import save_parameters

    ms.set_seed(3)
    model = build_model(load_model_config("tiny"))
    return save_parameters(list(model.parameters_and_names()), path)


def members(tar_path: Path) -> dict[str, bytes]:
    with tarfile.open(tar_path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


@pytest.mark.timeout(300)
def test_encode_writes_the_contract_skips_bad_samples_and_resumes(tmp_path):
    data = make_dirty_dataset(tmp_path / "img")
    out = tmp_path / "lat"
    encode(tmp_path / "img", out)
    info = LatentInfo.read(out)
    assert (info.channels, info.height, info.width, info.dtype) == (*SHAPE, "fp16")
    stats = (out / "part_1_stats.csv").read_text().splitlines()
    assert stats[0] == "file_path,num_samples" and len(stats) == 6
    written = {line.split(",")[0]: int(line.split(",")[1]) for line in stats[1:]}
    keys = set()
    for name, count in written.items():
        files = members(out / name)
        moments = [k for k in files if k.endswith(MOMENTS_EXT)]
        assert len(moments) == count
        for k in moments:
            array = read_moments(files[k], SHAPE)
            assert array.shape == (8, 8, 8) and np.isfinite(array).all()
            keys.add(k.split(".")[0])
    assert keys == set(data.good_keys)  # every good sample once, every bad one skipped
    counts = json.loads((out / "part_1" / "00000_stats.json").read_text())
    assert counts["corrupt_image"] == 2 and counts["tiny_image"] == 1 and counts["missing_caption"] == 1
    # Killed after shard 2: the rerun encodes shard 3 only and leaves the finished ones untouched.
    (out / "part_1" / "00003_stats.json").unlink()
    (out / "part_1" / "00003.tar").unlink()
    before = {p.name: p.stat().st_mtime_ns for p in (out / "part_1").iterdir()}
    rerun = encode(tmp_path / "img", out)
    assert "5 output shards, 5 for rank 0 of 1, 4 already done" in rerun.stderr
    after = {p.name: p.stat().st_mtime_ns for p in (out / "part_1").iterdir()}
    assert {k for k in after if after[k] != before.get(k)} == {"00003.tar", "00003_stats.json"}
    assert (out / "part_1_stats.csv").read_text().splitlines() == stats


@pytest.mark.timeout(300)
def test_the_loader_reads_latents_like_images(tmp_path):
    make_clean_dataset(tmp_path / "img", num_shards=4, per_shard=5)
    out = tmp_path / "lat"
    encode(tmp_path / "img", out, "--dtype", "fp32")
    kw = dict(image_size=32, batch_size=2, num_workers=2, seed=5, shuffle_buffer=4, latent_shape=SHAPE)
    ranks = [build_sample_stream("latents", out, fake_tokenizer, rank=r, world_size=2, **kw) for r in range(2)]
    seen = Counter(s["key"] for stream in ranks for s in stream)
    assert len(seen) == 20 and set(seen.values()) == {1}  # rank x worker coverage: each sample once
    images = build_sample_stream("webdataset", tmp_path / "img", fake_tokenizer, rank=0, world_size=2,
                                 **{k: v for k, v in kw.items() if k != "latent_shape"})
    latents = build_sample_stream("latents", out, fake_tokenizer, rank=0, world_size=2, **kw)
    image_epoch, latent_epoch = list(images), list(latents)
    assert [s["key"] for s in image_epoch] == [s["key"] for s in latent_epoch]  # the same order, shuffled
    assert all(s["image"].shape == (8, 8, 8) and s["image"].dtype == np.float32 for s in latent_epoch)
    assert all((a["token_ids"] == b["token_ids"]).all() for a, b in zip(image_epoch, latent_epoch))
    resumed = build_sample_stream("latents", out, fake_tokenizer, rank=0, world_size=2, start_step=2, **kw)
    assert [s["key"] for s in resumed] == [s["key"] for s in latent_epoch][2 * kw["batch_size"]:]  # exact resume
    uneven = dict(kw, batch_size=3)  # 20 samples over 2 ranks x 3: the uneven policy acts as for images
    for policy in ("pad", "drop"):
        got = [[s["key"] for s in build_sample_stream("latents", out, fake_tokenizer, rank=r, world_size=2,
                                                      uneven=policy, **uneven)] for r in range(2)]
        want = [[s["key"] for s in build_sample_stream(
            "webdataset", tmp_path / "img", fake_tokenizer, rank=r, world_size=2, uneven=policy,
            **{k: v for k, v in uneven.items() if k != "latent_shape"})] for r in range(2)]
        assert got == want
    with pytest.raises(ConfigError, match="random_flip"):
        build_sample_stream("latents", out, fake_tokenizer, rank=0, world_size=1, random_flip=True, **kw)
    with pytest.raises(ConfigError, match="re-encode"):
        LatentInfo.read(out).check(resolution=64, latent_shape=(4, 16, 16))


def test_crafted_moments_are_counted_not_loaded(tmp_path):
    from mindone.data.processing import SampleProcessor
    from mindone.data.tar_stream import RawSample

    pickled = io.BytesIO()
    np.save(pickled, np.array([{"x": 1}], dtype=object), allow_pickle=True)  # would run code if unpickled
    wrong = io.BytesIO()
    np.save(wrong, np.zeros((8, 4, 4), np.float32))
    nan = io.BytesIO()
    np.save(nan, np.full((8, 8, 8), np.nan, np.float32))
    process = SampleProcessor(fake_tokenizer, image_size=32, inputs="latents", latent_shape=SHAPE)
    counts: Counter = Counter()
    for data, reason in ((pickled, "corrupt_latents"), (wrong, "corrupt_latents"), (nan, "corrupt_latents"),
                         (None, "missing_latents")):
        raw = RawSample("k", {"txt": b"a caption"})
        if data is not None:
            raw.files[MOMENTS_EXT] = data.getvalue()
        assert process(raw, 0, counts) == reason


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_training_on_cached_latents_equals_training_on_the_images(tmp_path):
    # The latents run skips the VAE encoder and the text encoder (cached text embeddings, caption dropout
    # swapping in the cached empty caption), and still takes exactly the path of the images run.
    make_clean_dataset(tmp_path / "img", num_shards=3, per_shard=5)
    init = tiny_weights(tmp_path / "init.ckpt")
    encode(tmp_path / "img", tmp_path / "lat", "--dtype", "fp32", "--pretrained_model_path", init, "--cache_text")
    common = ["--config", REPO / "configs" / "train" / "tiny_cpu.yaml", "--pretrained_model_path", init,
              "--max_train_steps", "3", "--validation_steps", "1000", "--checkpointing_steps", "1000",
              "--mode", "pynative", "--caption_dropout", "0.3",
              "--validation_prompts"]  # none: the final step's validation would compile a sampler in each run
    run("train_text_to_image.py", *common, "--dataset_type", "webdataset", "--data_path", tmp_path / "img",
        "--output_dir", tmp_path / "from_images", cwd=tmp_path)
    run("train_text_to_image.py", *common, "--dataset_type", "latents", "--data_path", tmp_path / "lat",
        "--output_dir", tmp_path / "from_latents", cwd=tmp_path)
    from mindone.convert.mindspore_ckpt import read_mindspore_checkpoint

    a = read_mindspore_checkpoint(tmp_path / "from_images" / "model.ckpt")
    b = read_mindspore_checkpoint(tmp_path / "from_latents" / "model.ckpt")
    start = read_mindspore_checkpoint(init)
    unet = [k for k in a if k.startswith("model.diffusion_model.")]
    assert unet and all(np.array_equal(a[k], b[k]) for k in unet)  # bit for bit
    assert max(float(np.abs(a[k] - start[k]).max()) for k in unet) > 1e-4  # and training did move them


@pytest.mark.timeout(300)
def test_cached_text_embeddings_stand_in_for_token_ids(tmp_path):
    make_clean_dataset(tmp_path / "img", num_shards=1, per_shard=6)
    out = tmp_path / "lat"
    encode(tmp_path / "img", out, "--cache_text")
    assert LatentInfo.read(out).text_width == 32  # the tiny text tower's width
    kw = dict(image_size=32, batch_size=2, num_workers=0, rank=0, world_size=1, latent_shape=SHAPE)
    plain = {s["key"]: s["token_ids"] for s in build_sample_stream("latents", out, fake_tokenizer, **kw)}
    assert all(v.dtype == np.int32 for v in plain.values())  # without cached_text: token ids as ever
    cached = list(build_sample_stream("latents", out, fake_tokenizer, cached_text=True, caption_dropout=0.5, **kw))
    empty = np.load(out / "empty_text.npy").astype(np.float32)
    stored = {k.split(".")[0]: np.load(io.BytesIO(v)).astype(np.float32)
              for k, v in members(out / "part_1" / "00000.tar").items() if k.endswith(".text.npy")}
    dropped = [s for s in cached if np.array_equal(s["token_ids"], empty)]
    kept = [s for s in cached if not np.array_equal(s["token_ids"], empty)]
    assert dropped and kept and all(np.array_equal(s["token_ids"], stored[s["key"]]) for s in kept)
    assert all(s["token_ids"].shape == (77, 32) for s in cached)
    with pytest.raises(AssertionError, match="other settings"):
        encode(tmp_path / "img", out)  # the same folder without text: refused, not mixed


@pytest.mark.timeout(400)
def test_msrun_ranks_encode_their_own_shards(tmp_path):
    from tests.helpers.processes import free_port, kill_tree

    make_clean_dataset(tmp_path / "img", num_shards=4, per_shard=3)
    out, logs = tmp_path / "lat", tmp_path / "logs"
    env = dict(os.environ, GLOG_v="3", PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    cmd = ["msrun", "--worker_num=2", "--local_worker_num=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", f"--log_dir={logs}", "--join=True", "--cluster_time_out=300",
           str(EXAMPLES / "encode_latents.py"), "--data_path", str(tmp_path / "img"), "--output_dir", str(out),
           "--model_config", "tiny", "--resolution", "32", "--batch_size", "2", "--mode", "pynative"]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=360)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        pytest.fail("msrun encode did not finish in time")
    worker_logs = [(logs / f"worker_{r}.log").read_text(errors="replace") for r in (0, 1)]
    assert proc.returncode == 0, output[-2000:] + worker_logs[0][-2000:] + worker_logs[1][-2000:]
    for rank, text in enumerate(worker_logs):
        assert f"4 output shards, 2 for rank {rank} of 2" in text and "wrote 6 samples in 2 shards" in text
    stats = (out / "part_1_stats.csv").read_text().splitlines()
    assert stats[1:] == [f"part_1/{i:05d}.tar,3" for i in range(4)]
