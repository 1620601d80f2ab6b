"""`open_online_store(cfg)`: the SQLite or Redis store that `online.uri` names.

The stores import the interface (`store`), and this module imports the stores: the factory
sits above both, so nothing imports in a circle.
"""

from __future__ import annotations

from backline.core.config import Config
from backline.features.online.redis_store import RedisOnlineStore
from backline.features.online.sqlite_store import SQLiteOnlineStore
from backline.features.online.store import OnlineStore


def redis_prefix(cfg: Config) -> str:
    """Keys of a project in a shared Redis start with this."""
    return f"backline:{cfg.project.name}:"


def open_online_store(cfg: Config) -> OnlineStore:
    """The store named by online.uri; Redis is pinged first, so an unreachable server is a
    StoreError before anything is written. The caller owns it and closes it."""
    uri = cfg.store_uri("online")
    if uri.scheme == "redis":
        return RedisOnlineStore(uri, redis_prefix(cfg))
    assert uri.path is not None
    return SQLiteOnlineStore(uri.path, uri.raw)
