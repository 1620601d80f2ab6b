"""Point-in-time training sets at scale: time and peak memory, out of core.

    .venv/bin/python benchmarks/features.py                    # 100k, 1M and 10M entity rows
    .venv/bin/python benchmarks/features.py --rows 100000      # one size

The fraud example's data (60 days, 20,000 cards, about 1.9M transactions) is generated and
ingested once into a project under benchmarks/.data/. Entity rows are random (card, time)
pairs. Each size runs `backline features history` in a fresh child process against three
feature views (card_velocity and card_amounts: nine windowed aggregates; card_last_seen: three
latest values with a TTL), streaming to Parquet. Peak memory is the child's maximum resident
set size. Target: 10M entity rows with peak memory under 4 GB (features.memory_limit = 3GB).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
DATA = ROOT / ".data" / "features"
SERVICE = 'bench3 = FeatureService("bench3", [card_velocity, card_amounts, card_last_seen])\n'


def prepare() -> Path:
    from backline.core.config import load_config
    from backline.core.workspace import init_project
    from backline.data.generator import GeneratorConfig, generate, write_generated
    from backline.data.ingest import ingest
    from backline.features.repository import apply, load_definitions

    project = DATA / "project"
    if (project / ".backline" / "ready").exists():
        return project
    project = init_project(project, force=True)
    features = project / "features.py"
    features.write_text(features.read_text() + "\n" + SERVICE)
    cfg = load_config(project, env={})
    data = generate(GeneratorConfig(days=60, cards=20_000, seed=5))
    paths = write_generated(data, project / "data", fmt="parquet")
    result = ingest(cfg, "transactions", paths["transactions"])
    print(f"ingested {result.rows_accepted:,} transactions")
    apply(cfg, load_definitions(cfg))
    (project / ".backline" / "ready").write_text("ok")
    return project


def entities(project: Path, n: int) -> Path:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = project / f"entities_{n}.parquet"
    if path.exists():
        return path
    rng = np.random.default_rng(n)
    start = np.datetime64("2026-01-01T00:00:00", "us").astype(np.int64)
    times = start + rng.integers(0, 60 * 86_400 * 1_000_000, n)
    ids = rng.integers(0, 20_000, n)
    cards = pa.array([f"card_{i:07d}" for i in ids.tolist()])
    table = pa.table(
        {"card_id": cards, "event_timestamp": pa.array(times, pa.timestamp("us", tz="UTC"))}
    )
    pq.write_table(table, path)
    return path


def run(project: Path, n: int) -> tuple[float, float]:
    src = entities(project, n)
    out = project / f"train_{n}.parquet"
    backline = Path(sys.executable).with_name("backline")
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    subprocess.run(
        [
            str(backline),
            "--project",
            str(project),
            "features",
            "history",
            "--entities",
            str(src),
            "--service",
            "bench3",
            "--out",
            str(out),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    seconds = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak_kb < before:  # pragma: no cover - getrusage keeps the max over all children
        peak_kb = before
    out.unlink()
    return seconds, peak_kb / 1024 / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, action="append", help="entity rows (repeatable)")
    args = parser.parse_args()
    sizes = args.rows or [100_000, 1_000_000, 10_000_000]
    project = prepare()
    print(f"backline point-in-time benchmark, {os.cpu_count()} cores, memory_limit 3GB")
    print(f"{'entity rows':>12}  {'seconds':>8}  {'rows/s':>10}  {'peak GB':>8}  target")
    failed = False
    for n in sorted(sizes):
        seconds, peak = run(project, n)
        verdict = ""
        if n >= 10_000_000:
            ok = peak < 4.0
            failed |= not ok
            verdict = f"peak < 4 GB  {'PASS' if ok else 'MISS'}"
        print(f"{n:>12,}  {seconds:>8.1f}  {n / seconds:>10,.0f}  {peak:>8.2f}  {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
