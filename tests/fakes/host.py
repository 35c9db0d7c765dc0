"""One sandbox host's worker side, in-process: the real Provisioner, Executor, Reconciler and
friends over the in-memory backend, fed by the in-memory dispatcher.

`World` is what a unit test of the orchestration needs: a real Store on the session's private
Redis (the Lua scripts are the thing under test as much as the Python), the real services of
both processes, and fakes only where Docker and Celery would be.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis

from sandbox.api.fork_service import ForkService
from sandbox.api.rollout_service import RolloutService
from sandbox.api.tool_service import ToolService
from sandbox.clock import SYSTEM_CLOCK, Clock
from sandbox.config import Settings
from sandbox.domain.calls import ToolCall
from sandbox.domain.hosts import FailureWindow
from sandbox.environments import EnvironmentRegistry
from sandbox.store import Store
from sandbox.worker.call_queue import run_call
from sandbox.worker.executor import Executor
from sandbox.worker.forker import Forker
from sandbox.worker.maintenance import HostWatch, Reaper, Reconciler
from sandbox.worker.preparation import Preparer
from sandbox.worker.provisioner import Provisioner
from sandbox.worker.refiller import Refiller
from tests.fakes.backend import InMemoryBackend
from tests.fakes.dispatcher import InMemoryDispatcher


def unit_settings(**overrides: Any) -> Settings:
    """Settings of a unit test: host h1, short deadlines, no files outside the test's reach."""
    values: dict[str, Any] = {
        "instance": "unit",
        "host_id": "h1",
        "api_tokens": "unit-token",
        "run_dir": "/tmp/sbx-unit-run",
        "timeouts": {"provision_s": 10.0, "queue_s": 5.0, "reply_slack_s": 2.0},
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class FakeHost:
    """The worker of one host, over an in-memory engine."""

    settings: Settings
    store: Store
    backend: InMemoryBackend
    registry: EnvironmentRegistry
    dispatcher: InMemoryDispatcher
    clock: Clock = SYSTEM_CLOCK
    failures: FailureWindow = field(default_factory=lambda: FailureWindow(60, 5, 0.5, 30))

    def __post_init__(self) -> None:
        s = self.settings
        self.slots = threading.BoundedSemaphore(s.provision_concurrency)
        self.preparer = Preparer(self.registry, self.backend, s)
        self.provisioner = Provisioner(
            self.store, self.backend, s, self.slots, self.registry, self.preparer, self.failures, clock=self.clock
        )
        self.executor = Executor(self.store, self.backend, s, self.failures, clock=self.clock)
        self.reconciler = Reconciler(self.store, self.backend, s, self.registry, clock=self.clock)
        self.refiller = Refiller(self.store, self.backend, s, self.registry, self.preparer, self.slots, self.clock)
        self.reaper = Reaper(self.store, self.dispatcher, s, clock=self.clock)
        self.host_watch = HostWatch(self.store, self.dispatcher, s, self.registry, clock=self.clock)
        self.forker = Forker(self.store, self.backend, s, self.registry, self.slots, self.clock)

    def attach(self) -> FakeHost:
        """Serve the dispatcher's work as a worker would: provisioning, calls and removals."""
        d = self.dispatcher
        d.on_provision = lambda rid, attempt, host: self.provisioner.provision(rid, attempt, may_move=not host)
        d.on_execute = lambda host, request, expires_s: run_call(
            self.executor, self.store, request.queued(time.time(), expires_s)
        )
        d.on_destroy = lambda host, rid, name: self.backend.destroy(name)
        d.on_fork = lambda host, request: self.store.queues.push_reply(request.reply_id, self.forker.fork(request))
        return self

    def beat(self, **info: Any) -> None:
        """One heartbeat: registered, healthy, with room (fields may be overridden)."""
        registration: dict[str, Any] = {
            "engine_healthy": "1",
            "capacity": self.settings.hosts.capacity,
            "containers": len(self.backend.containers),
            "quarantined_until": 0,
            "down_after_s": 20.0,
            "runtimes": ",".join(self.backend.offered_runtimes),
            "images": ",".join(self.backend.image_names()),
            "cpus": self.backend.machine_cpus,
        }
        registration.update(info)
        self.store.hosts.register(self.settings.host_id, registration)


@dataclass
class World:
    """API-side services and one in-process host over one store."""

    settings: Settings
    store: Store
    backend: InMemoryBackend
    dispatcher: InMemoryDispatcher
    registry: EnvironmentRegistry
    host: FakeHost
    rollouts: RolloutService
    tools: ToolService
    forks: ForkService

    def call(self, rid: str, command: str = "echo hi", call_id: str | None = None, tool: str = "shell") -> ToolCall:
        """A parsed tool call, as the route hands it to ToolService."""
        args: dict[str, Any] = {"command": command} if tool == "shell" else {"path": command}
        return ToolCall(tool, rid, call_id or uuid.uuid4().hex, "fc", args, args, None)


def build_world(redis_url: str, clock: Clock = SYSTEM_CLOCK, attach: bool = True, **overrides: Any) -> World:
    """A fresh world on its own key prefix of the session's Redis."""
    settings = unit_settings(key_prefix=f"unit-{uuid.uuid4().hex[:8]}", **overrides)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    # Blocking waits need a client without a read timeout, as in production (store/connection.py).
    # Named, so a test can tell its own blocked waiters from others on the shared Redis.
    blocking = redis.Redis.from_url(
        redis_url, decode_responses=True, socket_timeout=None, client_name=settings.key_prefix
    )
    store = Store(
        client,
        settings.key_prefix,
        retention_s=60,
        blocking=blocking,
        clock=clock,
        archive_dir=settings.archive.dir,
        archived_ttl_s=settings.archive.redis_ttl_s,
    )
    backend = InMemoryBackend(images=[settings.image])
    dispatcher = InMemoryDispatcher()
    registry = EnvironmentRegistry(store, settings)
    host = FakeHost(settings, store, backend, registry, dispatcher, clock)
    if attach:
        host.attach()
    host.beat()
    rollouts = RolloutService(store, dispatcher, settings, registry, clock)
    tools = ToolService(store, dispatcher, rollouts, settings, registry, clock=clock)
    forks = ForkService(store, dispatcher, settings, rollouts, clock)
    return World(settings, store, backend, dispatcher, registry, host, rollouts, tools, forks)


def drop_world(world: World) -> None:
    world.dispatcher.join()
    r = world.store.redis
    for key in r.scan_iter(f"{world.settings.key_prefix}:*"):
        r.delete(key)
    r.close()
    world.store.connection.blocking.close()
