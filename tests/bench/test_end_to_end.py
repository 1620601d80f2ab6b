"""`backline bench serve` without --url: it starts `backline serve` for a trained project,
loads it, and stops it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

import backline
from backline.bench.server import probe
from backline.cli import main
from backline.core.workspace import init_project
from backline.data.generator import GeneratorConfig, generate, write_generated

pytestmark = [pytest.mark.http, pytest.mark.slow]


@pytest.fixture(scope="module")
def trained_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A small fraud project with a champion (10 steps: a model, not a good one)."""
    import torch

    root = init_project(tmp_path_factory.mktemp("bench-e2e") / "fraud")
    data = generate(GeneratorConfig(days=10, cards=300, seed=3))
    paths = write_generated(data, root / "data", fmt="parquet")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # packaging a tiny model with many threads on few cores crawls
    try:
        with backline.open(root) as project:
            project.ingest("transactions", paths["transactions"])
            project.ingest("labels", paths["labels"])
            project.apply()
            project.materialize()
            version = project.train(max_steps=10).version.version
            project.registry.promote("fraud", version, actor="test", force=True, reason="bench")
    finally:
        torch.set_num_threads(threads)
    yield root


def test_bench_starts_the_server_loads_it_and_stops_it(
    trained_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the server's torch, on a small shared box
    path = tmp_path / "report.json"
    argv = ["--project", str(trained_root), "bench", "serve", "--duration", "2", "--rate", "50"]
    assert main([*argv, "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    assert report["mode"] == "open" and report["errors"] == {}
    assert report["ok"] == report["scheduled"] > 50
    assert report["url"].endswith("/v1/models/fraud:predict")
    assert report["latency_ms"]["p50"] > 0
    # the server it started is gone: nothing answers at its address any more
    assert probe(report["url"].split("/v1/")[0] + "/v2/health/ready", timeout=2).status == 0
