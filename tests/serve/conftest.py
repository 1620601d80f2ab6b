"""A trained, promoted fraud project for the server tests, built once per session.

Two registered versions (v1 champion, v2 gated and ready to promote), features materialized to
the end of the data, and `serve` settings small enough for tests. Tests that change the project
(aliases, the prediction log) copy it first with `fresh_project`.
"""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path

import pytest
import torch

import backline
from backline.core.workspace import init_project
from backline.data.generator import GeneratorConfig, generate, write_generated
from backline.pipeline.train import gate

SETTINGS = """
[serve]
max_batch = 64
max_queue = 512
timeout_ms = 2000
drain_timeout = "10s"
swap_poll = "0.2s"
log_flush = "0.2s"
"""


@pytest.fixture(scope="session")
def trained_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = init_project(tmp_path_factory.mktemp("serve") / "fraud")
    toml = root / "backline.toml"
    text = toml.read_text()
    text = text.replace("max_steps = 2000", "max_steps = 60").replace(
        "max_latency_ms = 5.0", "max_latency_ms = 1000000.0"
    )
    toml.write_text(text + SETTINGS)
    data = generate(GeneratorConfig(days=24, cards=400, seed=5))
    paths = write_generated(data, root / "data", fmt="parquet")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # packaging measures latency: two threads on a busy machine crawl
    try:
        _build(root, paths)
    finally:
        torch.set_num_threads(threads)
    return root


def _build(root: Path, paths: dict[str, Path]) -> None:
    with backline.open(root) as project:
        project.ingest("transactions", paths["transactions"])
        project.ingest("labels", paths["labels"])
        project.apply()
        project.materialize()
        first = project.train(model_name="fraud")
        gate(project.config, "fraud", first.version.version)
        project.registry.promote("fraud", first.version.version, actor="test", reason="first")
        project.train(model_name="fraud", max_steps=80)


@pytest.fixture
def fresh_project(trained_root: Path, tmp_path: Path) -> Path:
    """A private copy of the trained project (aliases and logs may change)."""
    target = tmp_path / "fraud"
    shutil.copytree(trained_root, target)
    return target


def data_end(root: Path) -> datetime:
    with backline.open(root) as project:
        return project.sql("SELECT max(event_time) AS t FROM transactions").column("t")[0].as_py()


def sample_instances(root: Path, n: int, seed: int = 0) -> list[dict[str, object]]:
    """Real transactions (held-out end of the data): card, merchant, amount and id."""
    with backline.open(root) as project:
        rows = project.sql(
            "SELECT transaction_id, card_id, merchant_id, amount FROM transactions "
            f"ORDER BY hash(transaction_id || '{int(seed)}') LIMIT {int(n)}"
        ).to_pylist()
    return rows
