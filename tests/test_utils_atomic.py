"""Atomic output helpers: a failure never publishes a partial file or clobbers the old one."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mindone.utils.atomic import atomic_open, atomic_path, atomic_write_text, remove_stale_temps


def test_atomic_write_replaces_content(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_error_inside_block_keeps_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_open(target) as fh:
            fh.write("half")
            raise RuntimeError("writer died")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_killed_writer_leaves_only_a_hidden_temp_that_is_swept(tmp_path):
    target = tmp_path / "part_1.parquet"
    code = (
        "import os, signal, sys\n"
        "from mindone.utils.atomic import atomic_path\n"
        f"with atomic_path({str(target)!r}) as tmp:\n"
        "    open(tmp, 'w').write('partial')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code])
    assert proc.returncode != 0
    assert not target.exists()
    assert list(tmp_path.glob("part_*.parquet")) == []
    assert remove_stale_temps(tmp_path) == 1
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_yields_path_in_same_directory(tmp_path):
    target = tmp_path / "sub" / "file.bin"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent
        tmp.write_bytes(b"x")
    assert target.read_bytes() == b"x"
