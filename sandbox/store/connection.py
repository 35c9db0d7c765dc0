"""The Redis connections every part of the store shares, and the one translation of Redis
failures into the service's taxonomy."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis

from ..clock import Clock
from ..domain.errors import StoreUnavailable
from .keys import Keys

if TYPE_CHECKING:
    from .archive import RolloutArchive


@dataclass(frozen=True)
class Connection:
    # decode_responses=True: every reply is str; redis-py's stubs cannot express that.
    r: Any
    # Blocking waits (BLPOP for a worker's reply) last as long as a command may run, far
    # past any socket read timeout, so they use their own connections without one.
    blocking: Any
    keys: Keys
    clock: Clock
    retention_s: int  # how long an ended rollout's record and trajectory are kept
    # Bytes as bytes (decode_responses=False): the trainer API's file transfers (transfers.py).
    raw: Any = None
    # Ended rollouts on disk (archive.py); None: they stay in Redis for retention_s.
    archive: RolloutArchive | None = None
    archived_ttl_s: int = 300  # how long Redis keeps an archived rollout's keys

    def script(self, lua: str) -> Any:
        return self.r.register_script(lua)


def connect(url: str, max_connections: int) -> tuple[redis.Redis, redis.Redis]:
    """A client for ordinary commands (10 s timeouts) and one for blocking waits (no read timeout)."""
    common = {"decode_responses": True, "socket_connect_timeout": 5, "socket_keepalive": True, "timeout": 10}
    pool = redis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, socket_timeout=10, health_check_interval=30, **common
    )
    blocking_pool = redis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, socket_timeout=None, **common
    )
    return redis.Redis(connection_pool=pool), redis.Redis(connection_pool=blocking_pool)


def binary_twin(client: redis.Redis, max_connections: int = 64) -> redis.Redis:
    """A client to the same server that leaves replies as bytes (a decoding client would turn
    a file's bytes into text, or fail on them)."""
    kwargs = {**client.connection_pool.connection_kwargs, "decode_responses": False}
    pool = redis.BlockingConnectionPool(
        connection_class=client.connection_pool.connection_class, max_connections=max_connections, **kwargs
    )
    return redis.Redis(connection_pool=pool)


@contextmanager
def translate_errors() -> Iterator[None]:
    """Redis being down is an infra failure, never a crash or a model's fault."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise StoreUnavailable(f"state store unavailable: {exc}") from exc
