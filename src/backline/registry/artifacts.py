"""The content-addressed artifact store: every file once, under its sha256, verified on read.

    ROOT/ab/ab3f...e1     a stored file (read-only), named by the sha256 of its bytes
    ROOT/.tmp/            files being copied in; renamed to their address, never edited in place

The store itself knows nothing of versions: the registry database says which version holds
which file (`registry_artifacts`) and which files exist (`registry_blobs`). A file is placed
at its address only while the writer holds the database transaction that records it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from backline.core.errors import InputError, IntegrityError, StoreError, UsageError
from backline.core.files import fsync_dir

CHUNK = 1 << 20
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*")
_PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")


@dataclass(frozen=True)
class Staged:
    """A file copied into the store's temp folder, hashed, not yet at its address."""

    name: str
    sha256: str
    size: int
    tmp: Path


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path_of(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    # -- writing ---------------------------------------------------------------------------

    def stage(self, files: Mapping[str, Path]) -> list[Staged]:
        """Copy each file into the temp folder while hashing it. Checks names and contents."""
        if not files:
            raise UsageError("register needs at least one artifact file; none were given.")
        for name in files:
            check_name(name)
        tmp_dir = self.root / ".tmp"
        try:
            tmp_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create the artifact folder {tmp_dir} ({exc.strerror}). Make it writable "
                "or pass another artifact root."
            ) from None
        staged: list[Staged] = []
        try:
            for name, source in sorted(files.items()):
                staged.append(self._copy(name, Path(source), tmp_dir))
        except BaseException:
            self.discard(staged)
            raise
        return staged

    def _copy(self, name: str, source: Path, tmp_dir: Path) -> Staged:
        if not source.is_file():
            raise InputError(
                f"artifact {name!r}: {source} is not a file. Pass one file per artifact name."
            )
        tmp = tmp_dir / f"{uuid.uuid4().hex}.part"
        digest = hashlib.sha256()
        size = 0
        try:
            with source.open("rb") as src, tmp.open("xb") as dst:
                first = True
                while chunk := src.read(CHUNK):
                    if first:
                        _refuse_pickle(name, chunk)
                        first = False
                    digest.update(chunk)
                    dst.write(chunk)
                    size += len(chunk)
                dst.flush()
                os.fsync(dst.fileno())
            tmp.chmod(0o444)  # a stored artifact is never edited in place
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return Staged(name, digest.hexdigest(), size, tmp)

    def place(self, staged: Staged, *, owner: bool) -> bool:
        """Move a staged file to its address; True when the file there is now this call's.

        The rename always happens: the bytes are identical to any good copy already there, and
        it repairs a damaged or missing one. Only an `owner` (this transaction inserted the blob
        row, so no committed version uses the address yet) may delete the file again if the
        transaction fails.
        """
        dest = self.path_of(staged.sha256)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged.tmp, dest)
        fsync_dir(dest.parent)
        return owner

    def discard(self, staged: list[Staged]) -> None:
        for item in staged:
            item.tmp.unlink(missing_ok=True)

    def remove(self, sha256: str) -> None:
        self.path_of(sha256).unlink(missing_ok=True)

    # -- reading ---------------------------------------------------------------------------

    def verified(self, sha256: str, size: int, what: str) -> Path:
        """The stored file, after checking its bytes still hash to `sha256`."""
        path = self.path_of(sha256)
        if not path.is_file():
            raise IntegrityError(
                f"{what} is missing from the artifact store: no file {path}. Check that "
                f"the artifact root ({self.root}) is the one this registry wrote to, or restore "
                "the file from a backup."
            )
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
        found = digest.hexdigest()
        if found != sha256 or path.stat().st_size != size:
            raise IntegrityError(
                f"{what} is corrupted: {path} hashes to {found[:12]}..., expected "
                f"{sha256[:12]}... Restore the file from a backup or register the model again."
            )
        return path

    def stored(self) -> Iterator[tuple[str, Path]]:
        """(sha256, path) of every file at an address (not the temp folder)."""
        if not self.root.is_dir():
            return
        for shard in sorted(self.root.iterdir()):
            if shard.name.startswith(".") or not shard.is_dir():
                continue
            for path in sorted(shard.iterdir()):
                yield path.name, path

    def stale_temp_files(self, older_than_s: float) -> Iterator[Path]:
        tmp_dir = self.root / ".tmp"
        if not tmp_dir.is_dir():
            return
        now = time.time()
        for path in tmp_dir.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if now - path.stat().st_mtime > older_than_s:
                    yield path


def check_name(name: str) -> None:
    if not isinstance(name, str) or len(name) > 255 or not _NAME.fullmatch(name):
        raise UsageError(
            f"artifact name {name!r} is not allowed. Use letters, digits, '_', '.', '-' and '/' "
            "between parts, e.g. 'model.pt' or 'weights/model.safetensors'."
        )


def _refuse_pickle(name: str, head: bytes) -> None:
    # Protocol 2+ pickles start with PROTO (0x80) and the protocol number.
    if name.lower().endswith(_PICKLE_SUFFIXES) or (
        len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5
    ):
        raise UsageError(
            f"artifact {name!r} is a Python pickle, and a server never loads pickles. Save it as "
            "safetensors, TorchScript or torch.export, JSON, or Parquet."
        )
