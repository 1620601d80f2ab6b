"""Tests for the synthetic card-transaction generator (backline.data.generator)."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from backline.core.errors import BacklineError, DriftSpecError, InvalidArgument
from backline.data.generator import (
    _CURRENCY_PER_USD,  # the per-currency scale
    CHANNELS,
    COUNTRIES,
    CURRENCIES,
    FRAUD_PATTERNS,
    LABELS_SCHEMA,
    MERCHANT_CATEGORIES,
    TRANSACTIONS_SCHEMA,
    DriftChange,
    GeneratedData,
    GeneratorConfig,
    generate,
    parse_drift,
    write_generated,
)

START = datetime(2026, 1, 1, tzinfo=UTC)
DRIFT_DATE = datetime(2026, 1, 11, tzinfo=UTC)
SMALL = {"cards": 500, "days": 20}


def small(**overrides: object) -> GeneratorConfig:
    return GeneratorConfig(**{**SMALL, **overrides})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def base() -> GeneratedData:
    return generate(small(seed=7))


def col(table: pa.Table, name: str) -> np.ndarray:
    column = table.column(name)
    if pa.types.is_timestamp(column.type):
        return column.cast(pa.int64()).to_numpy()
    return np.asarray(column.to_pylist() if column.null_count else column.to_numpy(False))


def us(moment: datetime) -> int:
    return int((moment - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() * 1_000_000)


def fraud_rows(data: GeneratedData) -> pa.Table:
    """Transactions joined with their labels."""
    return data.transactions.join(
        data.labels.drop_columns(["card_id", "event_time"]), "transaction_id"
    )


# --- determinism ---------------------------------------------------------------------------


def test_same_config_gives_identical_tables() -> None:
    first, second = generate(small(seed=3)), generate(small(seed=3))
    assert first.transactions.equals(second.transactions)
    assert first.labels.equals(second.labels)


def test_different_seed_gives_different_data() -> None:
    first, second = generate(small(seed=3)), generate(small(seed=4))
    assert not first.transactions.equals(second.transactions)
    ids = set(col(first.transactions, "transaction_id"))
    assert not ids & set(col(second.transactions, "transaction_id"))


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_written_files_are_byte_identical(tmp_path: Path, fmt: str) -> None:
    config = small(seed=11, corrupt=0.02)
    one = write_generated(generate(config), tmp_path / "one", fmt)
    two = write_generated(generate(config), tmp_path / "two", fmt)
    for name in ("transactions", "labels"):
        assert one[name].read_bytes() == two[name].read_bytes()


# --- schema and invariants -----------------------------------------------------------------


def test_schema_and_invariants(base: GeneratedData) -> None:
    tx, labels = base.transactions, base.labels
    assert tx.schema.equals(TRANSACTIONS_SCHEMA)
    assert labels.schema.equals(LABELS_SCHEMA)
    n = tx.num_rows
    assert 500 * 20 * 1.2 < n < 500 * 20 * 2.2  # about 1.6 per card and day, plus fraud
    assert labels.num_rows == n
    ids = col(tx, "transaction_id")
    assert len(set(ids)) == n
    assert set(ids) == set(col(labels, "transaction_id"))
    assert all(len(i) == 19 and i.startswith("tx_") for i in ids)
    assert all(int(i[3:], 16) >= 0 and i[3:] == i[3:].lower() for i in ids[:200])
    assert all(
        c.startswith("card_") and len(c) == 12 and c[5:].isdigit() for c in col(tx, "card_id")
    )
    assert all(
        m.startswith("m_") and len(m) == 8 and m[2:].isdigit() for m in col(tx, "merchant_id")
    )
    assert all(d.startswith("dev_") and len(d) == 14 for d in col(tx, "device_id"))
    for name in tx.column_names:
        assert tx.column(name).null_count == 0, name

    amount = col(tx, "amount")
    assert (amount > 0).all()
    assert np.array_equal(np.round(amount, 2), amount)
    assert set(col(tx, "merchant_category")) == set(MERCHANT_CATEGORIES)
    assert set(col(tx, "currency")) <= set(CURRENCIES)
    assert set(col(tx, "country")) <= set(COUNTRIES)
    assert set(col(tx, "channel")) == set(CHANNELS)

    time = col(tx, "event_time")
    assert time.min() >= us(START)
    assert time.max() < us(START + timedelta(days=20))
    # Sorted by event_time, then transaction_id.
    keys = list(zip(time.tolist(), ids.tolist(), strict=True))
    assert keys == sorted(keys)
    label_time = col(labels, "label_time")
    assert (label_time > col(labels, "event_time")).all()
    label_keys = list(zip(label_time.tolist(), col(labels, "transaction_id").tolist(), strict=True))
    assert label_keys == sorted(label_keys)
    # Labels repeat the transaction's card and time.
    joined = tx.join(labels, "transaction_id", right_suffix="_label")
    assert joined.num_rows == n
    assert pc.all(pc.equal(joined["card_id"], joined["card_id_label"])).as_py()
    assert pc.all(pc.equal(joined["event_time"], joined["event_time_label"])).as_py()
    assert (col(labels, "is_fraud") == (col(labels, "fraud_pattern") != "none")).all()


def test_currency_is_the_cards_and_amounts_use_its_scale(base: GeneratedData) -> None:
    tx = base.transactions
    per_card = Counter(zip(col(tx, "card_id"), col(tx, "currency"), strict=True))
    cards = Counter(card for card, _ in per_card)
    assert max(cards.values()) == 1  # one billing currency per card
    currency, amount = col(tx, "currency"), col(tx, "amount")
    assert (currency == "JPY").any()
    jpy = amount[currency == "JPY"]
    assert np.array_equal(jpy, np.round(jpy))  # no decimals for yen
    ratio = np.median(jpy) / np.median(amount[currency == "USD"])
    assert 50 < ratio < 400
    # Mostly at home, sometimes abroad.
    usd = currency == "USD"
    abroad = (col(tx, "country")[usd] != "US").mean()
    assert 0.005 < abroad < 0.15


def test_each_card_uses_few_devices_for_legitimate_activity(base: GeneratedData) -> None:
    rows = fraud_rows(base)
    legit = rows.filter(pc.invert(rows["is_fraud"]))
    devices: dict[str, set[str]] = {}
    for card, device in zip(col(legit, "card_id"), col(legit, "device_id"), strict=True):
        devices.setdefault(card, set()).add(device)
    assert max(len(d) for d in devices.values()) <= 3
    assert min(len(d) for d in devices.values()) >= 1


def test_daily_rhythm_has_few_night_transactions() -> None:
    data = generate(small(seed=5))
    rows = fraud_rows(data)
    us_legit = rows.filter(pc.and_(pc.invert(rows["is_fraud"]), pc.equal(rows["country"], "US")))
    # US cards peak in the (UTC) afternoon; 02:00-05:00 local is 07:00-10:00 UTC.
    hours = pc.hour(us_legit["event_time"]).to_numpy()
    night = np.isin(hours, [7, 8, 9]).mean()
    day = np.isin(hours, [17, 18, 19]).mean()
    assert night < 0.05 < 0.2 < day


# --- fraud ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_fraud_rate_and_patterns(seed: int) -> None:
    labels = generate(small(seed=seed)).labels
    rate = pc.mean(labels["is_fraud"].cast(pa.float64())).as_py()
    assert 0.005 <= rate <= 0.02
    patterns = set(col(labels, "fraud_pattern"))
    assert patterns == {"none", "burst", "card_testing", "unusual_purchase"}
    assert set(FRAUD_PATTERNS) >= patterns - {"none"}


def test_burst_is_many_expensive_purchases_within_an_hour(base: GeneratedData) -> None:
    rows = fraud_rows(base)
    burst = rows.filter(pc.equal(rows["fraud_pattern"], "burst"))
    assert burst.num_rows > 0
    legit = rows.filter(pc.invert(rows["is_fraud"]))
    by_card: dict[str, list[int]] = {}
    for card, t in zip(col(burst, "card_id"), col(burst, "event_time"), strict=True):
        by_card.setdefault(card, []).append(t)
    for times in by_card.values():
        assert 3 <= len(times) <= 15
        assert max(times) - min(times) < 3_600_000_000
    categories = set(col(burst, "merchant_category"))
    assert categories <= {"electronics", "jewelry", "digital_goods", "gift_cards"}
    legit_usd = legit.filter(pc.equal(legit["currency"], "USD"))
    burst_usd = burst.filter(pc.equal(burst["currency"], "USD"))
    if burst_usd.num_rows:
        assert np.median(col(burst_usd, "amount")) > 2 * np.median(col(legit_usd, "amount"))
    assert (col(burst, "channel") == "online").mean() > 0.5


def test_fraud_mostly_uses_devices_the_card_never_used() -> None:
    rows = fraud_rows(generate(small(cards=3000, seed=1)))
    legit = rows.filter(pc.invert(rows["is_fraud"]))
    known = set(zip(col(legit, "card_id"), col(legit, "device_id"), strict=True))
    for pattern, low in (("burst", 0.7), ("card_testing", 0.99), ("unusual_purchase", 0.4)):
        fraud = rows.filter(pc.equal(rows["fraud_pattern"], pattern))
        incidents = set(zip(col(fraud, "card_id"), col(fraud, "device_id"), strict=True))
        assert len(incidents) >= 10
        assert sum(i not in known for i in incidents) / len(incidents) >= low, pattern


def test_card_testing_is_tiny_online_digital_amounts_within_minutes(base: GeneratedData) -> None:
    rows = fraud_rows(base)
    testing = rows.filter(pc.equal(rows["fraud_pattern"], "card_testing"))
    assert testing.num_rows > 0
    usd_per_unit = dict(zip(CURRENCIES, _CURRENCY_PER_USD.tolist(), strict=True))
    per_card: dict[str, list[tuple[int, float, str, str]]] = {}
    for card, t, amount, currency, category, channel in zip(
        *(
            col(testing, c)
            for c in ("card_id", "event_time", "amount", "currency", "merchant_category", "channel")
        ),
        strict=True,
    ):
        assert channel == "online"
        per_card.setdefault(card, []).append((t, amount / usd_per_unit[currency], category, card))
    for rows_of_card in per_card.values():
        tiny = [r for r in rows_of_card if r[1] <= 2.01]
        large = [r for r in rows_of_card if r[1] > 2.01]
        assert 5 <= len(tiny) <= 20
        assert len(large) <= 1
        assert all(r[1] >= 0.49 for r in tiny)
        assert {r[2] for r in tiny} == {"digital_goods"}
        times = [r[0] for r in tiny]
        assert max(times) - min(times) < 10 * 60 * 1_000_000
        if large:
            assert large[0][0] > max(times)


def test_unusual_purchase_is_a_single_large_purchase(base: GeneratedData) -> None:
    rows = fraud_rows(base)
    unusual = rows.filter(pc.equal(rows["fraud_pattern"], "unusual_purchase"))
    assert unusual.num_rows > 0
    cards = col(unusual, "card_id")
    assert len(set(cards)) == len(cards)
    assert set(col(unusual, "merchant_category")) <= {
        "electronics",
        "jewelry",
        "travel",
        "gift_cards",
    }
    usd = unusual.filter(pc.equal(unusual["currency"], "USD"))
    legit = rows.filter(pc.and_(pc.invert(rows["is_fraud"]), pc.equal(rows["currency"], "USD")))
    assert np.median(col(usd, "amount")) > 5 * np.median(col(legit, "amount"))


def test_label_delays(base: GeneratedData) -> None:
    labels = base.labels
    delay_days = (col(labels, "label_time") - col(labels, "event_time")) / 86_400e6
    fraud = col(labels, "is_fraud")
    assert (delay_days[fraud] >= 1).all()
    assert (delay_days[fraud] <= 90).all()
    assert 7 <= np.median(delay_days[fraud]) <= 21
    assert (delay_days[~fraud] >= 25).all()
    assert (delay_days[~fraud] <= 40).all()
    # Spread out, not a constant.
    assert np.std(delay_days[fraud]) > 2
    assert np.std(delay_days[~fraud]) > 2


def test_progress_is_reported_in_order() -> None:
    calls: list[tuple[str, float]] = []
    generate(small(cards=50, days=3), progress=lambda stage, done: calls.append((stage, done)))
    assert 3 <= len(calls) <= 12
    fractions = [done for _, done in calls]
    assert fractions == sorted(fractions)
    assert fractions[-1] == 1.0
    assert all(isinstance(stage, str) and stage for stage, _ in calls)


# --- drift ---------------------------------------------------------------------------------


def drifted(spec: str, seed: int = 7) -> GeneratedData:
    return generate(small(seed=seed, drift=parse_drift(spec)))


def split_at(data: GeneratedData, moment: datetime) -> tuple[pa.Table, pa.Table]:
    """(rows before, rows from `moment` on) of the transactions table."""
    time = col(data.transactions, "event_time")
    cut = int(np.searchsorted(time, us(moment)))
    return data.transactions.slice(0, cut), data.transactions.slice(cut)


def assert_only_columns_changed(
    base: GeneratedData, other: GeneratedData, changed: set[str]
) -> tuple[pa.Table, pa.Table]:
    """Rows before DRIFT_DATE are identical; after it only `changed` columns differ (and do)."""
    before_a, after_a = split_at(base, DRIFT_DATE)
    before_b, after_b = split_at(other, DRIFT_DATE)
    assert before_a.equals(before_b)
    assert after_a.num_rows == after_b.num_rows
    for name in TRANSACTIONS_SCHEMA.names:
        same = after_a.column(name).equals(after_b.column(name))
        assert same == (name not in changed), name
    return after_a, after_b


def test_amount_scale_changes_only_amounts(base: GeneratedData) -> None:
    data = drifted("2026-01-11:amount_scale=1.6")
    after_a, after_b = assert_only_columns_changed(base, data, {"amount"})
    assert base.labels.equals(data.labels)
    a, b = col(after_a, "amount"), col(after_b, "amount")
    jpy = col(after_a, "currency") == "JPY"
    expected = np.where(jpy, np.round(a * 1.6), np.round(a * 1.6, 2))
    assert np.allclose(b, expected, atol=1e-9)
    assert stats.ks_2samp(a, b).pvalue < 1e-6


@pytest.mark.parametrize(
    ("spec", "column", "value", "share"),
    [
        ("2026-01-11:country_mix=BR:0.3", "country", "BR", 0.3),
        ("2026-01-11:country_mix=US:0.1", "country", "US", 0.1),
        ("2026-01-11:channel_mix=online:0.5", "channel", "online", 0.5),
        ("2026-01-11:channel_mix=pos:0.05", "channel", "pos", 0.05),
    ],
)
def test_mix_drift_sets_the_share_and_nothing_else(
    base: GeneratedData, spec: str, column: str, value: str, share: float
) -> None:
    data = drifted(spec)
    after_a, after_b = assert_only_columns_changed(base, data, {column})
    assert base.labels.equals(data.labels)
    a, b = col(after_a, column), col(after_b, column)
    assert abs((b == value).mean() - share) < 0.03
    assert abs((a == value).mean() - share) > 0.1  # the base share was really different
    values = sorted(set(a) | set(b))
    table = np.array([[np.sum(a == v) for v in values], [np.sum(b == v) for v in values]])
    assert stats.chi2_contingency(table + 1).pvalue < 1e-6
    # Rows that moved went to (or away from) the target only.
    moved = a != b
    assert moved.any()
    assert np.all((a[moved] == value) | (b[moved] == value))


def test_new_category_goes_to_new_merchants(base: GeneratedData) -> None:
    data = drifted("2026-01-11:new_category=crypto:0.05")
    after_a, after_b = assert_only_columns_changed(base, data, {"merchant_category", "merchant_id"})
    assert base.labels.equals(data.labels)
    category_b = col(after_b, "merchant_category")
    share = (category_b == "crypto").mean()
    assert 0.03 < share < 0.07
    merchant_a, merchant_b = col(after_a, "merchant_id"), col(after_b, "merchant_id")
    crypto = category_b == "crypto"
    assert all(m.startswith("m_9") for m in merchant_b[crypto])
    assert not any(m.startswith("m_9") for m in merchant_a)
    assert np.array_equal(merchant_a[~crypto], merchant_b[~crypto])
    assert np.array_equal(col(after_a, "merchant_category")[~crypto], category_b[~crypto])
    assert "crypto" not in set(col(split_at(data, DRIFT_DATE)[0], "merchant_category"))


def test_new_fraud_changes_only_labels(base: GeneratedData) -> None:
    data = drifted("2026-01-11:new_fraud=account_takeover:0.3")
    assert base.transactions.equals(data.transactions)
    rows_a, rows_b = fraud_rows(base), fraud_rows(data)
    rows_a = rows_a.sort_by("transaction_id")
    rows_b = rows_b.sort_by("transaction_id")
    changed = pc.invert(pc.equal(rows_a["fraud_pattern"], rows_b["fraud_pattern"])).to_numpy(False)
    assert changed.any()
    moved = rows_b.filter(pa.array(changed))
    assert set(col(moved, "fraud_pattern")) == {"account_takeover"}
    assert set(col(moved, "channel")) == {"online"}
    assert set(col(moved, "merchant_category")) == {"digital_goods"}
    assert (col(moved, "event_time") >= us(DRIFT_DATE)).all()
    assert not col(rows_a.filter(pa.array(changed)), "is_fraud").any()
    # Labels of all other rows are untouched, label times included.
    keep = pa.array(~changed)
    for name in ("is_fraud", "fraud_pattern", "label_time"):
        assert rows_a.filter(keep).column(name).equals(rows_b.filter(keep).column(name))
    delay = (col(moved, "label_time") - col(moved, "event_time")) / 86_400e6
    assert ((delay >= 1) & (delay <= 90)).all()

    def segment_rate(rows: pa.Table) -> tuple[int, int]:
        seg = rows.filter(
            pc.and_(
                pc.and_(
                    pc.equal(rows["channel"], "online"),
                    pc.equal(rows["merchant_category"], "digital_goods"),
                ),
                pc.greater_equal(rows["event_time"], pa.scalar(DRIFT_DATE)),
            )
        )
        fraud = int(col(seg, "is_fraud").sum())
        return fraud, seg.num_rows - fraud

    fraud_a, legit_a = segment_rate(rows_a)
    fraud_b, legit_b = segment_rate(rows_b)
    assert fraud_b / (fraud_b + legit_b) > fraud_a / (fraud_a + legit_a) + 0.15
    assert stats.chi2_contingency([[fraud_a, legit_a], [fraud_b, legit_b]]).pvalue < 1e-6


def test_several_changes_compose() -> None:
    spec = (
        "2026-01-11:amount_scale=2;country_mix=BR:0.3;2026-01-15T12:00:00Z:channel_mix=mobile:0.6"
    )
    changes = parse_drift(spec)
    assert [c.kind for c in changes] == ["amount_scale", "country_mix", "channel_mix"]
    assert changes[1].start == DRIFT_DATE
    assert changes[2].start == datetime(2026, 1, 15, 12, tzinfo=UTC)
    base_data, data = generate(small(seed=9)), generate(small(seed=9, drift=changes))
    before_a, _ = split_at(base_data, DRIFT_DATE)
    before_b, _ = split_at(data, DRIFT_DATE)
    assert before_a.equals(before_b)
    _, late = split_at(data, changes[2].start)
    assert abs((col(late, "channel") == "mobile").mean() - 0.6) < 0.04


# --- parse_drift ---------------------------------------------------------------------------


def test_parse_drift_good_specs() -> None:
    (change,) = parse_drift("2026-01-15:amount_scale=1.6")
    assert change == DriftChange(datetime(2026, 1, 15, tzinfo=UTC), "amount_scale", None, 1.6)
    (change,) = parse_drift(" 2026-01-15T06:30:00+02:00:country_mix=BR:0.3 ")
    assert change.start == datetime(2026, 1, 15, 4, 30, tzinfo=UTC)
    assert change.start.tzinfo == UTC
    assert (change.kind, change.target, change.value) == ("country_mix", "BR", 0.3)
    changes = parse_drift(
        "2026-01-15:channel_mix=online:0.5;new_category=crypto:0.05;new_fraud=account_takeover:0.3;"
    )
    assert [(c.kind, c.target, c.value) for c in changes] == [
        ("channel_mix", "online", 0.5),
        ("new_category", "crypto", 0.05),
        ("new_fraud", "account_takeover", 0.3),
    ]
    assert {c.start for c in changes} == {datetime(2026, 1, 15, tzinfo=UTC)}


@pytest.mark.parametrize(
    ("spec", "bad"),
    [
        ("", "''"),
        ("2026-01-15", "2026-01-15"),
        ("amount_scale=1.6", "amount_scale=1.6"),
        ("2026-13-45:amount_scale=1.6", "2026-13-45"),
        ("2026-01-15T10:00:00:amount_scale=1.6", "2026-01-15T10:00:00"),
        ("2026-01-15:amount_scal=1.6", "amount_scal"),
        ("2026-01-15:amount_scale=fast", "fast"),
        ("2026-01-15:amount_scale=-2", "-2"),
        ("2026-01-15:amount_scale=nan", "nan"),
        ("2026-01-15:country_mix=0.3", "0.3"),
        ("2026-01-15:country_mix=XX:0.3", "XX"),
        ("2026-01-15:country_mix=BR:1.5", "1.5"),
        ("2026-01-15:channel_mix=fax:0.5", "fax"),
        ("2026-01-15:new_category=grocery:0.1", "grocery"),
        ("2026-01-15:new_category=Crypto Coins:0.1", "Crypto Coins"),
        ("2026-01-15:new_category=crypto2:0.1", "crypto2"),
        ("2026-01-15:new_category=crypto:0", "crypto"),
        ("2026-01-15:new_fraud=burst:0.3", "burst"),
        ("2026-01-15:amount_scale=1.5;channel_mix=online", "channel_mix=online"),
    ],
)
def test_parse_drift_bad_specs_name_the_bad_value(spec: str, bad: str) -> None:
    with pytest.raises(DriftSpecError) as caught:
        parse_drift(spec)
    message = str(caught.value)
    assert bad in message
    assert "\n" not in message
    assert "e.g." in message or "use" in message or "write" in message


def test_parse_drift_suggests_the_closest_kind() -> None:
    with pytest.raises(DriftSpecError, match="Did you mean 'amount_scale'"):
        parse_drift("2026-01-15:amount_scal=1.6")
    with pytest.raises(DriftSpecError, match="Did you mean 'online'"):
        parse_drift("2026-01-15:channel_mix=onlin:0.5")


def test_parse_drift_reads_a_json_file(tmp_path: Path) -> None:
    path = tmp_path / "drift.json"
    path.write_text(
        json.dumps(
            [
                {"start": "2026-01-15", "kind": "amount_scale", "target": None, "value": 1.6},
                {
                    "start": "2026-01-20T00:00:00Z",
                    "kind": "new_fraud",
                    "target": "account_takeover",
                    "value": 0.3,
                },
            ]
        )
    )
    changes = parse_drift(f"@{path}")
    assert changes == (
        DriftChange(datetime(2026, 1, 15, tzinfo=UTC), "amount_scale", None, 1.6),
        DriftChange(datetime(2026, 1, 20, tzinfo=UTC), "new_fraud", "account_takeover", 0.3),
    )


@pytest.mark.parametrize(
    ("content", "bad"),
    [
        ("{not json", "not valid JSON"),
        ('{"start": "2026-01-15"}', "dict"),
        ('[{"start": "2026-01-15", "kind": "amount_scale", "value": 0}]', "0"),
        ('[{"start": "2026-01-15", "kind": "country_mix", "target": "ZZ", "value": 0.1}]', "ZZ"),
        ('[{"start": "2026-01-15", "kind": "amount_scale", "value": 2, "when": 1}]', "when"),
    ],
)
def test_parse_drift_bad_json_files(tmp_path: Path, content: str, bad: str) -> None:
    path = tmp_path / "drift.json"
    path.write_text(content)
    with pytest.raises(DriftSpecError, match=bad):
        parse_drift(f"@{path}")


def test_parse_drift_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DriftSpecError, match=r"nope\.json"):
        parse_drift(f"@{tmp_path / 'nope.json'}")


# --- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "bad"),
    [
        ({"days": 0}, "days=0"),
        ({"cards": 0}, "cards=0"),
        ({"cards": 2.5}, "cards=2.5"),
        ({"seed": -1}, "seed=-1"),
        ({"corrupt": 0.6}, "corrupt=0.6"),
        ({"start": datetime(2026, 1, 1)}, "2026"),
        (
            {"drift": parse_drift("2027-01-15:amount_scale=1.6")},
            "2027-01-15",
        ),
    ],
)
def test_config_validation(overrides: dict[str, object], bad: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        small(**overrides)
    assert bad in str(caught.value)
    assert isinstance(caught.value, BacklineError)


def test_config_normalises_start_to_utc() -> None:
    from zoneinfo import ZoneInfo

    config = small(start=datetime(2026, 1, 1, 1, 0, tzinfo=ZoneInfo("Europe/Berlin")))
    assert config.start == START
    assert config.start.utcoffset() == timedelta(0)
    assert config.start.tzinfo == UTC
    data = generate(small(cards=20, days=2, start=datetime(2026, 3, 1, 12, tzinfo=UTC)))
    time = col(data.transactions, "event_time")
    assert time.min() >= us(datetime(2026, 3, 1, 12, tzinfo=UTC))
    assert time.max() < us(datetime(2026, 3, 3, 12, tzinfo=UTC))


def test_tiny_config_works() -> None:
    data = generate(GeneratorConfig(cards=1, days=1, seed=1))
    assert data.transactions.num_rows == data.labels.num_rows


# --- corrupt -------------------------------------------------------------------------------


def test_corrupt_rows() -> None:
    clean = generate(small(seed=13))
    data = generate(small(seed=13, corrupt=0.06))
    tx, labels = data.transactions, data.labels
    n = tx.num_rows
    assert n == clean.transactions.num_rows
    expected_each = 0.06 * n / 6
    amount = col(tx, "amount")
    counts = {
        "bad_amount": int((amount <= 0).sum()),
        "null_card_id": tx.column("card_id").null_count,
        "unknown_currency": int((col(tx, "currency") == "XXX").sum()),
        "future": int((col(tx, "event_time") >= us(datetime(2099, 1, 1, tzinfo=UTC))).sum()),
        "duplicate_id": n - len(set(col(tx, "transaction_id"))),
        "unknown_channel": int((col(tx, "channel") == "unknown").sum()),
    }
    for kind, count in counts.items():
        assert 0.8 * expected_each <= count <= 1.2 * expected_each, (kind, count)
    assert (amount == 0).any() and (amount < 0).any()
    assert 0.05 * n < sum(counts.values()) < 0.07 * n
    # Everything else about the rows stays realistic, and labels stay consistent.
    assert labels.num_rows == n
    assert Counter(col(labels, "transaction_id")) == Counter(col(tx, "transaction_id"))
    assert labels.column("card_id").null_count == counts["null_card_id"]
    assert (col(labels, "label_time") > col(labels, "event_time")).all()
    future = col(tx, "event_time") >= us(datetime(2099, 1, 1, tzinfo=UTC))
    assert (col(tx, "event_time")[future] < us(datetime(2100, 1, 1, tzinfo=UTC))).all()
    time = col(tx, "event_time")
    assert (np.diff(time) >= 0).all()


# --- writing -------------------------------------------------------------------------------


def read_back(path: Path, fmt: str) -> pa.Table:
    if fmt == "csv":
        # A null is an empty field in CSV.
        return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
    if fmt == "parquet":
        return pq.read_table(path)
    return pajson.read_json(path)


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_write_generated_round_trips(tmp_path: Path, fmt: str) -> None:
    data = generate(small(cards=100, days=10, seed=21, corrupt=0.05))
    paths = write_generated(data, tmp_path / "nested" / "out", fmt)
    ext = {"csv": "csv", "parquet": "parquet", "jsonl": "jsonl"}[fmt]
    assert paths == {
        "transactions": tmp_path / "nested" / "out" / f"transactions.{ext}",
        "labels": tmp_path / "nested" / "out" / f"labels.{ext}",
    }
    assert sorted(p.name for p in (tmp_path / "nested" / "out").iterdir()) == sorted(
        p.name for p in paths.values()
    )
    for name, original in (("transactions", data.transactions), ("labels", data.labels)):
        back = read_back(paths[name], fmt)
        assert back.num_rows == original.num_rows
        assert back.column_names == original.column_names
        assert col(back, "transaction_id").tolist() == col(original, "transaction_id").tolist()
        assert back.column("card_id").null_count == original.column("card_id").null_count
        for ts in ("event_time", "label_time"):
            if ts in original.column_names:
                restored = back.column(ts).cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
                assert restored.to_pylist() == original.column(ts).cast(pa.int64()).to_pylist()
        if name == "transactions":
            assert np.allclose(col(back, "amount"), col(original, "amount"))


def test_text_formats_write_iso_utc_timestamps(tmp_path: Path) -> None:
    data = generate(small(cards=20, days=2, seed=2))
    first_time = data.transactions.column("event_time")[0].as_py()
    expected = first_time.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    csv_path = write_generated(data, tmp_path, "csv")["transactions"]
    header, first = csv_path.read_text().splitlines()[:2]
    assert header.replace('"', "").split(",") == TRANSACTIONS_SCHEMA.names
    assert expected in first
    jsonl_path = write_generated(data, tmp_path, "jsonl")["transactions"]
    lines = jsonl_path.read_text().splitlines()
    assert len(lines) == data.transactions.num_rows
    record = json.loads(lines[0])
    assert record["event_time"] == expected
    assert record == {**data.transactions.slice(0, 1).to_pylist()[0], "event_time": expected}


def test_write_generated_rejects_unknown_format(tmp_path: Path) -> None:
    data = generate(small(cards=5, days=1))
    with pytest.raises(InvalidArgument, match="'xlsx'"):
        write_generated(data, tmp_path, "xlsx")


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.datetimes(
            min_value=datetime(1900, 1, 1), max_value=datetime(2200, 12, 31), timezones=st.just(UTC)
        ),
        min_size=1,
        max_size=20,
    )
)
def test_iso_timestamps_match_python(moments: list[datetime]) -> None:
    from backline.data.generator import _iso_utc

    array = pa.array(moments, pa.timestamp("us", tz="UTC"))
    expected = [m.strftime("%Y-%m-%dT%H:%M:%S.%fZ") for m in moments]
    assert _iso_utc(array).to_pylist() == expected
