"""The Dispatcher of the service layer: Celery tasks, and tool calls on a Redis list per host."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery
from kombu.exceptions import KombuError, OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError

from ..config import Settings, host_queue_name
from ..errors import StoreUnavailable

# Publishing retries briefly, then fails: a call must get its 503, not hang on a dead broker.
RETRY_POLICY = {"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2, "interval_max": 0.5}


@contextmanager
def _broker_errors() -> Iterator[None]:
    try:
        yield
    except (OperationalError, KombuError, RedisConnectionError, ConnectionError) as exc:
        raise StoreUnavailable(f"task broker unavailable: {exc}") from exc


class CeleryDispatcher:
    def __init__(self, app: Celery, settings: Settings, store: Any = None) -> None:
        self.app = app
        self.settings = settings
        self.store = store
        self._refill_asked: dict[str, float] = {}  # host -> when this process last asked for a refill

    def provision(self, rollout_id: str, attempt: int, host: str = "") -> None:
        with _broker_errors():
            self.app.send_task(
                "sandbox.provision",
                kwargs={"rollout_id": rollout_id, "attempt": attempt, "placed": bool(host)},
                queue=host_queue_name(self.settings.instance, host) if host else self.settings.provision_queue,
                retry_policy=RETRY_POLICY,
            )

    def execute(self, host: str, request: dict[str, Any], expires_s: float, first: bool = False) -> None:
        # Not a Celery task: a Redis list per host (call_queue.py says why).
        if self.store is None:
            raise RuntimeError("CeleryDispatcher.execute needs the store")
        now = time.time()
        self.store.push_call(
            host, {**request, "queued_at": now, "expires_at": now + expires_s}, first, ttl_s=int(expires_s) + 60
        )

    def destroy(self, host: str, rollout_id: str, container_name: str) -> None:
        with _broker_errors():
            self.app.send_task(
                "sandbox.destroy",
                kwargs={"rollout_id": rollout_id, "container_name": container_name},
                queue=host_queue_name(self.settings.instance, host),
                retry_policy=RETRY_POLICY,
            )

    def refill(self, host: str) -> None:
        # A burst claims hundreds of warm containers; one refill task per host per second is
        # enough. Asked again within the second by this process: not even a Redis round trip.
        now = time.monotonic()
        if now - self._refill_asked.get(host, -1e9) < 1.0:
            return
        self._refill_asked[host] = now
        if not self.coalesce(f"refill:{host}", 1):
            return
        with _broker_errors():
            self.app.send_task(
                "sandbox.refill", queue=host_queue_name(self.settings.instance, host), expires=60,
                retry_policy=RETRY_POLICY,
            )  # fmt: skip

    def coalesce(self, key: str, seconds: int) -> bool:
        """True for the first ask in a window; needs the store (set by the API), else always True."""
        if self.store is None:
            return True
        return bool(self.store.r.set(f"{self.store.p}:coalesce:{key}", "1", nx=True, ex=seconds))

    def reconcile(self, host: str) -> None:
        self.app.send_task("sandbox.reconcile", queue=host_queue_name(self.settings.instance, host), expires=60)
