"""Atomic outputs: all or nothing, and made with the permissions of an ordinary file."""

import os
import stat

import pytest

from medclassify.atomic import atomic_path, atomic_write_json, atomic_write_text


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"auc": 0.9})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == '{\n  "auc": 0.9\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_output_permissions_follow_the_umask_like_open(tmp_path):
    previous = os.umask(0o027)
    try:
        (tmp_path / "plain.txt").write_text("x")
        atomic_write_text(tmp_path / "atomic.txt", "x")
    finally:
        os.umask(previous)
    mode = {name: stat.S_IMODE((tmp_path / name).stat().st_mode) for name in ("plain.txt", "atomic.txt")}
    assert mode["atomic.txt"] == mode["plain.txt"] == 0o640
