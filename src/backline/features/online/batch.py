"""Aggregates of many entities' event lists at once: the batch form of `codec.evaluate`.

A read of many entities evaluates all its aggregate views together: the stored values of
every view are joined into one buffer, the events of every (view, entity) value gathered into
one array of times (value after value: a *run* each), every window an aggregate reads (a
view's slot over (T - w, T]) gathered into one array of values, and each kind of aggregate
computed once over all the runs of all the windows that need it: a fixed number of numpy
calls per read, instead of several per entity and aggregate. Where each window starts and
ends in every run comes from one `searchsorted`.

    events = Events.gather([(blobs, kinds), ...])    # per view; None: a value is malformed
    program = Program([specs, ...], [kinds, ...])    # once per set of views
    values = events.evaluate(t_us, program)          # per view, per spec, a value per blob

The results are bit-identical to `codec.evaluate`, which uses numpy's own reductions. Counts,
distinct counts, min and max do not depend on the order of the values (but for the sign of a
zero: see `_extreme`). Sums, and so mean and stddev, do (numpy sums pairwise): `_Sums` has
numpy itself sum every run of a window, with one `reduceat` call for all (see there).
tests/features/test_online_batch.py compares both paths bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate, chain
from typing import Any

import numpy as np
import numpy.typing as npt

from backline.features.online.codec import AggregateSpec

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]

_HEAD = ord("A") | 2 << 8
"""The first 4 bytes of an aggregate value, as a little-endian uint32, less nslots << 16."""


class Program:
    """What `Events.evaluate` computes for groups of aggregates (`specs[g]` over slots of
    `kinds[g]`), worked out once: a read plan keeps it for every read of the same views.

    A *window* is (group, slot, length w): the slot's values in (T - w, T] of each of the
    group's runs. The windows are ordered so that those each kind of aggregate needs lie next
    to each other (see `_rank`): the numeric ones (sum, mean, min, max, stddev), then those
    counting distinct floats, hashes, then those only counted."""

    def __init__(
        self, specs: Sequence[Sequence[AggregateSpec]], kinds: Sequence[Sequence[str]]
    ) -> None:
        self.bounds = list(
            dict.fromkeys(
                (g, w) for g, group in enumerate(specs) for w in (0, *(s.window_us for s in group))
            )
        )
        """(group, w): where each run's window of length w starts (w = 0: where all end)."""
        needs: dict[tuple[int, int, int], set[str]] = {}
        for g, group in enumerate(specs):
            for spec in group:
                if spec.slot >= 0:
                    needs.setdefault((g, spec.slot, spec.window_us), set()).add(spec.function)
        ranked = sorted(
            (_rank(needs[w], kinds[w[0]][w[1]] == "f8"), "stddev" not in needs[w], i, w)
            for i, w in enumerate(needs)
        )
        self.windows = [w for _, _, _, w in ranked]
        self.f8 = np.array([kinds[g][j] == "f8" for g, j, _ in self.windows], dtype=bool)
        self.slots = np.array([j for _, j, _ in self.windows], dtype=np.int64)
        self.needs = [needs[w] for w in self.windows]
        ranks = [r for r, _, _, _ in ranked]
        self.numeric = ranks.count(_NUMERIC_ONLY) + ranks.count(_NUMERIC_DISTINCT)
        self.functions = set().union(*self.needs[: self.numeric])
        """Those of the numeric windows."""
        deviating = [k for k in range(self.numeric) if "stddev" in self.needs[k]]
        self.deviating = deviating[-1] + 1 if deviating else 0
        """The numeric windows up to the last with a standard deviation (they come first)."""
        self.extremes: dict[str, tuple[int, int]] = {}
        """Per min and max: the first numeric window that needs it, and the last + 1."""
        for name in ("min", "max"):
            wanting = [k for k in range(self.numeric) if name in self.needs[k]]
            if wanting:
                self.extremes[name] = (wanting[0], wanting[-1] + 1)
        self.distinct = [
            (ranks.count(_NUMERIC_ONLY), self.numeric + ranks.count(_DISTINCT_F8), True),
            (
                len(ranks) - ranks.count(_COUNT) - ranks.count(_DISTINCT_H8),
                len(ranks) - ranks.count(_COUNT),
                False,
            ),
        ]
        """(first, last + 1, of floats): the windows of distinct counts, floats and hashes."""
        self.counted = list(
            dict.fromkeys(
                (g, s.window_us) for g, group in enumerate(specs) for s in group if s.slot < 0
            )
        )
        """(group, w) of the counts of rows."""
        self.outputs = [
            [
                (g, s.window_us) if s.slot < 0 else (g, s.slot, s.window_us, s.function)
                for s in group
            ]
            for g, group in enumerate(specs)
        ]
        """Per group, per spec, where its values are: a count of rows or a window's function."""
        self._wanting: dict[tuple[str, int, int], list[int]] = {}

    def wanting(self, function: str, first: int, last: int) -> list[int]:
        """The windows first..last - 1 that need `function`."""
        found = self._wanting.get((function, first, last))
        if found is None:
            found = [k for k in range(first, last) if function in self.needs[k]]
            self._wanting[(function, first, last)] = found
        return found


class Events:
    """The event lists of many aggregate values, in groups (one per view), gathered: run r is
    [off[r], off[r + 1]) of `times`; the group g's runs are ranges[g]."""

    def __init__(
        self,
        buf: bytes,
        start: I64,
        base: I64 | int,
        n: I64,
        ranges: list[tuple[int, int]],
        kinds: list[tuple[str, ...]],
    ) -> None:
        self._buf = buf
        self._f8 = [[kind == "f8" for kind in group] for group in kinds]
        self._start = start
        self.n = n
        self.ranges = ranges
        words = np.frombuffer(buf, dtype=np.int64)
        self.since = words[start + 1]
        self.count = len(n)
        ends = n.cumsum()
        self.total = int(ends[-1])
        self.off = np.concatenate(([0], ends))
        self._shift = start + base - self.off[:-1]
        """Word of the buffer holding the time of event e (of run r): shift[r] + e."""
        self.times = words[self._shift.repeat(n) + np.arange(self.total, dtype=np.int64)]
        # whether a value flags a slot as holding a null: its first word of flags is not 0
        # (values of 9 slots or more are looked at slot by slot; of none hold no flags)
        slots = {len(group) for group in kinds}
        if max(slots) > 8:
            self._flagged = True
        elif min(slots) > 0:
            self._flagged = bool(np.count_nonzero(words[start + 2]))
        else:
            flags = np.array([len(group) > 0 for group in kinds]).repeat([b - a for a, b in ranges])
            self._flagged = bool(np.count_nonzero(words[start[flags] + 2]))

    @classmethod
    def gather(cls, groups: Sequence[tuple[Sequence[bytes], Sequence[str]]]) -> Events | None:
        """The event lists of each group's blobs (aggregate values of one view version with
        the slots `kinds`), or None when a blob is not a well-formed value of its group's
        slots, or a group has none."""
        sizes = [len(blobs) for blobs, _ in groups]
        if not groups or not all(sizes):
            return None
        blobs = list(chain.from_iterable(b for b, _ in groups))
        lengths = np.fromiter(map(len, blobs), dtype=np.int64, count=len(blobs))
        if np.count_nonzero((lengths & 7) | (lengths < 16)):
            return None
        buf = b"".join(blobs)
        words = lengths >> 3
        start = words.cumsum() - words
        head = np.frombuffer(buf, dtype=np.int64)[start]
        counts = [len(kinds) for _, kinds in groups]
        slots: I64 | int = counts[0]
        if len(set(counts)) > 1:
            slots = np.array(counts, dtype=np.int64).repeat(sizes)
        # the first 4 bytes: b"A", version 2, the number of slots, 0; the next 4: the events
        n = (head >> 32) & 0xFFFFFFFF
        base = 2 + ((slots + 7) >> 3)
        if np.count_nonzero(
            ((head & 0xFFFFFFFF) != (slots << 16 | _HEAD)) | (words < base + n * (2 + slots))
        ):
            return None
        ranges: list[tuple[int, int]] = []
        for size in sizes:
            first = ranges[-1][1] if ranges else 0
            ranges.append((first, first + size))
        return cls(buf, start, base, n, ranges, [tuple(kinds) for _, kinds in groups])

    def evaluate(self, t_us: int, program: Program) -> list[list[list[Any]]]:
        """Per group, per aggregate of the program's `specs[g]`, its value for each of the
        group's values at read time T: what `codec.evaluate` gives for each blob, as Python
        ints, floats and None. Each kind of aggregate is computed once for all the runs of all
        the windows that need it."""
        at = self._positions(t_us, program.bounds)
        found: dict[Any, list[Any]] = self._windows(at, program) if program.windows else {}
        if program.counted:
            flat = (
                np.concatenate([at[(g, 0)] for g, _ in program.counted])
                - np.concatenate([at[c] for c in program.counted])
            ).tolist()
            first = 0
            for g, w in program.counted:
                size = self.ranges[g][1] - self.ranges[g][0]
                found[(g, w)] = flat[first : first + size]
                first += size
        return [[found[where] for where in group] for group in program.outputs]

    def _positions(self, t_us: int, bounds: list[tuple[int, int]]) -> dict[tuple[int, int], I64]:
        """Per (group, w) of `bounds`, per run of the group, the global index of its first
        event with time > T - w: `searchsorted(T - w, "right")` on the run's sorted times plus
        the run's offset. All found in one search."""
        off, ranges = self.off, self.ranges
        at: dict[tuple[int, int], I64] = {}
        if self.total == 0:
            return {(g, w): off[ranges[g][0] : ranges[g][1]] for g, w in bounds}
        times = self.times
        low, high = int(times.min()), int(times.max())
        span = high - low + 2
        if self.count * span >= 2**62:  # too far apart to key runs by r * span + time
            for g, w in bounds:
                seen = np.concatenate(([0], (times <= t_us - w).cumsum()))
                first, last = ranges[g]
                starts, ends = off[first:last], off[first + 1 : last + 1]
                at[(g, w)] = starts + (seen[ends] - seen[starts])
            return at
        # run r's times as r * span + (time - low): one sorted array over all runs, in which
        # r * span + (bound - low) falls after run r's times <= bound and before its later
        # ones (after every earlier run's, before every later run's)
        step = np.arange(0, self.count * span, span, dtype=np.int64)
        queries: list[I64] = []
        searched: list[tuple[int, int]] = []
        for g, w in bounds:
            first, last = ranges[g]
            bound = t_us - w
            if bound >= high:  # after every event
                at[(g, w)] = off[first + 1 : last + 1]
            elif bound < low:  # before every event
                at[(g, w)] = off[first:last]
            else:
                queries.append(step[first:last] + (bound - low))
                searched.append((g, w))
        if searched:
            keys = times + (step - low).repeat(self.n)
            found = keys.searchsorted(np.concatenate(queries), "right")
            first = 0
            for key, query in zip(searched, queries, strict=True):
                at[key] = found[first : first + len(query)]
                first += len(query)
        return at

    def _windows(self, at: dict[tuple[int, int], I64], program: Program) -> dict[Any, list[Any]]:
        """Per (group, slot, w, function) of the program: the function over the slot's
        non-null values in (T - w, T] of each of the group's runs (nulls dropped only in runs
        flagged as holding one, as `codec.evaluate` does)."""
        order = program.windows
        sizes = [self.ranges[g][1] - self.ranges[g][0] for g, _, _ in order]
        run_at = [0, *accumulate(sizes)]  # window k's runs: run_at[k]..run_at[k + 1] - 1
        # per run of every window: the run it reads, the window's slot and bounds
        counts_of = np.array(sizes, dtype=np.int64)
        shift = np.array([self.ranges[g][0] for g, _, _ in order], dtype=np.int64) - run_at[:-1]
        run = shift.repeat(counts_of) + np.arange(run_at[-1], dtype=np.int64)
        slot = program.slots.repeat(counts_of)
        lo = np.concatenate([at[(g, w)] for g, _, w in order])
        counts = np.concatenate([at[(g, 0)] for g, _, _ in order]) - lo
        ends = counts.cumsum()
        starts = ends - counts
        first = self._shift[run] + (2 + slot) * self.n[run] + lo - starts  # word of value 0
        index = first.repeat(counts) + np.arange(int(ends[-1]), dtype=np.int64)
        raw = np.frombuffer(self._buf, dtype=np.uint64)[index]
        if self._flagged:
            octets = np.frombuffer(self._buf, dtype=np.uint8)
            flagged = octets[(self._start[run] << 3) + 16 + slot] != 0
            f8 = program.f8.repeat(sizes).repeat(counts)
            null = np.where(f8, np.isnan(raw.view(np.float64)), raw == 0)
            null &= flagged.repeat(counts)
            if np.count_nonzero(null):
                keep = ~null
                raw = raw[keep]
                kept = np.concatenate(([0], keep.cumsum()))
                counts = kept[ends] - kept[starts]
                ends = counts.cumsum()
                starts = ends - counts
        values = raw.view(np.float64)
        value_at = np.concatenate(([0], ends))[run_at].tolist()  # window k's values start
        out: dict[Any, list[Any]] = {}

        def spread(rows: Any, null: Any, first: int, last: int, name: str) -> None:
            """Hand `rows`, function `name` over the runs of windows first..last - 1, to those
            that need it, as lists (an array is converted once, None where `null`)."""
            wanting = program.wanting(name, first, last)
            if not wanting:
                return
            origin = run_at[first]
            if null is not None:  # convert the stretch of runs of the windows that need it
                a, b = run_at[wanting[0]] - origin, run_at[wanting[-1] + 1] - origin
                rows, origin = _nulls(rows[a:b], null[a:b]), origin + a
            for k in wanting:
                out[(*order[k], name)] = rows[run_at[k] - origin : run_at[k + 1] - origin]

        numeric = program.numeric
        if numeric:
            runs, size = run_at[numeric], value_at[numeric]
            deviating = run_at[program.deviating]
            results = _numeric(
                program.functions, values[:size], starts[:runs], counts[:runs], deviating
            )
            for name, (rows, null) in results.items():
                spread(rows, null, 0, numeric, name)
            for name, (first, last) in program.extremes.items():
                a, b, base = run_at[first], run_at[last], value_at[first]
                window = values[base : value_at[last]]
                extreme = _extreme(name, window, starts[a:b] - base, counts[a:b])
                spread(extreme, counts[a:b] == 0, first, last, name)
        for first, last, floats in program.distinct:
            if last > first:
                data = values if floats else raw
                distinct = _distinct(
                    data[value_at[first] : value_at[last]], counts[run_at[first] : run_at[last]]
                ).tolist()
                spread(distinct, None, first, last, "count_distinct")
        spread(counts.tolist(), None, 0, len(order), "count")
        return out


_NUMERIC_ONLY, _NUMERIC_DISTINCT, _DISTINCT_F8, _DISTINCT_H8, _COUNT = range(5)
_NUMERIC = frozenset(("sum", "mean", "min", "max", "stddev"))


def _rank(functions: set[str], f8: bool) -> int:
    """Where a window goes in `Events._windows`' order, so that the windows of the numeric
    aggregates, of distinct counts of floats and of distinct counts of hashes each lie next
    to each other: numeric only, numeric and distinct, distinct of floats, of hashes, counts."""
    distinct = "count_distinct" in functions
    if functions & _NUMERIC:
        return _NUMERIC_DISTINCT if distinct else _NUMERIC_ONLY
    if distinct:
        return _DISTINCT_F8 if f8 else _DISTINCT_H8
    return _COUNT


def _numeric(
    functions: set[str], values: F64, starts: I64, counts: I64, deviating: int
) -> dict[str, tuple[F64, npt.NDArray[np.bool_]]]:
    """Sums, means and standard deviations (those of `functions`) over every run (deviations
    over the first `deviating` runs), as `codec._aggregate` computes them for one run, and
    where it gives None."""
    out: dict[str, tuple[F64, npt.NDArray[np.bool_]]] = {}
    if not functions & {"sum", "mean", "stddev"}:
        return out
    empty = counts == 0
    with np.errstate(all="ignore"):
        sums = _Sums(starts, counts)
        if functions & {"sum", "mean"}:
            total = sums(values)
            out["sum"] = (total, empty)
            out["mean"] = (total / counts, empty)
        if "stddev" in functions:
            size = len(values) if deviating == len(counts) else int(starts[deviating])
            values, starts, counts = values[:size], starts[:deviating], counts[:deviating]
            # shift by the run's first value, centre, sum the squares (`codec._aggregate`)
            some = counts > 0
            shifted = values - values[starts[some]].repeat(counts[some])
            centred = shifted - (sums(shifted, deviating) / counts).repeat(counts)
            variance = sums(centred * centred, deviating) / (counts - 1)
            out["stddev"] = (np.sqrt(variance), counts < 2)
    return out


def _nulls(result: F64, null: npt.NDArray[np.bool_]) -> list[Any]:
    """`result` as a list of floats, None where `null`."""
    count = np.count_nonzero(null)
    if count > 16:  # (one pass is quicker for many)
        boxed = result.astype(object)
        boxed[null] = None
        return boxed.tolist()
    out: list[Any] = result.tolist()
    if count:
        for i in null.nonzero()[0].tolist():
            out[i] = None
    return out


def _distinct(values: npt.NDArray[Any], counts: I64) -> I64:
    """Distinct values per run, as `len(set(values.tolist()))`: equal values once (0.0 and
    -0.0 are equal), every NaN on its own (NaN equals nothing)."""
    runs = len(counts)
    if len(values) == 0:
        return np.zeros(runs, dtype=np.int64)
    run = np.arange(runs, dtype=np.int64).repeat(counts)
    order = np.lexsort((values, run))
    ordered, run = values[order], run[order]
    new = np.ones(len(order), dtype=bool)
    new[1:] = (run[1:] != run[:-1]) | (ordered[1:] != ordered[:-1])
    return np.bincount(run[new], minlength=runs)


def _extreme(function: str, values: F64, starts: I64, counts: I64) -> F64:
    """Min or max per run (NaN for an empty run). The value is unique but for the sign of a
    zero: a run holding -0.0 is left to numpy."""
    result = np.full(len(counts), np.nan)
    some = counts > 0
    if not np.count_nonzero(some):
        return result
    ufunc = np.minimum if function == "min" else np.maximum
    result[some] = ufunc.reduceat(values, starts[some])
    zero = values == 0
    if np.count_nonzero(zero) and np.count_nonzero(negative_zero := zero & np.signbit(values)):
        runs = np.unique(np.arange(len(counts)).repeat(counts)[negative_zero])
        for r in runs.tolist():
            run = values[starts[r] : starts[r] + counts[r]]
            result[r] = run.min() if function == "min" else run.max()
    return result


class _Sums:
    """numpy's own `values[s : s + c].sum()` of runs [starts[r], starts[r] + counts[r]) that
    lie one after another from 0, prepared once for several arrays alike.

    `np.add.reduceat` reduces each segment as `reduce` does, save that it starts from the
    segment's first value instead of 0.0: it adds numpy's pairwise sum of the other values to
    it. With a 0.0 put before each run, each segment is 0.0 + pairwise sum of the run: what
    `array.sum()` computes, bit for bit (and 0.0 for an empty run)."""

    def __init__(self, starts: I64, counts: I64) -> None:
        runs = len(counts)
        self.into = np.arange(int(counts.sum()), dtype=np.int64) + np.arange(
            1, runs + 1, dtype=np.int64
        ).repeat(counts)
        """Where each value goes among the values and the zeros."""
        self.at = starts + np.arange(runs, dtype=np.int64)
        """Where each run's zero is."""

    def __call__(self, values: F64, runs: int | None = None) -> F64:
        """The sums of the runs; of the first `runs` only, from `values` holding just theirs."""
        at = self.at if runs is None else self.at[:runs]
        spaced = np.zeros(len(values) + len(at))
        spaced[self.into[: len(values)]] = values
        return np.add.reduceat(spaced, at)
