"""Warm pools: containers started ahead of demand, per environment per host.

A burst of first calls then claims containers that already answer (an atomic pop in
Redis, see Store.pool_claim), instead of waiting behind the engine's few creations per
second. A claimed container belongs to its rollout for good; it never returns to a pool.
Refills run on the host's own queue, in the background, through the same bounded
creation slots as cold starts, so the engine is never asked for more than it sustains.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..backends.base import Backend
from ..clock import SYSTEM_CLOCK, Clock
from ..config import Settings
from ..domain.container import (
    LABEL_ROLE,
    READY_TIMEOUT_S,
    ROLE_POOL,
    container_spec,
    host_labels,
    pool_container_prefix,
)
from ..domain.environment import Environment
from ..domain.errors import InfraError
from ..environments import EnvironmentRegistry
from ..store import Store
from .preparation import Prepared, Preparer

log = logging.getLogger(__name__)
SETTLE_LOOK_S = 1.0
SETTLE_MAX_S = 20.0  # a steady trickle of claims does not hold the refill back for longer


@dataclass
class Refiller:
    store: Store
    backend: Backend
    settings: Settings
    registry: EnvironmentRegistry
    preparer: Preparer
    semaphore: threading.BoundedSemaphore
    clock: Clock = SYSTEM_CLOCK
    # The host's container count when known without a listing (container_count.py); None: list.
    count_containers: Callable[[], int | None] = lambda: None

    def forget_refills(self) -> int:
        """Drop this host's refill locks; return how many there were.

        Only this host's worker refills its pools, so at its start no refill of them can
        be under way: a lock left by a worker that was killed mid-refill would otherwise
        keep the pool empty until it expires (15 minutes).
        """
        return self.store.pools.forget_refills(self.settings.host_id, self.registry.pool_targets())

    def refill(self) -> dict[str, int]:
        """Top up (or trim) this host's pool of every environment; return containers created per environment."""
        s = self.settings
        listing = self.backend.list({**host_labels(s), LABEL_ROLE: ROLE_POOL})
        running = {c.name for c in listing if c.running}
        capacity = s.hosts.capacity
        # Warm containers count against the host's capacity like rollouts do: never fill past it.
        room = capacity - self._containers_on_host() if capacity else None
        created: dict[str, int] = {}
        for env_name, target in self.registry.pool_targets().items():
            if not self.store.pools.lock_refill(s.host_id, env_name):
                continue  # another refill of this pool is under way
            try:
                created[env_name] = self._refill_one(env_name, target, running, room)
                if room is not None:
                    room -= created[env_name]
            finally:
                self.store.pools.unlock_refill(s.host_id, env_name)
        return created

    def _containers_on_host(self) -> int:
        counted = self.count_containers()
        return counted if counted is not None else len(self.backend.list(host_labels(self.settings)))

    def _refill_one(self, env_name: str, target: int, running: set[str], room: int | None) -> int:
        host = self.settings.host_id
        if target > 0 and self.store.pools.length(env_name, host) < target:
            self._settle(env_name)
            target = self.registry.pool_targets().get(env_name, 0)  # it may have changed meanwhile
        alive = []
        for name in self.store.pools.members(env_name, host):
            if name in running:
                alive.append(name)
            elif self.store.pools.remove(env_name, host, name):  # died while waiting: never hand it out
                self._destroy(name)
        for name in alive[target:]:  # the pool shrank
            if self.store.pools.remove(env_name, host, name):
                self._destroy(name)
        missing = target - min(len(alive), target)
        if room is not None:
            missing = min(missing, room)
        if missing <= 0:
            return 0
        env = self.registry.get(env_name)
        prepared = self.preparer.prepare(env)
        # Twice the creation slots: while one container's guest boots, the next is being created.
        with ThreadPoolExecutor(max_workers=2 * self.settings.provision_concurrency) as workers:
            made = sum(
                workers.map(lambda _: self._still_short(env_name) and self._create_one(env, prepared), range(missing))
            )
        log.info("warm pool %s on %s: +%d (target %d)", env_name, host, made, target)
        return made

    def _still_short(self, env_name: str) -> bool:
        """Whether the pool still needs a container: its target may drop while a refill of hundreds runs."""
        return self.store.pools.length(env_name, self.settings.host_id) < self.registry.pool_targets().get(env_name, 0)

    def _settle(self, env_name: str) -> None:
        """Wait while a burst is starting on this host (at most SETTLE_MAX_S).

        Creating containers takes most of a small host's CPU. While a burst's first calls
        are being claimed and answered, they need it more (the trainer waits for every
        rollout to start), and a refill computed then would create the whole pool at once.
        The burst is starting while claims empty the pool or first calls wait in this host's
        call queue; the refill begins a second after both stop.
        """
        host = self.settings.host_id
        deadline = self.clock.monotonic() + SETTLE_MAX_S
        before = self.store.pools.length(env_name, host)
        while self.clock.monotonic() < deadline:
            self.clock.sleep(SETTLE_LOOK_S)
            now = self.store.pools.length(env_name, host)
            first_calls_waiting = self.store.queues.depths([host])[host][0]
            if now >= before and not first_calls_waiting:
                return
            before = now

    def _create_one(self, env: Environment, prepared: Prepared) -> bool:
        s = self.settings
        name = f"{pool_container_prefix(s.instance)}{uuid.uuid4().hex[:16]}"
        spec = container_spec(s, env, prepared.image, name, role=ROLE_POOL, workdir=prepared.workdir)
        try:
            with self.semaphore:  # bounds the engine's work only: the guest boots outside it
                self.backend.create(spec)
            self.backend.wait_ready(name, READY_TIMEOUT_S)
        except InfraError as exc:
            log.warning("warm container for %s failed: %s", env.name, exc.message)
            self._destroy(name)
            return False
        self.store.pools.push(env.name, s.host_id, name)
        return True

    def _destroy(self, name: str) -> None:
        with contextlib.suppress(InfraError):  # else the reconciler removes it later
            self.backend.destroy(name)
