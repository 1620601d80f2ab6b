"""The online store interface that the SQLite and Redis stores implement.

Keys are (view, version, entity key). Values are the bytes of `codec`. Per view version
the store also keeps the set of offline batches already applied to it (the watermark of
incremental materialization), written in the same transaction as the values.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


class OnlineTransaction(ABC):
    """Reads and writes of one view version that commit (or vanish) together."""

    @abstractmethod
    def get(self, keys: Sequence[str]) -> dict[str, bytes]:
        """Stored values of those entity keys (absent keys are left out)."""

    @abstractmethod
    def put(self, items: Sequence[tuple[str, bytes]]) -> None: ...

    @abstractmethod
    def applied(self) -> set[str]:
        """Batches already applied to this view version."""

    @abstractmethod
    def mark_applied(self, batch_ids: Sequence[str]) -> None: ...

    @abstractmethod
    def clear_applied(self) -> None:
        """Forget the watermark: the next incremental run re-applies every batch."""


class OnlineStore(ABC):
    """Where served feature values live."""

    uri: str
    kind: str

    @abstractmethod
    def read(self, groups: Sequence[tuple[str, str, Sequence[str]]]) -> list[dict[str, bytes]]:
        """Values for several (view, version, entity keys) groups, in ONE round trip."""

    def read_aligned(
        self, groups: Sequence[tuple[str, str, Sequence[str]]]
    ) -> list[list[bytes | None]]:
        """`read`, as a list per group: the value of each of its keys in the group's order
        (None where the store holds none). Also ONE round trip; stores may do it faster."""
        return [
            [found.get(key) for key in keys]
            for found, (_, _, keys) in zip(self.read(groups), groups, strict=True)
        ]

    @abstractmethod
    def transact(self, view: str, version: str, work: Callable[[OnlineTransaction], T]) -> T:
        """Run `work` and commit everything it wrote, with the watermark, atomically."""

    @abstractmethod
    def applied_batches(self, view: str, version: str) -> set[str]: ...

    @abstractmethod
    def entity_keys(self, view: str, version: str) -> list[str]:
        """Every entity stored for a view version (for inspection and tests; not fast)."""

    @abstractmethod
    def clear(self) -> None:
        """Delete everything this store holds for the project."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> OnlineStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
