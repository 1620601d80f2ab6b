"""Online feature reads as the model server does them: one batch of entity rows per call.

    .venv/bin/python benchmarks/online_read.py                 # n = 1, 8, 64, 256
    .venv/bin/python benchmarks/online_read.py --rows 64 --runs 7
    .venv/bin/python benchmarks/online_read.py --profile 64    # cProfile of 200 reads of 64 rows

The fraud example (24 days, 400 cards, seed 5) is generated, ingested, applied and
materialized once into benchmarks/.data/online_read/ (no training). A read is
`get_online_features(..., "fraud_v1", ...)` on the project's open online store with its read
plan, at just after the end of the data, for n distinct cards (card_0000000 on: the first is not
in the store) at merchant m_000013 with one request row each; the rows are built before the
timing. Each run times a loop of reads and keeps the median call; the table shows the median
over runs and the spread (min-max) of the runs' medians, and the median CPU time of this
thread per row (less disturbed by other processes on a busy machine).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
DATA = ROOT / ".data" / "online_read"


def prepare() -> Path:
    import backline
    from backline.core.workspace import init_project
    from backline.data.generator import GeneratorConfig, generate, write_generated

    project = DATA / "fraud"
    if (project / ".backline" / "ready").exists():
        return project
    project = init_project(project, force=True)
    data = generate(GeneratorConfig(days=24, cards=400, seed=5))
    paths = write_generated(data, project / "data", fmt="parquet")
    with backline.open(project) as handle:
        handle.ingest("transactions", paths["transactions"])
        handle.ingest("labels", paths["labels"])
        handle.apply()
        handle.materialize()
    (project / ".backline" / "ready").write_text("ok")
    return project


def rows(n: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    entities = [{"card_id": f"card_{i % 400:07d}", "merchant_id": "m_000013"} for i in range(n)]
    return entities, [{"amount": 69.1}] * n


def time_calls(call: Any, loops: int) -> tuple[float, float]:
    """Median seconds of one call over `loops` calls: wall clock, and CPU time of this thread
    (which other processes on a busy machine disturb less)."""
    walls, cpus = [], []
    for _ in range(loops):
        c0, t0 = time.thread_time(), time.perf_counter()
        call()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.thread_time() - c0)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="*", default=[1, 8, 64, 256])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--budget", type=float, default=0.6, help="seconds per run and size")
    parser.add_argument("--profile", type=int, default=0, metavar="N")
    args = parser.parse_args()

    import backline
    from backline.features.online import get_online_features

    project = prepare()
    with backline.open(project) as handle:
        cfg, defs = handle.config, handle.definitions
        store, plan = handle.online_store(), handle.read_plan("fraud_v1")
        end = handle.sql("SELECT max(event_time) AS t FROM transactions").column("t")[0].as_py()
        at = end + timedelta(seconds=1)

        def read(entities: list[dict[str, Any]], requests: list[dict[str, Any]]) -> Any:
            return get_online_features(
                cfg,
                defs,
                "fraud_v1",
                entities,
                request_rows=requests,
                at=at,
                store=store,
                plan=plan,
            )

        if args.profile:
            entities, requests = rows(args.profile)
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(200):
                read(entities, requests)
            profiler.disable()
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)
            return

        print(
            f"{'rows':>5} {'ms/call':>9} {'µs/row':>8} {'spread µs/row':>16} {'cpu µs/row':>11}"
            f" {'to_arrow ms':>12}"
        )
        for n in args.rows:
            entities, requests = rows(n)
            out = read(entities, requests)
            t0 = time.perf_counter()
            read(entities, requests)
            one = max(time.perf_counter() - t0, 1e-6)
            loops = max(5, int(args.budget / one))
            calls, cpus, arrows = [], [], []
            for _ in range(args.runs):
                wall, cpu = time_calls(lambda e=entities, r=requests: read(e, r), loops)
                calls.append(wall)
                cpus.append(cpu)
                arrows.append(time_calls(out.to_arrow, loops)[0])
            med = statistics.median(calls)
            per_row = [c / n * 1e6 for c in calls]
            print(
                f"{n:>5} {med * 1e3:>9.3f} {med / n * 1e6:>8.1f} "
                f"{min(per_row):>7.1f}-{max(per_row):<8.1f} "
                f"{statistics.median(cpus) / n * 1e6:>11.1f} "
                f"{statistics.median(arrows) * 1e3:>12.3f}"
            )


if __name__ == "__main__":
    main()
