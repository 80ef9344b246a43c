"""Atomic outputs: all or nothing, and made with the permissions of an ordinary file."""

import os
import stat

import pytest

from medclassify.atomic import atomic_path, atomic_write_json, atomic_write_text, remove_stale_temporaries


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


@pytest.fixture
def disk_calls(monkeypatch):
    """The fsync and replace calls of the test, in order: ("fsync", (st_dev, st_ino) of the synced file) or ("replace", target)."""
    calls = []
    fsync, replace = os.fsync, os.replace

    def recording_fsync(fd):
        stat_result = os.fstat(fd)
        calls.append(("fsync", (stat_result.st_dev, stat_result.st_ino)))
        fsync(fd)

    def recording_replace(source, target):
        calls.append(("replace", os.fspath(target)))
        replace(source, target)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    return calls


def identity(path):
    stat_result = os.stat(path)
    return stat_result.st_dev, stat_result.st_ino


def test_the_data_reach_the_disk_before_the_rename_and_the_rename_before_returning(tmp_path, disk_calls):
    # A file system may persist a rename before the data: after a power loss the file would be
    # there, complete-looking and empty. The rename itself lives in the folder's entries.
    target = tmp_path / "out" / "metrics.json"
    atomic_write_json(target, {"auc": 0.9})
    assert disk_calls == [("fsync", identity(target)), ("replace", os.fspath(target)),
                          ("fsync", identity(target.parent))]


def test_a_failed_write_syncs_and_renames_nothing(tmp_path, disk_calls):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "model.keras") as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert disk_calls == []


def test_a_folder_that_cannot_be_opened_is_not_synced(tmp_path, disk_calls, monkeypatch):
    # Windows cannot open a folder; the file is still synced and written.
    target = tmp_path / "metrics.json"
    opened = os.open

    def open_files_only(path, flags, *args):
        if os.path.isdir(path):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return opened(path, flags, *args)

    monkeypatch.setattr(os, "open", open_files_only)
    atomic_write_text(target, "x")
    assert target.read_text() == "x"
    assert disk_calls == [("fsync", identity(target)), ("replace", os.fspath(target))]


def test_a_staged_folder_is_synced_file_by_file_before_it_replaces_the_old_one(tmp_path, disk_calls):
    from medclassify.datasets._output import staged_folder

    target = tmp_path / "images"
    with staged_folder(target) as staging:
        (staging / "sub").mkdir()
        for name in ("a.png", "sub/b.png"):
            (staging / name).write_bytes(b"png")
    synced_before_rename = {synced for _, synced in disk_calls[:disk_calls.index(("replace", os.fspath(target)))]}
    assert {identity(p) for p in (target / "a.png", target / "sub" / "b.png", target / "sub", target)} <= synced_before_rename
    assert disk_calls[-1] == ("fsync", identity(tmp_path))


def test_stale_temporaries_of_atomic_writes_are_removed_and_nothing_else(tmp_path):
    # A SIGKILL runs no clean-up: each kill of a training left a partial model (helper-82). Only
    # the named outputs' temporary files go, and only in the folder given (helper-86: another
    # job's block or predictions beside or below it were deleted while being written).
    with atomic_path(tmp_path / "model.keras", suffix=".partial.keras") as tmp:
        left = [tmp, tmp.with_name(tmp.name.replace("model.keras", "history.csv").replace(".partial.keras", ".tmp"))]
    (tmp_path / "cache").mkdir()
    kept = [tmp_path / name for name in (".gitignore", ".model.keras", "model.keras", ".notes.txt.backup_1.tmp",
                                         ".predictions.csv.k9x8y7z6.tmp", "cache/.model.keras.ab12cd34.tmp")]
    for path in left + kept:
        path.write_text("x")
    assert remove_stale_temporaries(tmp_path, r"model\.keras|history\.csv") == 2
    assert not any(path.exists() for path in left) and all(path.exists() for path in kept)
    assert remove_stale_temporaries(tmp_path / "nowhere", "x") == 0


def test_sigterm_ends_a_stage_through_its_clean_up(tmp_path):
    # Slurm ends a job past its time limit with SIGTERM, which ended Python at once and left the
    # temporary files of the write it interrupted (helper-82).
    import signal
    import subprocess
    import sys
    import time

    script = """
import sys, time
from medclassify.atomic import atomic_path
from medclassify.runlog import log_output
with log_output(sys.argv[2]):
    with atomic_path(sys.argv[1]) as tmp:
        tmp.write_text("half")
        time.sleep(60)
"""
    process = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "out.txt"), str(tmp_path / "job.log")],
                               cwd=os.path.dirname(os.path.dirname(__file__)))
    for _ in range(600):  # until the write is under way
        if any(p.read_text() == "half" for p in tmp_path.glob(".out.txt.*")):
            break
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 128 + signal.SIGTERM
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.log"]
    assert "terminated (SIGTERM)" in (tmp_path / "job.log").read_text()
