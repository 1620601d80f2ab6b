"""A register that fails or dies part-way leaves no version, no rows and no files behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import func, select

from backline.core.config import Config
from backline.core.errors import NotFoundError
from backline.core.faults import FAULT_ENV, kill_at
from backline.registry import Registry, open_registry
from backline.registry import schema as s
from backline.registry.artifacts import ArtifactStore
from tests.registry.conftest import lineage, make_files


def visible(registry: Registry) -> tuple[list[tuple[str, int]], tuple[int, ...], list[str]]:
    """Everything a reader could see: models, versions, rows, and stored files."""
    with registry._engine.connect() as conn:
        counts = tuple(
            int(conn.scalar(select(func.count()).select_from(t)) or 0)
            for t in (s.models, s.versions, s.blobs, s.artifacts)
        )
    files = sorted(sha for sha, _ in registry.store.stored())
    return (
        [(m.name, m.versions) for m in registry.list_models()],
        counts,
        files,
    )


@pytest.mark.parametrize("fail_at", [1, 2, 3])
def test_failure_mid_register_leaves_nothing(
    registry: Registry,
    files: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fail_at: int,
) -> None:
    # v1 holds model.pt; the failing v2 shares it and adds two new files.
    registry.register("fraud", {"model.pt": files["model.pt"]}, lineage(), actor="a")
    before = visible(registry)
    new = make_files(tmp_path / "new", {"a.json": b"[1]", "b.json": b"[2]"})
    calls = {"n": 0}
    real_place = ArtifactStore.place

    def failing_place(self: ArtifactStore, staged: object, *, owner: bool) -> bool:
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise OSError("disk full (injected)")
        return real_place(self, staged, owner=owner)  # type: ignore[arg-type]

    monkeypatch.setattr(ArtifactStore, "place", failing_place)
    with pytest.raises(OSError, match="injected"):
        registry.register("fraud", {**new, "model.pt": files["model.pt"]}, lineage(), actor="a")
    with pytest.raises(OSError, match="injected"):
        calls["n"] = 0
        registry.register("brand-new", {**new, "m.pt": files["model.pt"]}, lineage(), actor="a")
    monkeypatch.undo()

    assert visible(registry) == before
    with pytest.raises(NotFoundError):
        registry.get("fraud", 2)
    with pytest.raises(NotFoundError):
        registry.get("brand-new")
    assert registry.artifact_path("fraud", 1, "model.pt").read_bytes() == (
        files["model.pt"].read_bytes()
    ), "a shared file of a committed version survives the failed register"
    assert not list((registry.store.root / ".tmp").iterdir())
    retry = registry.register("fraud", {**new, "model.pt": files["model.pt"]}, lineage(), actor="a")
    assert retry.version == 2


def test_failure_in_the_database_leaves_no_files(
    registry: Registry, files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = visible(registry)

    def broken_digest(pairs: object) -> str:
        raise RuntimeError("database write failed (injected)")

    # the content digest is computed after the model row and before any file is placed
    monkeypatch.setattr(s, "content_digest", broken_digest)
    with pytest.raises(RuntimeError, match="injected"):
        registry.register("fraud", files, lineage(), actor="a")
    monkeypatch.undo()
    assert visible(registry) == before


def test_killed_register_leaves_nothing_visible(
    reg_cfg: Config, registry: Registry, files: dict[str, Path], project: Path
) -> None:
    registry.register("fraud", {"model.pt": files["model.pt"]}, lineage(), actor="a")
    before = visible(registry)
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from backline.core.config import load_config
        from backline.registry import open_registry
        from tests.registry.conftest import lineage
        cfg = load_config(Path({str(project)!r}))
        reg = open_registry(cfg)
        reg.register("fraud", {{"model.pt": Path({str(files["model.pt"])!r}),
                                "spec.json": Path({str(files["spec.json"])!r})}},
                     lineage(), actor="doomed")
        """
    )
    env = {**os.environ, FAULT_ENV: kill_at("registry_before_commit")}
    if reg_cfg.registry.uri.startswith("postgresql"):
        env["BACKLINE_REGISTRY_URI"] = reg_cfg.registry.uri
    else:
        env.pop("BACKLINE_REGISTRY_URI", None)
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=root, capture_output=True, timeout=60
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()

    models, counts, stored = visible(registry)
    assert (models, counts) == before[:2], "the killed writer's rows were rolled back"
    orphans = set(stored) - set(before[2])
    assert len(orphans) == 1, "its new file sits at its address, unreferenced"
    result = registry.gc(temp_older_than_s=0)
    assert result.orphan_files == 1
    assert visible(registry) == before
    mv = registry.register("fraud", files, lineage(), actor="a")
    assert mv.version == 2
    assert registry.artifact_path("fraud", 2, "spec.json").read_bytes() == b"{}"


def test_gc_keeps_everything_a_version_uses(registry: Registry, files: dict[str, Path]) -> None:
    registry.register("fraud", files, lineage(), actor="a")
    stray = registry.store.root / "ab" / ("ab" + "0" * 62)
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"left by a crash")
    partial = registry.store.root / ".tmp" / "x.part"
    partial.write_bytes(b"half")
    result = registry.gc(temp_older_than_s=0)
    assert (result.orphan_files, result.temp_files) == (1, 1)
    assert not stray.exists() and not partial.exists()
    for name in files:
        registry.artifact_path("fraud", 1, name)


def test_open_twice_is_harmless(reg_cfg: Config) -> None:
    with open_registry(reg_cfg) as a, open_registry(reg_cfg) as b:
        assert a.schema_version() == b.schema_version() == s.SCHEMA_VERSION
