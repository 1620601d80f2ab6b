"""core/files.py: every atomic write fsyncs the file, renames it into place, then fsyncs the
folder, in that order; a failed write leaves the target as it was and no temporary file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from backline.core.files import (
    atomic_path,
    fsync_dir,
    partial_path,
    write_bytes_atomic,
    write_text_atomic,
)

Event = tuple[str, str, int | None]


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[Event]:
    """fsync (path, size for a file) and replace (new path) calls, in order."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc/self/fd to name a file descriptor's path")
    seen: list[Event] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        size = None if os.path.isdir(path) else os.fstat(fd).st_size
        real_fsync(fd)
        seen.append(("fsync", path, size))

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        real_replace(src, dst)
        seen.append(("replace", os.path.realpath(dst), None))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return seen


def _check_order(events: list[Event], target: Path, size: int) -> None:
    real = os.path.realpath(target)
    tmp = os.path.realpath(partial_path(target))
    assert events == [
        ("fsync", tmp, size),
        ("replace", real, None),
        ("fsync", os.path.dirname(real), None),
    ]


def test_write_bytes_atomic_fsyncs_file_renames_then_fsyncs_the_folder(
    tmp_path: Path, events: list[Event]
) -> None:
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    write_bytes_atomic(target, b"new bytes")
    assert target.read_bytes() == b"new bytes"
    _check_order(events, target, 9)
    assert not partial_path(target).exists()


def test_write_text_atomic_writes_utf8(tmp_path: Path, events: list[Event]) -> None:
    target = tmp_path / "a.txt"
    write_text_atomic(target, "é\n")
    assert target.read_bytes() == "é\n".encode()
    _check_order(events, target, 3)


def test_atomic_path_commits_what_the_caller_wrote(tmp_path: Path, events: list[Event]) -> None:
    target = tmp_path / "out.csv"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_text("a,b\n")
        assert not target.exists()
    assert target.read_text() == "a,b\n"
    _check_order(events, target, 4)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer failed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]


def test_a_failed_rename_removes_the_temporary(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.mkdir()
    (target / "inside").write_text("x")  # a non-empty folder cannot be replaced by a file
    with pytest.raises(OSError):
        write_bytes_atomic(target, b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_fsync_dir_refuses_a_file(tmp_path: Path) -> None:
    file = tmp_path / "f"
    file.write_text("x")
    with pytest.raises(NotADirectoryError):
        fsync_dir(file)
