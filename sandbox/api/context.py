"""The objects an API process shares across requests, built by the app factory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anyio
import redis
from celery import Celery

from ..config import Settings, host_queue_name
from ..environments import EnvironmentRegistry
from ..grading_service import GradingService
from ..rollouts import RolloutService
from ..store import Store
from ..tools import ToolService
from ..worker.dispatch import CeleryDispatcher


@dataclass
class ApiContext:
    settings: Settings
    store: Store
    celery: Celery
    rollouts: RolloutService
    tools: ToolService
    registry: EnvironmentRegistry
    grading: GradingService
    # Tool calls block on Redis while the sandbox works; each holds a thread, so the
    # limit is how many calls one API process keeps in flight.
    limiter: anyio.CapacityLimiter
    broker: redis.Redis

    def state_snapshot(self) -> dict[str, Any]:
        """Scrape-time state for the gauges: Redis records plus the broker's queue lengths."""
        s = self.settings
        hosts = self.store.hosts()
        queues = [s.provision_queue, s.maintenance_queue] + [host_queue_name(s.instance, h) for h in hosts]
        return self.store.state_snapshot(
            queues,
            broker=self.broker,
            pool_targets=self.registry.pool_targets(),
            call_queue_prefix=f"{s.instance}.host",  # tool calls: <instance>.host.<id>.calls and .first-calls
        )

    @classmethod
    def build(cls, settings: Settings, threads: int = 1024) -> ApiContext:
        from ..worker.app import create_celery

        store = Store.from_url(
            settings.redis_url, settings.key_prefix, settings.lifecycle.retention_s, max_connections=threads + 64
        )
        celery = create_celery(settings)
        dispatcher = CeleryDispatcher(celery, settings, store)
        registry = EnvironmentRegistry(store, settings)
        rollouts = RolloutService(store, dispatcher, settings, registry)
        tools = ToolService(store, dispatcher, rollouts, settings, registry)
        grading = GradingService(store, registry, rollouts, settings)
        broker = redis.Redis.from_url(settings.celery_broker_url, socket_connect_timeout=5, socket_timeout=5)
        return cls(settings, store, celery, rollouts, tools, registry, grading, anyio.CapacityLimiter(threads), broker)
