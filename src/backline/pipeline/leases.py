"""Who runs a logical time: leases that expire when their holder dies.

    leaser = Leaser(FileLeaseStore(".backline/scheduler/lease.json"), owner="host-1:4242",
                    ttl=timedelta(minutes=3), clock=clock)
    decision = leaser.acquire("daily@2026-03-08T07:00:00+00:00")
    if decision.action in ("mine", "take over"):
        ...  # run it; decision.resume says the run was left half done by a dead scheduler
        leaser.renew_if_due(key)      # every tick; it renews once ttl/3 has passed
        leaser.release(key)

A scheduler holds a lease (owner, expires_at) for a run while it runs it, and renews it every
ttl/3, so two missed renewals still leave it valid. A lease past its expires_at belongs to a
scheduler that crashed or hung: another scheduler takes it over and the executor resumes the
run from its failed step. `decide` is the pure rule; a `LeaseStore` keeps leases and swaps
them atomically (compare and set), so two schedulers deciding 'take over' at once cannot
both win. `MemoryLeaseStore` is for tests, `FileLeaseStore` works across the processes of
one machine (a lock file, then an atomic rename); a database store belongs with the registry.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal, Protocol

from backline.core.errors import InvalidArgument, StoreError
from backline.core.files import write_text_atomic
from backline.pipeline.schedule import Clock

LeaseAction = Literal["mine", "take over", "leave alone"]


@dataclass(frozen=True)
class Lease:
    key: str
    """What is leased: a run (pipeline and logical time), or a whole scheduler."""
    owner: str
    """Who holds it, e.g. 'host:pid:start-time' (unique per scheduler process)."""
    expires_at: datetime
    renewed_at: datetime
    """When it was taken or last renewed; the next renewal is due at renewed_at + ttl/3."""

    def expired(self, now: datetime) -> bool:
        return now >= self.expires_at

    def to_dict(self) -> dict[str, str]:
        return {
            "owner": self.owner,
            "expires_at": self.expires_at.isoformat(),
            "renewed_at": self.renewed_at.isoformat(),
        }

    @classmethod
    def from_dict(cls, key: str, obj: dict[str, str]) -> Lease:
        return cls(
            key,
            obj["owner"],
            datetime.fromisoformat(obj["expires_at"]).astimezone(UTC),
            datetime.fromisoformat(obj["renewed_at"]).astimezone(UTC),
        )


@dataclass(frozen=True)
class LeaseDecision:
    action: LeaseAction
    """'mine': we hold it; 'take over': it is free or its holder is gone; 'leave alone':
    another scheduler holds a valid lease."""
    holder: Lease | None
    """The lease as it was when deciding (None: nobody ever held it)."""

    @property
    def resume(self) -> bool:
        """Taking over from a holder that died: the run may be half done, resume it."""
        return self.action == "take over" and self.holder is not None


def decide(lease: Lease | None, me: str, now: datetime) -> LeaseDecision:
    """The pure rule: mine if I hold it, take over if free or expired, else leave alone.
    An expired lease of my own is taken over too (I may have hung past it; resume)."""
    if lease is None:
        return LeaseDecision("take over", None)
    if lease.expired(now):
        return LeaseDecision("take over", lease)
    if lease.owner == me:
        return LeaseDecision("mine", lease)
    return LeaseDecision("leave alone", lease)


class LeaseStore(Protocol):
    """Keeps leases; `swap` is atomic across every scheduler that shares the store."""

    def get(self, key: str) -> Lease | None: ...

    def swap(self, key: str, expected: Lease | None, new: Lease | None) -> bool:
        """Replace the lease of `key` with `new` (None: delete it) if it is still `expected`;
        return whether it was replaced."""
        ...


@dataclass
class MemoryLeaseStore:
    """Leases in a dict (one process; tests)."""

    leases: dict[str, Lease] = field(default_factory=dict)

    def get(self, key: str) -> Lease | None:
        return self.leases.get(key)

    def swap(self, key: str, expected: Lease | None, new: Lease | None) -> bool:
        if self.leases.get(key) != expected:
            return False
        if new is None:
            self.leases.pop(key, None)
        else:
            self.leases[key] = new
        return True


class FileLeaseStore:
    """Leases in one JSON file, e.g. `.backline/scheduler/lease.json`, shared by the processes
    of one machine: each swap holds an exclusive lock on `lease.json.lock` while it reads,
    compares and replaces the file (written beside it, then renamed: never half written)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the lock, also when the process dies

    def _read(self) -> dict[str, Lease]:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            return {k: Lease.from_dict(k, v) for k, v in raw.items()}
        except FileNotFoundError:
            return {}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StoreError(
                f"lease file {self.path} cannot be read ({exc}). No scheduler can hold a lease "
                "until it is fixed: stop the schedulers and delete it."
            ) from None

    def get(self, key: str) -> Lease | None:
        with self._locked():
            return self._read().get(key)

    def swap(self, key: str, expected: Lease | None, new: Lease | None) -> bool:
        with self._locked():
            leases = self._read()
            if leases.get(key) != expected:
                return False
            if new is None:
                leases.pop(key, None)
            else:
                leases[key] = new
            text = json.dumps({k: v.to_dict() for k, v in leases.items()}, sort_keys=True)
            write_text_atomic(self.path, text)
            return True


class Leaser:
    """One scheduler's side of the leases: decide, then swap, with its own clock."""

    def __init__(self, store: LeaseStore, owner: str, ttl: timedelta, clock: Clock) -> None:
        if ttl <= timedelta(0):
            raise InvalidArgument(f"lease ttl {ttl} must be positive, e.g. 3 minutes.")
        if not owner:
            raise InvalidArgument("lease owner must not be empty: use e.g. 'host:pid'.")
        self.store, self.owner, self.ttl, self.clock = store, owner, ttl, clock

    def _fresh(self, key: str, now: datetime) -> Lease:
        return Lease(key, self.owner, now + self.ttl, now)

    def acquire(self, key: str) -> LeaseDecision:
        """Take the lease if free or expired. A lost race reads as 'leave alone'."""
        now = self.clock().astimezone(UTC)
        current = self.store.get(key)
        decision = decide(current, self.owner, now)
        if decision.action == "take over" and not self.store.swap(
            key, current, self._fresh(key, now)
        ):
            return LeaseDecision("leave alone", self.store.get(key))
        return decision

    def renew_if_due(self, key: str) -> bool:
        """Renew once ttl/3 has passed since the last renewal; False if the lease is no longer
        ours (stop working on the run: another scheduler took it over)."""
        now = self.clock().astimezone(UTC)
        current = self.store.get(key)
        if current is None or current.owner != self.owner:
            return False
        if now < current.renewed_at + self.ttl / 3:
            return True
        return self.store.swap(key, current, self._fresh(key, now))

    def release(self, key: str) -> bool:
        """Give the lease up (the run finished); False if it was not ours."""
        current = self.store.get(key)
        if current is None or current.owner != self.owner:
            return False
        return self.store.swap(key, current, None)
