"""Builders for the training tests: small synthetic tensors, fraud projects, worker processes."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from backline.core.config import Config, load_config
from backline.core.workspace import init_project
from backline.data.generator import GeneratorConfig, generate
from backline.data.ingest import ingest
from backline.features.repository import apply, load_definitions
from backline.train.loop import FIT_RESULT, LOSS_LOG, FitResult, TensorData, TrainSpec
from backline.train.model import ModelConfig

GENERATED = GeneratorConfig(days=40, cards=300, seed=1)


def synthetic_data(n: int = 1200, seed: int = 0) -> TensorData:
    """A learnable problem: the label depends on two numeric inputs and one category."""
    g = torch.Generator().manual_seed(seed)
    x_num = torch.randn(n, 6, generator=g)
    x_cat = torch.randint(0, 5, (n, 2), generator=g)
    score = (
        x_num[:, 0] - x_num[:, 1] + (x_cat[:, 0] == 1).float() + 0.5 * torch.randn(n, generator=g)
    )
    return TensorData(x_num, x_cat, (score > 1.0).float())


def small_spec(**overrides: object) -> TrainSpec:
    spec = TrainSpec(
        model=ModelConfig(6, (5, 5), 4, (16, 8), dropout=0.1),
        max_steps=300,
        batch_size=32,
        learning_rate=0.01,
        pos_weight=2.0,
        warmup_steps=20,
        seed=7,
        checkpoint_every=10,
        keep_checkpoints=2,
    )
    return replace(spec, **overrides)  # type: ignore[arg-type]


def worker_env(**extra: str) -> dict[str, str]:
    """One thread per process: reproducible numbers and no fight over the CPUs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKLINE_")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **extra)
    return env


def worker_command(run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "backline.train.worker", str(run_dir)]


def run_worker(run_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        worker_command(run_dir),
        env=worker_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def fit_result(run_dir: Path) -> FitResult:
    return FitResult.from_json((run_dir / FIT_RESULT).read_text())


def logged_step(run_dir: Path) -> int:
    """The last step in the loss log (0 if none)."""
    try:
        data = (run_dir / LOSS_LOG).read_bytes()
    except FileNotFoundError:
        return 0
    lines = data.split(b"\n")
    complete = [line for line in lines[:-1] if line]
    return int(complete[-1].split()[0]) if complete else 0


def wait_for(predicate: object, timeout: float = 60.0, every: float = 0.002) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(every)


def fraud_project(
    root: Path,
    *,
    labels: pa.Table | None = None,
    label_key: Sequence[str] | None = None,
    **train: object,
) -> Config:
    """A project from the fraud example with generated transactions and labels ingested.

    `label_key` replaces the primary key of the labels source in the project's backline.toml
    (e.g. transaction_id, label_time: a transaction may then have several labels, revisions)."""
    project = init_project(root)
    if label_key is not None:
        set_label_key(project, label_key)
    cfg = load_config(project, env={})
    data = generate(GENERATED)
    pq.write_table(data.transactions, project / "data" / "transactions.parquet")
    pq.write_table(data.labels if labels is None else labels, project / "data" / "labels.parquet")
    for source in ("transactions", "labels"):
        result = ingest(cfg, source, project / "data" / f"{source}.parquet")
        assert result.rows_quarantined == 0, result.quarantine_reasons
    apply(cfg, load_definitions(cfg))
    return with_train(cfg, **train)


def set_label_key(project: Path, key: Sequence[str]) -> None:
    """Declare `key` as the primary key of [sources.labels] in the project's backline.toml."""
    toml = project / "backline.toml"
    head, sep, tail = toml.read_text().partition("[sources.labels]")
    new = "primary_key = [" + ", ".join(f'"{k}"' for k in key) + "]"
    tail, found = re.subn(r"(?m)^primary_key = \[.*\]$", new, tail, count=1)
    assert sep and found, "the example's [sources.labels] has no primary_key line"
    toml.write_text(head + sep + tail)


def with_train(cfg: Config, **train: object) -> Config:
    return replace(cfg, train=replace(cfg.train, **train))  # type: ignore[arg-type]


def generated_labels() -> pa.Table:
    return generate(GENERATED).labels


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class FsyncLog:
    """Records, in order, every os.fsync (the file descriptor's path and, for a file, its size
    at that moment) and every os.rename or os.replace (as "rename", with the new path), in this
    process, while the test runs."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        if not Path("/proc/self/fd").is_dir():
            pytest.skip("needs /proc/self/fd to name a file descriptor's path")
        self.events: list[tuple[str, Path, int | None]] = []
        real_fsync, real_rename = os.fsync, os.replace

        def fsync(fd: int) -> None:
            path = Path(os.readlink(f"/proc/self/fd/{fd}"))
            info = os.fstat(fd)
            size = info.st_size if stat.S_ISREG(info.st_mode) else None
            real_fsync(fd)
            self.events.append(("fsync", path, size))

        def rename(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
            real_rename(src, dst)
            self.events.append(("rename", Path(dst).resolve(), None))

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "rename", rename)
        monkeypatch.setattr(os, "replace", rename)

    def mark(self, what: str) -> None:
        self.events.append((what, Path(), None))

    def index(self, kind: str, path: Path, start: int = 0) -> int:
        """Position of the first `kind` event on `path` at or after `start`."""
        for i, (k, p, _) in enumerate(self.events[start:], start):
            if k == kind and p == path:
                return i
        raise AssertionError(f"no {kind} of {path} in {self.events[start:]}")
