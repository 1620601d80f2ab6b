"""The shared online store: Redis, one string key per (view, version, entity).

    PREFIX v:VIEW:VERSION:ENTITY_KEY     the entity's value (`codec` bytes)
    PREFIX applied:VIEW:VERSION          set of offline batch ids applied to that view version
    PREFIX epoch:VIEW:VERSION            counter bumped by every write to that view version

PREFIX is `backline:PROJECT:` so projects can share a database. A read is one MGET. A
materialization step WATCHes the view version's epoch, reads what it merges with, then writes
the values, the watermark and epoch + 1 in one MULTI/EXEC: all of it lands or none of it, and
a concurrent writer makes the step retry instead of losing an update. (Watching the epoch
instead of every entity key matters: WATCH of N keys costs O(N^2) in Redis 7.0.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from backline.core.errors import StoreError
from backline.core.faults import maybe_fail
from backline.core.uris import StoreURI
from backline.features.online.store import OnlineStore, OnlineTransaction, T

_CHUNK = 10_000
_RETRIES = 20


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class RedisOnlineStore(OnlineStore):
    kind = "redis"

    def __init__(self, uri: StoreURI, prefix: str, timeout: float = 2.0) -> None:
        self.uri = uri.raw
        self.prefix = prefix
        try:
            import redis
        except ImportError:
            raise StoreError(
                f"online.uri = {uri.raw!r} needs the Redis client: pip install 'backline[redis]'."
            ) from None
        self._redis = redis
        self.client = redis.Redis.from_url(
            uri.raw, socket_connect_timeout=timeout, socket_timeout=30, health_check_interval=30
        )
        try:
            self.client.ping()
        except (redis.RedisError, OSError) as exc:
            self.client.close()
            raise StoreError(
                f"online.uri = {uri.raw!r}: Redis is not answering ({_short(exc)}). Start it, or "
                "point online.uri in backline.toml (or BACKLINE_ONLINE_URI) at a running server, "
                "e.g. redis://127.0.0.1:6379/0."
            ) from None

    def value_key(self, view: str, version: str, key: str) -> bytes:
        return f"{self.prefix}v:{view}:{version}:{key}".encode()

    def applied_key(self, view: str, version: str) -> bytes:
        return f"{self.prefix}applied:{view}:{version}".encode()

    def epoch_key(self, view: str, version: str) -> bytes:
        return f"{self.prefix}epoch:{view}:{version}".encode()

    def _failed(self, exc: BaseException) -> StoreError:
        return StoreError(
            f"online.uri = {self.uri!r}: Redis failed ({_short(exc)}). Check that it is running "
            "and reachable, or point BACKLINE_ONLINE_URI at one that is."
        )

    def read(self, groups: Sequence[tuple[str, str, Sequence[str]]]) -> list[dict[str, bytes]]:
        flat: list[bytes] = []
        for view, version, keys in groups:
            head = f"{self.prefix}v:{view}:{version}:"
            flat.extend((head + k).encode() for k in keys)
        out: list[dict[str, bytes]] = [{} for _ in groups]
        if not flat:
            return out
        try:
            values: list[Any] = self.client.mget(flat)
        except self._redis.RedisError as exc:
            raise self._failed(exc) from None
        i = 0
        for g, (_, _, keys) in enumerate(groups):
            found = out[g]
            for key in keys:
                value = values[i]
                i += 1
                if value is not None:
                    found[key] = value
        return out

    def read_aligned(
        self, groups: Sequence[tuple[str, str, Sequence[str]]]
    ) -> list[list[bytes | None]]:
        flat: list[bytes] = []
        for view, version, keys in groups:
            head = f"{self.prefix}v:{view}:{version}:"
            flat.extend((head + k).encode() for k in keys)
        if not flat:
            return [[] for _ in groups]
        try:
            values: list[Any] = self.client.mget(flat)
        except self._redis.RedisError as exc:
            raise self._failed(exc) from None
        out: list[list[bytes | None]] = []
        i = 0
        for _, _, keys in groups:
            out.append(values[i : i + len(keys)])
            i += len(keys)
        return out

    def transact(self, view: str, version: str, work: Callable[[OnlineTransaction], T]) -> T:
        redis = self._redis
        for _ in range(_RETRIES):
            try:
                with self.client.pipeline(transaction=True) as pipe:
                    txn = _Transaction(self, pipe, view, version)
                    pipe.watch(txn.epoch_key)
                    result = work(txn)
                    pipe.multi()
                    pipe.incr(txn.epoch_key)
                    if txn.cleared:
                        pipe.delete(txn.applied_key)
                    for start in range(0, len(txn.writes), _CHUNK):
                        pipe.mset(dict(txn.writes[start : start + _CHUNK]))
                    if txn.marked:
                        pipe.sadd(txn.applied_key, *txn.marked)
                    maybe_fail("online_before_commit")  # crash tests SIGKILL here
                    pipe.execute()
                    return result
            except redis.WatchError:
                continue
            except redis.RedisError as exc:
                raise self._failed(exc) from None
        raise StoreError(
            f"online store {self.uri}: view {view!r} kept changing under another writer "
            f"({_RETRIES} attempts). Run one materialization at a time, then retry."
        )

    def applied_batches(self, view: str, version: str) -> set[str]:
        try:
            members = self.client.smembers(self.applied_key(view, version))
        except self._redis.RedisError as exc:
            raise self._failed(exc) from None
        return {m.decode() for m in members}  # type: ignore[union-attr]

    def entity_keys(self, view: str, version: str) -> list[str]:
        head = f"{self.prefix}v:{view}:{version}:"
        pattern = _glob_escape(head) + "*"
        keys = [k.decode()[len(head) :] for k in self.client.scan_iter(match=pattern, count=1000)]
        return sorted(keys)

    def clear(self) -> None:
        pattern = _glob_escape(self.prefix) + "*"
        batch: list[Any] = []
        for key in self.client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                self.client.delete(*batch)
                batch.clear()
        if batch:
            self.client.delete(*batch)

    def close(self) -> None:
        self.client.close()


class _Transaction(OnlineTransaction):
    def __init__(self, store: RedisOnlineStore, pipe: Any, view: str, version: str) -> None:
        self.store, self.pipe, self.view, self.version = store, pipe, view, version
        self.applied_key = store.applied_key(view, version)
        self.epoch_key = store.epoch_key(view, version)
        self.writes: list[tuple[bytes, bytes]] = []
        self.marked: list[str] = []
        self.cleared = False

    def get(self, keys: Sequence[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for start in range(0, len(keys), _CHUNK):
            chunk = list(keys[start : start + _CHUNK])
            names = [self.store.value_key(self.view, self.version, k) for k in chunk]
            for key, value in zip(chunk, self.pipe.mget(names), strict=True):
                if value is not None:
                    out[key] = value
        return out

    def put(self, items: Sequence[tuple[str, bytes]]) -> None:
        key = self.store.value_key
        self.writes.extend((key(self.view, self.version, k), v) for k, v in items)

    def applied(self) -> set[str]:
        return {m.decode() for m in self.pipe.smembers(self.applied_key)}

    def mark_applied(self, batch_ids: Sequence[str]) -> None:
        self.marked.extend(batch_ids)

    def clear_applied(self) -> None:
        self.cleared = True
        self.marked.clear()


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
