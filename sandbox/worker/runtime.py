"""Per-process objects of a worker, built once on first use (tasks take ids, not objects)."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from functools import cached_property

from .. import metrics
from ..backends.docker import DockerBackend
from ..config import Settings, get_settings
from ..environments import EnvironmentRegistry
from ..errors import InfraError
from ..execution import Executor
from ..lifecycle import Reaper, Reconciler
from ..pools import Refiller
from ..preparation import Preparer
from ..rollouts import Provisioner
from ..store import Store
from .dispatch import CeleryDispatcher

log = logging.getLogger(__name__)
HEARTBEAT_S = 5.0
HEARTBEAT_TTL_S = 20


class WorkerRuntime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._stop = threading.Event()

    @cached_property
    def store(self) -> Store:
        s = self.settings
        return Store.from_url(
            s.redis_url, s.key_prefix, s.lifecycle.retention_s, max_connections=s.worker_concurrency * 2 + 16
        )

    @cached_property
    def backend(self) -> DockerBackend:
        s = self.settings
        s.run_dir.mkdir(parents=True, exist_ok=True)
        return DockerBackend(
            s.docker_host,
            s.run_dir,
            s.guest_dir,
            api_timeout_s=s.shell.max_timeout_s + 60,
            max_pool_size=s.worker_concurrency + 8,
            on_fallback=metrics.GUEST_FALLBACKS.inc,
        )

    @cached_property
    def dispatcher(self) -> CeleryDispatcher:
        from .app import celery_app

        return CeleryDispatcher(celery_app, self.settings, self.store)

    @cached_property
    def registry(self) -> EnvironmentRegistry:
        return EnvironmentRegistry(self.store, self.settings)

    @cached_property
    def creation_slots(self) -> threading.BoundedSemaphore:
        """Container creations at once on this host: cold starts and pool refills share them."""
        return threading.BoundedSemaphore(self.settings.provision_concurrency)

    @cached_property
    def preparer(self) -> Preparer:
        return Preparer(self.registry, self.backend, self.settings)

    @cached_property
    def provisioner(self) -> Provisioner:
        return Provisioner(self.store, self.backend, self.settings, self.creation_slots, self.registry, self.preparer)

    @cached_property
    def refiller(self) -> Refiller:
        return Refiller(self.store, self.backend, self.settings, self.registry, self.preparer, self.creation_slots)

    @cached_property
    def executor(self) -> Executor:
        return Executor(self.store, self.backend, self.settings)

    @cached_property
    def reaper(self) -> Reaper:
        return Reaper(self.store, self.dispatcher, self.settings)

    @cached_property
    def reconciler(self) -> Reconciler:
        return Reconciler(self.store, self.backend, self.settings, self.registry)

    def start_heartbeat(self) -> None:
        """Register this host in Redis and keep it fresh; placement and /readyz read it."""

        def beat() -> None:
            while not self._stop.is_set():
                try:
                    self.backend.ping()
                    healthy = "1"
                except InfraError:
                    healthy = "0"
                try:
                    self.store.register_host(
                        self.settings.host_id,
                        {
                            "queue": self.settings.host_queue,
                            "engine_healthy": healthy,
                            "capacity": self.settings.worker_concurrency,
                            "started_at": self._started_at,
                        },
                        HEARTBEAT_TTL_S,
                    )
                except InfraError:
                    log.warning("cannot register host %s: state store unavailable", self.settings.host_id)
                self._stop.wait(HEARTBEAT_S)

        self._started_at = time.time()
        threading.Thread(target=beat, name="host-heartbeat", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(InfraError):
            self.store.unregister_host(self.settings.host_id)


_runtime: WorkerRuntime | None = None


def runtime() -> WorkerRuntime:
    global _runtime
    if _runtime is None:
        _runtime = WorkerRuntime(get_settings())
    return _runtime
