"""Stable 64-bit hashes of column values, vectorised with numpy.

Stored in the online store (event ids, count_distinct values) and compared with hashes that
later runs compute, so they must never change: unlike Python's hash() or DuckDB's hash(), these
are defined here, and pinned by a test. Null hashes to 0, and nothing else does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

U64 = npt.NDArray[np.uint64]


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_SALT = {
    "string": np.uint64(0x51ED270B27A9C1F3),
    "int64": np.uint64(0x1F83D9ABFB41BD6B),
    "float64": np.uint64(0x5BE0CD19137E2179),
    "bool": np.uint64(0x6A09E667F3BCC908),
    "timestamp": np.uint64(0x3C6EF372FE94F82B),
    "date": np.uint64(0xA54FF53A5F1D36F1),
}


def splitmix64(x: U64) -> U64:
    """The splitmix64 finaliser, vectorised (uint64 arithmetic wraps, as intended)."""
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


_BYTE_TABLE = splitmix64(np.arange(256 * 256, dtype=np.uint64) ^ _SALT["string"])
"""A pseudo-random word per (position mod 256, byte): a string's hash mixes the sum of its
bytes' words. Bytes further than 256 apart get different odd multipliers."""


def _hash_string_chunk(arr: pa.Array) -> U64:
    arr = arr.cast(pa.large_string()) if arr.type != pa.large_string() else arr
    n = len(arr)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    buffers = arr.buffers()
    offsets = np.frombuffer(buffers[1], dtype=np.int64, count=n + 1, offset=arr.offset * 8)
    first, last = int(offsets[0]), int(offsets[-1])
    lengths = np.diff(offsets)
    sums = np.zeros(n, dtype=np.uint64)
    if last > first:
        data = np.frombuffer(buffers[2], dtype=np.uint8, count=last - first, offset=first)
        width = int(lengths[0])
        if width <= 256 and (lengths == width).all():  # fixed width, e.g. ids: no offsets
            grid = data.reshape(n, width)
            for p in range(width):
                sums += _BYTE_TABLE[(p << 8) : (p << 8) + 256][grid[:, p]]
        else:
            starts = offsets[:-1] - first
            pos = np.arange(last - first, dtype=np.intp) - np.repeat(starts, lengths)
            terms = _BYTE_TABLE[((pos & 255) << 8) | data]
            if int(lengths.max()) > 256:
                terms = terms * ((pos >> 8) * 2 + 1).astype(np.uint64)
            total = np.zeros(last - first + 1, dtype=np.uint64)
            np.cumsum(terms, out=total[1:])
            sums = total[offsets[1:] - first] - total[starts]
    return splitmix64(sums ^ (lengths.astype(np.uint64) * _MIX2))


def hash_values(column: pa.Array | pa.ChunkedArray, kind: str, repeated: bool = False) -> U64:
    """64-bit hash of each value of a column of source type `kind`; null hashes to 0.

    `repeated`: the column has few distinct values, so hash each distinct string once."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    n = len(column)
    if kind == "string":
        encoded = pc.dictionary_encode(column) if repeated else None
        if (
            encoded is not None and len(encoded.dictionary) * 2 < n
        ):  # repeated values: hash each distinct one once
            words = np.append(hash_values(encoded.dictionary, kind), np.uint64(0))
            nulls = len(words) - 1  # null values index the trailing 0
            codes = pc.fill_null(encoded.indices, nulls).to_numpy(zero_copy_only=False)
            hashed = words[codes]
        else:
            step = 1 << 18
            parts = [_hash_string_chunk(column.slice(i, step)) for i in range(0, n, step)]
            hashed = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)
    else:
        if kind == "float64":
            values = pc.fill_null(column.cast(pa.float64()), 0.0).to_numpy(zero_copy_only=False)
            values = values + 0.0  # -0.0 -> 0.0
            bits = values.view(np.uint64)
        elif kind == "bool":
            bits = pc.fill_null(column, False).to_numpy(zero_copy_only=False).astype(np.uint64)
        else:
            if kind == "timestamp":
                column = column.cast(pa.timestamp("us", tz="UTC"))
            elif kind == "date":
                column = column.cast(pa.date32()).cast(pa.int32())
            ints = pc.fill_null(column.cast(pa.int64()), 0).to_numpy(zero_copy_only=False)
            bits = np.ascontiguousarray(ints, dtype=np.int64).view(np.uint64)
        hashed = splitmix64(bits ^ _SALT[kind])
    hashed[hashed == 0] = 1
    if column.null_count:
        hashed[np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)] = 0
    return hashed


def hash_rows(columns: Sequence[pa.Array | pa.ChunkedArray], kinds: Sequence[str]) -> U64:
    """One 64-bit id per row from several columns (a primary key)."""
    out: U64 | None = None
    for column, kind in zip(columns, kinds, strict=True):
        part = hash_values(column, kind)
        out = part if out is None else splitmix64(out * _MIX1 + part)
    assert out is not None
    return out
