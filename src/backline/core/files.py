"""Durable file writes: the one place that fsyncs files and folders and renames into place.

A write is durable only when three things reach the disk in this order: the new file's bytes
(fsync the file), its name in place of the old one (rename), and that rename itself (fsync the
folder that holds it). Without the last step a power cut can bring back the old file, or no
file at all, although the process saw the rename succeed. Every writer in backline that
replaces a file goes through this module:

    write_bytes_atomic(path, data)       a whole file from bytes
    write_text_atomic(path, text)        a whole file from text (UTF-8)
    with atomic_path(path) as tmp: ...   a file written by a library (Parquet, CSV, torch.save)

The temporary file is `NAME.partial` in the same folder (a rename across file systems is not
atomic). On any error, including one from the caller's own writer, it is removed and the
target is left as it was: the old content or the new, never half of either.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PARTIAL_SUFFIX = ".partial"


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make the entries of folder `path` (creations, renames, deletions) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Make the bytes of the file at `path` durable (written by someone else, now closed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_synced(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `path` and fsync it before returning (no rename: for files inside a
    folder that is itself renamed into place, like a checkpoint)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def partial_path(path: str | os.PathLike[str]) -> Path:
    """The temporary name a write of `path` uses: `NAME.partial` beside it."""
    path = Path(path)
    return path.with_name(path.name + PARTIAL_SUFFIX)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path` for the caller to write; on success fsync it,
    rename it to `path` and fsync the folder; on error remove it and re-raise.

    The caller must close what it wrote before the block ends."""
    target = Path(path)
    tmp = partial_path(target)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace `path` with `data`: the old content or the new, also after a power cut."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Replace `path` with `text` encoded as UTF-8, like `write_bytes_atomic`."""
    write_bytes_atomic(path, text.encode("utf-8"))
