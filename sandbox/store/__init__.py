"""Everything the service knows lives in Redis, behind this package: no state lives only in a
process, so any API replica or worker can die and another carries on.

One store per aggregate, over one shared connection; `keys.py` is the key map (every key
is built there) and `scripts.py` holds every Lua script:

  store.rollouts      the rollout state machine (rollouts.py)
  store.calls         idempotency, the tool budget, the trajectory (calls.py)
  store.queues        call queues per host and the workers' replies (queues.py)
  store.pools         warm pools and their refills (pools.py)
  store.hosts         host registrations (hosts.py)
  store.environments  environment definitions and preparation state (environments.py)
  store.grades        answers of gradings that ran tests, and their run-once claims (grades.py)
  store.transfers     the trainer API's file bytes on their way between API and worker (transfers.py)
  store.e2b           E2B-compatible sandboxes: what E2B's API says beyond the rollout (e2b.py)
  store.archive       ended rollouts on disk, and read back when Redis no longer has them (archive.py)

Every method raises StoreUnavailable when Redis does not answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis

from ..clock import SYSTEM_CLOCK, Clock
from .archive import ArchiveStore, RolloutArchive
from .calls import CallStore
from .connection import Connection, binary_twin, connect, translate_errors
from .e2b import E2BStore
from .environments import EnvironmentStore
from .grades import GradeStore
from .hosts import HostStore
from .keys import Keys
from .pools import PoolStore
from .queues import QueueStore
from .rollouts import RolloutStore
from .transfers import TransferStore

__all__ = ["Store", "translate_errors"]


class Store:
    def __init__(
        self,
        client: redis.Redis,
        prefix: str = "sbx",
        retention_s: float = 7 * 86400,
        blocking: redis.Redis | None = None,
        clock: Clock = SYSTEM_CLOCK,
        archive_dir: Path | None = None,
        archived_ttl_s: float = 300,
    ) -> None:
        raw = binary_twin(client)
        archive = RolloutArchive(archive_dir) if archive_dir is not None else None
        self.connection = Connection(
            client, blocking or client, Keys(prefix), clock, int(retention_s), raw, archive, int(archived_ttl_s)
        )
        self.rollouts = RolloutStore(self.connection)
        self.calls = CallStore(self.connection)
        self.queues = QueueStore(self.connection)
        self.pools = PoolStore(self.connection)
        self.hosts = HostStore(self.connection)
        self.environments = EnvironmentStore(self.connection)
        self.grades = GradeStore(self.connection)
        self.transfers = TransferStore(self.connection)
        self.e2b = E2BStore(self.connection)
        self.archive = ArchiveStore(self.connection)

    @classmethod
    def from_url(
        cls,
        url: str,
        prefix: str,
        retention_s: float,
        max_connections: int = 1024,
        clock: Clock = SYSTEM_CLOCK,
        archive_dir: Path | None = None,
        archived_ttl_s: float = 300,
    ) -> Store:
        client, blocking = connect(url, max_connections)
        return cls(client, prefix, retention_s, blocking, clock, archive_dir, archived_ttl_s)

    @property
    def keys(self) -> Keys:
        return self.connection.keys

    @property
    def redis(self) -> Any:
        """The raw client, for tests and tools that inspect keys."""
        return self.connection.r

    def ping(self) -> None:
        with translate_errors():
            self.connection.r.ping()
