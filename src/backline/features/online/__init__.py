"""The online store: feature values served at low latency, and how they are read.

    from backline.features.online import get_online_features, open_online_store

Modules, from the bottom up (each imports only the ones above it in this list):
    codec         the bytes of one stored value, and aggregates evaluated from them
    batch         the aggregates of many stored values evaluated at once (bit-identical)
    state         offline rows grouped per entity and encoded per view (for materialize)
    store         the `OnlineStore` / `OnlineTransaction` interface
    sqlite_store  the embedded store: one SQLite file
    redis_store   the shared store: Redis
    factory       `open_online_store(cfg)`: the store online.uri names
    read          `get_online_features`, `ReadPlan`, `OnlineFeatures`

Nothing here keeps module-level state: whoever opens a store closes it (`backline.open`'s
Project holds one per project).
"""

from backline.features.online.factory import open_online_store, redis_prefix
from backline.features.online.read import (
    OnlineFeatures,
    OnlineRangeError,
    ReadPlan,
    get_online_features,
)
from backline.features.online.store import OnlineStore, OnlineTransaction

__all__ = [
    "OnlineFeatures",
    "OnlineRangeError",
    "OnlineStore",
    "OnlineTransaction",
    "ReadPlan",
    "get_online_features",
    "open_online_store",
    "redis_prefix",
]
