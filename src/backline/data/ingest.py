"""Ingest a file or folder into a source: validate, quarantine, commit atomically.

    result = ingest(cfg, "transactions", Path("data/transactions.csv"))
    assert result.rows_in == result.rows_accepted + result.rows_quarantined

Re-ingesting the same content is a no-op that answers with the batch that already holds it
(`status == "already_ingested"`, `rows_new == 0`). An input whose files are all empty (0 bytes)
commits nothing (`status == "empty"`) and says so in `warnings`. Whatever goes wrong, no
staging folder is left behind.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from backline.core.config import Config, SourceSpec
from backline.core.faults import maybe_fail
from backline.core.files import fsync_file
from backline.core.hashing import hash_rows
from backline.data.offline_store import BatchRecord, OfflineStore, StagedFile
from backline.data.readers import LINE, content_hash, list_inputs, read_file
from backline.data.stats import batch_stats
from backline.data.validation import FILE, quarantine_schema, validate

Progress = Callable[[str, float], None]


@dataclass(frozen=True)
class IngestResult:
    """What one `backline ingest` did."""

    source: str
    batch_id: str
    status: str
    """committed; already_ingested when the same content was ingested before (the counts are
    then that batch's, and rows_new is 0); empty when every input file is 0 bytes (nothing is
    committed and batch_id is "")."""
    input: str
    files: int
    rows_in: int
    rows_accepted: int
    rows_quarantined: int
    rows_new: int
    """Rows this call added to the source: rows_accepted when committed, else 0."""
    quarantine_reasons: dict[str, int]
    warnings: tuple[str, ...]
    seconds: float

    def to_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def ingest(
    cfg: Config,
    source: str,
    path: Path,
    *,
    progress: Progress | None = None,
    now: datetime | None = None,
) -> IngestResult:
    started = time.perf_counter()
    spec = cfg.source(source)
    tick = progress or (lambda stage, done: None)
    inputs = list_inputs(path, spec.format)
    digest = content_hash([p for p, _ in inputs], path)
    store = OfflineStore.open(cfg)
    empty = [f.name for f, _ in inputs if f.stat().st_size == 0]
    if len(empty) == len(inputs):
        return IngestResult(
            source=source,
            batch_id="",
            status="empty",
            input=str(path.resolve()),
            files=len(inputs),
            rows_in=0,
            rows_accepted=0,
            rows_quarantined=0,
            rows_new=0,
            quarantine_reasons={},
            warnings=(f"{_names(empty)} empty (0 bytes); nothing was committed",),
            seconds=round(time.perf_counter() - started, 3),
        )
    with store.writer_lock():
        previous = store.find_batch(source, digest)
        if previous is not None:
            return _result(previous, "already_ingested", len(inputs), started)
        now = (now or datetime.now(UTC)).astimezone(UTC)
        batch_id = f"{now:%Y%m%dT%H%M%S}-{digest[:12]}"
        staging = store.staging_dir(batch_id)
        try:
            record = _stage_and_commit(
                cfg, spec, store, inputs, path, digest, batch_id, staging, now, tick
            )
        except BaseException:  # an error, or Ctrl-C: the batch never existed
            store.discard_staging(batch_id)
            raise
    return _result(record, "committed", len(inputs), started)


def _names(files: list[str]) -> str:
    shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
    return f"{shown} {'is' if len(files) == 1 else 'are'}"


def _stage_and_commit(
    cfg: Config,
    spec: SourceSpec,
    store: OfflineStore,
    inputs: list[tuple[Path, str]],
    path: Path,
    digest: str,
    batch_id: str,
    staging: Path,
    now: datetime,
    tick: Progress,
) -> BatchRecord:
    """Read, validate and stage every file, then commit them as one batch."""
    source = spec.name
    accepted_parts: list[pa.Table] = []
    quarantined_parts: list[pa.Table] = []
    staged: list[StagedFile] = []
    warnings: list[str] = []
    for i, (file, fmt) in enumerate(inputs):
        tick(f"reading {file.name}", i / len(inputs))
        data = file.read_bytes()
        if not data:
            warnings.append(f"{file.name}: empty (0 bytes)")
        read = read_file(file, fmt, data, spec, max_value_bytes=cfg.ingest.max_value_bytes)
        warnings.extend(read.warnings)
        checked = validate(
            read,
            spec,
            now=now,
            max_future=cfg.ingest.max_future,
            max_value_bytes=cfg.ingest.max_value_bytes,
            file_index=i,
        )
        accepted_parts.append(checked.accepted)
        quarantined_parts.append(checked.quarantined)
        if any(r.reason == "unreadable_file" for r in read.rejects):
            staged.append(_keep_whole_file(file, staging, batch_id))

    tick("checking keys", 0.6)
    unique, duplicates = _deduplicate(accepted_parts, spec, store, [f.name for f, _ in inputs])
    accepted = _finish(unique, spec, batch_id, now)
    quarantined = pa.concat_tables([*quarantined_parts, duplicates])
    reasons = Counter(quarantined.column("reason").to_pylist())
    tick("statistics", 0.75)
    stats = batch_stats(accepted, spec)
    span = stats[spec.event_time]
    tick("writing", 0.85)
    staged.extend(_write_data(accepted, spec, staging, batch_id, _low_cardinality(stats)))
    if accepted.num_rows:
        staged.append(_write_keys(accepted, spec, staging, batch_id))
    if quarantined.num_rows:
        staged.append(_write_quarantine(quarantined, spec, staging, batch_id, now))
    for item in staged:
        fsync_file(item.staged)
    maybe_fail("ingest_after_staging")
    rows_in = accepted.num_rows + quarantined.num_rows
    record = BatchRecord(
        batch_id=batch_id,
        source=source,
        content_hash=digest,
        input=str(path.resolve()),
        rows_in=rows_in,
        rows_accepted=accepted.num_rows,
        rows_quarantined=quarantined.num_rows,
        quarantine_reasons=dict(sorted(reasons.items())),
        warnings=tuple(warnings),
        min_event_time=_text(span.get("min")),
        max_event_time=_text(span.get("max")),
        ingested_at=now.isoformat(),
    )
    tick("committing", 0.97)
    store.commit(record, staged, stats)
    tick("done", 1.0)
    return record


def _result(record: BatchRecord, status: str, files: int, started: float) -> IngestResult:
    return IngestResult(
        source=record.source,
        batch_id=record.batch_id,
        status=status,
        input=record.input,
        files=files,
        rows_in=record.rows_in,
        rows_accepted=record.rows_accepted,
        rows_quarantined=record.rows_quarantined,
        rows_new=record.rows_accepted if status == "committed" else 0,
        quarantine_reasons=dict(record.quarantine_reasons),
        warnings=record.warnings,
        seconds=round(time.perf_counter() - started, 3),
    )


def _deduplicate(
    parts: list[pa.Table],
    spec: SourceSpec,
    store: OfflineStore,
    file_names: list[str],
) -> tuple[pa.Table, pa.Table]:
    """Split rows into those with new keys and duplicate-key quarantine rows.

    Rows arrive in file and line order, so the first occurrence of a key in the batch wins.
    """
    rows = pa.concat_tables(parts)
    n = rows.num_rows
    key = _key(rows, spec.primary_key)
    in_batch = np.zeros(n, dtype=bool)
    if n and len(pc.unique(key)) < n:  # a hash pass; counting only when something repeats
        counts = pc.value_counts(key)
        repeated = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
        if len(repeated):
            positions = pc.indices_nonzero(pc.is_in(key, value_set=repeated)).to_numpy()
            first: set[object] = set()
            for position, value in zip(positions, key.take(positions).to_pylist(), strict=True):
                if value in first:
                    in_batch[position] = True
                else:
                    first.add(value)
    earlier = np.zeros(n, dtype=bool)
    if n:
        earlier = _seen_before(rows, key, spec, store)
    dropped = in_batch | earlier
    if not dropped.any():
        return rows, quarantine_schema().empty_table()
    duplicates = rows.filter(pa.array(dropped))
    why = earlier[dropped]
    keys = _key(duplicates, spec.primary_key).to_pylist()
    records = duplicates.drop_columns([LINE, FILE]).to_pylist()
    quarantine = pa.table(
        {
            "file": [file_names[i] for i in duplicates.column(FILE).to_pylist()],
            "line": duplicates.column(LINE),
            "reason": ["duplicate_key" if e else "duplicate_key_in_batch" for e in why],
            "column": [spec.primary_key[0]] * len(keys),
            "message": [
                f"{', '.join(spec.primary_key)} = {k} "
                + ("was accepted by an earlier batch" if e else "appears earlier in this batch")
                for k, e in zip(keys, why, strict=True)
            ],
            "raw_record": [json.dumps(r, default=str) for r in records],
        },
        schema=quarantine_schema(),
    )
    return rows.filter(pa.array(~dropped)), quarantine


def key_hashes(table: pa.Table, spec: SourceSpec) -> np.ndarray:
    """Stable 64-bit hashes of the primary key of each row (the key index's entries)."""
    kinds = [spec.column(c).type for c in spec.primary_key]
    return hash_rows([table.column(c) for c in spec.primary_key], kinds)


def _seen_before(
    rows: pa.Table, key: pa.ChunkedArray, spec: SourceSpec, store: OfflineStore
) -> np.ndarray:
    """Which rows carry a key an earlier batch accepted.

    Each committed batch keeps the sorted hashes of its keys, 8 bytes a key, so the usual
    answer ("none") costs a hash pass and a sorted lookup instead of reading every key in the
    store. Hash matches are confirmed against the stored keys themselves, reading only the
    matched values, so a collision can never quarantine a new row.
    """
    index, unindexed = store.key_index(spec.name)
    maybe = np.zeros(rows.num_rows, dtype=bool)
    if len(index):
        hashes = key_hashes(rows, spec)
        at = np.minimum(np.searchsorted(index, hashes), len(index) - 1)
        maybe = index[at] == hashes
    files = [str(f) for f in unindexed]
    if maybe.any():
        files = [str(f) for f in store.files("data", spec.name)]
    if not files:
        return maybe
    candidates = key.filter(pa.array(maybe)) if maybe.any() and not unindexed else key
    dataset = pads.dataset(files, format="parquet")
    if len(spec.primary_key) == 1 and candidates is not key:
        found = dataset.to_table(
            columns=list(spec.primary_key),
            filter=pc.field(spec.primary_key[0]).isin(candidates.combine_chunks().unique()),
        )
    else:
        found = dataset.to_table(columns=list(spec.primary_key))
    seen = _key(found, spec.primary_key).combine_chunks()
    return np.asarray(pc.is_in(key, value_set=seen).to_numpy(zero_copy_only=False), dtype=bool)


def _write_keys(table: pa.Table, spec: SourceSpec, staging: Path, batch_id: str) -> StagedFile:
    hashes = np.sort(key_hashes(table, spec))  # np.sort is SIMD; np.unique is 100x slower here
    path = staging / "keys.npy"
    np.save(path, hashes, allow_pickle=False)
    return StagedFile(path, f"keys/source={spec.name}/part-{batch_id}.npy", "keys", len(hashes))


def _key(table: pa.Table, columns: tuple[str, ...]) -> pa.ChunkedArray:
    """The primary key as one column: itself, or its parts joined by a separator."""
    if len(columns) == 1:
        return table.column(columns[0])
    parts = [pc.cast(table.column(c), pa.string()) for c in columns]
    return pc.binary_join_element_wise(*parts, "\x1f")


def _finish(rows: pa.Table, spec: SourceSpec, batch_id: str, now: datetime) -> pa.Table:
    """Declared columns sorted by event time, plus the lineage columns."""
    rows = rows.drop_columns([LINE, FILE])
    times = rows.column(spec.event_time)
    if len(times) > 1:
        ticks = pc.cast(times, pa.int64()).to_numpy()
        if (np.diff(ticks) < 0).any():
            rows = rows.take(pc.sort_indices(times))
    n = rows.num_rows
    stamp = np.full(n, np.datetime64(now.replace(tzinfo=None), "us"))
    rows = rows.append_column("ingested_at", pa.array(stamp).cast(pa.timestamp("us", tz="UTC")))
    batch = pa.DictionaryArray.from_arrays(
        pa.array(np.zeros(n, dtype=np.int32)), pa.array([batch_id], pa.string())
    )
    return rows.append_column("batch_id", batch)


def _low_cardinality(stats: dict[str, dict[str, object]]) -> list[str]:
    """String columns worth dictionary-encoding: few distinct values for their row count.

    Encoding a near-unique column (ids) costs time and saves nothing.
    """
    out = ["batch_id"]
    for name, entry in stats.items():
        distinct = entry.get("distinct_approx")
        count = entry.get("count")
        if isinstance(distinct, int) and isinstance(count, int) and distinct < count / 2:
            out.append(name)
    return out


def _write_data(
    table: pa.Table, spec: SourceSpec, staging: Path, batch_id: str, dictionary: list[str]
) -> list[StagedFile]:
    """One Parquet file per event date; rows are sorted by event time, so dates are runs."""
    if table.num_rows == 0:
        return []
    days = pc.cast(pc.cast(table.column(spec.event_time), pa.date32()), pa.int32()).to_numpy()
    starts = np.concatenate(([0], np.flatnonzero(np.diff(days)) + 1))
    stops = np.concatenate((starts[1:], [len(days)]))
    out = []
    for start, stop in zip(starts, stops, strict=True):
        day = (np.datetime64("1970-01-01") + np.timedelta64(int(days[start]), "D")).astype(str)
        rel = f"source={spec.name}/event_date={day}/part-{batch_id}-0.parquet"
        path = staging / "data" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(
            table.slice(start, stop - start),
            path,
            row_group_size=128 * 1024,
            use_dictionary=dictionary,
        )
        out.append(StagedFile(path, rel, "data", int(stop - start)))
    return out


def _write_quarantine(
    table: pa.Table, spec: SourceSpec, staging: Path, batch_id: str, now: datetime
) -> StagedFile:
    n = table.num_rows
    table = table.append_column("batch_id", pa.array([batch_id] * n, pa.string()))
    table = table.append_column("ingested_at", pa.array([now] * n, pa.timestamp("us", tz="UTC")))
    path = staging / "quarantine.parquet"
    pq.write_table(table, path)
    return StagedFile(
        path, f"quarantine/source={spec.name}/part-{batch_id}.parquet", "quarantine", n
    )


def _keep_whole_file(file: Path, staging: Path, batch_id: str) -> StagedFile:
    kept = staging / "kept" / file.name
    kept.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(file, kept)
    return StagedFile(kept, f"quarantine/files/{batch_id}/{file.name}", "kept", 1)


def _text(value: object) -> str | None:
    return None if value is None else str(value)
