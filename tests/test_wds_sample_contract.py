"""One webdataset sample contract (mindone/data/wds_sample.py) for the writer of the stats csv and the loader.

The unit tests pin the contract's rules (key split, extensions and their precedence, grouping, completeness).
The contract test writes shards with every image format img2dataset 1.47 can write (with img2dataset's own
writer), and shards full of members outside the contract, then checks, per shard, that the
``num_samples`` laion_gen_data_stats.py writes, the samples the training loader yields and the count the
contract gives by hand are one number.
"""

from __future__ import annotations

import io
import json
import shlex
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mindone.data.loader import build_sample_stream
from mindone.data.tar_stream import read_samples
from mindone.data.wds_sample import CAPTION_EXT, IMAGE_EXTS, group_members, image_ext, is_sample, split_name
from tests.helpers.synthetic_data import fake_tokenizer
from tests.helpers.tools import load_tool

laion_gen_data_stats = load_tool("laion_gen_data_stats")

# -- the rules ---------------------------------------------------------------------------------------------------


def test_key_is_the_path_up_to_the_first_dot_of_the_base_name():
    assert split_name("000010023.jpg") == ("000010023", "jpg")
    assert split_name("dir.v1/000010023.seg.JSON") == ("dir.v1/000010023", "seg.json")
    assert split_name("part/sub/k.TXT") == ("part/sub/k", "txt")
    assert split_name("./k.jpg") == ("./k", "jpg")
    assert split_name("x.") == ("x", "")  # an empty extension: a member, of no use
    for ignored in ("README", "d/README", ".hidden.jpg", "d/.jpg", "d.e/noext", ""):
        assert split_name(ignored) is None, ignored


def test_extension_sets_and_image_precedence():
    assert IMAGE_EXTS == ("jpg", "jpeg", "png", "webp") and CAPTION_EXT == "txt"
    assert image_ext({"webp", "png", "jpg", "txt"}) == "jpg"
    assert image_ext({"webp", "png"}) == "png" and image_ext({"webp", "jpeg"}) == "jpeg"
    assert image_ext({"bmp", "gif", "seg.jpg", "txt"}) is None
    assert is_sample({"jpg", "txt"}) and is_sample({"webp", "txt", "json"})
    for exts in ({"jpg"}, {"txt", "json"}, {"gif", "txt"}, {"bmp", "txt"}, {"jpg", "caption"}, {"jpg", "text"}, set()):
        assert not is_sample(exts), exts
    latents = ("moments.npy",)
    assert is_sample({"moments.npy", "txt"}, payload=latents) and not is_sample({"jpg", "txt"}, payload=latents)


def test_consecutive_members_group_and_a_returning_key_is_a_new_group():
    names = ["a.jpg", "a.txt", "README", "a.json",  # an ignored member does not split a group
             "b.jpg", "b.txt", "a.jpg", "a.txt",  # key a again, after b: a second sample a
             "c.jpg", "d.txt", "c.txt",  # c is split by d: two incomplete groups
             "e.jpg", "e.txt", "e.txt"]  # fmt: skip  # a repeated extension replaces the earlier member
    members = [(n, i) for i, n in enumerate(names)]
    groups = [(key, {ext: m[1] for ext, m in g.items()}) for key, g in group_members(members)]
    assert groups == [("a", {"jpg": 0, "txt": 1, "json": 3}), ("b", {"jpg": 4, "txt": 5}),
                      ("a", {"jpg": 6, "txt": 7}), ("c", {"jpg": 8}), ("d", {"txt": 9}), ("c", {"txt": 10}),
                      ("e", {"jpg": 11, "txt": 13})]  # fmt: skip
    assert [key for key, g in groups if is_sample(g)] == ["a", "b", "a", "e"]
    assert [split_name(n)[0] for n in names if split_name(n)] == [n.split(".")[0] for n in names if n != "README"]


# -- shards ------------------------------------------------------------------------------------------------------

COLOURS = {"red": (220, 20, 20), "blue": (20, 20, 220)}


def image(fmt: str, colour: str = "red", size: tuple[int, int] = (48, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, COLOURS[colour]).save(buf, format=fmt)
    return buf.getvalue()


def img2dataset_shard(part: Path, shard: int, encode_format: str, n: int, save_caption: bool = True) -> None:
    """A shard written by img2dataset 1.47's own webdataset writer, and the ``_stats.json`` its downloader adds."""
    import pyarrow as pa
    from img2dataset.writer import WebDatasetSampleWriter

    schema = pa.schema([("key", pa.string()), ("caption", pa.string()), ("status", pa.string())])
    writer = WebDatasetSampleWriter(shard, str(part), save_caption, 5, schema, encode_format)
    fmt = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[encode_format]
    for i in range(n):
        key = f"{shard:05d}{i:04d}"
        record = {"key": key, "caption": f"c{i}", "status": "success"}
        writer.write(image(fmt), key, f"a {encode_format} picture {i}", record)
    writer.close()
    stats = {"count": n, "successes": n, "failed_to_download": 0, "failed_to_resize": 0}
    (part / f"{shard:05d}_stats.json").write_text(json.dumps(stats))


def tar_shard(part: Path, shard: int, members: list[tuple[str, bytes]], images: int) -> None:
    """A shard from ``(name, bytes)`` members; ``images``: the groups with an image (its ``successes``)."""
    with tarfile.open(part / f"{shard:05d}.tar", "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        folder = tarfile.TarInfo("subdir")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
    (part / f"{shard:05d}_stats.json").write_text(json.dumps({"count": images, "successes": images}))


def sample(key: str, **members: bytes) -> list[tuple[str, bytes]]:
    return [(f"{key}.{ext.replace('_', '.')}", data) for ext, data in members.items()]


def caption(text: str) -> bytes:
    return text.encode()


def meta(key: str) -> bytes:
    return json.dumps({"key": key, "status": "success"}).encode()


def outside_the_contract(part: Path) -> dict[str, int]:
    """Shard 5: members the contract does not make samples of, between good ones; returns the expected keys."""
    k = [f"00005{i:04d}" for i in range(20)]
    members = [
        *sample(k[0], jpg=image("JPEG"), txt=caption("good"), json=meta(k[0])),
        *sample(k[1], gif=image("GIF"), txt=caption("gif image")),  # no image of the contract
        *sample(k[2], bmp=image("BMP"), txt=caption("bmp image")),
        *sample(k[3], jpg=image("JPEG"), caption=caption("a .caption caption"), json=meta(k[3])),  # no caption member
        *sample(k[4], jpg=image("JPEG"), text=caption("a .text caption")),
        *sample(k[5], json=meta(k[5])),  # orphan json
        *sample(k[6], txt=caption("caption only")),
        *sample(k[7], jpg=image("JPEG"), json=meta(k[7])),  # image only
        ("README", b"not a sample member"), (".hidden.jpg", image("JPEG")), (".hidden.txt", b"hidden"),
        *sample(k[8], seg_jpg=image("JPEG"), txt=caption("seg.jpg is no image extension")),
        *sample(k[9], jpeg=image("JPEG"), txt=caption("jpeg spelling")),  # a sample
        *sample(k[10], jpg=image("JPEG"), TXT=caption("upper case extension")),  # a sample: extensions lower-cased
        *sample(k[11], jpg=image("JPEG")), *sample(k[12], txt=caption("x")), *sample(k[11], txt=caption("split")),
        *sample(k[13], jpg=image("JPEG"), txt=caption("first of a returning key")),
        *sample(k[14], png=image("PNG"), txt=caption("between")),
        *sample(k[13], webp=image("WEBP"), txt=caption("the returning key: a second sample")),
        *sample(k[15], png=image("PNG", "blue"), jpg=image("JPEG", "red"), txt=caption("jpg wins over png")),
        *sample(k[16], jpg=image("JPEG"), txt=b"", json=json.dumps({"caption": "from the json"}).encode()),
    ]
    # groups with an image of the contract: k0 k3 k4 k7 k9 k10 k11 k13 k14 k13 k15 k16
    tar_shard(part, 5, members, images=12)
    return {k[0]: 1, k[9]: 1, k[10]: 1, k[13]: 2, k[14]: 1, k[15]: 1, k[16]: 1}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, dict[int, dict[str, int]]]:
    """part_1: img2dataset shards (jpg, png, webp; one without captions) and the shard outside the contract;
    ``expected``: shard -> {key: times the loader yields it}, from the contract by hand."""
    root = tmp_path_factory.mktemp("wds")
    part = root / "part_1"
    part.mkdir()
    expected: dict[int, dict[str, int]] = {}
    for shard, (fmt, n) in enumerate([("jpg", 4), ("png", 3), ("webp", 3)]):
        img2dataset_shard(part, shard, fmt, n)
        expected[shard] = {f"{shard:05d}{i:04d}": 1 for i in range(n)}
    img2dataset_shard(part, 3, "jpg", 2, save_caption=False)  # no caption column: image and json only
    expected[3] = {}
    k = [f"00004{i:04d}" for i in range(3)]  # the three formats in one shard, as a reshard would mix them
    members = [*sample(k[0], webp=image("WEBP"), txt=caption("w"), json=meta(k[0])),
               *sample(k[1], png=image("PNG"), txt=caption("p"), json=meta(k[1])),
               *sample(k[2], jpg=image("JPEG"), txt=caption("j"), json=meta(k[2]))]  # fmt: skip
    tar_shard(part, 4, members, images=3)
    expected[4] = dict.fromkeys(k, 1)
    expected[5] = outside_the_contract(part)
    assert laion_gen_data_stats.main(["--data_dir", str(root), "--strict"]) in (0, None)
    return root, expected


def test_stats_csv_and_loader_agree_with_the_contract_per_shard(data):
    root, expected = data
    stats = pd.read_csv(root / "part_1_stats.csv")
    csv_counts = {int(Path(p).stem): n for p, n in zip(stats.file_path, stats.num_samples)}
    assert csv_counts == {shard: sum(keys.values()) for shard, keys in expected.items()}
    assert csv_counts[5] == 8 and sum(csv_counts.values()) == 21
    stream = build_sample_stream("webdataset", root, fake_tokenizer, image_size=32, batch_size=1, rank=0,
                                 world_size=1, num_workers=0, shuffle=False, min_image_size=8)  # fmt: skip
    got = list(stream)
    counts = stream.last_epoch_counts
    assert counts["yielded"] == counts["read"] == len(got) == 21 and counts["refilled"] == 0, counts  # no bad sample
    yielded: dict[int, Counter] = {shard: Counter() for shard in expected}
    for x in got:
        yielded[int(x["key"][:5])][x["key"]] += 1
    for shard, keys in expected.items():
        assert dict(yielded[shard]) == keys, shard
        assert sum(yielded[shard].values()) == csv_counts[shard], shard
    # the sample with a jpg and a png is its (red) jpg; the empty caption fell back to the json's
    by_key = {x["key"]: x for x in got}
    red = by_key["000050015"]["image"]
    assert red.shape == (3, 32, 32) and red[0].mean() > 0.5 > red[2].mean()
    assert np.array_equal(by_key["000050016"]["token_ids"], fake_tokenizer(["from the json"])[0])


def test_local_and_streamed_shards_address_the_same_samples(data):
    root, expected = data
    for shard, keys in expected.items():
        path = root / "part_1" / f"{shard:05d}.tar"
        n = sum(keys.values())
        local = [s.key for _, s in read_samples(str(path), list(range(n)))]
        piped = [s.key for _, s in read_samples(f"pipe:cat {shlex.quote(str(path))}", list(range(n)), retries=0)]
        assert local == piped and Counter(local) == Counter(keys), shard
        assert list(read_samples(str(path), [n])) == [(n, "truncated_shard")]  # nothing past the count
    # the returning key is two samples, in tar order: the jpg one, then the webp one
    got = dict(read_samples(str(root / "part_1" / "00005.tar"), [3, 5]))
    assert got[3].key == got[5].key == "000050013" and "jpg" in got[3].files and "webp" in got[5].files


def test_filtered_copy_holds_the_samples_only(data, tmp_path):
    """The stats-time filter copies complete samples only, so the copy's csv counts what the loader reads."""
    root, expected = data
    out = tmp_path / "filtered"
    code = laion_gen_data_stats.main(["--data_dir", str(root), "--filtered_output_dir", str(out),
                                      "--min_aesthetic", "5"])  # no sample has the score: all pass, unjudged
    assert code in (0, None)
    stats = pd.read_csv(out / "part_1_stats.csv")
    assert dict(zip((int(Path(p).stem) for p in stats.file_path), stats.num_samples)) == {
        shard: sum(keys.values()) for shard, keys in expected.items()}  # fmt: skip
    with tarfile.open(out / "part_1" / "00005.tar") as tar:
        groups = [(key, set(g)) for key, g in group_members((n,) for n in tar.getnames())]
    assert all(is_sample(exts) for _, exts in groups) and len(groups) == 8
