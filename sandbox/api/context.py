"""Objects one API process shares across requests, built by the app factory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anyio
import redis
from celery import Celery

from ..config import Settings
from ..dispatch.celery_app import create_celery
from ..dispatch.celery_dispatcher import CeleryDispatcher
from ..environments import EnvironmentRegistry
from ..store import Store
from .fork_service import ForkService
from .grading_service import GradingService
from .rollout_service import RolloutService
from .state import state_snapshot
from .tool_service import ToolService
from .trainer_service import TrainerService


@dataclass
class ApiContext:
    settings: Settings
    store: Store
    celery: Celery
    dispatcher: CeleryDispatcher
    rollouts: RolloutService
    tools: ToolService
    registry: EnvironmentRegistry
    grading: GradingService
    forks: ForkService
    trainer: TrainerService
    # Tool calls block on Redis while the sandbox works; each holds a thread, so the
    # limit is how many calls one API process keeps in flight.
    limiter: anyio.CapacityLimiter

    def state_snapshot(self) -> dict[str, Any]:
        """Scrape-time state for the gauges: Redis records plus the broker's queue lengths."""
        return state_snapshot(self.store, self.dispatcher, self.registry, self.settings)

    @classmethod
    def build(cls, settings: Settings, threads: int = 1024) -> ApiContext:
        store = Store.from_url(
            settings.redis_url,
            settings.key_prefix,
            settings.lifecycle.retention_s,
            max_connections=threads + 64,
            archive_dir=settings.archive.dir,
            archived_ttl_s=settings.archive.redis_ttl_s,
        )
        celery = create_celery(settings)
        broker = redis.Redis.from_url(settings.celery_broker_url, socket_connect_timeout=5, socket_timeout=5)
        dispatcher = CeleryDispatcher(celery, settings, store, broker)
        registry = EnvironmentRegistry(store, settings)
        rollouts = RolloutService(store, dispatcher, settings, registry)
        tools = ToolService(store, dispatcher, rollouts, settings, registry)
        grading = GradingService(store, registry, rollouts, settings)
        forks = ForkService(store, dispatcher, settings, rollouts)
        trainer = TrainerService(store, tools, settings)
        limiter = anyio.CapacityLimiter(threads)
        return cls(settings, store, celery, dispatcher, rollouts, tools, registry, grading, forks, trainer, limiter)
