"""How online feature state is laid out in bytes, and how aggregates are evaluated from it.

One value per (view, version, entity key). Two kinds, both little-endian, never pickle:

Plain view (latest row)::

    b"P" 0x02 | event_us int64 | ingested_us int64 | fields row | primary-key row

Aggregate view (the entity's recent events, oldest first)::

    b"A" 0x02 nslots 0x00 | n uint32 | since_us int64 | flags uint8[nslots] padded to 8
    | times int64[n] | ids uint64[n] | slot_0 [n x 8 bytes] | ... | slot_k [n x 8 bytes]

A *row* is a null bitmap (one bit per value) followed by each non-null value: int64 and
timestamp (microseconds) as int64, float64 as float64, bool as one byte, date (days) as int32,
string as uint32 length + UTF-8. `ids` are 64-bit hashes of the events' primary keys, so merging
the same event twice is a no-op. A slot holds one source column: `f8` float64 values (NaN is
null), or `h8` 64-bit hashes of the values (0 is null) for count and count_distinct of
non-numeric columns. A slot's flag is 1 when it holds a null for this entity.

`since_us` says how far back an event list is complete: every event of the entity with time
after it (up to what was materialized) is in the list; `NO_SINCE` when the list holds the
entity's whole history. A window (T - w, T] is answered exactly only when T - w >= since_us.
The primary key of a plain row is stored in the key columns' own types (version 2; version 1
stored it as text, and tied rows sorted as text).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from backline.core.config import SourceSpec
from backline.core.errors import SchemaError, StoreError
from backline.core.hashing import U64
from backline.features.definitions import NUMERIC_AGGREGATES, FeatureView

I64 = npt.NDArray[np.int64]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
KEY_SEPARATOR = "\x1f"
KEY_TYPES = ("string", "int64", "bool", "timestamp")

_PLAIN_HEAD = struct.Struct("<2sqq")
_AGG_HEAD = struct.Struct("<2sBBIq")
_PLAIN_MAGIC = b"P\x02"
_AGG_MAGIC = b"A\x02"
NO_SINCE = -(2**63)
"""`since_us` of an event list that holds the entity's whole history."""
_Q = struct.Struct("<q")
_D = struct.Struct("<d")
_I = struct.Struct("<i")
_U32 = struct.Struct("<I")


def to_us(moment: datetime) -> int:
    """Microseconds since the epoch of a tz-aware datetime, exactly."""
    return (moment - EPOCH) // timedelta(microseconds=1)


def from_us(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


# -- layout -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Slot:
    column: str
    kind: str
    """f8 (float64 values, NaN null) or h8 (hashes, 0 null)."""
    source_type: str


@dataclass(frozen=True)
class AggregateSpec:
    feature: str
    function: str
    slot: int
    """Index into the view's slots; -1 for count of rows."""
    window_us: int


@dataclass(frozen=True)
class ViewLayout:
    """Everything the online store needs to know about one view, derived once."""

    name: str
    source: str
    event_time: str
    join_keys: tuple[str, ...]
    key_types: tuple[str, ...]
    """The join keys' source types (see `entity_key`)."""
    primary_key: tuple[str, ...]
    pk_types: tuple[str, ...]
    fields: tuple[tuple[str, str, str], ...]
    """(feature, column, source type) of a plain view."""
    slots: tuple[Slot, ...]
    aggregates: tuple[AggregateSpec, ...]
    ttl_us: int | None
    """None: values never expire."""
    max_window_us: int

    @property
    def is_aggregate(self) -> bool:
        return bool(self.aggregates)

    def feature_type(self, feature: str) -> str:
        """int, float or a source type (string, int64, float64, bool, timestamp, date)."""
        for name, _, kind in self.fields:
            if name == feature:
                return kind
        for agg in self.aggregates:
            if agg.feature == feature:
                return "int" if agg.function in ("count", "count_distinct") else "float"
        raise KeyError(feature)


def layout_of(view: FeatureView, source: SourceSpec) -> ViewLayout:
    types = {c.name: c.type for c in source.columns}
    for key in view.join_keys:
        if types[key] not in KEY_TYPES:
            raise SchemaError(
                f"feature view {view.name!r}: join key {key!r} has type {types[key]}; the online "
                f"store keys entities by {', '.join(KEY_TYPES)} columns. Use such a column as the "
                "entity's join key."
            )
    slots: list[Slot] = []

    def slot(column: str, kind: str) -> int:
        wanted = Slot(column, kind, types[column])
        if wanted not in slots:
            slots.append(wanted)
        return slots.index(wanted)

    aggregates = []
    for agg in view.aggregates:
        index = -1
        if agg.column is not None:
            kind = types[agg.column]
            if agg.function in NUMERIC_AGGREGATES:
                index = slot(agg.column, "f8")
            elif agg.function == "count":
                index = slot(agg.column, "f8" if kind in ("int64", "float64") else "h8")
            else:
                index = slot(agg.column, "f8" if kind == "float64" else "h8")
        window = int(agg.window_delta.total_seconds()) * 1_000_000
        aggregates.append(AggregateSpec(agg.feature, agg.function, index, window))
    return ViewLayout(
        name=view.name,
        source=view.source,
        event_time=source.event_time,
        join_keys=tuple(view.join_keys),
        key_types=tuple(types[k] for k in view.join_keys),
        primary_key=tuple(source.primary_key),
        # in their own types, like the offline engines: a tie on (event, ingest) time goes to
        # the larger primary key, and int64 10 is larger than 9 (as text it is not)
        pk_types=tuple(types[k] for k in source.primary_key),
        fields=tuple((f.feature, f.column, types[f.column]) for f in view.fields),
        slots=tuple(slots),
        aggregates=tuple(aggregates),
        ttl_us=None if view.ttl_delta is None else int(view.ttl_delta.total_seconds()) * 1_000_000,
        max_window_us=int(view.max_window.total_seconds()) * 1_000_000,
    )


def entity_key(values: Sequence[Any], types: Sequence[str] | None = None) -> str | None:
    """The text key of an entity from its join-key values; None when one is null.

    Values are written as text: an int as its digits, a bool as true/false, a string as it is.
    A timestamp key (`types[i] == "timestamp"`) is its microseconds since the epoch, from a
    tz-aware datetime, ISO-8601 text with a zone (as the command line passes it) or an int of
    microseconds (as the online state passes it), so every spelling of one instant is one key.
    """
    parts = []
    for i, value in enumerate(values):
        if value is None:
            return None
        if types is not None and types[i] == "timestamp":
            parts.append(str(_key_us(value)))
        elif isinstance(value, bool | np.bool_):
            parts.append("true" if value else "false")
        elif isinstance(value, int | np.integer):
            parts.append(str(int(value)))
        elif isinstance(value, str):
            parts.append(value)
        else:
            raise SchemaError(
                f"entity key value {value!r} is a {type(value).__name__}; pass join keys as "
                "str, int or bool (a timestamp key as a tz-aware datetime)."
            )
    return KEY_SEPARATOR.join(parts)


def _key_us(value: Any) -> int:
    """Microseconds since the epoch of a timestamp join-key value (see `entity_key`)."""
    moment = value
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            moment = None
    elif isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_):
        return int(value)
    if isinstance(moment, datetime) and moment.utcoffset() is not None:
        return to_us(moment)
    raise SchemaError(
        f"timestamp join-key value {value!r} has no time zone or is not a time; pass a "
        "tz-aware datetime or ISO-8601 text with a zone, e.g. 2026-01-10T12:00:00Z."
    )


# -- rows (plain views) -------------------------------------------------------------------------


class RowCodec:
    """Encode and decode a tuple of values of known source types (storage form: timestamps
    as int microseconds, dates as int days)."""

    def __init__(self, types: Sequence[str]) -> None:
        self.types = tuple(types)
        self.mask_bytes = (len(self.types) + 7) // 8

    def encode(self, values: Sequence[Any]) -> bytes:
        mask = 0
        parts: list[bytes] = []
        for i, (kind, value) in enumerate(zip(self.types, values, strict=True)):
            if value is None:
                mask |= 1 << i
            elif kind == "string":
                raw = value.encode()
                parts.append(_U32.pack(len(raw)))
                parts.append(raw)
            elif kind in ("int64", "timestamp"):
                parts.append(_Q.pack(value))
            elif kind == "float64":
                parts.append(_D.pack(value))
            elif kind == "bool":
                parts.append(b"\x01" if value else b"\x00")
            else:  # date
                parts.append(_I.pack(value))
        return mask.to_bytes(self.mask_bytes, "little") + b"".join(parts)

    def decode(self, buf: bytes, offset: int) -> tuple[list[Any], int]:
        mask = int.from_bytes(buf[offset : offset + self.mask_bytes], "little")
        offset += self.mask_bytes
        out: list[Any] = []
        for i, kind in enumerate(self.types):
            if mask >> i & 1:
                out.append(None)
            elif kind == "string":
                (length,) = _U32.unpack_from(buf, offset)
                offset += 4
                out.append(buf[offset : offset + length].decode())
                offset += length
            elif kind in ("int64", "timestamp"):
                out.append(_Q.unpack_from(buf, offset)[0])
                offset += 8
            elif kind == "float64":
                out.append(_D.unpack_from(buf, offset)[0])
                offset += 8
            elif kind == "bool":
                out.append(buf[offset] == 1)
                offset += 1
            else:
                out.append(_I.unpack_from(buf, offset)[0])
                offset += 4
        return out, offset


def storage_column(column: pa.ChunkedArray | pa.Array, kind: str) -> list[Any]:
    """A column as Python values in storage form (see RowCodec)."""
    if kind == "timestamp":
        column = pc.cast(column, pa.timestamp("us", tz="UTC")).cast(pa.int64())
    elif kind == "date":
        column = pc.cast(column, pa.date32()).cast(pa.int32())
    return column.to_pylist()


def to_python(value: Any, kind: str) -> Any:
    """A stored value as the type a caller sees."""
    if value is None:
        return None
    if kind == "timestamp":
        return from_us(value)
    if kind == "date":
        return date(1970, 1, 1) + timedelta(days=value)
    return value


class PlainCodec:
    def __init__(self, layout: ViewLayout) -> None:
        self.fields = RowCodec([kind for _, _, kind in layout.fields])
        self.pk = RowCodec(layout.pk_types)
        self._steps = _steps(self.fields.types)
        self.read_rows = _reader(self.fields, self._steps)
        """(event_us, fields) of each stored row (None for None), as `decode_fields` gives
        them: the read path."""

    def encode(
        self, event_us: int, ingested_us: int, fields: Sequence[Any], pk: Sequence[Any]
    ) -> bytes:
        head = _PLAIN_HEAD.pack(_PLAIN_MAGIC, event_us, ingested_us)
        return head + self.fields.encode(fields) + self.pk.encode(pk)

    def head(self, blob: bytes) -> tuple[int, int]:
        magic, event_us, ingested_us = _PLAIN_HEAD.unpack_from(blob)
        if magic != _PLAIN_MAGIC:
            raise _bad_value(magic)
        return event_us, ingested_us

    def decode_fields(self, blob: bytes) -> tuple[int, int, list[Any]]:
        event_us, ingested_us = self.head(blob)
        values, _ = self.fields.decode(blob, _PLAIN_HEAD.size)
        return event_us, ingested_us, values

    def read_fields(self, blob: bytes) -> tuple[int, list[Any]]:
        """(event_us, fields) of a stored row, as `decode_fields` gives them."""
        return self.read_rows([blob])[0]  # type: ignore[return-value]

    def read_many(self, blobs: Sequence[bytes]) -> tuple[list[int], list[list[Any]]] | None:
        """`read_rows` with numpy: the rows' event times, and per field its values; None
        when a row holds a null, the fields a bool (see `_steps`), or a row is not well
        formed (`read_rows` then says what is wrong)."""
        count = len(blobs)
        mask = self.fields.mask_bytes
        head = _PLAIN_HEAD.size + mask
        if not count or self._steps is None:
            return None
        lengths = np.fromiter(map(len, blobs), dtype=np.int64, count=count)
        if (lengths < head).any():
            return None
        buf = b"".join(blobs)
        octets = np.frombuffer(buf, dtype=np.uint8)
        start = lengths.cumsum() - lengths
        if not ((octets[start] == _PLAIN_MAGIC[0]) & (octets[start + 1] == _PLAIN_MAGIC[1])).all():
            return None
        if mask and octets[start[:, None] + np.arange(head - mask, head)].any():
            return None  # a null
        events = _words(octets, start + 2, "<i8").tolist()
        offset, ends = start + head, start + lengths
        columns: list[list[Any]] = []
        for kind in self.fields.types:
            width, dtype = _WIDTHS[kind]
            if (offset + width > ends).any():
                return None
            values = _words(octets, offset, dtype)
            offset = offset + width
            if kind != "string":
                columns.append(values.tolist())
                continue
            stop = offset + values
            if (stop > ends).any():
                return None
            try:
                columns.append(
                    [buf[a:b].decode() for a, b in zip(offset.tolist(), stop.tolist(), strict=True)]
                )
            except UnicodeDecodeError:
                return None
            offset = stop
        return events, columns

    def order(self, blob: bytes) -> tuple[int, int, tuple[Any, ...]]:
        """(event_us, ingested_us, primary key): the larger wins an upsert."""
        event_us, ingested_us = self.head(blob)
        _, offset = self.fields.decode(blob, _PLAIN_HEAD.size)
        pk, _ = self.pk.decode(blob, offset)
        return event_us, ingested_us, tuple(pk)


_FIXED = {"int64": "q", "timestamp": "q", "float64": "d", "date": "i"}
_WIDTHS = {
    "int64": (8, "<i8"),
    "timestamp": (8, "<i8"),
    "float64": (8, "<f8"),
    "date": (4, "<i4"),
    "string": (4, "<u4"),  # its length
}


def _words(octets: npt.NDArray[np.uint8], at: I64, dtype: str) -> npt.NDArray[Any]:
    """The value of `dtype` at each byte offset of `at` (unaligned), as an array."""
    width = np.dtype(dtype).itemsize
    return octets[at[:, None] + np.arange(width)].view(dtype).reshape(len(at))


def _steps(types: Sequence[str]) -> list[struct.Struct | None] | None:
    """How `PlainCodec.read_fields` decodes a row of `types` without nulls: a struct for each
    stretch of fixed-size values, None for each string; None when a bool makes it fall back to
    `RowCodec.decode` (which reads only the byte 1 as true)."""
    steps: list[struct.Struct | None] = []
    stretch = ""
    for kind in types:
        if kind == "bool":
            return None
        if kind == "string":
            if stretch:
                steps.append(struct.Struct("<" + stretch))
                stretch = ""
            steps.append(None)
        else:
            stretch += _FIXED[kind]
    if stretch:
        steps.append(struct.Struct("<" + stretch))
    return steps


def _reader(
    fields: RowCodec, steps: list[struct.Struct | None] | None
) -> Callable[[Sequence[bytes | None]], list[tuple[int, list[Any]] | None]]:
    """`PlainCodec.read_rows`: a row without nulls is read with one struct call for each
    stretch of fixed-size fields (`steps`), any other with `RowCodec.decode`."""
    head, length_of = _PLAIN_HEAD.unpack_from, _U32.unpack_from
    first = _PLAIN_HEAD.size + fields.mask_bytes
    no_nulls = bytes(fields.mask_bytes)
    stretches = [(None, 0) if st is None else (st.unpack_from, st.size) for st in steps or ()]
    decode = fields.decode

    def read_rows(blobs: Sequence[bytes | None]) -> list[tuple[int, list[Any]] | None]:
        rows: list[tuple[int, list[Any]] | None] = []
        for blob in blobs:
            if blob is None:
                rows.append(None)
                continue
            magic, event_us, _ = head(blob)
            if magic != _PLAIN_MAGIC:
                raise _bad_value(magic)
            if steps is None or blob[_PLAIN_HEAD.size : first] != no_nulls:
                rows.append((event_us, decode(blob, _PLAIN_HEAD.size)[0]))
                continue
            offset = first
            values: list[Any] = []
            for unpack, size in stretches:
                if unpack is None:  # a string
                    (length,) = length_of(blob, offset)
                    offset += 4
                    values.append(blob[offset : offset + length].decode())
                    offset += length
                else:
                    values.extend(unpack(blob, offset))
                    offset += size
            rows.append((event_us, values))
        return rows

    return read_rows


def _bad_value(magic: bytes) -> StoreError:
    return StoreError(
        f"the online store holds a value in an unknown format (tag {magic!r}), written by another "
        "backline version. Run `backline features materialize` to rewrite it."
    )


# -- event lists (aggregate views) --------------------------------------------------------------


@dataclass(frozen=True)
class Events:
    """One entity's stored events: times sorted ascending, ids, one array per slot."""

    times: I64
    ids: U64
    slots: tuple[npt.NDArray[Any], ...]
    nulls: tuple[bool, ...]
    since: int


def _flags_size(nslots: int) -> int:
    return (nslots + 7) // 8 * 8


def encode_groups(
    times: I64,
    ids: U64,
    slots: Sequence[npt.NDArray[Any]],
    kinds: Sequence[str],
    starts: npt.NDArray[np.int64],
    stops: npt.NDArray[np.int64],
    since: Sequence[int],
) -> list[bytes]:
    """Encode consecutive groups [starts[g], stops[g]) of sorted event arrays, one blob each;
    `since[g]` is how far back group g is complete (see the module docstring)."""
    nslots = len(slots)
    groups = len(starts)
    if groups == 0:
        return []
    pad = _flags_size(nslots)
    flags = np.zeros((groups, pad), dtype=np.uint8)
    for j, (values, kind) in enumerate(zip(slots, kinds, strict=True)):
        null = np.isnan(values) if kind == "f8" else values == 0
        if null.any():
            flags[:, j] = np.logical_or.reduceat(null, starts)
    flag_rows = [row.tobytes() for row in flags]
    time_bytes = np.ascontiguousarray(times, dtype=np.int64).tobytes()
    id_bytes = np.ascontiguousarray(ids, dtype=np.uint64).tobytes()
    slot_bytes = [np.ascontiguousarray(s).tobytes() for s in slots]
    out = []
    head = _AGG_HEAD.pack
    for g in range(groups):
        a, b = int(starts[g]) * 8, int(stops[g]) * 8
        parts = [
            head(_AGG_MAGIC, nslots, 0, (b - a) // 8, int(since[g])),
            flag_rows[g],
            time_bytes[a:b],
            id_bytes[a:b],
        ]
        parts.extend(s[a:b] for s in slot_bytes)
        out.append(b"".join(parts))
    return out


def empty_events(kinds: Sequence[str]) -> bytes:
    """The aggregate value of an entity without events (whose whole history is known)."""
    none = np.zeros(0, dtype=np.int64)
    slots = [np.zeros(0, dtype=np.float64 if kind == "f8" else np.uint64) for kind in kinds]
    at = np.zeros(1, dtype=np.int64)
    return encode_groups(none, none.astype(np.uint64), slots, kinds, at, at, [NO_SINCE])[0]


def decode_events(blob: bytes, kinds: Sequence[str]) -> Events:
    magic = blob[:2]
    if magic != _AGG_MAGIC:
        raise _bad_value(magic)
    _, nslots, _, n, since = _AGG_HEAD.unpack_from(blob)
    if nslots != len(kinds):
        raise StoreError(
            f"an online value has {nslots} columns where its view version expects {len(kinds)}. "
            "Run `backline features materialize` to rewrite it."
        )
    offset = _AGG_HEAD.size
    nulls = tuple(bool(b) for b in blob[offset : offset + nslots])
    offset += _flags_size(nslots)
    times = np.frombuffer(blob, dtype=np.int64, count=n, offset=offset)
    offset += 8 * n
    ids = np.frombuffer(blob, dtype=np.uint64, count=n, offset=offset)
    offset += 8 * n
    slots = []
    for kind in kinds:
        slots.append(
            np.frombuffer(
                blob, dtype=np.float64 if kind == "f8" else np.uint64, count=n, offset=offset
            )
        )
        offset += 8 * n
    return Events(times, ids, tuple(slots), nulls, since)


def merge_events(old: bytes, new: bytes, kinds: Sequence[str], max_window_us: int) -> bytes:
    """Union of two event lists (same event once), trimmed to the view's longest window."""
    a, b = decode_events(old, kinds), decode_events(new, kinds)
    times = np.concatenate([a.times, b.times])
    ids = np.concatenate([a.ids, b.ids])
    slots = [np.concatenate([x, y]) for x, y in zip(a.slots, b.slots, strict=True)]
    _, first = np.unique(ids, return_index=True)
    horizon = int(times.max()) - max_window_us
    keep = first[times[first] > horizon]
    # complete after both inputs' horizons, and after the trim if it dropped anything
    since = max(a.since, b.since, horizon if len(keep) < len(first) else NO_SINCE)
    order = keep[np.lexsort((ids[keep], times[keep]))]
    n = np.array([0], dtype=np.int64)
    return encode_groups(
        times[order],
        ids[order],
        [s[order] for s in slots],
        kinds,
        n,
        np.array([len(order)]),
        [since],
    )[0]


def since_of(blob: bytes) -> tuple[int, int]:
    """(since_us, latest event µs) of an event list: a window (T - w, T] is exact when
    T - w >= since_us."""
    magic = blob[:2]
    if magic != _AGG_MAGIC:
        raise _bad_value(magic)
    _, nslots, _, n, since = _AGG_HEAD.unpack_from(blob)
    offset = _AGG_HEAD.size + _flags_size(nslots)
    latest = _Q.unpack_from(blob, offset + 8 * (n - 1))[0] if n else NO_SINCE
    return since, latest


def evaluate(
    blob: bytes, t_us: int, specs: Sequence[AggregateSpec], kinds: Sequence[str]
) -> list[Any]:
    """Each aggregate over the stored events with time in (T - window, T]. The read path:
    decodes only what the aggregates use."""
    if blob[:2] != _AGG_MAGIC:
        decode_events(blob, kinds)  # raises the precise error
    _, nslots, _, n, _ = _AGG_HEAD.unpack_from(blob)
    if nslots != len(kinds):
        decode_events(blob, kinds)
    head = _AGG_HEAD.size
    offset = head + _flags_size(nslots)
    times = np.frombuffer(blob, dtype=np.int64, count=n, offset=offset)
    first_slot = offset + 16 * n
    hi = int(times.searchsorted(t_us, "right"))
    bounds: dict[int, int] = {}
    arrays: dict[int, npt.NDArray[Any]] = {}
    out: list[Any] = []
    for spec in specs:
        lo = bounds.get(spec.window_us)
        if lo is None:
            lo = bounds[spec.window_us] = int(times.searchsorted(t_us - spec.window_us, "right"))
        j = spec.slot
        if j < 0:
            out.append(hi - lo)
            continue
        column = arrays.get(j)
        if column is None:
            dtype = np.float64 if kinds[j] == "f8" else np.uint64
            column = arrays[j] = np.frombuffer(
                blob, dtype=dtype, count=n, offset=first_slot + 8 * n * j
            )
        values = column[lo:hi]
        if blob[head + j]:  # this slot holds nulls for this entity
            values = values[~np.isnan(values)] if kinds[j] == "f8" else values[values != 0]
        out.append(_aggregate(spec.function, values))
    return out


def _aggregate(function: str, values: npt.NDArray[Any]) -> Any:
    n = len(values)
    if function == "count":
        return n
    if function == "count_distinct":
        return len(set(values.tolist())) if n > 1 else n
    if n == 0:
        return None
    if function == "sum":
        return float(values.sum())
    if function == "mean":
        return float(values.sum() / n)
    if function == "min":
        return float(values.min())
    if function == "max":
        return float(values.max())
    if n < 2:
        return None
    shifted = values - values[0]  # identical values give exactly 0
    centred = shifted - shifted.sum() / n
    return float(np.sqrt((centred * centred).sum() / (n - 1)))
