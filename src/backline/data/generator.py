"""Deterministic synthetic card transactions with fraud labels, for the card-fraud example.

`generate(config)` returns two Arrow tables: `transactions` (what a payment processor sees when
a card is used) and `labels` (whether each transaction was fraud, and when that became known).
Everything is drawn with numpy's PCG64 from `config.seed`, one independent stream per component,
so the same config always gives the same tables, byte for byte once written.

Cards have a home country (which fixes their billing currency), a spending level, a daily rhythm,
a rate of transactions per day, preferred merchant categories and channels, and 1-3 devices.
Fraud is added as extra rows in three patterns a fraud team would recognise:

    burst             a compromised card makes 3-15 high-value purchases within one hour, often
                      abroad, online, from a device the card never used, in electronics, jewelry,
                      digital goods or gift cards
    card_testing      5-20 tiny amounts (0.50-2.00 USD-equivalent) within ten minutes at an online
                      digital-goods merchant from a new device, half the time followed by one
                      large purchase
    unusual_purchase  one large purchase in a category the card rarely uses, sometimes abroad

Labels arrive late: a fraud label comes with the chargeback (lognormal delay, median 12 days,
clipped to 1-90 days); a legitimate transaction is confirmed when its dispute window matures,
25-40 days after it happened.

`config.corrupt` turns a fraction of the transaction rows into realistic bad values, spread evenly
over six kinds: an amount that is negative or zero, a null card_id, the unknown currency "XXX",
an event_time in the year 2099, a transaction_id copied from another row (a duplicate), and the
channel "unknown". Each corrupted row keeps its label row, with the same (possibly bad) values.

`config.drift` (see `backline.data.drift`) changes named distributions from a given date on. Drift
is applied after the base data is drawn, with its own random streams, so rows before the date
are identical to a run without drift and rows after it differ only in the columns the change
names; `new_fraud` leaves the transactions untouched and changes only labels.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from backline.core.errors import InvalidArgument
from backline.core.files import atomic_path
from backline.data.drift import NEW_FRAUD_SEGMENTS, DriftChange, parse_drift

__all__ = [
    "CHANNELS",
    "COUNTRIES",
    "CURRENCIES",
    "FRAUD_PATTERNS",
    "LABELS_SCHEMA",
    "MERCHANT_CATEGORIES",
    "TRANSACTIONS_SCHEMA",
    "DriftChange",
    "GeneratedData",
    "GeneratorConfig",
    "generate",
    "parse_drift",
    "write_generated",
]

# ---------------------------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------------------------

MERCHANT_CATEGORIES: tuple[str, ...] = (
    "grocery",
    "restaurants",
    "fuel",
    "retail",
    "electronics",
    "travel",
    "entertainment",
    "digital_goods",
    "jewelry",
    "health",
    "utilities",
    "gift_cards",
)
# Share of legitimate transactions, typical amount (median, USD) and its spread (lognormal sigma).
_CATEGORY_WEIGHT = np.array(
    [0.22, 0.17, 0.10, 0.14, 0.04, 0.03, 0.07, 0.07, 0.01, 0.05, 0.06, 0.04]
)
_CATEGORY_MEDIAN_USD = np.array([35, 28, 45, 55, 220, 320, 30, 12, 350, 40, 85, 50], dtype=float)
_CATEGORY_SIGMA = np.array([0.6, 0.6, 0.35, 0.8, 0.8, 0.8, 0.7, 0.8, 0.9, 0.7, 0.5, 0.6])

COUNTRIES: tuple[str, ...] = (
    "US", "CA", "MX", "BR", "GB", "DE", "FR", "ES", "NL", "CH", "NG", "ZA", "IN", "SG", "JP", "AU",
)  # fmt: skip
_COUNTRY_WEIGHT = np.array(
    [0.40, 0.05, 0.03, 0.04, 0.09, 0.08, 0.06, 0.04, 0.03, 0.02, 0.02, 0.02, 0.04, 0.02, 0.04, 0.02]
)
_COUNTRY_UTC_OFFSET_H = np.array([-5, -5, -6, -3, 0, 1, 1, 1, 1, 1, 1, 2, 5.5, 8, 9, 10])

CURRENCIES: tuple[str, ...] = (
    "USD", "CAD", "MXN", "BRL", "GBP", "EUR", "CHF", "NGN", "ZAR", "INR", "SGD", "JPY", "AUD",
)  # fmt: skip
_COUNTRY_CURRENCY: dict[str, str] = {
    "US": "USD", "CA": "CAD", "MX": "MXN", "BR": "BRL", "GB": "GBP", "DE": "EUR", "FR": "EUR",
    "ES": "EUR", "NL": "EUR", "CH": "CHF", "NG": "NGN", "ZA": "ZAR", "IN": "INR", "SG": "SGD",
    "JP": "JPY", "AU": "AUD",
}  # fmt: skip
# Units of the currency per USD (rounded), and decimals amounts are rounded to.
_CURRENCY_PER_USD = np.array(
    [1.0, 1.36, 17.0, 5.0, 0.79, 0.92, 0.88, 1500.0, 18.5, 83.0, 1.34, 150.0, 1.5]
)
_CURRENCY_DECIMALS = np.array([2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 0, 2])
# Largest amount, in USD; keeps every currency's amounts below 10 million units.
_MAX_USD = 6_000.0
_HOME_CURRENCY = np.array([CURRENCIES.index(_COUNTRY_CURRENCY[c]) for c in COUNTRIES])

CHANNELS: tuple[str, ...] = ("pos", "contactless", "online", "mobile")
# How likely each channel is in each category (rows follow MERCHANT_CATEGORIES).
_CHANNEL_AFFINITY = np.array(
    [
        [0.45, 0.45, 0.07, 0.03],  # grocery
        [0.40, 0.50, 0.05, 0.05],  # restaurants
        [0.55, 0.43, 0.01, 0.01],  # fuel
        [0.35, 0.35, 0.20, 0.10],  # retail
        [0.30, 0.15, 0.40, 0.15],  # electronics
        [0.10, 0.05, 0.60, 0.25],  # travel
        [0.25, 0.25, 0.30, 0.20],  # entertainment
        [0.00, 0.00, 0.55, 0.45],  # digital_goods
        [0.60, 0.20, 0.15, 0.05],  # jewelry
        [0.50, 0.40, 0.07, 0.03],  # health
        [0.05, 0.00, 0.60, 0.35],  # utilities
        [0.30, 0.20, 0.35, 0.15],  # gift_cards
    ]
)

FRAUD_PATTERNS: tuple[str, ...] = ("burst", "card_testing", "unusual_purchase", "account_takeover")
"""Every value fraud_pattern can take besides "none". The first three are always generated;
account_takeover only appears through a `new_fraud` drift."""

TRANSACTIONS_SCHEMA = pa.schema(
    [
        ("transaction_id", pa.string()),
        ("card_id", pa.string()),
        ("merchant_id", pa.string()),
        ("merchant_category", pa.string()),
        ("amount", pa.float64()),
        ("currency", pa.string()),
        ("country", pa.string()),
        ("channel", pa.string()),
        ("device_id", pa.string()),
        ("event_time", pa.timestamp("us", tz="UTC")),
    ]
)
LABELS_SCHEMA = pa.schema(
    [
        ("transaction_id", pa.string()),
        ("card_id", pa.string()),
        ("event_time", pa.timestamp("us", tz="UTC")),
        ("is_fraud", pa.bool_()),
        ("fraud_pattern", pa.string()),
        ("label_time", pa.timestamp("us", tz="UTC")),
    ]
)

_US_PER_HOUR = 3_600_000_000
_US_PER_DAY = 24 * _US_PER_HOUR
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_YEAR_2099_US = int((datetime(2099, 1, 1, tzinfo=UTC) - _EPOCH).total_seconds()) * 1_000_000
_MAX_CARDS = 9_999_999  # card ids have 7 digits
_MAX_MERCHANTS = 899_999  # m_9xxxxx is reserved for merchants that drift adds
_MAX_NEW_CATEGORIES = 100
_FORMATS = {"csv": "csv", "parquet": "parquet", "jsonl": "jsonl"}

# Stream keys: each component draws from its own PCG64 stream, so that adding draws to one
# component never changes the others.
_S_CARDS, _S_MERCHANTS, _S_LEGIT, _S_FRAUD, _S_LABELS, _S_IDS, _S_CORRUPT, _S_DRIFT = range(1, 9)

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


# ---------------------------------------------------------------------------------------------
# Public configuration and result
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GeneratorConfig:
    """What to generate.

    days      length of the window, from `start`, in which transactions happen
    cards     number of cards (about 1.6 transactions per card and day)
    seed      everything is a function of the seed: same config, same data
    start     first instant of the window; must be tz-aware, is normalised to UTC
    drift     changes from `parse_drift`; each must start inside the window
    corrupt   fraction (0 to 0.5) of transaction rows given realistic bad values

    Invalid values raise InvalidArgument saying which value is wrong and what to pass instead.
    """

    days: int = 30
    cards: int = 10_000
    seed: int = 0
    start: datetime = datetime(2026, 1, 1, tzinfo=UTC)
    drift: tuple[DriftChange, ...] = ()
    corrupt: float = 0.0

    def __post_init__(self) -> None:
        for name, low, high, example in (
            ("days", 1, 36_500, 30),
            ("cards", 1, _MAX_CARDS, 10_000),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise InvalidArgument(
                    f"generator {name}={value!r} is out of range; "
                    f"pass a whole number from {low} to {high}, e.g. {name}={example}."
                )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise InvalidArgument(
                f"generator seed={self.seed!r} is invalid; pass a non-negative whole number."
            )
        if not isinstance(self.start, datetime) or self.start.utcoffset() is None:
            raise InvalidArgument(
                f"generator start={self.start!r} has no time zone; pass a tz-aware datetime "
                "such as datetime(2026, 1, 1, tzinfo=UTC) or 2026-01-01T00:00:00Z."
            )
        object.__setattr__(self, "start", self.start.astimezone(UTC))
        corrupt = self.corrupt
        if (
            isinstance(corrupt, bool)
            or not isinstance(corrupt, int | float)
            or not (0.0 <= corrupt <= 0.5)
        ):
            raise InvalidArgument(
                f"generator corrupt={corrupt!r} is out of range; pass a fraction from 0 to 0.5, "
                "e.g. corrupt=0.01."
            )
        object.__setattr__(self, "corrupt", float(corrupt))
        drift = tuple(self.drift)
        end = self.end
        for change in drift:
            if not isinstance(change, DriftChange):
                raise InvalidArgument(
                    f"generator drift item {change!r} is not a DriftChange; "
                    "build the changes with parse_drift('2026-01-15:amount_scale=1.6')."
                )
            if not self.start <= change.start < end:
                raise InvalidArgument(
                    f"drift {change.kind} starts at {change.start.isoformat()}, outside the "
                    f"generated window {self.start.isoformat()} .. {end.isoformat()}; "
                    "pick a date inside it or change start/days."
                )
        new_categories = {c.target for c in drift if c.kind == "new_category"}
        if len(new_categories) > _MAX_NEW_CATEGORIES:
            raise InvalidArgument(
                f"drift adds {len(new_categories)} new categories; "
                f"use at most {_MAX_NEW_CATEGORIES}."
            )
        object.__setattr__(self, "drift", drift)

    @property
    def end(self) -> datetime:
        """The first instant after the generated window."""
        return self.start + timedelta(days=self.days)


@dataclass(frozen=True)
class GeneratedData:
    """The generated tables: transactions (TRANSACTIONS_SCHEMA) and labels (LABELS_SCHEMA)."""

    transactions: pa.Table
    labels: pa.Table


# ---------------------------------------------------------------------------------------------
# Internal row store
# ---------------------------------------------------------------------------------------------


@dataclass
class _Rows:
    """Column arrays of all rows in generation order (before sorting)."""

    card: IntArray
    merchant: IntArray  # merchant number; id is "m_" + 6 digits
    category: IntArray  # index into _Vocab.categories
    amount: FloatArray
    currency: IntArray  # index into _Vocab.currencies
    country: IntArray  # index into COUNTRIES
    channel: IntArray  # index into _Vocab.channels
    device: npt.NDArray[np.uint64]
    time: IntArray  # microseconds since the epoch, UTC
    pattern: IntArray  # 0 = legitimate, else 1 + index into FRAUD_PATTERNS
    delay: IntArray = field(default_factory=lambda: np.zeros(0, np.int64))  # label delay, us
    tx_id: npt.NDArray[np.uint64] = field(default_factory=lambda: np.zeros(0, np.uint64))
    card_null: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, bool))

    def __len__(self) -> int:
        return len(self.card)


@dataclass
class _Vocab:
    categories: list[str] = field(default_factory=lambda: list(MERCHANT_CATEGORIES))
    currencies: list[str] = field(default_factory=lambda: [*CURRENCIES, "XXX"])
    channels: list[str] = field(default_factory=lambda: [*CHANNELS, "unknown"])


@dataclass
class _Cards:
    home: IntArray
    spend: FloatArray
    peak_hour: FloatArray
    spread_h: FloatArray
    rate: FloatArray
    category_cum: FloatArray  # (cards, categories) cumulative preference
    category_pref: FloatArray
    channel_pref: FloatArray  # (cards, channels)
    n_devices: IntArray
    devices: npt.NDArray[np.uint64]  # (cards, 3)
    abroad_rate: FloatArray


@dataclass
class _Merchants:
    numbers: IntArray  # merchant numbers sorted by (category, country)
    pair_start: IntArray  # per category*len(COUNTRIES)+country
    pair_count: IntArray
    cat_start: IntArray
    cat_count: IntArray

    def pick(self, category: IntArray, country: IntArray, u: FloatArray) -> IntArray:
        """A merchant of `category` in `country`, or of `category` anywhere if there is none."""
        key = category * len(COUNTRIES) + country
        count = self.pair_count[key]
        local = count > 0
        start = np.where(local, self.pair_start[key], self.cat_start[category])
        count = np.where(local, count, self.cat_count[category])
        offset = np.minimum((u * count).astype(np.int64), count - 1)
        return self.numbers[start + offset]


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)))


def _stochastic_round(rng: np.random.Generator, expected: float) -> int:
    whole = int(expected)
    return whole + int(rng.random() < expected - whole)


def _round_amounts(amount: FloatArray, currency: IntArray) -> FloatArray:
    scale = 10.0 ** _CURRENCY_DECIMALS[np.minimum(currency, len(CURRENCIES) - 1)]
    return np.round(amount * scale) / scale


def _to_local(usd: FloatArray, currency: IntArray) -> FloatArray:
    return _round_amounts(usd * _CURRENCY_PER_USD[currency], currency)


def _other_country(rng: np.random.Generator, home: IntArray) -> IntArray:
    """A country different from `home`, drawn by the usual country weights."""
    drawn = rng.choice(len(COUNTRIES), size=len(home), p=_COUNTRY_WEIGHT)
    clash = drawn == home
    shift = rng.integers(1, len(COUNTRIES), size=len(home))
    return np.where(clash, (home + shift) % len(COUNTRIES), drawn)


def _sample_rows(cum: FloatArray, rows: IntArray, u: FloatArray) -> IntArray:
    """Sample a column index per entry from the cumulative row `cum[rows[i]]`, without an
    (n, k) temporary: rows are stacked into one increasing sequence for searchsorted."""
    n_rows, k = cum.shape
    stacked = (cum + np.arange(n_rows)[:, None]).ravel()
    index = np.searchsorted(stacked, rows + u, side="right")
    return np.clip(index - rows * k, 0, k - 1)


# ---------------------------------------------------------------------------------------------
# Generation steps
# ---------------------------------------------------------------------------------------------


def _make_cards(config: GeneratorConfig) -> _Cards:
    rng = _rng(config.seed, _S_CARDS)
    n = config.cards
    home = rng.choice(len(COUNTRIES), size=n, p=_COUNTRY_WEIGHT)
    spend = rng.lognormal(0.0, 0.45, n)
    peak = np.clip(rng.normal(13.5, 3.0, n), 8.0, 21.0)
    spread = rng.uniform(1.5, 3.5, n)
    rate = rng.gamma(2.0, 0.8, n)  # mean 1.6 transactions per day
    own = rng.gamma(6.0 * _CATEGORY_WEIGHT, 1.0, (n, len(MERCHANT_CATEGORIES)))
    own /= np.maximum(own.sum(axis=1, keepdims=True), 1e-12)
    category_pref = 0.5 * _CATEGORY_WEIGHT + 0.5 * own
    category_cum = np.cumsum(category_pref, axis=1)
    category_cum[:, -1] = 1.0
    channel_pref = rng.dirichlet(np.full(len(CHANNELS), 2.0), n)
    n_devices = rng.integers(1, 4, n)
    devices = rng.integers(0, 1 << 40, size=(n, 3), dtype=np.uint64)
    abroad_rate = rng.beta(0.5, 25.0, n)
    return _Cards(
        home,
        spend,
        peak,
        spread,
        rate,
        category_cum,
        category_pref,
        channel_pref,
        n_devices,
        devices,
        abroad_rate,
    )


def _make_merchants(config: GeneratorConfig) -> _Merchants:
    rng = _rng(config.seed, _S_MERCHANTS)
    n_cat, n_cty = len(MERCHANT_CATEGORIES), len(COUNTRIES)
    n = min(max(200, config.cards // 20), _MAX_MERCHANTS)
    weight = np.sqrt(_CATEGORY_WEIGHT)
    category = np.concatenate(
        [np.arange(n_cat), rng.choice(n_cat, size=n - n_cat, p=weight / weight.sum())]
    )
    country = rng.choice(n_cty, size=n, p=_COUNTRY_WEIGHT)
    key = category * n_cty + country
    order = np.argsort(key, kind="stable")
    pair_count = np.bincount(key, minlength=n_cat * n_cty)
    cat_count = np.bincount(category, minlength=n_cat)
    return _Merchants(
        numbers=order.astype(np.int64) + 1,
        pair_start=np.cumsum(pair_count) - pair_count,
        pair_count=pair_count,
        cat_start=np.cumsum(cat_count) - cat_count,
        cat_count=cat_count,
    )


def _legit_rows(config: GeneratorConfig, cards: _Cards, merchants: _Merchants) -> _Rows:
    rng = _rng(config.seed, _S_LEGIT)
    start_us = _to_us(config.start)
    window = config.days * _US_PER_DAY
    per_card = rng.poisson(cards.rate * config.days)
    card = np.repeat(np.arange(config.cards), per_card)
    n = len(card)
    home = cards.home[card]

    # When: a day, and an hour around the card's peak hour in local time, converted to UTC.
    day = rng.integers(0, config.days, n)
    local_h = cards.peak_hour[card] + cards.spread_h[card] * rng.standard_normal(n)
    utc_h = np.mod(local_h, 24.0) - _COUNTRY_UTC_OFFSET_H[home]
    offset = day * _US_PER_DAY + (utc_h * _US_PER_HOUR).astype(np.int64)
    time = start_us + np.mod(offset, window)

    # Where: at home, except when travelling.
    abroad = rng.random(n) < cards.abroad_rate[card]
    country = home.copy()
    country[abroad] = _other_country(rng, home[abroad])

    # What: a category from the card's preferences, a channel fitting card and category.
    category = _sample_rows(cards.category_cum, card, rng.random(n))
    channel_p = cards.channel_pref[card] * _CHANNEL_AFFINITY[category]
    channel_cum = np.cumsum(channel_p, axis=1)
    u = rng.random(n) * channel_cum[:, -1]
    channel = np.minimum((channel_cum < u[:, None]).sum(axis=1), len(CHANNELS) - 1)

    usd = (
        _CATEGORY_MEDIAN_USD[category]
        * cards.spend[card]
        * np.exp(_CATEGORY_SIGMA[category] * rng.standard_normal(n))
    )
    currency = _HOME_CURRENCY[home]
    amount = _to_local(np.clip(usd, 0.5, _MAX_USD), currency)

    # Mostly the card's first device, sometimes its second or third.
    slot = (rng.random(n) ** 2 * cards.n_devices[card]).astype(np.int64)
    device = cards.devices[card, slot]
    merchant = merchants.pick(category, country, rng.random(n))
    return _Rows(
        card,
        merchant,
        category,
        amount,
        currency,
        country,
        channel,
        device,
        time,
        np.zeros(n, np.int64),
    )


def _fraud_rows(
    config: GeneratorConfig, cards: _Cards, merchants: _Merchants, n_legit: int
) -> _Rows:
    rng = _rng(config.seed, _S_FRAUD)
    cat = {name: i for i, name in enumerate(MERCHANT_CATEGORIES)}
    ch = {name: i for i, name in enumerate(CHANNELS)}
    start_us = _to_us(config.start)
    window = config.days * _US_PER_DAY
    parts: list[dict[str, npt.NDArray[Any]]] = []

    def new_devices(k: int) -> npt.NDArray[np.uint64]:
        return rng.integers(0, 1 << 40, size=k, dtype=np.uint64)

    def victims(k: int) -> IntArray:
        """Cards hit by k incidents of one pattern: distinct cards while there are enough."""
        if k <= config.cards:
            return rng.choice(config.cards, size=k, replace=False).astype(np.int64)
        return rng.integers(0, config.cards, k)

    def incident_starts(k: int, room: int) -> IntArray:
        return start_us + rng.integers(0, max(window - room, 1), size=k)

    # burst: 3-15 expensive purchases within one hour.
    n_inc = _stochastic_round(rng, 0.0045 * n_legit / 9.0)
    size = rng.integers(3, 16, n_inc)
    victim = victims(n_inc)
    home = cards.home[victim]
    country = np.where(rng.random(n_inc) < 0.6, _other_country(rng, home), home)
    device = np.where(
        rng.random(n_inc) < 0.85, new_devices(n_inc), cards.devices[victim, 0]
    ).astype(np.uint64)
    t0 = incident_starts(n_inc, _US_PER_HOUR)
    inc = np.repeat(np.arange(n_inc), size)
    k = len(inc)
    category = rng.choice(
        [cat["electronics"], cat["jewelry"], cat["digital_goods"], cat["gift_cards"]],
        size=k,
        p=[0.35, 0.15, 0.25, 0.25],
    )
    channel = rng.choice(
        [ch["online"], ch["mobile"], ch["contactless"]], size=k, p=[0.75, 0.2, 0.05]
    )
    usd = np.maximum(_CATEGORY_MEDIAN_USD[category], 100.0) * rng.lognormal(0.8, 0.5, k)
    parts.append(
        {
            "card": victim[inc],
            "category": category,
            "usd": usd,
            "country": country[inc],
            "channel": channel,
            "device": device[inc],
            "time": t0[inc] + rng.integers(0, _US_PER_HOUR, k),
            "pattern": np.full(k, 1 + FRAUD_PATTERNS.index("burst")),
        }
    )

    # card_testing: 5-20 tiny online amounts within ten minutes at one digital-goods merchant,
    # half the time followed by one large purchase with the same device.
    n_inc = _stochastic_round(rng, 0.0035 * n_legit / 13.0)
    size = rng.integers(5, 21, n_inc)
    victim = victims(n_inc)
    home = cards.home[victim]
    country = np.where(rng.random(n_inc) < 0.5, _other_country(rng, home), home)
    device = new_devices(n_inc)
    t0 = incident_starts(n_inc, 2 * _US_PER_HOUR)
    digital = np.full(n_inc, cat["digital_goods"])
    merchant = merchants.pick(digital, country, rng.random(n_inc))
    inc = np.repeat(np.arange(n_inc), size)
    k = len(inc)
    ten_minutes = 10 * 60 * 1_000_000
    test_time = t0[inc] + rng.integers(0, ten_minutes, k)
    parts.append(
        {
            "card": victim[inc],
            "category": digital[inc],
            "merchant": merchant[inc],
            "usd": rng.uniform(0.5, 2.0, k),
            "country": country[inc],
            "channel": np.full(k, ch["online"]),
            "device": device[inc],
            "time": test_time,
            "pattern": np.full(k, 1 + FRAUD_PATTERNS.index("card_testing")),
        }
    )
    cash_out = np.flatnonzero(rng.random(n_inc) < 0.5)
    m = len(cash_out)
    category = rng.choice([cat["electronics"], cat["jewelry"], cat["gift_cards"]], size=m)
    parts.append(
        {
            "card": victim[cash_out],
            "category": category,
            "usd": _CATEGORY_MEDIAN_USD[category] * rng.lognormal(0.9, 0.4, m),
            "country": country[cash_out],
            "channel": np.full(m, ch["online"]),
            "device": device[cash_out],
            "time": t0[cash_out] + ten_minutes + rng.integers(5, 60, m) * 60_000_000,
            "pattern": np.full(m, 1 + FRAUD_PATTERNS.index("card_testing")),
        }
    )

    # unusual_purchase: one large purchase in the high-value category the card uses least,
    # sometimes abroad, often from a new device.
    k = _stochastic_round(rng, 0.0015 * n_legit)
    victim = victims(k)
    candidates = np.array([cat["electronics"], cat["jewelry"], cat["travel"], cat["gift_cards"]])
    category = candidates[np.argmin(cards.category_pref[victim][:, candidates], axis=1)]
    home = cards.home[victim]
    country = np.where(rng.random(k) < 0.4, _other_country(rng, home), home)
    channel = rng.choice(len(CHANNELS), size=k, p=[0.3, 0.1, 0.5, 0.1])
    device = np.where(rng.random(k) < 0.6, new_devices(k), cards.devices[victim, 0])
    parts.append(
        {
            "card": victim,
            "category": category,
            "usd": _CATEGORY_MEDIAN_USD[category]
            * cards.spend[victim]
            * rng.lognormal(1.3, 0.4, k),
            "country": country,
            "channel": channel,
            "device": device.astype(np.uint64),
            "time": incident_starts(k, 1),
            "pattern": np.full(k, 1 + FRAUD_PATTERNS.index("unusual_purchase")),
        }
    )

    for part in parts:  # merchants for the parts that did not fix one
        if "merchant" not in part:
            part["merchant"] = merchants.pick(
                part["category"], part["country"], rng.random(len(part["card"]))
            )
    card = np.concatenate([p["card"] for p in parts]).astype(np.int64)
    currency = _HOME_CURRENCY[cards.home[card]]
    usd = np.concatenate([p["usd"] for p in parts])
    return _Rows(
        card=card,
        merchant=np.concatenate([p["merchant"] for p in parts]).astype(np.int64),
        category=np.concatenate([p["category"] for p in parts]).astype(np.int64),
        amount=_to_local(np.clip(usd, 0.5, _MAX_USD), currency),
        currency=currency,
        country=np.concatenate([p["country"] for p in parts]).astype(np.int64),
        channel=np.concatenate([p["channel"] for p in parts]).astype(np.int64),
        device=np.concatenate([p["device"] for p in parts]).astype(np.uint64),
        time=np.concatenate([p["time"] for p in parts]).astype(np.int64),
        pattern=np.concatenate([p["pattern"] for p in parts]).astype(np.int64),
    )


def _concat(a: _Rows, b: _Rows) -> _Rows:
    names = (
        "card",
        "merchant",
        "category",
        "amount",
        "currency",
        "country",
        "channel",
        "device",
        "time",
        "pattern",
    )
    return _Rows(*(np.concatenate([getattr(a, f), getattr(b, f)]) for f in names))


def _fraud_delays(rng: np.random.Generator, k: int) -> IntArray:
    """Chargeback delays: lognormal, median 12 days, clipped to 1-90 days (microseconds)."""
    days = np.clip(rng.lognormal(np.log(12.0), 0.55, k), 1.0, 90.0)
    return (days * _US_PER_DAY).astype(np.int64)


def _assign_labels_and_ids(config: GeneratorConfig, rows: _Rows) -> None:
    n = len(rows)
    rng = _rng(config.seed, _S_LABELS)
    delay = (rng.uniform(25.0, 40.0, n) * _US_PER_DAY).astype(np.int64)
    fraud = np.flatnonzero(rows.pattern > 0)
    delay[fraud] = _fraud_delays(rng, len(fraud))
    rows.delay = delay

    rng = _rng(config.seed, _S_IDS)
    ids = rng.integers(0, np.iinfo(np.uint64).max, size=n, dtype=np.uint64, endpoint=True)
    while True:  # redraw the (astronomically rare) repeats until all ids are unique
        _, first = np.unique(ids, return_index=True)
        if len(first) == n:
            break
        repeat = np.setdiff1d(np.arange(n), first)
        ids[repeat] = rng.integers(
            0, np.iinfo(np.uint64).max, size=len(repeat), dtype=np.uint64, endpoint=True
        )
    rows.tx_id = ids
    rows.card_null = np.zeros(n, dtype=bool)


# ---------------------------------------------------------------------------------------------
# Drift
# ---------------------------------------------------------------------------------------------


def _set_share(
    rng: np.random.Generator, column: IntArray, rows: IntArray, target: int, share: float
) -> None:
    """Move rows of `column` (restricted to `rows`) to or away from `target` so that its share
    among `rows` becomes `share` (up to sampling noise)."""
    if len(rows) == 0:
        return
    values = column[rows]
    is_target = values == target
    base = float(is_target.mean())
    u = rng.random(len(rows))
    if share > base:
        switch = ~is_target & (u < (share - base) / (1.0 - base))
        column[rows[switch]] = target
    elif share < base:
        switch = is_target & (u < (base - share) / base)
        others = values[~is_target]
        if len(others) == 0:  # nothing else seen after the date: use any other value
            others = np.setdiff1d(np.unique(column), [target])
        if len(others) == 0:
            return
        column[rows[switch]] = others[rng.integers(0, len(others), int(switch.sum()))]


def _apply_drift(config: GeneratorConfig, rows: _Rows, vocab: _Vocab, n_merchants: int) -> None:
    for i, change in enumerate(config.drift):
        rng = _rng(config.seed, _S_DRIFT, i)
        after = np.flatnonzero(rows.time >= _to_us(change.start))
        if change.kind == "amount_scale":
            rows.amount[after] = _round_amounts(
                rows.amount[after] * change.value, rows.currency[after]
            )
        elif change.kind == "country_mix":
            assert change.target is not None
            _set_share(rng, rows.country, after, COUNTRIES.index(change.target), change.value)
        elif change.kind == "channel_mix":
            assert change.target is not None
            _set_share(rng, rows.channel, after, CHANNELS.index(change.target), change.value)
        elif change.kind == "new_category":
            assert change.target is not None
            if change.target not in vocab.categories:
                vocab.categories.append(change.target)
            code = vocab.categories.index(change.target)
            first = 900_000 + (code - len(MERCHANT_CATEGORIES)) * 1000
            pool = max(3, min(999, n_merchants // 40))
            moved = after[rng.random(len(after)) < change.value]
            rows.category[moved] = code
            rows.merchant[moved] = first + rng.integers(0, pool, len(moved))
        elif change.kind == "new_fraud":
            assert change.target is not None
            segment = NEW_FRAUD_SEGMENTS[change.target]
            in_segment = rows.pattern[after] == 0
            for column, value in segment.items():
                if column == "channel":
                    in_segment &= rows.channel[after] == vocab.channels.index(value)
                elif column == "merchant_category":
                    in_segment &= rows.category[after] == vocab.categories.index(value)
            candidates = after[in_segment]
            turned = candidates[rng.random(len(candidates)) < change.value]
            rows.pattern[turned] = 1 + FRAUD_PATTERNS.index(change.target)
            rows.delay[turned] = _fraud_delays(rng, len(turned))


# ---------------------------------------------------------------------------------------------
# Corruption
# ---------------------------------------------------------------------------------------------

_CORRUPTION_KINDS = (
    "bad_amount",
    "null_card_id",
    "unknown_currency",
    "future_event_time",
    "duplicate_transaction_id",
    "unknown_channel",
)


def _corrupt(config: GeneratorConfig, rows: _Rows, vocab: _Vocab) -> None:
    n = len(rows)
    k = round(config.corrupt * n)
    if k == 0 or n < 2:
        return
    rng = _rng(config.seed, _S_CORRUPT)
    picked = rng.choice(n, size=k, replace=False)  # in random order
    kind = np.arange(k) % len(_CORRUPTION_KINDS)
    bad_amount = picked[kind == 0]
    zero = rng.random(len(bad_amount)) < 0.5
    rows.amount[bad_amount] = np.where(zero, 0.0, -rows.amount[bad_amount])
    rows.card_null[picked[kind == 1]] = True
    rows.currency[picked[kind == 2]] = vocab.currencies.index("XXX")
    future = picked[kind == 3]
    rows.time[future] = _YEAR_2099_US + (rows.time[future] - _to_us(config.start))
    dup = picked[kind == 4]
    source = (dup + rng.integers(1, n, len(dup))) % n
    rows.tx_id[dup] = rows.tx_id[source]
    rows.channel[picked[kind == 5]] = vocab.channels.index("unknown")


# ---------------------------------------------------------------------------------------------
# Arrow assembly
# ---------------------------------------------------------------------------------------------

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_HEX_PAIRS = np.stack([_HEX[np.arange(256) >> 4], _HEX[np.arange(256) & 15]], axis=1)
_ArrowArray: TypeAlias = pa.Array | pa.ChunkedArray


def _to_us(moment: datetime) -> int:
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _fixed_width_strings(chars: npt.NDArray[np.uint8]) -> _ArrowArray:
    """An Arrow string array from an (n, width) matrix of ASCII codes, without Python objects."""
    n, width = chars.shape
    if n == 0:
        return pa.array([], pa.string())
    per_chunk = max(1, (2**31 - 1) // width)
    chunks = []
    for first in range(0, n, per_chunk):
        part = np.ascontiguousarray(chars[first : first + per_chunk])
        m = part.shape[0]
        offsets = np.arange(0, (m + 1) * width, width, dtype=np.int32)
        chunks.append(pa.StringArray.from_buffers(m, pa.py_buffer(offsets), pa.py_buffer(part)))
    return chunks[0] if len(chunks) == 1 else pa.chunked_array(chunks)


def _prefixed(prefix: str, digits: npt.NDArray[np.uint8]) -> _ArrowArray:
    head = np.frombuffer(prefix.encode(), dtype=np.uint8)
    chars = np.empty((len(digits), len(head) + digits.shape[1]), dtype=np.uint8)
    chars[:, : len(head)] = head
    chars[:, len(head) :] = digits
    return _fixed_width_strings(chars)


def _hex_digits(values: npt.NDArray[np.uint64], width: int) -> npt.NDArray[np.uint8]:
    """The low `width` (even) hex digits of each value, as ASCII codes."""
    data = values.astype(">u8").view(np.uint8).reshape(-1, 8)[:, 8 - width // 2 :]
    return _HEX_PAIRS[data].reshape(len(values), width)


def _decimal_digits(values: IntArray, width: int) -> npt.NDArray[np.uint8]:
    """The low `width` decimal digits of each non-negative value, as ASCII codes."""
    rest: npt.NDArray[Any] = values.astype(np.uint32 if width <= 9 else np.uint64)
    digits = np.empty((len(values), width), dtype=np.uint8)
    for column in range(width - 1, -1, -1):
        digits[:, column] = rest % 10
        rest //= 10
    digits += 48
    return digits


def _take(vocabulary: list[str] | tuple[str, ...], index: IntArray) -> pa.Array:
    return pa.array(list(vocabulary), pa.string()).take(pa.array(index, pa.int32()))


def _timestamps(values: IntArray) -> pa.Array:
    return pa.array(values, pa.int64()).cast(pa.timestamp("us", tz="UTC"))


def _build_tables(rows: _Rows, vocab: _Vocab) -> GeneratedData:
    order = np.lexsort((rows.tx_id, rows.time))
    tx_id = rows.tx_id[order]
    time = rows.time[order]
    label_time = time + rows.delay[order]
    pattern = rows.pattern[order]

    card_id = _prefixed("card_", _decimal_digits(rows.card[order] + 1, 7))
    card_null = rows.card_null[order]
    if card_null.any():
        card_id = pc.if_else(pa.array(card_null), pa.scalar(None, pa.string()), card_id)
    transaction_id = _prefixed("tx_", _hex_digits(tx_id, 16))
    event_time = _timestamps(time)
    transactions = pa.Table.from_arrays(
        [
            transaction_id,
            card_id,
            _prefixed("m_", _decimal_digits(rows.merchant[order], 6)),
            _take(vocab.categories, rows.category[order]),
            pa.array(rows.amount[order], pa.float64()),
            _take(vocab.currencies, rows.currency[order]),
            _take(COUNTRIES, rows.country[order]),
            _take(vocab.channels, rows.channel[order]),
            _prefixed("dev_", _hex_digits(rows.device[order], 10)),
            event_time,
        ],
        schema=TRANSACTIONS_SCHEMA,
    )
    label_order = np.lexsort((tx_id, label_time))
    take = pa.array(label_order, pa.int64())
    labels = pa.Table.from_arrays(
        [
            transaction_id.take(take),
            card_id.take(take),
            event_time.take(take),
            pa.array(pattern[label_order] > 0, pa.bool_()),
            _take(("none", *FRAUD_PATTERNS), pattern[label_order]),
            _timestamps(label_time[label_order]),
        ],
        schema=LABELS_SCHEMA,
    )
    return GeneratedData(transactions=transactions, labels=labels)


# ---------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------


def generate(
    config: GeneratorConfig, progress: Callable[[str, float], None] | None = None
) -> GeneratedData:
    """Generate transactions and labels for `config`; deterministic in the config.

    `progress(stage, fraction_done)` is called a handful of times, with the overall fraction of
    the work done after each stage (ending at 1.0).
    """

    def report(stage: str, done: float) -> None:
        if progress is not None:
            progress(stage, done)

    report("cards", 0.0)
    cards = _make_cards(config)
    merchants = _make_merchants(config)
    report("transactions", 0.1)
    rows = _legit_rows(config, cards, merchants)
    report("fraud", 0.45)
    rows = _concat(rows, _fraud_rows(config, cards, merchants, len(rows)))
    report("labels", 0.5)
    _assign_labels_and_ids(config, rows)
    vocab = _Vocab()
    if config.drift:
        report("drift", 0.6)
        _apply_drift(config, rows, vocab, len(merchants.numbers))
    if config.corrupt > 0:
        report("corrupt", 0.65)
        _corrupt(config, rows, vocab)
    report("tables", 0.7)
    data = _build_tables(rows, vocab)
    report("done", 1.0)
    return data


def _iso_utc(column: _ArrowArray) -> _ArrowArray:
    """Timestamps as ISO-8601 strings with microseconds, 'Z' when the type has a time zone."""
    if isinstance(column, pa.ChunkedArray):
        return pa.chunked_array([_iso_utc(c) for c in column.chunks], pa.string())
    zone = column.type.tz
    us = pc.cast(column, pa.timestamp("us", tz=zone), safe=False).cast(pa.int64())
    values = us.fill_null(0).to_numpy()
    days, within = np.divmod(values, _US_PER_DAY)
    # Civil date from days since 1970-01-01 (proleptic Gregorian).
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = np.where(mp < 10, mp + 3, mp - 9)
    year = yoe + era * 400 + (month <= 2)
    if len(values) and (year.min() < 0 or year.max() > 9999):
        fmt = "%Y-%m-%dT%H:%M:%S" + ("Z" if zone else "")
        return pc.strftime(column, format=fmt)
    seconds, micros = np.divmod(within, 1_000_000)
    suffix = b"Z" if zone else b""
    chars = np.empty((len(values), 26 + len(suffix)), dtype=np.uint8)
    layout = (
        (0, year, 4),
        (5, month, 2),
        (8, day, 2),
        (11, seconds // 3600, 2),
        (14, seconds // 60 % 60, 2),
        (17, seconds % 60, 2),
        (20, micros, 6),
    )
    for position, part, width in layout:
        chars[:, position : position + width] = _decimal_digits(part, width)
    for position, sep in ((4, b"-"), (7, b"-"), (10, b"T"), (13, b":"), (16, b":"), (19, b".")):
        chars[:, position] = sep[0]
    if suffix:
        chars[:, 26] = suffix[0]
    text = _fixed_width_strings(chars)
    if column.null_count:
        text = pc.if_else(column.is_null(), pa.scalar(None, pa.string()), text)
    return text


def _with_iso_times(table: pa.Table) -> pa.Table:
    columns = [_iso_utc(col) if pa.types.is_timestamp(col.type) else col for col in table.columns]
    return pa.Table.from_arrays(columns, names=table.column_names)


def _json_values(column: pa.Array) -> pa.Array:
    """Each value of `column` as JSON text ('null' for nulls)."""
    kind = column.type
    if pa.types.is_timestamp(kind):
        return _json_values(_iso_utc(column))
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        text = column.cast(pa.string())
        if pc.any(pc.match_substring_regex(text, r"[\x00-\x1f]")).as_py():
            return pa.array([json.dumps(v) if v is not None else "null" for v in text.to_pylist()])
        text = pc.replace_substring(text, "\\", "\\\\")
        text = pc.replace_substring(text, '"', '\\"')
        return pc.binary_join_element_wise('"', text, '"', "").fill_null("null")
    if pa.types.is_boolean(kind) or pa.types.is_integer(kind):
        return column.cast(pa.string()).fill_null("null")
    if pa.types.is_floating(kind):
        text = column.cast(pa.string())
        return pc.if_else(pc.is_finite(column), text, pa.scalar("null")).fill_null("null")
    return pa.array([json.dumps(v, default=str) for v in column.to_pylist()], pa.string())


def _write_jsonl(table: pa.Table, path: Path) -> None:
    keys = [json.dumps(name) for name in table.column_names]
    with open(path, "wb") as out:
        for batch in table.to_batches(max_chunksize=250_000):
            pieces: list[pa.Array | str] = []
            for i, key in enumerate(keys):
                pieces.append(("{" if i == 0 else ",") + key + ":")
                pieces.append(_json_values(batch.column(i)))
            pieces.append("}\n")
            lines = pc.binary_join_element_wise(*pieces, "")
            offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)
            first, last = offsets[lines.offset], offsets[lines.offset + len(lines)]
            out.write(memoryview(lines.buffers()[2])[first:last])


def write_generated(data: GeneratedData, out_dir: Path, fmt: str = "csv") -> dict[str, Path]:
    """Write `data` to out_dir/transactions.<fmt> and out_dir/labels.<fmt>.

    `fmt` is csv, parquet or jsonl. CSV and JSONL write timestamps as ISO-8601 in UTC with a
    'Z' (2026-01-01T08:15:02.123456Z); JSONL writes one JSON object per line. Files are written
    under a temporary name and renamed, so a reader never sees half a file. Returns
    {"transactions": path, "labels": path}.
    """
    kind = fmt.lower() if isinstance(fmt, str) else fmt
    if kind not in _FORMATS:
        raise InvalidArgument(
            f"output format {fmt!r} is not supported; use one of {', '.join(_FORMATS)}."
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, table in (("transactions", data.transactions), ("labels", data.labels)):
        path = out_dir / f"{name}.{_FORMATS[kind]}"
        with atomic_path(path) as partial:
            if kind == "csv":
                pacsv.write_csv(_with_iso_times(table), partial)
            elif kind == "parquet":
                pq.write_table(table, partial, compression="zstd")
            else:
                _write_jsonl(table, partial)
        paths[name] = path
    return paths
