"""Feature store side by side with Feast: same data, same plain feature view, same machine.

    .venv/bin/python benchmarks/features_vs_feast.py            # 100k and 1M entity rows
    .venv/bin/python benchmarks/features_vs_feast.py --quick    # small smoke run
    .venv/bin/python benchmarks/features_vs_feast.py --skip-redis --keep

Feast is installed by this script, with pip, into its own venv under benchmarks/.peers/feast/
(never a backline dependency) and runs there as a worker process. Both systems read the same
generated Parquet source (cards x ~50 float features, several rows per card over time, 1% null
values) through one plain feature view of 50 fields with a 30-day TTL and a feature service;
Feast computes no aggregations, so none are used. Feast uses its local provider's default
offline store (`file`, i.e. Dask over Parquet) and the SQLite and Redis online stores.

Every measured step runs in a fresh process per system. Peak memory is that process's own
resident-set high-water mark (VmHWM) read right after the retrieval returns: imports, the
entity rows and the result included, for both sides alike. (getrusage's ru_maxrss, in the
child or as RUSAGE_CHILDREN, is not used: Linux carries the parent's RSS at fork into it.)

Feast's Dask store leaves out entity rows whose key has events but none within the TTL, and
keeps one of repeated (key, time) entity rows; entity rows are generated unique per (card,
time), and a row Feast leaves out must be all null in backline's training set.

Figures: historical retrieval time and peak memory for each entity-row count; materialization
source rows/s into SQLite and Redis; online read latency for 1 entity x 50 features and 100
entities x 50 features from SQLite (in-process for backline) and Redis. Online requests are
sent back to back by one caller: each request's scheduled start is the previous request's
finish, and latency = finish - scheduled start (so it includes the conversion of the answer to
Python dicts, nothing queues). Values are checked to be equal: weighted checksums of every
feature over every training-set row plus exact comparison of sampled rows, and the answers of
the first online requests.

Targets (the issue): historical retrieval >= 10x faster than Feast at <= 1/4 of its peak
memory; materialization >= 10x Feast's rows/s; online p99 <= 1 ms for 1 entity x 50 features
from SQLite in-process and <= 2 ms from local Redis. The machine is shared and noisy: read
the ratios as well as the absolute figures. The exit code is 0 even when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

HERE = Path(__file__).resolve().parent
SCRIPT = Path(__file__).resolve()
WORK = HERE / ".data" / "features_vs_feast"
FEAST_VERSION = "0.67.0"
FEAST_REQUIREMENTS = [f"feast[redis]=={FEAST_VERSION}"]

N_FEATURES = 50
FEATURES = [f"f{i:03d}" for i in range(N_FEATURES)]
TTL_DAYS = 30
SPAN_DAYS = 90
# No source event lies within this of (data end - TTL): an online read minutes or hours after
# materialization then sees the same TTL cut as the materialization window, for both systems.
TTL_EDGE_GAP_DAYS = 2
SOURCE = "cards"
VIEW = "card_features"
SERVICE = "bench"
NULL_RATE = 0.01
UNKNOWN_CARD_RATE = 0.01
EXACT_TIME_RATE = 0.02
SAMPLE_ROWS = 5000
ONLINE_SAMPLE_REQUESTS = 50
REL_TOL = 1e-9


# ------------------------------------------------------------------------------------------
# Data: one Parquet source both systems read, and entity rows
# ------------------------------------------------------------------------------------------


def generate(work: Path, cards: int, events_per_card: float, sizes: list[int], seed: int) -> dict:
    """Write source.parquet and entities_N.parquet; return what the run needs to know."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    anchor = int(datetime.now(UTC).replace(microsecond=0).timestamp()) - 60  # data ends here
    span = SPAN_DAYS * 86400
    ttl = TTL_DAYS * 86400
    gap = TTL_EDGE_GAP_DAYS * 86400

    counts = rng.poisson(max(events_per_card - 1, 0), cards) + 1
    card = np.repeat(np.arange(cards, dtype=np.int64), counts)
    back = rng.integers(0, span - 4 * gap, card.size)  # seconds before the anchor
    back[back > ttl - gap] += 2 * gap  # leave (ttl - gap, ttl + gap] empty
    key = np.unique(card * (2 * span) + back)  # one event per (card, second): no ties
    card, back = key // (2 * span), key % (2 * span)
    when = anchor - back
    order = np.argsort(when, kind="stable")
    card, when = card[order], when[order]
    n = card.size
    names = np.char.add("c", np.char.zfill(np.arange(cards).astype(str), 7))

    columns: dict[str, pa.Array] = {
        "row_id": pa.array(np.arange(n, dtype=np.int64)),
        "card_id": pa.array(names[card]),
        "event_time": pa.array(when * 1_000_000, pa.timestamp("us", tz="UTC")),
    }
    for name in FEATURES:
        values = rng.standard_normal(n) * rng.uniform(0.5, 500)
        columns[name] = pa.array(values, mask=rng.random(n) < NULL_RATE)
    source = pa.table(columns)
    pq.write_table(source, work / "source.parquet", row_group_size=128 * 1024)

    for size in sizes:
        erng = np.random.default_rng(seed * 1_000_003 + size)
        picked = erng.integers(0, cards, size)
        ids = names[picked].astype(object)
        # entity times from a day before the first event to a day after the last
        t = anchor - erng.integers(-86400, span + 86400, size)
        exact = np.nonzero(erng.random(size) < EXACT_TIME_RATE)[0]
        rows = erng.integers(0, n, exact.size)  # an entity time equal to an event's time
        picked[exact] = card[rows]
        ids[exact] = names[card[rows]]
        t[exact] = when[rows]
        unknown = np.nonzero(erng.random(size) < UNKNOWN_CARD_RATE)[0]
        ids[unknown] = [f"u{i:07d}" for i in range(unknown.size)]
        # One entity row per (card, time): Feast keeps only one of repeated rows, which would
        # make the row sets differ for a reason that has nothing to do with speed.
        code = picked.copy()
        code[unknown] = cards + np.arange(unknown.size)
        while True:
            _, first = np.unique(code * (4 * span) + (anchor + 2 * 86400 - t), return_index=True)
            repeated = np.setdiff1d(np.arange(size), first)
            if repeated.size == 0:
                break
            t[repeated] += 1
        entities = pa.table(
            {
                "entity_row": pa.array(np.arange(size, dtype=np.int64)),
                "card_id": pa.array(ids, pa.string()),
                "event_timestamp": pa.array(t * 1_000_000, pa.timestamp("us", tz="UTC")),
            }
        )
        pq.write_table(entities, work / f"entities_{size}.parquet")

    meta = {
        "cards": cards,
        "events_per_card": events_per_card,
        "sizes": sizes,
        "seed": seed,
        "anchor": anchor,
        "source_rows": int(n),
        "source_mb": round((work / "source.parquet").stat().st_size / 1e6, 1),
        "card_names": [str(names[0]), str(names[-1])],
    }
    (work / "meta.json").write_text(json.dumps(meta))
    return meta


def online_requests(meta: dict, count: int, per_request: int, seed: int) -> list[list[str]]:
    """Card ids for each online request (known cards only); the same for both systems."""
    import numpy as np

    rng = np.random.default_rng(seed + 7 * per_request)
    picked = rng.integers(0, meta["cards"], (count, per_request))
    return [[f"c{i:07d}" for i in row] for row in picked]


def rows_in_window(source: Path, start: datetime, end: datetime) -> int:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    t = pq.read_table(source, columns=["event_time"]).column("event_time")
    inside = pc.and_(pc.greater_equal(t, start), pc.less_equal(t, end))
    return int(pc.sum(inside.cast("int64")).as_py() or 0)


# ------------------------------------------------------------------------------------------
# Shared by the workers of both systems (stdlib, numpy and pyarrow only)
# ------------------------------------------------------------------------------------------


def summarize_training_set(entity_row: Any, column: Any, expected_rows: int, out: Path) -> dict:
    """Checksums of every feature over every row that has a value, sampled rows, row masks.

    `column(name)` gives one feature as a numpy float array (NaN = null), one at a time, so
    neither side copies its whole result. Writes
    OUT.parquet (sampled rows, exact values) and OUT.npz (which entity rows came back, and
    which of them have at least one non-null feature).
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    entity_row = np.asarray(entity_row, dtype=np.int64)
    present = np.zeros(expected_rows, dtype=bool)
    in_range = (entity_row >= 0) & (entity_row < expected_rows)
    present[entity_row[in_range]] = True
    unique = bool(in_range.all()) and int(present.sum()) == entity_row.size
    all_null = np.ones(entity_row.size, dtype=bool)
    for name in FEATURES:
        all_null &= np.isnan(np.asarray(column(name), dtype=np.float64))
    valued = np.zeros(expected_rows, dtype=bool)
    valued[entity_row[in_range & ~all_null]] = True
    np.savez_compressed(out.with_suffix(".npz"), present=present, valued=valued)

    keep = ~all_null
    rows = entity_row[keep]
    w = ((rows.astype(np.uint64) * np.uint64(2654435761)) % np.uint64(997) + 1).astype(
        np.float64
    ) / 997.0
    every = max(1, expected_rows // SAMPLE_ROWS)
    pick = np.nonzero(entity_row % every == 0)[0]
    pick = pick[np.argsort(entity_row[pick])]
    stats = {}
    sample = {"entity_row": pa.array(entity_row[pick])}
    for name in FEATURES:
        x = np.asarray(column(name), dtype=np.float64)
        null = np.isnan(x)
        kept, kept_null = x[keep], null[keep]
        filled = np.where(kept_null, 0.0, kept)
        stats[name] = {
            "nulls": int(kept_null.sum()),
            "null_w": float(w[kept_null].sum()),
            "wsum": float(np.dot(filled, w)),
            "wabs": float(np.dot(np.abs(filled), w)),
        }
        sample[name] = pa.array(x[pick], mask=null[pick])
    pq.write_table(pa.table(sample), out.with_suffix(".parquet"))
    return {
        "rows": int(entity_row.size),
        "unique": unique,
        "valued_rows": int(valued.sum()),
        "stats": stats,
    }


def latency_loop(call: Any, requests: list, warmup: int) -> list[float]:
    """Back to back: each request is scheduled when the previous one finishes."""
    for request in requests[:warmup]:
        call(request)
    latencies = []
    scheduled = time.perf_counter()
    for request in requests:
        call(request)
        finished = time.perf_counter()
        latencies.append(finished - scheduled)
        scheduled = finished
    return latencies


def percentiles(latencies: list[float]) -> dict:
    ordered = sorted(latencies)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))] * 1000

    return {
        "n": len(ordered),
        "p50": pick(0.50),
        "p90": pick(0.90),
        "p99": pick(0.99),
        "max": ordered[-1] * 1000,
        "mean": sum(ordered) / len(ordered) * 1000,
    }


def _rss_mb() -> float:
    """Peak resident set size of this process so far, in MB: VmHWM of /proc/self/status.

    Not getrusage's ru_maxrss: on Linux that starts from the parent's RSS at fork time (the
    kernel carries the old image's high-water mark across exec), so a worker started by a
    big orchestrator would report the orchestrator's size. VmHWM belongs to this image only.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _clean(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


# ------------------------------------------------------------------------------------------
# backline workers (project venv, in-process library calls)
# ------------------------------------------------------------------------------------------


def _features_py() -> str:
    fields = ",\n        ".join(f'Field("{f}")' for f in FEATURES)
    return f'''"""Benchmark features: one plain view of {N_FEATURES} fields (written by {SCRIPT.name})."""

from backline.features import Entity, FeatureService, FeatureView, Field

card = Entity("card", join_keys=["card_id"])

{VIEW} = FeatureView(
    "{VIEW}",
    entities=[card],
    source="{SOURCE}",
    fields=[
        {fields},
    ],
    ttl="{TTL_DAYS}d",
)

{SERVICE} = FeatureService("{SERVICE}", [{VIEW}])
'''


def _source_toml() -> str:
    lines = [
        f"[sources.{SOURCE}]",
        'description = "Benchmark cards: 50 float features per row, several rows per card."',
        'format = "parquet"',
        'primary_key = ["row_id"]',
        'event_time = "event_time"',
        "",
        f"[sources.{SOURCE}.columns.row_id]",
        'type = "int64"',
        "required = true",
        "",
        f"[sources.{SOURCE}.columns.card_id]",
        'type = "string"',
        "required = true",
        "",
        f"[sources.{SOURCE}.columns.event_time]",
        'type = "timestamp"',
        "required = true",
    ]
    for name in FEATURES:
        lines += ["", f"[sources.{SOURCE}.columns.{name}]", 'type = "float64"']
    return "\n".join(lines) + "\n"


def _backline(job: dict) -> tuple[Any, Any]:
    from backline.core.config import load_config
    from backline.features.repository import load_definitions

    env = {"BACKLINE_ONLINE_URI": job["online_uri"]} if job.get("online_uri") else {}
    cfg = load_config(Path(job["root"]), env=env)
    return cfg, load_definitions(cfg)


def bl_setup(job: dict) -> dict:
    from backline.core.config import load_config
    from backline.core.workspace import init_project
    from backline.data.ingest import ingest
    from backline.features.repository import apply, load_definitions

    root = Path(job["root"])
    shutil.rmtree(root, ignore_errors=True)
    init_project(root)
    toml = (root / "backline.toml").read_text()
    cut = toml.find("\n[sources.")
    (root / "backline.toml").write_text((toml if cut < 0 else toml[: cut + 1]) + _source_toml())
    (root / "features.py").write_text(_features_py())
    cfg = load_config(root, env={})
    t0 = time.perf_counter()
    result = ingest(cfg, SOURCE, Path(job["source"]))
    ingest_s = time.perf_counter() - t0
    defs = load_definitions(cfg)
    apply(cfg, defs)
    return {
        "ingest_s": ingest_s,
        "rows_accepted": result.rows_accepted,
        "rows_quarantined": result.rows_quarantined,
    }


def bl_history(job: dict) -> dict:
    import pyarrow.parquet as pq

    from backline.features.history import get_historical_features

    cfg, defs = _backline(job)
    entities = pq.read_table(job["entities"])
    before = _rss_mb()
    t0 = time.perf_counter()
    table = get_historical_features(cfg, defs, SERVICE, entities)
    seconds = time.perf_counter() - t0
    peak = _rss_mb()  # before the checks below allocate anything

    def column(name: str) -> Any:
        return table.column(name).to_numpy(zero_copy_only=False)

    summary = summarize_training_set(
        column("entity_row"), column, entities.num_rows, Path(job["out"])
    )
    return {"seconds": seconds, "rss_before_mb": before, "peak_call_mb": peak, **summary}


def bl_materialize(job: dict) -> dict:
    from backline.features.materialize import materialize

    cfg, defs = _backline(job)
    end = datetime.fromisoformat(job["end"])
    t0 = time.perf_counter()
    # the same window Feast is given: events in [end - TTL, end], latest per card
    result = materialize(cfg, defs, start=end - timedelta(days=TTL_DAYS), end=end)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "rows": result.rows, "entities": result.entities}


def bl_online(job: dict) -> dict:
    from backline.features.online import ReadPlan, get_online_features, open_online_store

    cfg, defs = _backline(job)
    out: dict[str, Any] = {}
    with open_online_store(cfg) as store:  # opened once, as a server holds it
        plan = ReadPlan(cfg, defs, SERVICE)
        for case, ids in job["requests"].items():
            rows = [[{"card_id": c} for c in request] for request in ids]

            def call(entity_rows: list[dict]) -> Any:
                found = get_online_features(cfg, defs, SERVICE, entity_rows, store=store, plan=plan)
                return found.to_dicts()

            latencies = latency_loop(call, rows, job["warmup"][case])
            answers = []
            for entity_rows in rows[:ONLINE_SAMPLE_REQUESTS]:
                answers.append([[_clean(d.get(f)) for f in FEATURES] for d in call(entity_rows)])
            out[case] = {"latency": percentiles(latencies), "answers": answers}
    return out


# ------------------------------------------------------------------------------------------
# Feast workers (Feast's venv)
# ------------------------------------------------------------------------------------------


def _feast_yaml(repo: Path, online: str) -> str:
    if online.startswith("redis://"):
        url = urlparse(online)
        db = (url.path or "/0").strip("/") or "0"
        store = (
            "online_store:\n  type: redis\n"
            f'  connection_string: "{url.hostname}:{url.port or 6379},db={db}"\n'
        )
    else:
        store = f"online_store:\n  type: sqlite\n  path: {repo / 'online.db'}\n"
    return (
        "project: backline_bench\n"
        f"registry: {repo / 'registry.db'}\n"
        "provider: local\n"
        "offline_store:\n  type: file\n"
        f"{store}"
        "entity_key_serialization_version: 3\n"
    )


def feast_setup(job: dict) -> dict:
    from feast import Entity, FeatureService, FeatureStore, FeatureView, Field, FileSource
    from feast.types import Float64, String

    repo = Path(job["repo"])
    shutil.rmtree(repo, ignore_errors=True)
    repo.mkdir(parents=True)
    (repo / "feature_store.yaml").write_text(_feast_yaml(repo, job["online"]))
    store = FeatureStore(repo_path=str(repo))
    card = Entity(name="card", join_keys=["card_id"])
    source = FileSource(name=SOURCE, path=job["source"], timestamp_field="event_time")
    view = FeatureView(
        name=VIEW,
        entities=[card],
        ttl=timedelta(days=TTL_DAYS),
        schema=[Field(name="card_id", dtype=String)]
        + [Field(name=f, dtype=Float64) for f in FEATURES],
        source=source,
        online=True,
    )
    service = FeatureService(name=SERVICE, features=[view])
    t0 = time.perf_counter()
    store.apply([card, source, view, service])
    import feast

    return {"apply_s": time.perf_counter() - t0, "feast": feast.__version__}


def feast_history(job: dict) -> dict:
    import pandas as pd
    from feast import FeatureStore

    store = FeatureStore(repo_path=job["repo"])
    service = store.get_feature_service(SERVICE)
    entities = pd.read_parquet(job["entities"])
    before = _rss_mb()
    t0 = time.perf_counter()
    df = store.get_historical_features(entity_df=entities, features=service).to_df()
    seconds = time.perf_counter() - t0
    peak = _rss_mb()  # before the checks below allocate anything

    def column(name: str) -> Any:
        return pd.to_numeric(df[name], errors="coerce").to_numpy("float64")

    summary = summarize_training_set(
        df["entity_row"].to_numpy(), column, len(entities), Path(job["out"])
    )
    return {"seconds": seconds, "rss_before_mb": before, "peak_call_mb": peak, **summary}


def feast_materialize(job: dict) -> dict:
    from feast import FeatureStore

    store = FeatureStore(repo_path=job["repo"])
    end = datetime.fromisoformat(job["end"])
    t0 = time.perf_counter()
    store.materialize(start_date=end - timedelta(days=TTL_DAYS), end_date=end)
    return {"seconds": time.perf_counter() - t0}


def feast_online(job: dict) -> dict:
    from feast import FeatureStore

    store = FeatureStore(repo_path=job["repo"])
    service = store.get_feature_service(SERVICE)
    out: dict[str, Any] = {}
    for case, ids in job["requests"].items():
        rows = [[{"card_id": c} for c in request] for request in ids]

        def call(entity_rows: list[dict]) -> Any:
            return store.get_online_features(features=service, entity_rows=entity_rows).to_dict()

        latencies = latency_loop(call, rows, job["warmup"][case])
        answers = []
        for entity_rows in rows[:ONLINE_SAMPLE_REQUESTS]:
            got = call(entity_rows)
            answers.append([[_clean(got[f][i]) for f in FEATURES] for i in range(len(entity_rows))])
        out[case] = {"latency": percentiles(latencies), "answers": answers}
    return out


WORKERS = {
    "bl_setup": bl_setup,
    "bl_history": bl_history,
    "bl_materialize": bl_materialize,
    "bl_online": bl_online,
    "feast_setup": feast_setup,
    "feast_history": feast_history,
    "feast_materialize": feast_materialize,
    "feast_online": feast_online,
}


def worker_main(name: str, job_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    result = WORKERS[name](job)
    result["peak_rss_mb"] = _rss_mb()
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


# ------------------------------------------------------------------------------------------
# Orchestration (project venv)
# ------------------------------------------------------------------------------------------


class Runner:
    def __init__(self, work: Path, feast_python: Path, timeout: float) -> None:
        self.work = work
        self.jobs = work / "jobs"
        self.jobs.mkdir(parents=True, exist_ok=True)
        self.feast_python = feast_python
        self.timeout = timeout

    def run(self, name: str, job: dict, label: str) -> tuple[dict, float, float]:
        """(result, peak RSS MB, wall seconds) of one worker process."""
        from _peers import run_worker

        path = self.jobs / f"{label}.json"
        path.write_text(json.dumps(job))
        python = self.feast_python if name.startswith("feast") else Path(sys.executable)
        env = {"FEAST_USAGE": "False", "PYTHONUNBUFFERED": "1"}
        print(f"  .. {label}", end="", flush=True)
        done = run_worker(
            python,
            [str(SCRIPT), "--worker", name, "--job", str(path)],
            env=env,
            timeout=self.timeout,
        )
        peak = float(done.data.get("peak_call_mb") or done.data["peak_rss_mb"])
        print(f" ({done.wall_s:.1f} s, peak RSS {peak:,.0f} MB)", flush=True)
        return done.data, peak, done.wall_s


def compare_training_sets(bl: dict, fe: dict, bl_out: Path, fe_out: Path, n: int) -> str | None:
    """None when equal, else the first difference.

    Feast's Dask store leaves out entity rows whose card has events but none within the TTL
    (its TTL filter drops the joined rows); such a row must be all null in backline. Every
    other row must come back from both, with the same values.
    """
    import numpy as np
    import pyarrow.parquet as pq

    if not bl["unique"] or bl["rows"] != n:
        return f"backline returned {bl['rows']:,} rows for {n:,} entity rows (or repeated some)"
    if not fe["unique"]:
        return "Feast returned some entity rows twice"
    mb, mf = np.load(bl_out.with_suffix(".npz")), np.load(fe_out.with_suffix(".npz"))
    differ = np.nonzero(mb["valued"] != mf["valued"])[0]
    if differ.size:
        i = int(differ[0])
        return (
            f"{differ.size:,} entity rows have values on one side only, e.g. entity_row {i}: "
            f"backline {'has values' if mb['valued'][i] else 'all null'}, Feast "
            f"{'has values' if mf['valued'][i] else ('all null' if mf['present'][i] else 'no row')}"
        )
    for f in FEATURES:
        x, y = bl["stats"][f], fe["stats"][f]
        if x["nulls"] != y["nulls"]:
            return f"{f}: backline has {x['nulls']} nulls, Feast {y['nulls']}"
        if not math.isclose(x["null_w"], y["null_w"], rel_tol=1e-12, abs_tol=1e-9):
            return f"{f}: nulls are on different rows (weighted null checksum differs)"
        scale = max(x["wabs"], y["wabs"], 1e-300)
        if abs(x["wsum"] - y["wsum"]) > 1e-9 * scale:
            return f"{f}: weighted sums differ: backline {x['wsum']!r}, Feast {y['wsum']!r}"
    sb = {r["entity_row"]: r for r in pq.read_table(bl_out.with_suffix(".parquet")).to_pylist()}
    sf = {r["entity_row"]: r for r in pq.read_table(fe_out.with_suffix(".parquet")).to_pylist()}
    for row, rb in sb.items():
        rf = sf.get(row, dict.fromkeys(FEATURES))  # a row Feast left out: all null
        for f in FEATURES:
            if _value_diff(rb[f], rf[f]):
                return f"entity_row {row}, {f}: backline {rb[f]!r}, Feast {rf[f]!r}"
    return None


def _value_diff(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return (a is None) != (b is None)
    return not (a == b or math.isclose(a, b, rel_tol=REL_TOL))


def compare_online(a: list, b: list, requests: list[list[str]]) -> str | None:
    if len(a) != len(b):
        return f"answered {len(a)} vs {len(b)} requests"
    for i, (ra, rb) in enumerate(zip(a, b, strict=True)):
        if len(ra) != len(rb):
            return f"request {i}: {len(ra)} vs {len(rb)} rows"
        for j, (va, vb) in enumerate(zip(ra, rb, strict=True)):
            for f, x, y in zip(FEATURES, va, vb, strict=True):
                if _value_diff(x, y):
                    return f"request {i}, card {requests[i][j]}, {f}: backline {x!r}, Feast {y!r}"
    return None


def redis_flush(url: str) -> str | None:
    """Flush only the benchmark's DB; None when fine, else why Redis cannot be used."""
    try:
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=2)
        client.ping()
        client.flushdb()
        client.close()
        return None
    except Exception as exc:  # any failure means: skip Redis
        return f"{type(exc).__name__}: {exc}"


def _fmt(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "MB":
        return f"{value:,.0f} MB"
    if unit == "rows/s":
        return f"{value:,.0f}/s"
    if unit == "ms":
        return f"{value:.3f} ms" if value < 10 else f"{value:.1f} ms"
    return str(value)


class Report:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str, str, str]] = []
        self.verdicts: list[tuple[str, str]] = []
        self.notes: list[str] = []

    def add(
        self,
        figure: str,
        ours: float | None,
        theirs: float | None,
        unit: str,
        ratio: float | None = None,
        target: str = "",
        ok: bool | None = None,
    ) -> None:
        verdict = "" if ok is None else ("PASS" if ok else "MISS")
        self.rows.append(
            (
                figure,
                _fmt(ours, unit),
                _fmt(theirs, unit),
                "n/a" if ratio is None or math.isnan(ratio) else f"{ratio:.2f}x",
                target,
                verdict,
            )
        )
        if verdict:
            self.verdicts.append((f"{figure}: {target}", verdict))

    def check(self, what: str, ok: bool, detail: str = "") -> None:
        verdict = "PASS" if ok else "MISS"
        self.verdicts.append((f"{what}{': ' + detail if detail else ''}", verdict))

    def print(self) -> None:
        head = ("figure", "backline", "Feast", "ratio", "target", "")
        widths = [max(len(r[i]) for r in [head, *self.rows]) for i in range(6)]
        line = "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))
        print("\n" + line.rstrip())
        print("-" * len(line))
        for row in self.rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        print("\nratio: Feast / backline for times and memory (higher is better for backline);")
        print("       backline / Feast for rows/s.")
        for note in self.notes:
            print(f"note: {note}")
        print("\nsummary")
        for what, verdict in self.verdicts:
            print(f"  {verdict}  {what}")
        passed = sum(v == "PASS" for _, v in self.verdicts)
        print(f"\n{passed} PASS, {len(self.verdicts) - passed} MISS")


def _safe_ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def backline_online_available() -> str | None:
    """None when backline has materialize and online reads, else what is missing."""
    import importlib.util

    for module in ("backline.features.materialize", "backline.features.online"):
        if importlib.util.find_spec(module) is None:
            return module
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument(
        "--rows",
        default="100000,1000000",
        help="entity-row counts for historical retrieval, comma separated (100000,1000000)",
    )
    parser.add_argument("--cards", type=int, default=50_000, help="distinct cards (50,000)")
    parser.add_argument(
        "--events-per-card", type=float, default=6.0, help="mean source rows per card (6)"
    )
    parser.add_argument(
        "--requests", type=int, default=2000, help="online requests of 1 entity (2000)"
    )
    parser.add_argument(
        "--batch-requests", type=int, default=300, help="online requests of 100 entities (300)"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    parser.add_argument("--skip-redis", action="store_true", help="leave out the Redis store")
    parser.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/14",
        help="Redis DB used (only this DB is flushed) (redis://127.0.0.1:6379/14)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="reuse generated data and the backline project from an earlier run with the same sizes",
    )
    parser.add_argument(
        "--reinstall", action="store_true", help="rebuild Feast's venv even if it is in place"
    )
    parser.add_argument(
        "--timeout", type=float, default=3600, help="seconds one worker may run (3600)"
    )
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    if args.worker:
        return worker_main(args.worker, args.job)

    if args.quick:
        args.rows, args.cards, args.requests, args.batch_requests = "2000,20000", 2000, 300, 50
    sizes = [int(s) for s in args.rows.split(",") if s.strip()]

    print("backline vs Feast: feature store peer benchmark")
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"machine: {cpus} CPUs, Python {sys.version.split()[0]}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )

    sys.path.insert(0, str(HERE))
    import _peers

    if args.reinstall:
        shutil.rmtree(_peers.PEERS / "feast", ignore_errors=True)
    feast_python = _peers.ensure_venv("feast", FEAST_REQUIREMENTS)
    feast_version = _peers.package_version(feast_python, "feast")
    import backline

    print(
        f"Feast {feast_version} in {feast_python.parent.parent} (offline store: file/Dask; "
        f"online: SQLite, Redis); backline {getattr(backline, '__version__', '?')} in-process"
    )

    tag = _peers.digest(args.cards, args.events_per_card, sizes, args.seed, N_FEATURES)
    work = WORK / tag
    meta_path = work / "meta.json"
    meta = json.loads(meta_path.read_text()) if args.keep and meta_path.exists() else None
    if meta is not None and time.time() - meta["anchor"] > (TTL_EDGE_GAP_DAYS - 1) * 86400:
        print("kept data is too old for the online TTL window; generating it again")
        meta = None
    if meta is None:
        shutil.rmtree(work, ignore_errors=True)
        t0 = time.perf_counter()
        meta = generate(work, args.cards, args.events_per_card, sizes, args.seed)
        print(f"generated data in {time.perf_counter() - t0:.1f} s")
    else:
        print(f"reusing data in {work}")
    source = work / "source.parquet"
    print(
        f"data: {meta['source_rows']:,} source rows ({meta['source_mb']} MB Parquet), "
        f"{meta['cards']:,} cards, {N_FEATURES} float64 features ({NULL_RATE:.0%} null), "
        f"{SPAN_DAYS} days, TTL {TTL_DAYS}d; entity rows {', '.join(f'{s:,}' for s in sizes)} "
        f"({UNKNOWN_CARD_RATE:.0%} unknown cards, {EXACT_TIME_RATE:.0%} at an exact event time)"
    )
    print(f"work folder: {work}")

    runner = Runner(work, feast_python, args.timeout)
    report = Report()
    root = work / "backline"

    stores = ["sqlite"]
    redis_note = None
    if not args.skip_redis:
        redis_note = redis_flush(args.redis_url)
        if redis_note is None:
            stores.append("redis")
        else:
            report.notes.append(f"Redis skipped: {args.redis_url} unreachable ({redis_note})")
    feast_repos = {s: work / f"feast_{s}" for s in stores}
    online_uris = {
        "sqlite": "sqlite:///.backline/online-bench.db",
        "redis": args.redis_url,
    }

    print("\nsetup")
    if args.keep and (root / ".backline").exists() and (root / "features.py").exists():
        print("  .. backline project kept (no re-ingest)")
        bl_ingest_s = None
    else:
        setup, _, _ = runner.run("bl_setup", {"root": str(root), "source": str(source)}, "bl_setup")
        bl_ingest_s = setup["ingest_s"]
        if setup["rows_quarantined"]:
            report.notes.append(f"backline quarantined {setup['rows_quarantined']} source rows")
    for s in stores:
        runner.run(
            "feast_setup",
            {"repo": str(feast_repos[s]), "source": str(source), "online": online_uris[s]},
            f"feast_setup_{s}",
        )
    if bl_ingest_s is not None:
        report.notes.append(
            f"backline ingests the Parquet once (validated, into its offline store) before "
            f"anything else: {bl_ingest_s:.2f} s for {meta['source_rows']:,} rows, not counted "
            "below; Feast reads the file as it is"
        )

    # -- historical retrieval ---------------------------------------------------------------
    print("\nhistorical retrieval (one fresh process per system and size)")
    for size in sizes:
        entities = work / f"entities_{size}.parquet"
        res: dict[str, tuple[dict, float, Path]] = {}
        for side, name, job in (
            ("backline", "bl_history", {"root": str(root)}),
            ("feast", "feast_history", {"repo": str(feast_repos["sqlite"])}),
        ):
            out = work / f"history_{side}_{size}"
            try:
                data, peak, _ = runner.run(
                    name,
                    {**job, "entities": str(entities), "out": str(out)},
                    f"{side}_history_{size}",
                )
                res[side] = (data, peak, out)
            except RuntimeError as exc:
                print(f"\n  {side} historical retrieval of {size:,} rows failed: {exc}")
                report.notes.append(f"{side} historical {size:,} rows failed: {str(exc)[:300]}")
        bl, fe = res.get("backline"), res.get("feast")
        speed = _safe_ratio(fe[0]["seconds"] if fe else None, bl[0]["seconds"] if bl else None)
        mem = _safe_ratio(fe[1] if fe else None, bl[1] if bl else None)
        report.add(
            f"historical {size:,} rows: time",
            bl[0]["seconds"] if bl else None,
            fe[0]["seconds"] if fe else None,
            "s",
            speed,
            ">= 10x faster",
            speed is not None and speed >= 10,
        )
        report.add(
            f"historical {size:,} rows: peak RSS",
            bl[1] if bl else None,
            fe[1] if fe else None,
            "MB",
            mem,
            "<= 1/4 of Feast's",
            mem is not None and mem >= 4,
        )
        before_b = bl[0]["rss_before_mb"] if bl else None
        before_f = fe[0]["rss_before_mb"] if fe else None
        report.add(
            f"historical {size:,} rows: RSS before the call",
            before_b,
            before_f,
            "MB",
            _safe_ratio(before_f, before_b),
            "(imports + entity rows; info)",
        )
        own_b = None if bl is None else bl[1] - bl[0]["rss_before_mb"]
        own_f = None if fe is None else fe[1] - fe[0]["rss_before_mb"]
        report.add(
            f"historical {size:,} rows: peak RSS - RSS before",
            own_b,
            own_f,
            "MB",
            _safe_ratio(own_f, own_b),
            "(the retrieval's own; info)",
        )
        if bl and fe:
            diff = compare_training_sets(bl[0], fe[0], bl[2], fe[2], size)
            dropped = size - fe[0]["rows"]
            checked = (
                f"{bl[0]['valued_rows']:,} rows with values checksummed, 1 row in "
                f"{max(1, size // SAMPLE_ROWS)} compared exactly"
            )
            if dropped:
                checked += (
                    f"; Feast left out {dropped:,} rows with no value in TTL (all null in backline)"
                )
            if diff:
                print(f"  historical {size:,}: VALUES DIFFER: {diff}")
            else:
                print(f"  historical {size:,}: values match ({checked})")
            report.check(f"historical {size:,} rows: same values", diff is None, diff or checked)

    # -- materialization and online reads ---------------------------------------------------
    missing = backline_online_available()
    end = datetime.now(UTC).replace(microsecond=0)
    window_rows = rows_in_window(source, end - timedelta(days=TTL_DAYS), end)
    requests = {
        "1x50": online_requests(meta, args.requests, 1, args.seed),
        "100x50": online_requests(meta, args.batch_requests, 100, args.seed),
    }
    warmup = {"1x50": min(200, args.requests), "100x50": min(20, args.batch_requests)}
    if missing:
        report.notes.append(
            f"backline has no {missing} yet: materialization and online figures are Feast only"
        )
    print(
        f"\nmaterialization ({window_rows:,} source rows in the {TTL_DAYS}-day window up to "
        f"{end:%Y-%m-%d %H:%M:%S} UTC) and online reads"
    )
    for s in stores:
        results: dict[str, dict] = {}
        for side in ("backline", "feast"):
            if side == "backline" and missing:
                continue
            if s == "redis":
                redis_flush(args.redis_url)
            elif side == "backline":  # Feast's SQLite file is new: its repo was just set up
                for stale in (root / ".backline").glob("online-bench.db*"):
                    stale.unlink()
            base = (
                {"root": str(root), "online_uri": online_uris[s]}
                if side == "backline"
                else {"repo": str(feast_repos[s])}
            )
            prefix = "bl" if side == "backline" else "feast"
            try:
                mat, _, _ = runner.run(
                    f"{prefix}_materialize",
                    {**base, "end": end.isoformat()},
                    f"{side}_materialize_{s}",
                )
                online, _, _ = runner.run(
                    f"{prefix}_online",
                    {**base, "requests": requests, "warmup": warmup},
                    f"{side}_online_{s}",
                )
                results[side] = {"mat": mat, "online": online}
            except RuntimeError as exc:
                print(f"\n  {side} {s} failed: {exc}")
                report.notes.append(f"{side} {s} materialize/online failed: {str(exc)[:300]}")
        bl_run, fe_run = results.get("backline"), results.get("feast")
        if bl_run:
            report.notes.append(
                f"backline materialize into {s}: read {bl_run['mat']['rows']:,} source rows, wrote "
                f"{bl_run['mat']['entities']:,} cards"
            )
        bl_rate = window_rows / bl_run["mat"]["seconds"] if bl_run else None
        fe_rate = window_rows / fe_run["mat"]["seconds"] if fe_run else None
        ratio = _safe_ratio(bl_rate, fe_rate)
        report.add(
            f"materialize -> {s}: source rows/s",
            bl_rate,
            fe_rate,
            "rows/s",
            ratio,
            ">= 10x Feast",
            ratio is not None and ratio >= 10,
        )
        for case in ("1x50", "100x50"):
            lb = bl_run["online"][case]["latency"] if bl_run else {}
            lf = fe_run["online"][case]["latency"] if fe_run else {}
            for q in ("p50", "p90", "p99", "max"):
                target, ok = "", None
                if case == "1x50" and q == "p99":
                    limit = 1.0 if s == "sqlite" else 2.0
                    target = f"backline <= {limit:g} ms"
                    ok = bool(lb) and lb[q] <= limit
                report.add(
                    f"online {s} {case.replace('x', ' ent x ')} feat: {q}",
                    lb.get(q),
                    lf.get(q),
                    "ms",
                    _safe_ratio(lf.get(q), lb.get(q)),
                    target,
                    ok,
                )
            if bl_run and fe_run:
                diff = compare_online(
                    bl_run["online"][case]["answers"],
                    fe_run["online"][case]["answers"],
                    requests[case],
                )
                n = len(bl_run["online"][case]["answers"])
                what = f"online {s} {case}: same values"
                detail = diff or f"first {n} requests x {case.split('x')[0]} entities x 50 features"
                print(f"  {what[:-13]}: {'values match' if not diff else 'VALUES DIFFER: ' + diff}")
                report.check(what, diff is None, detail)
        if s == "redis":
            redis_flush(args.redis_url)

    report.notes.append(
        "online latency: one caller, requests back to back; scheduled start = previous "
        "request's finish, latency = finish - scheduled start, answers converted to Python "
        "dicts inside the timing (backline .to_dicts(), Feast .to_dict()); warm-up requests "
        "not counted"
    )
    report.notes.append(
        "peak RSS: the worker process's own high-water mark (VmHWM) read right after the "
        "retrieval returned, imports, entity rows and the result included; not ru_maxrss, "
        "which on Linux starts from the parent's RSS at fork"
    )
    report.print()
    print(f"\nFeast {feast_version}; command: {shlex.join([sys.executable, *sys.argv])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
