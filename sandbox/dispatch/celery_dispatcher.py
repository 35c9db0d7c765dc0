"""The Dispatcher over Celery: tasks on the shared provisioning queue and each host's own queue,
and tool calls on a Redis list per host (sandbox/worker/call_queue.py says why not Celery)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery
from kombu.exceptions import KombuError, OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError

from ..config import Settings, host_queue_name
from ..domain.errors import StoreUnavailable
from ..domain.messages import CallRequest, ForkRequest
from ..store import Store, translate_errors

# Publishing retries briefly, then fails: a call must get its 503, not hang on a dead broker.
RETRY_POLICY = {"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2, "interval_max": 0.5}


@contextmanager
def _broker_errors() -> Iterator[None]:
    try:
        yield
    except (OperationalError, KombuError, RedisConnectionError, ConnectionError) as exc:
        raise StoreUnavailable(f"task broker unavailable: {exc}") from exc


class CeleryDispatcher:
    def __init__(self, app: Celery, settings: Settings, store: Store, broker: Any = None) -> None:
        self.app = app
        self.settings = settings
        self.store = store
        self.broker = broker  # a Redis client of the broker, for queue lengths (the API's gauges)
        self._refill_asked: dict[str, float] = {}  # host -> when this process last asked for a refill

    def provision(self, rollout_id: str, attempt: int, host: str = "") -> None:
        with _broker_errors():
            self.app.send_task(
                "sandbox.provision",
                kwargs={"rollout_id": rollout_id, "attempt": attempt, "placed": bool(host)},
                queue=host_queue_name(self.settings.instance, host) if host else self.settings.provision_queue,
                retry_policy=RETRY_POLICY,
            )

    def execute(self, host: str, request: CallRequest, expires_s: float, first: bool = False) -> None:
        # Not a Celery task: a Redis list per host (call_queue.py says why).
        self.store.queues.push_call(host, request.queued(time.time(), expires_s), first, ttl_s=int(expires_s) + 60)

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
        if not self.store.pools.first_refill_ask(host, 1):
            return
        with _broker_errors():
            self.app.send_task(
                "sandbox.refill", queue=host_queue_name(self.settings.instance, host), expires=60,
                retry_policy=RETRY_POLICY,
            )  # fmt: skip

    def fork(self, host: str, request: ForkRequest) -> None:
        with _broker_errors():
            self.app.send_task(
                "sandbox.fork",
                kwargs={"request": request.to_wire()},
                queue=host_queue_name(self.settings.instance, host),
                retry_policy=RETRY_POLICY,
            )

    def reconcile(self, host: str) -> None:
        with _broker_errors():
            self.app.send_task("sandbox.reconcile", queue=host_queue_name(self.settings.instance, host), expires=60)

    def queue_depths(self, names: list[str]) -> dict[str, int]:
        """Messages waiting in each Celery queue (for the gauges)."""
        with translate_errors():
            pipe = (self.broker or self.store.redis).pipeline(transaction=False)
            for name in names:
                for queue_key in _celery_queue_keys(name):
                    pipe.llen(queue_key)
            lengths = pipe.execute()
        per_queue = len(_celery_queue_keys("x"))
        return {name: sum(lengths[i * per_queue : (i + 1) * per_queue]) for i, name in enumerate(names)}


def _celery_queue_keys(name: str) -> list[str]:
    """Kombu's Redis transport keeps a queue as one list per priority step."""
    return [name] + [f"{name}\x06\x16{step}" for step in (3, 6, 9)]
