"""The synthetic LAION-like data of tests/helpers/synthetic_data.py honours the on-disk contract."""

from __future__ import annotations

import tarfile

import pandas as pd

from tests.helpers.synthetic_data import make_clean_dataset, make_dirty_dataset


def test_layout_matches_the_annotation_contract(tmp_path):
    data = make_clean_dataset(tmp_path, num_shards=2, per_shard=3)
    stats = pd.read_csv(tmp_path / "part_1_stats.csv")
    assert list(stats.columns) == ["file_path", "num_samples"]
    for path, n in zip(stats.file_path, stats.num_samples):
        names = tarfile.open(tmp_path / path).getnames()
        assert len({name.split(".")[0] for name in names}) == n
    csv = pd.read_csv(tmp_path / "part_1.csv")
    assert list(csv.columns) == ["dir", "text"] and len(csv) == 6
    assert all((tmp_path / d).is_file() for d in csv["dir"])
    assert data.good_keys == [f"{s:05d}{i:04d}" for s in range(2) for i in range(3)]


def test_dirty_dataset_really_is_dirty(tmp_path):
    data = make_dirty_dataset(tmp_path)
    with tarfile.open(tmp_path / "part_1" / "00003.tar", "r") as tar:
        try:
            for info in tar:
                tar.extractfile(info).read()
            truncated = False
        except tarfile.TarError:
            truncated = True
    assert truncated
    shard3 = [m.good for m in data.shards[3]]
    assert any(shard3) and not all(shard3)
    assert not any(m.good for m in data.shards[2])
    assert [m.good for m in data.shards[0]] == [True, False, False, False, False, True, True, True, True, True]
