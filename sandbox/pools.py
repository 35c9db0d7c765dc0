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
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .backends.base import LABEL_ENVIRONMENT, LABEL_HOST, LABEL_INSTANCE, LABEL_ROLE, Backend, SandboxSpec
from .config import Settings
from .environments import Environment, EnvironmentRegistry
from .errors import InfraError
from .preparation import Preparer
from .store import Store, translate_errors

log = logging.getLogger(__name__)
ROLE_POOL = "pool"
READY_TIMEOUT_S = 60.0
SETTLE_LOOK_S = 1.0
SETTLE_MAX_S = 20.0  # a steady trickle of claims does not hold the refill back for longer


def pool_container_prefix(instance: str) -> str:
    return f"sbx-{instance}-pool-"


@dataclass
class Refiller:
    store: Store
    backend: Backend
    settings: Settings
    registry: EnvironmentRegistry
    preparer: Preparer
    semaphore: threading.BoundedSemaphore

    def forget_refills(self) -> int:
        """Drop this host's refill locks; return how many there were.

        Only this host's worker refills its pools, so at its start no refill of them can
        be under way: a lock left by a worker that was killed mid-refill would otherwise
        keep the pool empty until it expires (15 minutes).
        """
        keys = [self._lock_key(env_name) for env_name in self.registry.pool_targets()]
        with translate_errors():
            return int(self.store.r.delete(*keys))

    def _lock_key(self, env_name: str) -> str:
        return f"{self.store.p}:refilling:{self.settings.host_id}:{env_name}"

    def refill(self) -> dict[str, int]:
        """Top up (or trim) this host's pool of every environment; return containers created per environment."""
        s = self.settings
        listing = self.backend.list({LABEL_INSTANCE: s.instance, LABEL_HOST: s.host_id, LABEL_ROLE: ROLE_POOL})
        running = {c.name for c in listing if c.running}
        capacity = s.hosts.capacity
        # Warm containers count against the host's capacity like rollouts do: never fill past it.
        room = (
            capacity - len(self.backend.list({LABEL_INSTANCE: s.instance, LABEL_HOST: s.host_id})) if capacity else None
        )
        created: dict[str, int] = {}
        for env_name, target in self.registry.pool_targets().items():
            lock = self._lock_key(env_name)
            with translate_errors():
                if not self.store.r.set(lock, "1", nx=True, ex=900):
                    continue  # another refill of this pool is under way
            try:
                created[env_name] = self._refill_one(env_name, target, running, room)
                if room is not None:
                    room -= created[env_name]
            finally:
                with translate_errors():
                    self.store.r.delete(lock)
        return created

    def _refill_one(self, env_name: str, target: int, running: set[str], room: int | None) -> int:
        host = self.settings.host_id
        if target > 0 and self.store.pool_length(env_name, host) < target:
            self._settle(env_name)
            target = self.registry.pool_targets().get(env_name, 0)  # it may have changed meanwhile
        alive = []
        for name in self.store.pool_members(env_name, host):
            if name in running:
                alive.append(name)
            elif self.store.pool_remove(env_name, host, name):  # died while waiting: never hand it out
                self._destroy(name)
        for name in alive[target:]:  # the pool shrank
            if self.store.pool_remove(env_name, host, name):
                self._destroy(name)
        missing = target - min(len(alive), target)
        if room is not None:
            missing = min(missing, room)
        if missing <= 0:
            return 0
        env = self.registry.get(env_name)
        image = self.preparer.image_for(env)
        # Twice the creation slots: while one container's guest boots, the next is being created.
        with ThreadPoolExecutor(max_workers=2 * self.settings.provision_concurrency) as workers:
            made = sum(
                workers.map(lambda _: self._still_short(env_name) and self._create_one(env, image), range(missing))
            )
        log.info("warm pool %s on %s: +%d (target %d)", env_name, host, made, target)
        return made

    def _still_short(self, env_name: str) -> bool:
        """Whether the pool still needs a container: its target may drop while a refill of hundreds runs."""
        return self.store.pool_length(env_name, self.settings.host_id) < self.registry.pool_targets().get(env_name, 0)

    def _settle(self, env_name: str) -> None:
        """Wait while a burst is starting on this host (at most SETTLE_MAX_S).

        Creating containers takes most of a small host's CPU. While a burst's first calls
        are being claimed and answered, they need it more (the trainer waits for every
        rollout to start), and a refill computed then would create the whole pool at once.
        The burst is starting while claims empty the pool or first calls wait in this host's
        call queue; the refill begins a second after both stop.
        """
        host = self.settings.host_id
        deadline = time.monotonic() + SETTLE_MAX_S
        before = self.store.pool_length(env_name, host)
        while time.monotonic() < deadline:
            time.sleep(SETTLE_LOOK_S)
            now = self.store.pool_length(env_name, host)
            first_calls_waiting = self.store.call_queue_depths([host])[host][0]
            if now >= before and not first_calls_waiting:
                return
            before = now

    def _create_one(self, env: Environment, image: str) -> bool:
        s = self.settings
        name = f"{pool_container_prefix(s.instance)}{uuid.uuid4().hex[:16]}"
        limits = env.spec.limits
        spec = SandboxSpec(
            name=name,
            image=image,
            labels={
                LABEL_INSTANCE: s.instance,
                LABEL_HOST: s.host_id,
                LABEL_ENVIRONMENT: env.name,
                LABEL_ROLE: ROLE_POOL,
                "sandbox.user": s.sandbox_user,
                **s.extra_labels,
            },
            memory_bytes=limits.memory_bytes or s.limits.memory_bytes,
            cpus=limits.cpus or s.limits.cpus,
            pids=limits.pids or s.limits.pids,
            workdir=env.spec.workdir if env.spec.workspace or env.spec.image else s.workdir,
            user=s.sandbox_user,
        )
        try:
            with self.semaphore:  # bounds the engine's work only: the guest boots outside it
                self.backend.create(spec)
            self.backend.wait_ready(name, READY_TIMEOUT_S)
        except InfraError as exc:
            log.warning("warm container for %s failed: %s", env.name, exc.message)
            self._destroy(name)
            return False
        self.store.pool_push(env.name, s.host_id, name)
        return True

    def _destroy(self, name: str) -> None:
        with contextlib.suppress(InfraError):  # else the reconciler removes it later
            self.backend.destroy(name)
