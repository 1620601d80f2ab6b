"""Checkpoints commit atomically, verify on load, and a damaged one is skipped for an older one."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
import torch

from backline.train.checkpoint import FILES, CheckpointStore, Snapshot, load_checkpoint

from .helpers import FsyncLog


def snapshot(step: int) -> Snapshot:
    return Snapshot(
        step=step,
        world_size=2,
        payloads={
            "model.pt": {"w": torch.full((3,), float(step))},
            "optimizer.pt": {"state": {0: {"step": torch.tensor(float(step))}}, "groups": [1]},
            "trainer.pt": {"step": step, "rng": [{"torch": torch.arange(4, dtype=torch.uint8)}]},
        },
        meta={"spec": "abc"},
    )


def store_with(tmp_path: Path, steps: list[int], keep: int = 10) -> CheckpointStore:
    store = CheckpointStore(tmp_path / "checkpoints", keep=keep)
    store.prepare()
    for step in steps:
        store.save(snapshot(step))
    store.wait()
    return store


def test_save_commits_a_verified_folder(tmp_path: Path) -> None:
    store = store_with(tmp_path, [10])
    folder = store.root / "step-000000010"
    assert sorted(p.name for p in store.root.iterdir()) == ["step-000000010"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["step"] == 10 and manifest["world_size"] == 2
    assert set(manifest["files"]) == set(FILES) and manifest["meta"] == {"spec": "abc"}
    assert all(len(f["sha256"]) == 64 for f in manifest["files"].values())
    loaded, notes = store.load_latest()
    assert loaded is not None and notes == [] and loaded.step == 10
    assert torch.equal(loaded.payloads["model.pt"]["w"], torch.full((3,), 10.0))
    assert loaded.payloads["trainer.pt"]["rng"][0]["torch"].dtype == torch.uint8


def test_keeps_the_newest_n(tmp_path: Path) -> None:
    store = store_with(tmp_path, [10, 20, 30, 40, 50], keep=2)
    assert [p.name for p in store.committed()] == ["step-000000040", "step-000000050"]
    assert not [p for p in store.root.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda d: (d / "model.pt").write_bytes((d / "model.pt").read_bytes()[:-7]), "bytes"),
        (lambda d: _flip_byte(d / "optimizer.pt"), "sha256"),
        (lambda d: (d / "manifest.json").unlink(), "manifest.json is missing"),
        (lambda d: (d / "manifest.json").write_text("{not json"), "unreadable"),
        (lambda d: (d / "trainer.pt").unlink(), "trainer.pt"),
    ],
)
def test_a_damaged_newest_checkpoint_is_skipped(tmp_path: Path, damage, reason: str) -> None:  # type: ignore[no-untyped-def]
    store = store_with(tmp_path, [10, 20])
    damage(store.root / "step-000000020")
    loaded, notes = store.load_latest()
    assert loaded is not None and loaded.step == 10
    assert len(notes) == 1 and "step-000000020 is damaged" in notes[0] and reason in notes[0]


def test_nothing_good_means_none(tmp_path: Path) -> None:
    store = store_with(tmp_path, [10, 20])
    for folder in store.committed():
        _flip_byte(folder / "model.pt")
    loaded, notes = store.load_latest()
    assert loaded is None and len(notes) == 2


def test_partial_writes_are_invisible_and_cleaned(tmp_path: Path) -> None:
    store = store_with(tmp_path, [10])
    partial = store.root / ".tmp-step-000000020-999"
    partial.mkdir()
    (partial / "model.pt").write_bytes(b"half")
    (store.root / ".trash-step-000000005-999").mkdir()
    loaded, _ = store.load_latest()
    assert loaded is not None and loaded.step == 10
    assert sorted(store.prepare()) == [".tmp-step-000000020-999", ".trash-step-000000005-999"]
    assert [p.name for p in store.root.iterdir()] == ["step-000000010"]


def test_a_consistent_but_unsafe_pickle_is_refused(tmp_path: Path) -> None:
    """The manifest matches, but weights_only=True will not build arbitrary objects."""
    store = store_with(tmp_path, [10, 20])
    folder = store.root / "step-000000020"
    buffer = io.BytesIO()
    torch.save({"step": 20, "payload": _Evil(tmp_path / "pwned")}, buffer)
    evil = buffer.getvalue()
    torch_file = folder / "trainer.pt"
    torch_file.write_bytes(evil)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["trainer.pt"] = {
        "sha256": hashlib.sha256(evil).hexdigest(),
        "bytes": len(evil),
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    loaded, notes = store.load_latest()
    assert loaded is not None and loaded.step == 10
    assert "trainer.pt does not load" in notes[0]
    assert not (tmp_path / "pwned").exists()


def test_a_damaged_folder_of_the_same_step_is_replaced(tmp_path: Path) -> None:
    store = store_with(tmp_path, [10])
    _flip_byte(store.root / "step-000000010" / "model.pt")
    store.save(snapshot(10), background=False)
    assert load_checkpoint(store.root / "step-000000010").step == 10


def test_a_failed_background_save_surfaces_on_wait(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").write_text("a file where the folder should be")
    store = CheckpointStore(tmp_path / "checkpoints", keep=2)
    store.save(snapshot(10))
    with pytest.raises(OSError):
        store.wait()
    store.wait()  # reported once


# -- durability: what was fsynced, in what order, relative to the commit point ---------------


def assert_committed_durably(log: FsyncLog, root: Path, step: int) -> int:
    """Each file of the checkpoint was fsynced holding all its bytes, then its temporary folder,
    then the rename committed it, then `root` was fsynced. Returns the rename's position."""
    final = root / f"step-{step:09d}"
    commit = log.index("rename", final)
    prefix = f".tmp-step-{step:09d}-"
    tmps = {
        p
        for k, p, _ in log.events[:commit]
        if k == "fsync" and p.parent == root and p.name.startswith(prefix)
    }
    assert len(tmps) == 1, f"expected its temporary folder fsynced before the commit: {tmps}"
    tmp = tmps.pop()
    manifest = json.loads((final / "manifest.json").read_text())
    sizes = {name: f["bytes"] for name, f in manifest["files"].items()}
    sizes["manifest.json"] = (final / "manifest.json").stat().st_size
    last_file = 0
    for name, size in sizes.items():
        at = log.index("fsync", tmp / name)
        assert log.events[at][2] == size, f"{name} was fsynced before all its bytes were written"
        last_file = max(last_file, at)
    folder = log.index("fsync", tmp, last_file)
    assert last_file < folder < commit, (
        "the folder must be fsynced after its files, before the rename"
    )
    assert log.index("fsync", root, commit) > commit, "the rename itself must be made durable"
    return commit


@pytest.mark.parametrize("background", [False, True])
def test_every_file_and_folder_is_fsynced_before_the_commit_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, background: bool
) -> None:
    """A SIGKILL test cannot see a missing fsync (the page cache outlives the process); a power
    cut would. So pin the order: each file is fsynced with all its bytes, then the temporary
    folder, then before_commit runs (the trainer syncs its loss log there), then the rename
    commits, then the parent folder is fsynced, all before save (or wait) returns."""
    log = FsyncLog(monkeypatch)
    store = CheckpointStore(
        tmp_path / "checkpoints", keep=2, before_commit=lambda: log.mark("before_commit")
    )
    store.prepare()
    store.save(snapshot(10), background=background)
    store.wait()
    root = store.root.resolve()
    commit = assert_committed_durably(log, root, 10)
    assert log.index("fsync", root.parent) < commit, "the new checkpoints folder is not durable"
    hook = log.index("before_commit", Path())
    tmp_synced = max(i for i, (k, p, _) in enumerate(log.events) if k == "fsync" and p != root)
    assert tmp_synced < hook < commit
    assert [k for k, _, _ in log.events].count("rename") == 1


def test_later_saves_and_clear_are_durable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = store_with(tmp_path, [10], keep=2)
    log = FsyncLog(monkeypatch)
    for step in (20, 30):  # 30 also deletes step 10 (keep=2)
        store.save(snapshot(step))
    store.wait()
    root = store.root.resolve()
    assert assert_committed_durably(log, root, 20) < assert_committed_durably(log, root, 30)
    # --resume never: the deletions are made durable before clear() returns
    log.events.clear()
    store.clear()
    assert store.committed() == [] and log.events[-1][:2] == ("fsync", root)


class _Evil:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.target,))


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
