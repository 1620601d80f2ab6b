"""Atomic, verified checkpoints: a checkpoint is all there and intact, or it is not used.

    RUN/checkpoints/
        step-000000200/            a committed checkpoint
            model.pt               model state_dict (tensors only)
            optimizer.pt           AdamW state_dict
            trainer.pt             step, data position, LR schedule, RNG states of every rank
            manifest.json          sha256 and size of each file above, step, world size
        .tmp-step-000000400-PID/   a write in progress, or one killed mid-way (removed at start)
        .trash-...                 a checkpoint being deleted (removed at start)

Saving (`CheckpointStore.save`):
    1. at a step boundary, each file's content is serialized to bytes in memory (torch.save)
    2. each file is written under .tmp-.../ and fsynced; manifest.json last, fsynced; the folder
       is fsynced; `before_commit` runs (the trainer fsyncs its loss log there)
    3. rename .tmp-... to step-N                               <- the commit point
    4. fsync checkpoints/; delete all but the newest `keep` checkpoints (renamed to .trash first)
Steps 2-4 run in a background thread, so training waits only for step 1; one save is in flight
at a time, and the next save (or `wait`) joins it first. Serializing in the training thread *is*
the snapshot: the bytes are a consistent copy of the state at that step without cloning every
tensor first, and the writer thread never touches live tensors (1.5 ms for the example model).

Loading (`load_latest`): newest first, every file is read, its size and sha256 checked against
the manifest and only then unpickled with `torch.load(weights_only=True)`. A damaged, truncated
or partial checkpoint is skipped with a note and the previous one is tried.

Tests inject faults through backline.core.faults (BACKLINE_TEST_FAULT, comma-separated):
    checkpoint_slow=SECONDS          sleep before each write stage
    checkpoint_STAGE@STEP            SIGKILL this process at STAGE of the save of step STEP;
                                     STAGE is after_first_file, before_rename or after_rename
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from backline.core.faults import maybe_fail
from backline.core.files import fsync_dir, write_synced

FORMAT = "backline.checkpoint/1"
FILES = ("model.pt", "optimizer.pt", "trainer.pt")
MANIFEST = "manifest.json"
_NAME = re.compile(r"^step-(\d{9})$")


@dataclass(frozen=True)
class Snapshot:
    """What one checkpoint holds, taken at a step boundary."""

    step: int
    world_size: int
    payloads: Mapping[str, Any]
    """File name (one of FILES) -> tensors and plain containers to torch.save. They may be the
    live training state: `save` serializes them before it returns."""
    meta: Mapping[str, str] = field(default_factory=dict)
    """Extra manifest entries (e.g. the spec digest) that a loader can check."""


@dataclass(frozen=True)
class Loaded:
    """A verified checkpoint, unpickled with weights_only=True."""

    path: Path
    step: int
    world_size: int
    meta: Mapping[str, str]
    payloads: Mapping[str, Any]


class CheckpointStore:
    """The checkpoints of one run. Only one process (rank 0) writes; any may read."""

    def __init__(
        self, root: Path, *, keep: int, before_commit: Callable[[], None] | None = None
    ) -> None:
        self.root = root
        self.keep = keep
        self.before_commit = before_commit
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.last_saved: Path | None = None

    # -- writing ------------------------------------------------------------------------------

    def prepare(self) -> list[str]:
        """Create the folder and delete leftovers of writes that never committed."""
        if not self.root.is_dir():
            self.root.mkdir(parents=True, exist_ok=True)
            fsync_dir(self.root.parent)  # else a power cut may lose the folder, and all in it
        removed = []
        for entry in self.root.iterdir():
            if entry.name.startswith((".tmp-", ".trash-")):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry.name)
        return removed

    def clear(self) -> None:
        """Delete every checkpoint (for --resume never)."""
        self.wait()
        if self.root.exists():
            for entry in sorted(self.root.iterdir()):
                self._discard(entry)
            fsync_dir(self.root)

    def save(self, snapshot: Snapshot, *, background: bool = True) -> None:
        """Commit `snapshot` as step-N: serialized here, written in a thread unless
        background=False."""
        self.wait()
        blobs = {}
        for file in FILES:
            buffer = io.BytesIO()
            torch.save(snapshot.payloads[file], buffer)
            blobs[file] = buffer.getvalue()
        if not background:
            self._commit(snapshot, blobs)
            return
        self._thread = threading.Thread(
            target=self._run, args=(snapshot, blobs), name="backline-checkpoint", daemon=True
        )
        self._thread.start()

    def wait(self) -> None:
        """Join the save in flight, re-raising its error if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _run(self, snapshot: Snapshot, blobs: Mapping[str, bytes]) -> None:
        try:
            self._commit(snapshot, blobs)
        except BaseException as exc:  # handed to the training thread by wait()
            self._error = exc

    def _commit(self, snapshot: Snapshot, blobs: Mapping[str, bytes]) -> None:
        name = step_name(snapshot.step)
        tmp = self.root / f".tmp-{name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        files: dict[str, dict[str, Any]] = {}
        for i, file in enumerate(FILES):
            maybe_fail("checkpoint_slow")
            data = blobs[file]
            write_synced(tmp / file, data)
            files[file] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
            if i == 0:
                maybe_fail("checkpoint_after_first_file", snapshot.step)
        manifest = {
            "format": FORMAT,
            "step": snapshot.step,
            "world_size": snapshot.world_size,
            "files": files,
            "meta": dict(snapshot.meta),
            "created_unix": time.time(),
        }
        maybe_fail("checkpoint_slow")
        write_synced(tmp / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
        fsync_dir(tmp)
        if self.before_commit is not None:
            self.before_commit()
        maybe_fail("checkpoint_before_rename", snapshot.step)
        final = self.root / name
        if final.exists():  # a damaged copy of this step (a good one would have been resumed)
            self._discard(final)
        os.rename(tmp, final)
        fsync_dir(self.root)
        self.last_saved = final
        maybe_fail("checkpoint_after_rename", snapshot.step)
        for old in self.committed()[: -self.keep]:
            self._discard(old)

    def _discard(self, path: Path) -> None:
        trash = self.root / f".trash-{path.name}-{os.getpid()}"
        try:
            os.rename(path, trash)
        except FileNotFoundError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    # -- reading ------------------------------------------------------------------------------

    def committed(self) -> list[Path]:
        """Checkpoint folders by step, oldest first (not yet verified)."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir() if _NAME.match(p.name) and p.is_dir()]
        return sorted(found, key=lambda p: p.name)

    def load_latest(self) -> tuple[Loaded | None, list[str]]:
        """The newest checkpoint that verifies, and a note for each newer one skipped."""
        notes: list[str] = []
        for path in reversed(self.committed()):
            try:
                return load_checkpoint(path), notes
            except CheckpointDamaged as exc:
                notes.append(f"checkpoint {path} is damaged ({exc}); skipped it")
        return None, notes


class CheckpointDamaged(Exception):
    """A checkpoint failed verification; the message says which file and how."""


def step_name(step: int) -> str:
    return f"step-{step:09d}"


def load_checkpoint(path: Path) -> Loaded:
    """Verify every file of one checkpoint against its manifest, then load it."""
    try:
        manifest = json.loads((path / MANIFEST).read_bytes())
    except FileNotFoundError:
        raise CheckpointDamaged("manifest.json is missing") from None
    except (OSError, ValueError) as exc:
        raise CheckpointDamaged(f"manifest.json is unreadable: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointDamaged(f"manifest.json is not a {FORMAT} manifest")
    match = _NAME.match(path.name)
    step = manifest.get("step")
    if match is None or step != int(match.group(1)):
        raise CheckpointDamaged(f"manifest says step {step!r}, the folder says {path.name}")
    files = manifest.get("files")
    if not isinstance(files, dict) or set(files) != set(FILES):
        raise CheckpointDamaged(f"manifest lists {sorted(files or [])}, expected {list(FILES)}")
    payloads = {}
    for name in FILES:
        try:
            data = (path / name).read_bytes()
        except OSError as exc:
            raise CheckpointDamaged(f"{name}: {exc.strerror or exc}") from None
        expected = files[name]
        if len(data) != expected.get("bytes"):
            raise CheckpointDamaged(
                f"{name} has {len(data)} bytes, the manifest says {expected.get('bytes')}"
            )
        if hashlib.sha256(data).hexdigest() != expected.get("sha256"):
            raise CheckpointDamaged(f"{name} does not match its sha256")
        try:
            payloads[name] = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointDamaged(f"{name} does not load: {type(exc).__name__}: {exc}") from None
    raw_meta = manifest.get("meta")
    meta = {str(k): str(v) for k, v in raw_meta.items()} if isinstance(raw_meta, dict) else {}
    return Loaded(path, int(step), int(manifest.get("world_size", 1)), meta, payloads)
