"""Per-process objects of a worker, built once on first use (tasks take ids, not objects)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from functools import cached_property

from .. import metrics
from ..backends.docker import DockerBackend
from ..config import Settings, get_settings
from ..dispatch.celery_dispatcher import CeleryDispatcher
from ..domain.container import host_labels
from ..domain.errors import InfraError
from ..domain.hosts import FailureWindow, HostView, pick_host, views
from ..environments import EnvironmentRegistry
from ..store import Store
from .call_queue import CallConsumers
from .container_count import ContainerCount
from .data_port import DataPort
from .executor import Executor
from .forker import Forker
from .maintenance import HostWatch, Reaper, Reconciler
from .preparation import Preparer
from .provisioner import Provisioner
from .refiller import Refiller

log = logging.getLogger(__name__)


RUNTIMES_REFRESH_S = 60.0  # how often the heartbeat re-reads the engine's runtimes
# How often it re-lists the engine's images: one engine call whatever the number of
# containers, and a user who just loaded an image waits at most this long to register it.
IMAGES_REFRESH_S = 10.0


class WorkerRuntime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._stop = threading.Event()
        self._started_at = time.time()
        self._views: dict[str, HostView] = {}
        self._views_at = -1e9
        self._runtimes, self._runtimes_at = "", -1e9
        self._cpus = 0
        self._images, self._images_at = "", -1e9

    @cached_property
    def store(self) -> Store:
        s = self.settings
        return Store.from_url(
            s.redis_url,
            s.key_prefix,
            s.lifecycle.retention_s,
            max_connections=s.worker_concurrency * 2 + 16,
            archive_dir=s.archive.dir,
            archived_ttl_s=s.archive.redis_ttl_s,
        )

    @cached_property
    def backend(self) -> DockerBackend:
        s = self.settings
        s.host_run_dir.mkdir(parents=True, exist_ok=True)
        return DockerBackend(
            s.docker_host,
            s.host_run_dir,
            s.guest_dir,
            api_timeout_s=s.shell.max_timeout_s + 60,
            max_pool_size=s.worker_concurrency + 8,
            on_fallback=metrics.GUEST_FALLBACKS.inc,
        )

    @cached_property
    def container_count(self) -> ContainerCount:
        labels = host_labels(self.settings)
        return ContainerCount(
            lambda: self.backend.list(labels), lambda since: self.backend.container_events(labels, since)
        )

    @cached_property
    def dispatcher(self) -> CeleryDispatcher:
        from .app import worker_celery

        return CeleryDispatcher(worker_celery(), self.settings, self.store)

    @cached_property
    def registry(self) -> EnvironmentRegistry:
        return EnvironmentRegistry(self.store, self.settings)

    @cached_property
    def creation_slots(self) -> threading.BoundedSemaphore:
        """Engine operations at once on this host: cold starts, pool refills and removals share them."""
        return threading.BoundedSemaphore(self.settings.provision_concurrency)

    @cached_property
    def preparer(self) -> Preparer:
        return Preparer(self.registry, self.backend, self.settings)

    @cached_property
    def provisioner(self) -> Provisioner:
        return Provisioner(
            self.store,
            self.backend,
            self.settings,
            self.creation_slots,
            self.registry,
            self.preparer,
            self.failures,
            elsewhere=self._provision_elsewhere,
        )

    def _provision_elsewhere(self, rid: str, attempt: int) -> bool:
        """This engine failed a creation: give the attempt to the host with the most room, if any."""
        self._views_at = -1e9  # judge with fresh registrations
        target = self.placement_target(force=True)
        if target is None:
            return False
        self.dispatcher.provision(rid, attempt, host=target)
        return True

    @cached_property
    def refiller(self) -> Refiller:
        return Refiller(
            self.store, self.backend, self.settings, self.registry, self.preparer, self.creation_slots,
            count_containers=self.container_count.value,
        )  # fmt: skip

    @cached_property
    def data_port(self) -> DataPort | None:
        """The trainer API's file transfers straight from the API (data_port.py); None when off."""
        s = self.settings
        return DataPort(s.worker_data_host, s.worker_data_port, s.worker_data_advertise) if s.worker_data_host else None

    @cached_property
    def executor(self) -> Executor:
        return Executor(self.store, self.backend, self.settings, self.failures, data_port=self.data_port)

    @cached_property
    def forker(self) -> Forker:
        return Forker(self.store, self.backend, self.settings, self.registry, self.creation_slots)

    @cached_property
    def call_consumers(self) -> CallConsumers:
        s = self.settings
        return CallConsumers(self.store, self.executor, s.host_id, s.worker_concurrency, self._stop)

    @cached_property
    def reaper(self) -> Reaper:
        return Reaper(self.store, self.dispatcher, self.settings)

    @cached_property
    def reconciler(self) -> Reconciler:
        return Reconciler(self.store, self.backend, self.settings, self.registry)

    @cached_property
    def host_watch(self) -> HostWatch:
        return HostWatch(self.store, self.dispatcher, self.settings, self.registry)

    def placement_elsewhere(self) -> str | None:
        """Where a new rollout should go instead of here, or None to take it here."""
        return self.placement_target(force=False)

    def placement_target(self, force: bool) -> str | None:
        """Another host for a new rollout, or None to take it here.

        Here is fine unless this host is quarantined (its engine, or a failure spike seen
        just now) or full (`force`: this engine just failed), and another host takes new
        rollouts.
        """
        now = time.time()
        if now - self._views_at > 1.0:  # a burst of provisioning tasks shares one look-up
            self._views, self._views_at = views(self.store.hosts.registrations(), now), now
        me = self._views.get(self.settings.host_id)
        spiking = self.failures.quarantined_until() > now
        if not force and (me is None or (me.takes_new_rollouts and not spiking)):
            return None
        return pick_host(list(self._views.values()), exclude=self.settings.host_id)

    @cached_property
    def failures(self) -> FailureWindow:
        h = self.settings.hosts
        return FailureWindow(h.failure_window_s, h.failure_min, h.failure_ratio, h.quarantine_s)

    def registration(self) -> dict[str, object]:
        """What this host tells everyone else (hosts.HostView reads it)."""
        h = self.settings.hosts
        try:
            self.backend.ping()
            counted = self.container_count.value()  # from the engine's events: no listing per beat
            containers = counted if counted is not None else len(self.backend.list(host_labels(self.settings)))
            runtimes = self._engine_runtimes()
            images = self._engine_images()
            healthy = "1"
        except InfraError:
            containers, healthy, runtimes, images = 0, "0", "", ""
            # An engine that comes back may come back configured otherwise.
            self._runtimes_at = self._images_at = -1e9
        return {
            "queue": self.settings.host_queue,
            "engine_healthy": healthy,
            "capacity": h.capacity,
            "containers": containers,
            "runtimes": runtimes,  # an environment asking for a runtime no host offers is refused
            "cpus": self._cpus,  # so is one asking for more CPUs than any host's machine has
            "images": images,  # so is one whose image no host holds
            "quarantined_until": self.failures.quarantined_until(),
            "down_after_s": h.heartbeat_s * h.down_after_beats,
            "started_at": self._started_at,
            "data_addr": self.data_port.address if self.data_port is not None else "",  # the API's way here
            "data_node": socket.gethostname(),  # a loopback data_addr means something only on this machine
        }

    def _engine_runtimes(self) -> str:
        """The engine's runtimes (and its machine's CPUs), asked at most once a minute: they change
        only when it restarts, and the engine's info call is not free with hundreds of containers."""
        now = time.monotonic()
        if now - self._runtimes_at > RUNTIMES_REFRESH_S:
            self._runtimes, self._cpus = ",".join(self.backend.runtimes()), self.backend.cpus()
            self._runtimes_at = now
        return self._runtimes

    def _engine_images(self) -> str:
        """The engine's image tags and ids, listed at most every IMAGES_REFRESH_S."""
        now = time.monotonic()
        if now - self._images_at > IMAGES_REFRESH_S:
            self._images, self._images_at = ",".join(self.backend.image_names()), now
        return self._images

    def start_heartbeat(self) -> None:
        """Register this host in Redis and keep it fresh; placement, /readyz and metrics read it."""

        def beat() -> None:
            while not self._stop.is_set():
                info = self.registration()
                try:
                    self.store.hosts.register(self.settings.host_id, info)
                except InfraError:
                    log.warning("cannot register host %s: state store unavailable", self.settings.host_id)
                self._stop.wait(self.settings.hosts.heartbeat_s)

        self._started_at = time.time()
        self.container_count.start(self._stop)
        threading.Thread(target=beat, name="host-heartbeat", daemon=True).start()

    def stop(self) -> None:
        # The registration stays: a restarting worker is not a dead host. One that never
        # comes back turns `down` when its heartbeats stop (hosts.py).
        self._stop.set()


_runtime: WorkerRuntime | None = None


def runtime() -> WorkerRuntime:
    global _runtime
    if _runtime is None:
        _runtime = WorkerRuntime(get_settings())
    return _runtime
