"""Generation and ingestion throughput on one core.

    .venv/bin/python benchmarks/ingest.py                 # 1M rows, 3 repeats
    .venv/bin/python benchmarks/ingest.py --rows 200000   # quicker

The process pins itself to one CPU (sched_setaffinity) and keeps DuckDB and Arrow to one
thread, so the figures are per core. It prints rows/s for generating 1M transactions, and
for validating + committing the same rows from CSV and from Parquet (the whole `ingest` call:
read, type, check every expectation, deduplicate keys, write partitioned Parquet, statistics,
fsync, commit). Targets: generate 1M < 10 s; ingest >= 500k rows/s Parquet, >= 200k rows/s CSV.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _pin_one_core() -> str:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return f"pinned to CPU {cpu}"
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return "not pinned (no sched_setaffinity)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="transactions (1,000,000)")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per figure; the median is shown (3)"
    )
    args = parser.parse_args()
    pinned = _pin_one_core()

    import pyarrow as pa

    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)

    from backline.core.config import load_config
    from backline.core.workspace import init_project
    from backline.data.generator import GeneratorConfig, generate, write_generated
    from backline.data.ingest import ingest

    # ~1.6 transactions per card per day plus fraud: size the population to the row target
    days = 30
    cards = max(50, int(args.rows / (days * 1.55)))
    print(f"backline ingest benchmark: {args.rows:,} rows, {pinned}, {args.repeat} repeats")

    gen_times = []
    data = None
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        data = generate(GeneratorConfig(days=days, cards=cards, seed=42))
        gen_times.append(time.perf_counter() - t0)
    assert data is not None
    tx = data.transactions.slice(0, args.rows)
    n = tx.num_rows
    gen_rows = data.transactions.num_rows

    results: list[tuple[str, float, str, float | None]] = []
    gen_s = statistics.median(gen_times)
    results.append(
        (f"generate {gen_rows:,} transactions (+labels)", gen_rows / gen_s, f"{gen_s:.2f} s", None)
    )

    with tempfile.TemporaryDirectory(prefix="backline-bench-") as tmp:
        from backline.data.generator import GeneratedData

        sliced = GeneratedData(transactions=tx, labels=data.labels.slice(0, 0))
        files = {}
        for fmt in ("csv", "parquet"):
            t0 = time.perf_counter()
            paths = write_generated(sliced, Path(tmp) / fmt, fmt=fmt)
            write_s = time.perf_counter() - t0
            files[fmt] = paths["transactions"]
            size = files[fmt].stat().st_size / 1e6
            results.append(
                (
                    f"write {n:,} rows as {fmt} ({size:.0f} MB)",
                    n / write_s,
                    f"{write_s:.2f} s",
                    None,
                )
            )

        for fmt, target in (("parquet", 500_000.0), ("csv", 200_000.0)):
            times = []
            for run in range(args.repeat):
                project = init_project(Path(tmp) / f"proj-{fmt}-{run}")
                cfg = load_config(project, env={})
                t0 = time.perf_counter()
                result = ingest(cfg, "transactions", files[fmt])
                times.append(time.perf_counter() - t0)
                assert result.rows_in == n == result.rows_accepted + result.rows_quarantined, result
            s = statistics.median(times)
            results.append((f"ingest + validate {n:,} rows of {fmt}", n / s, f"{s:.2f} s", target))

    width = max(len(r[0]) for r in results)
    print(f"\n{'figure'.ljust(width)}  {'rows/s':>12}  {'time':>8}  target")
    failed = False
    for name, rate, took, target in results:
        verdict = ""
        if target is not None:
            ok = rate >= target
            failed |= not ok
            verdict = f">= {target:,.0f} rows/s  {'PASS' if ok else 'MISS'}"
        elif name.startswith("generate"):
            ok = gen_s < 10 * gen_rows / 1_000_000
            failed |= not ok
            verdict = f"1M < 10 s  {'PASS' if ok else 'MISS'}"
        print(f"{name.ljust(width)}  {rate:>12,.0f}  {took:>8}  {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
