"""Small fraud projects whose data waits in the landing folder, for the pipeline's tests.

The generated data is made once per session and split in two by event time: `early` lands
first, `late` is the file that "arrives" later in the tests that need new data.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from backline.core.config import Config, load_config
from backline.core.workspace import init_project
from backline.data.generator import GeneratorConfig, generate
from backline.features.repository import apply, load_definitions

#: Few, small steps: the pipeline's tests are about records and staleness, not the model.
FAST_TRAINING = {
    "BACKLINE_TRAIN_MAX_STEPS": "40",
    "BACKLINE_TRAIN_CHECKPOINT_EVERY": "20",
    "BACKLINE_TRAIN_BATCH_SIZE": "256",
    "BACKLINE_GATE_BOOTSTRAP_SAMPLES": "200",
    # out of reach on purpose: no verdict may depend on the machine's load
    "BACKLINE_GATE_MAX_LATENCY_MS": "1000000",
}


@dataclass(frozen=True)
class Landing:
    early: Path
    """Transactions of all but the last 3 days."""
    late: Path
    """The last 3 days of transactions: new data that lands later."""
    labels: Path


@pytest.fixture(scope="session")
def landing_files(tmp_path_factory: pytest.TempPathFactory) -> Landing:
    folder = tmp_path_factory.mktemp("landing-data")
    data = generate(GeneratorConfig(days=24, cards=600, seed=11))
    times = data.transactions.column("event_time")
    split = pc.max(times).as_py() - timedelta(days=3)
    late = pc.greater(times, split)
    pq.write_table(data.transactions.filter(pc.invert(late)), folder / "tx-early.parquet")
    pq.write_table(data.transactions.filter(late), folder / "tx-late.parquet")
    pq.write_table(data.labels, folder / "labels.parquet")
    return Landing(
        folder / "tx-early.parquet", folder / "tx-late.parquet", folder / "labels.parquet"
    )


def land(root: Path, source: str, file: Path) -> Path:
    """Copy `file` into the project's landing folder for `source`."""
    target = root / "landing" / source / file.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(file, target)
    return target


@pytest.fixture
def landed(tmp_path: Path, landing_files: Landing) -> Path:
    """A new fraud project with its early transactions and all labels landed (nothing
    ingested yet) and features.py applied."""
    root = init_project(tmp_path / "proj")
    land(root, "transactions", landing_files.early)
    land(root, "labels", landing_files.labels)
    apply_features(load_config(root, env={}))
    return root


def apply_features(cfg: Config) -> None:
    apply(cfg, load_definitions(cfg))


class FakeClock:
    """A clock that moves one second each time it is read."""

    def __init__(self, start: datetime = datetime(2026, 2, 1, 6, 30, 15, tzinfo=UTC)) -> None:
        self.now = start
        self.reads = 0

    def __call__(self) -> datetime:
        self.reads += 1
        self.now += timedelta(seconds=1)
        return self.now
