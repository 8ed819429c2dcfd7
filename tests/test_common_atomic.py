"""tensorf_common.atomic: the one atomic writer (text, bytes, JSON): the text is written as given,
a failed write keeps the old file and leaves no temporary, permissions are the ordinary ones."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tensorf_common import atomic


def test_text_is_utf8_with_line_endings_kept(tmp_path):
    p = atomic.write_text(tmp_path / "sub" / "a.csv", "name,psnr\r\nr_0,31.9 µ\n", fsync=True)
    assert p.read_bytes() == "name,psnr\r\nr_0,31.9 µ\n".encode("utf-8")


def test_bytes_and_json(tmp_path):
    assert atomic.write_bytes(tmp_path / "b.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    p = atomic.write_json(tmp_path / "c.json", {"n": np.int64(3), "x": np.float32(0.5), "a": np.arange(2)})
    assert p.read_text() == '{\n "n": 3,\n "x": 0.5,\n "a": [\n  0,\n  1\n ]\n}\n'


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    p = atomic.write_text(tmp_path / "a.txt", "old")
    with pytest.raises(TypeError):
        atomic.write_text(p, b"not text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        atomic.write_json(p, {"x": object()})
    assert p.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["a.txt"]


def test_ordinary_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        p = atomic.write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(mask)
    assert p.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600


def test_atomic_dir_replaces_the_folder_whole_or_not_at_all(tmp_path):
    """A reader sees the old folder or the whole new one; a failure half-way leaves the old one and
    no temporary folder (an evaluation that fails on its second render leaves no renders)."""
    target = tmp_path / "eval"
    with atomic.atomic_dir(target) as tmp:
        (tmp / "r_0.png").write_bytes(b"new")
        (tmp / "depth").mkdir()
        assert not target.exists()
    assert sorted(p.name for p in target.iterdir()) == ["depth", "r_0.png"]
    with pytest.raises(RuntimeError):
        with atomic.atomic_dir(target) as tmp:
            (tmp / "r_1.png").write_bytes(b"partial")
            raise RuntimeError("render 2 is not finite")
    assert sorted(p.name for p in target.iterdir()) == ["depth", "r_0.png"]
    with atomic.atomic_dir(target) as tmp:  # a successful second write replaces every old file
        (tmp / "r_2.png").write_bytes(b"newer")
    assert sorted(p.name for p in target.iterdir()) == ["r_2.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval"]
    with pytest.raises(KeyboardInterrupt):
        with atomic.atomic_dir(tmp_path / "fresh") as tmp:
            (tmp / "x").write_bytes(b"x")
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval"]
