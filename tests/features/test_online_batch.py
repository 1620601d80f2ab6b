"""Batch reads: many entities evaluated together give, bit for bit, what one entity at a time
gives (`codec.evaluate`, numpy's own reductions), with the same statuses, ages and errors.

The batch path (`online.batch`) re-does numpy's pairwise summation for many runs at once, so
these tests compare float results by their bits, not within a tolerance.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backline.core.config import Config
from backline.core.errors import StoreError
from backline.features.definitions import Definitions
from backline.features.materialize import materialize
from backline.features.online import (
    OnlineRangeError,
    ReadPlan,
    get_online_features,
    open_online_store,
    read,
    sqlite_store,
)
from backline.features.online.batch import Events, Program, _Sums
from backline.features.online.codec import (
    NO_SINCE,
    AggregateSpec,
    PlainCodec,
    ViewLayout,
    empty_events,
    encode_groups,
    evaluate,
    to_us,
)
from backline.features.online.read import OnlineFeatures
from backline.features.repository import apply, load_definitions
from tests.features.online_support import (
    T0,
    cleaned,
    ingest_rows,
    make_project,
    minutes,
    tx,
)

STORES = [pytest.param(False, id="sqlite"), pytest.param(True, id="redis", marks=pytest.mark.redis)]
FUNCTIONS = ("count", "count_distinct", "sum", "mean", "min", "max", "stddev")
SECOND = 1_000_000


def bits(value: Any) -> Any:
    """A value as something equal only for the very same result: floats by their bits."""
    if isinstance(value, float):
        return ("float", "nan" if math.isnan(value) else struct.pack("<d", value))
    return (type(value).__name__, value)


def same_rows(a: tuple[tuple[Any, ...], ...], b: tuple[tuple[Any, ...], ...]) -> bool:
    return [[bits(v) for v in row] for row in a] == [[bits(v) for v in row] for row in b]


# -- the codec level: Events against codec.evaluate ------------------------------------------

TRICKY = [0.0, -0.0, 1.5, 10.0, 0.1, 0.7, 1e6, 1e16, -1e16, 3.3, math.inf, math.nan]


def _values(rng: np.random.Generator, kind: str, n: int) -> np.ndarray[Any, Any]:
    mode = int(rng.integers(0, 5))
    if kind == "h8":
        if mode == 0:  # 64-bit hashes
            return rng.integers(1, 2**63, n).astype(np.uint64)
        return rng.integers(0, 5, n).astype(np.uint64)  # few, and 0 (null)
    if mode == 1:
        values = np.round(rng.standard_normal(n) * 10.0 ** int(rng.integers(-3, 7)), 2)
        values[rng.random(n) < 0.3] = np.nan  # nulls
        return values
    if mode == 2:
        return rng.choice(np.array(TRICKY), n)
    return np.round(rng.standard_normal(n) * 10.0 ** int(rng.integers(-3, 7)), 2)


def _blob(rng: np.random.Generator, kinds: list[str], n: int, spread: int = 4000) -> bytes:
    times = np.sort(rng.integers(0, spread, n)).astype(np.int64) * SECOND
    ids = rng.integers(1, 2**63, n).astype(np.uint64)
    slots = [_values(rng, kind, n) for kind in kinds]
    since = [int(rng.choice([NO_SINCE, 5 * SECOND]))]
    return encode_groups(times, ids, slots, kinds, np.array([0]), np.array([n]), since)[0]


def _specs(rng: np.random.Generator, kinds: list[str]) -> list[AggregateSpec]:
    specs = []
    for window in rng.choice([0, 5, 60, 600, 3600, 10**6], size=3, replace=False).tolist():
        for function in FUNCTIONS:
            for slot in ([-1] if function == "count" else []) + list(range(len(kinds))):
                numeric = function not in ("count", "count_distinct")
                if slot >= 0 and numeric and kinds[slot] == "h8":
                    continue
                if rng.random() < 0.5:
                    name = f"{function}_{slot}_{window}"
                    specs.append(AggregateSpec(name, function, slot, window * SECOND))
    return specs or [AggregateSpec("n", "count", -1, 60 * SECOND)]


LENGTHS = [0, 1, 2, 7, 8, 9, 15, 16, 17, 63, 64, 65, 127, 128, 129, 130, 136, 200, 257, 1000]
KINDS = [["f8", "h8", "f8"], ["f8"], [], ["h8", "f8"], ["h8"], ["h8"] * 4 + ["f8"] * 6]


def _check(groups: list[tuple[list[bytes], list[str], list[AggregateSpec]]], t_us: int) -> None:
    events = Events.gather([(blobs, kinds) for blobs, kinds, _ in groups])
    assert events is not None
    program = Program([specs for _, _, specs in groups], [kinds for _, kinds, _ in groups])
    got = events.evaluate(t_us, program)
    for g, (blobs, kinds, specs) in enumerate(groups):
        for i, blob in enumerate(blobs):
            with np.errstate(all="ignore"):
                want = evaluate(blob, t_us, specs, kinds)
            for j, spec in enumerate(specs):
                assert bits(got[g][j][i]) == bits(want[j]), (spec, kinds, i)


@pytest.mark.parametrize("seed", range(8))
def test_batch_aggregates_are_bit_identical_to_one_value_at_a_time(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(12):
        groups = []
        for _ in range(int(rng.integers(1, 5))):
            kinds = KINDS[int(rng.integers(0, len(KINDS)))]
            lengths = rng.choice(LENGTHS, size=int(rng.integers(1, 30))).tolist()
            if rng.random() < 0.2:  # many runs longer than a pairwise block
                lengths = rng.integers(129, 700, size=40).tolist()
            blobs = [_blob(rng, kinds, n) for n in lengths]
            groups.append((blobs, kinds, _specs(rng, kinds)))
        t_us = int(rng.integers(-100, 4500)) * SECOND + int(rng.integers(0, 2))
        _check(groups, t_us)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    runs=st.lists(
        st.lists(
            st.tuples(st.integers(0, 40), st.sampled_from([*TRICKY, None, 2.5, -7.25])),
            max_size=40,
        ),
        min_size=1,
        max_size=6,
    ),
    window=st.sampled_from([0, 1, 5, 10, 30, 10**6]),
    at=st.integers(-1, 45),
)
def test_batch_aggregates_of_tricky_values_are_bit_identical(
    runs: list[list[tuple[int, float | None]]], window: int, at: int
) -> None:
    """Zeros of both signs, NaN, infinities and nulls, windows on the events' times."""
    kinds = ["f8"]
    blobs = []
    for events in runs:
        events = sorted(events, key=lambda e: e[0])
        times = np.array([t for t, _ in events], dtype=np.int64) * SECOND
        values = np.array([math.nan if v is None else v for _, v in events], dtype=np.float64)
        ids = np.arange(1, len(events) + 1, dtype=np.uint64)
        n = len(events)
        blobs.append(
            encode_groups(times, ids, [values], kinds, np.array([0]), np.array([n]), [NO_SINCE])[0]
        )
    specs = [AggregateSpec(f, f, 0, window * SECOND) for f in FUNCTIONS]
    specs.append(AggregateSpec("rows", "count", -1, window * SECOND))
    _check([(blobs, kinds, specs)], at * SECOND)


def test_sums_of_runs_are_numpy_sums_bit_for_bit() -> None:
    """Runs of every length around numpy's blocks (8, 128) and buffer (8192), zeros of both
    signs; a prefix of the runs alone too."""
    rng = np.random.default_rng(7)
    for runs in (3, 40):
        counts = rng.choice([0, 1, 7, 8, 9, 127, 128, 129, 1000, 8191, 8192, 8193], runs)
        counts[:2] = [129, 3 * 8192 + 17]
        values = np.round(rng.standard_normal(int(counts.sum())) * 1000, 2)
        values[rng.random(len(values)) < 0.01] = -0.0
        starts = counts.cumsum() - counts
        sums = _Sums(starts, counts)
        got = sums(values)
        first = sums(values[: starts[runs // 2]], runs // 2)
        for r in range(runs):
            want = values[starts[r] : starts[r] + counts[r]].sum()
            assert bits(float(got[r])) == bits(float(want)), (runs, r, counts[r])
            if r < runs // 2:
                assert bits(float(first[r])) == bits(float(want))
    assert bits(float(_Sums(np.array([0]), np.array([1]))(np.array([-0.0]))[0])) == bits(0.0)


def test_an_entity_without_events_has_the_empty_aggregates_of_a_missing_one() -> None:
    """The batch reads an entity the store does not know as one with no events: its counts
    are 0 and everything else None, as for an entity without a value."""
    rng = np.random.default_rng(5)
    for kinds in KINDS:
        specs = _specs(rng, kinds)
        empty = [0 if s.function in ("count", "count_distinct") else None for s in specs]
        blob = empty_events(kinds)
        assert evaluate(blob, 10**15, specs, kinds) == empty
        events = Events.gather([([blob, _blob(rng, kinds, 5), blob], kinds)])
        assert events is not None
        got = events.evaluate(10**9, Program([specs], [kinds]))[0]
        assert [column[0] for column in got] == empty == [column[2] for column in got]


def test_times_too_far_apart_to_key_by_run_are_counted_instead() -> None:
    kinds = ["f8"]
    far = 2**61
    blobs = []
    for r in range(4):
        times = np.array([-far + r, 0, far - 10 + r], dtype=np.int64)
        values = np.array([1.0, 2.0, 4.0 + r])
        ids = np.arange(1, 4, dtype=np.uint64)
        blobs.append(
            encode_groups(times, ids, [values], kinds, np.array([0]), np.array([3]), [NO_SINCE])[0]
        )
    specs = [AggregateSpec("sum", "sum", 0, far), AggregateSpec("n", "count", -1, 2 * far - 1)]
    for t_us in (-far, -1, 0, far - 10, far):
        _check([(blobs, kinds, specs)], t_us)


def test_gather_refuses_values_that_are_not_well_formed() -> None:
    rng = np.random.default_rng(3)
    kinds = ["f8", "h8"]
    good = [_blob(rng, kinds, n) for n in (0, 3, 9)]
    assert Events.gather([(good, kinds)]) is not None
    plain = PlainCodec(_layout()).encode(1, 2, [1.5], [7])
    for bad in (
        plain,  # a plain view's value
        good[1][:-8],  # truncated
        good[1] + b"\x00",  # not whole words
        b"A\x02",  # shorter than a header
        _blob(rng, ["f8"], 3),  # another number of slots
        b"A\x03" + good[1][2:],  # another format version
    ):
        assert Events.gather([(good, kinds), ([good[0], bad], kinds)]) is None, bad
    assert Events.gather([]) is None and Events.gather([([], kinds)]) is None


def _layout() -> ViewLayout:
    return ViewLayout(
        name="v",
        source="s",
        event_time="t",
        join_keys=("k",),
        key_types=("string",),
        primary_key=("id",),
        pk_types=("int64",),
        fields=(("x", "x", "float64"),),
        slots=(),
        aggregates=(),
        ttl_us=None,
        max_window_us=0,
    )


def test_a_plain_row_reads_as_it_decodes() -> None:
    kinds = ("string", "int64", "float64", "bool", "date", "timestamp", "string")
    layout = ViewLayout(
        **{
            **_layout().__dict__,
            "fields": tuple((f"f{i}", f"c{i}", kind) for i, kind in enumerate(kinds)),
        }
    )
    codec = PlainCodec(layout)
    rows: list[list[Any]] = [
        ["FR", 3, 1.5, True, 20_000, 1_700_000_000_000_000, ""],
        ["é" * 300, -(2**63), -0.0, False, -1, 0, "x"],
        [None, None, None, None, None, None, None],
        ["US", None, math.inf, None, 5, None, "y"],
    ]
    for row in rows:
        blob = codec.encode(42, 43, row, [1])
        event_us, _, decoded = codec.decode_fields(blob)
        assert codec.read_fields(blob) == (event_us, decoded)
    no_bool = ViewLayout(
        **{**layout.__dict__, "fields": tuple(f for f in layout.fields if f[2] != "bool")}
    )
    codec = PlainCodec(no_bool)
    for row in rows:
        blob = codec.encode(42, 43, row[:3] + row[4:], [1])
        event_us, _, decoded = codec.decode_fields(blob)
        assert codec.read_fields(blob) == (event_us, decoded)
    with pytest.raises(StoreError, match="unknown format"):
        codec.read_fields(b"A\x02" + bytes(30))
    # many rows at once: as one at a time, or None (a null, a bool, a malformed row)
    whole = [r[:3] + r[4:] for r in rows if None not in r]
    blobs = [codec.encode(40 + i, 0, row, [i]) for i, row in enumerate(whole)]
    events, columns = codec.read_many(blobs)  # type: ignore[misc]
    assert events == [40, 41] and [list(r) for r in zip(*columns, strict=True)] == whole
    with_null = codec.encode(1, 0, rows[3][:3] + rows[3][4:], [1])
    for bad in (with_null, blobs[0][:30], blobs[0][:20], b"A\x02" + blobs[0][2:]):
        assert codec.read_many([*blobs, bad]) is None
    assert codec.read_many([]) is None
    assert PlainCodec(layout).read_many([PlainCodec(layout).encode(1, 0, rows[0], [1])]) is None


# -- the read level: a batch against one entity at a time ----------------------------------

CARDS = [f"card_{i:07d}" for i in range(1, 41)]


@pytest.fixture(params=STORES)
def busy(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Config, Definitions]]:
    """40 cards with 0 to 60 events each over two days (one with 150), some without a
    device."""
    cfg, defs = make_project(tmp_path / "p", redis=request.param)
    rng = np.random.default_rng(11)
    rows = []
    for i, card in enumerate(CARDS[:-3]):  # the last three cards have no events
        for _ in range(int(rng.integers(0, 60)) if i else 150):
            at = T0 - minutes(int(rng.integers(0, 2 * 24 * 60)))
            amount = [0.01, 0.1, 0.7, 12.5, 99.99, 1234.5, 1e6][int(rng.integers(0, 7))]
            rows.append(
                tx(
                    card,
                    at,
                    amount,
                    merchant=f"m_{int(rng.integers(1, 4)):06d}",
                    device=None if rng.random() < 0.2 else f"dev_{int(rng.integers(0, 4))}",
                    country=str(rng.choice(["US", "FR", "DE"])),
                )
            )
    with cleaned(cfg):
        ingest_rows(cfg, rows)
        materialize(cfg, defs)
        yield cfg, defs


def _entities() -> list[dict[str, Any]]:
    cards = [*CARDS, "card_0009999", CARDS[0], CARDS[5], None, CARDS[5]]
    return [{"card_id": card, "merchant_id": f"m_{(i % 5):06d}"} for i, card in enumerate(cards)]


def _alone(
    cfg: Config, defs: Definitions, entities: list[dict[str, Any]], at: datetime, amount: float
) -> OnlineFeatures:
    """The read of each entity on its own, joined: the one-value-at-a-time path."""
    outs = [
        get_online_features(cfg, defs, "test_v1", [e], request_rows=[{"amount": amount}], at=at)
        for e in entities
    ]
    first = outs[0]
    return OnlineFeatures(
        service=first.service,
        at=first.at,
        entity_columns=first.entity_columns,
        entities=tuple(o.entities[0] for o in outs),
        columns=first.columns,
        types=first.types,
        values=tuple(o.values[0] for o in outs),
        statuses=tuple(o.statuses[0] for o in outs),
        ages=tuple(o.ages[0] for o in outs),
    )


def test_a_batch_reads_what_each_entity_reads_alone(
    busy: tuple[Config, Definitions], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, defs = busy
    entities = _entities()
    requests = [{"amount": 20.0}] * len(entities)
    for at in (T0, T0 + minutes(10), T0 + timedelta(hours=2, seconds=1), T0 + timedelta(days=1)):
        out = get_online_features(cfg, defs, "test_v1", entities, request_rows=requests, at=at)
        alone = _alone(cfg, defs, entities, at, 20.0)
        assert out.entities == alone.entities and out.columns == alone.columns
        assert same_rows(out.values, alone.values), at
        assert out.statuses == alone.statuses and same_rows(out.ages, alone.ages)
        assert {"ok", "missing"} <= {s for row in out.statuses for s in row}
        # the whole batch one value at a time, and everything that can be all at once
        for minimum in (10**9, 1):
            with monkeypatch.context() as patched:
                patched.setattr(read, "_BATCH_MIN", minimum)
                patched.setattr(read, "_PLAIN_MIN", minimum)
                other = get_online_features(
                    cfg, defs, "test_v1", entities, request_rows=requests, at=at
                )
            assert same_rows(out.values, other.values) and out.statuses == other.statuses
            assert same_rows(out.ages, other.ages)
            assert out.to_arrow().equals(other.to_arrow())
        if at > T0 + timedelta(hours=2):
            assert "expired" in {s for row in out.statuses for s in row}


def test_a_batch_refuses_a_read_before_the_stored_events_as_the_first_row_would(
    busy: tuple[Config, Definitions], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, defs = busy
    entities = _entities()
    early = T0 - timedelta(days=1, hours=12)  # before the stored events of the busiest cards
    errors = []
    for minimum in (1, 10**9):
        monkeypatch.setattr(read, "_BATCH_MIN", minimum)
        with pytest.raises(OnlineRangeError) as refused:
            get_online_features(cfg, defs, "windows_v1", entities[3:], at=early)
        errors.append(str(refused.value))
    assert errors[0] == errors[1] and "card_id=card_" in errors[0]


def test_a_malformed_value_in_a_batch_is_named_as_one_at_a_time(
    busy: tuple[Config, Definitions], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, defs = busy
    plan = ReadPlan(cfg, defs, "test_v1")
    stats = next(v for v in plan.views if v.name == "card_stats")
    with open_online_store(cfg) as store:
        bad = b"A\x02\x09\x00" + bytes(12)  # nine slots where the view has others
        store.transact(stats.name, stats.version, lambda txn: txn.put([(CARDS[7], bad)]))
    entities = _entities()
    errors = []
    for minimum in (1, 10**9):
        monkeypatch.setattr(read, "_BATCH_MIN", minimum)
        with pytest.raises(StoreError) as failed:
            get_online_features(
                cfg,
                defs,
                "test_v1",
                entities,
                request_rows=[{"amount": 1.0}] * len(entities),
                at=T0,
            )
        errors.append(str(failed.value))
    assert errors[0] == errors[1] and "columns where its view version expects" in errors[0]


@pytest.mark.parametrize("first", ["malformed", "newer"])
def test_a_plain_row_that_cannot_be_read_or_is_newer_is_named_as_row_by_row(
    busy: tuple[Config, Definitions], monkeypatch: pytest.MonkeyPatch, first: str
) -> None:
    """A malformed latest row and one newer than T: the first of them in row order fails the
    read, whether the rows are decoded one by one or all at once."""
    cfg, defs = busy
    plan = ReadPlan(cfg, defs, "test_v1")
    last = next(v for v in plan.views if v.name == "card_last")
    newer = last.codec.encode(to_us(T0 + timedelta(hours=1)), 0, ["FR", 1.0, None, 0], ["tx"])
    bad, late = (CARDS[3], CARDS[6]) if first == "malformed" else (CARDS[6], CARDS[3])
    with open_online_store(cfg) as store:
        store.transact(
            last.name,
            last.version,
            lambda txn: txn.put([(bad, b"P\x02" + bytes(5)), (late, newer)]),
        )
    entities = _entities()
    errors = []
    for minimum in (1, 10**9):
        monkeypatch.setattr(read, "_PLAIN_MIN", minimum)
        monkeypatch.setattr(read, "_BATCH_MIN", minimum)
        with pytest.raises((StoreError, OnlineRangeError, struct.error)) as failed:
            get_online_features(
                cfg, defs, "test_v1", entities, request_rows=[{"amount": 1.0}] * 45, at=T0
            )
        errors.append((type(failed.value), str(failed.value)))
    assert errors[0] == errors[1]
    assert (errors[0][0] is OnlineRangeError) == (first == "newer")


def test_rows_of_any_mapping_read_like_dicts(busy: tuple[Config, Definitions]) -> None:
    cfg, defs = busy
    entities = _entities()[:20]
    requests = [{"amount": float(i)} for i in range(20)]
    want = get_online_features(cfg, defs, "test_v1", entities, request_rows=requests, at=T0)
    got = get_online_features(
        cfg,
        defs,
        "test_v1",
        [MappingProxyType(e) for e in entities],
        request_rows=[MappingProxyType(r) for r in requests],
        at=T0,
    )
    assert same_rows(got.values, want.values) and got.statuses == want.statuses
    merged = [{**e, **r} for e, r in zip(entities, requests, strict=True)]
    riding = get_online_features(cfg, defs, "test_v1", merged, at=T0)  # fields in entity rows
    assert same_rows(riding.values, want.values)


@pytest.mark.parametrize("redis", STORES)
def test_aligned_reads_are_the_reads_in_key_order(
    redis: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, defs = make_project(tmp_path / "p", redis=redis)
    with cleaned(cfg):
        ingest_rows(cfg, [tx(c, T0 - minutes(i), 1.0) for i, c in enumerate(CARDS[:30])])
        materialize(cfg, defs)
        plan = ReadPlan(cfg, defs, "test_v1")
        keys = [CARDS[i] for i in (29, 3, 3, 31, 0, 17)] + CARDS[:300]
        shared = ["m_000001", "m_404"]
        groups = [(v.name, v.version, shared if "merchant" in v.name else keys) for v in plan.views]
        groups.append(("card_stats", "no-such-version", keys))
        groups.append(("card_stats", plan.views[0].version, []))
        with open_online_store(cfg) as store:
            found = store.read(groups)
            want = [[f.get(k) for k in g[2]] for f, g in zip(found, groups, strict=True)]
            assert store.read_aligned(groups) == want
            assert sum(v is not None for got in want for v in got) > 30
            if not redis:  # if SQLite ever returned rows out of the keys' order
                monkeypatch.setattr(
                    sqlite_store, "_aligned_sql", lambda arms: (sqlite_store._read_sql(arms), ())
                )
                assert store.read_aligned(groups) == want


def test_reads_at_the_edges_of_many_windows_match(busy: tuple[Config, Definitions]) -> None:
    """Reads at times whose windows start on stored events' times, and just after."""
    cfg, defs = busy
    entities = _entities()[:12]
    for at in (T0 + minutes(5), T0 + minutes(30), T0 + minutes(30) + timedelta(microseconds=1)):
        out = get_online_features(
            cfg, defs, "test_v1", entities, request_rows=[{"amount": 3.0}] * 12, at=at
        )
        alone = _alone(cfg, defs, entities, at, 3.0)
        assert same_rows(out.values, alone.values) and out.statuses == alone.statuses


def test_the_result_holds_no_numpy_values(busy: tuple[Config, Definitions]) -> None:
    cfg, defs = busy
    out = get_online_features(
        cfg, defs, "test_v1", _entities(), request_rows=[{"amount": 1}] * 45, at=T0
    )
    kinds = {type(v) for row in out.values for v in row}
    assert kinds <= {int, float, str, type(None), datetime}, kinds
    assert all(type(row) is tuple for row in out.values + out.statuses + out.ages)
    assert out.at == T0.astimezone(UTC)


def test_a_service_of_request_fields_only_reads_without_entities(tmp_path: Path) -> None:
    cfg, defs = make_project(tmp_path / "p")
    features = cfg.root / "features.py"
    features.write_text(
        features.read_text()
        + '\ndoubled = OnDemandFeature("doubled", inputs={"amount": "request:amount"}, '
        "function=lambda amount: amount * 2)\n"
        'request_v1 = FeatureService("request_v1", [doubled])\n'
    )
    defs = load_definitions(cfg)
    apply(cfg, defs)
    out = get_online_features(
        cfg, defs, "request_v1", [{}, {}], request_rows=[{"amount": 1.5}, {"amount": None}], at=T0
    )
    assert out.entity_columns == () and out.entities == ((), ())
    assert out.column("doubled") == [3.0, None] and out.status("doubled") == ["ok", "ok"]
    riding = get_online_features(cfg, defs, "request_v1", [{"amount": 2}] * 30, at=T0)
    assert riding.column("doubled") == [4.0] * 30
    assert out.to_arrow().column("doubled").to_pylist() == [3.0, None]


def test_a_service_picking_some_fields_reads_them_alike_row_by_row_and_at_once(
    busy: tuple[Config, Definitions], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain view's picked fields out of order (a timestamp among them), with missing and
    expired rows: the same read one row after another and all at once."""
    cfg, defs = busy
    features = cfg.root / "features.py"
    features.write_text(
        features.read_text() + '\npicked_v1 = FeatureService("picked_v1", '
        '["card_last:last_seen", "card_last:last_device", "card_stats:n_1h"])\n'
    )
    defs = load_definitions(cfg)
    apply(cfg, defs)
    materialize(cfg, defs)
    entities = [{"card_id": e["card_id"]} for e in _entities()]
    for at in (T0, T0 + timedelta(hours=2, seconds=1)):
        reads = []
        for minimum in (10**9, 1):
            with monkeypatch.context() as patched:
                patched.setattr(read, "_BATCH_MIN", minimum)
                patched.setattr(read, "_PLAIN_MIN", minimum)
                reads.append(get_online_features(cfg, defs, "picked_v1", entities, at=at))
        one, many = reads
        assert one.columns == ("last_seen", "last_device", "n_1h")
        assert same_rows(one.values, many.values) and one.statuses == many.statuses
        assert same_rows(one.ages, many.ages)
        assert {type(v) for v in many.column("last_seen")} <= {datetime, type(None)}
        assert at > T0 or any(isinstance(v, datetime) for v in many.column("last_seen"))
        alone = [get_online_features(cfg, defs, "picked_v1", [e], at=at) for e in entities]
        assert same_rows(tuple(a.values[0] for a in alone), many.values)


def test_status_rows_shared_for_many_rows_are_the_zipped_rows() -> None:
    ok = ["ok"] * 300
    mixed = ["missing" if i % 7 == 0 else "ok" for i in range(300)]
    expired = ["expired" if i % 11 == 0 else "ok" for i in range(300)]
    columns: list[Sequence[Any]] = [mixed, mixed, ok, expired, mixed, ok, expired]
    shared = read._rows(columns, share=True)
    assert shared == read._rows(columns) == tuple(zip(*columns, strict=True))
    assert len({id(row) for row in shared}) <= 4
    assert read._rows([["ok"]], share=True) == (("ok",),)
    assert read._rows(columns[:1], share=True) == tuple((s,) for s in mixed)


def test_a_store_stand_in_with_read_only_is_read(busy: tuple[Config, Definitions]) -> None:
    """A server stands in for a store that is down with an object that has `read` only (not
    an OnlineStore): every entity reads as never seen."""

    class Down:
        def read(self, groups: Any) -> list[dict[str, bytes]]:
            return [{} for _ in groups]

    cfg, defs = busy
    entities = _entities()
    out = get_online_features(
        cfg,
        defs,
        "test_v1",
        entities,
        request_rows=[{"amount": 1.0}] * 45,
        at=T0,
        store=Down(),  # type: ignore[arg-type]
    )
    assert {s for row in out.statuses for s in row} == {"missing"}
    assert out.column("n_1h") == [0] * 45 and out.column("sum_1h") == [None] * 45
