"""How many containers this host holds, known without asking the engine for a listing.

The heartbeat tells every API how full this host is, every few seconds. Listing the
containers for that made the engine serialize every container each time: work that grows
with every live sandbox on a host whose sandboxes are idle. Instead, one listing at start
(and again only after the engine's event stream broke), then the engine's create and destroy
events keep the set of ids up to date; an idle host costs nothing.

The listing and the events cannot miss a change between them: the stream is asked to replay
from a moment before the listing, and a set of ids makes a replayed create (or a destroy of
a container the listing never saw) harmless.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator

from ..domain.container import SandboxInfo
from ..domain.errors import InfraError

log = logging.getLogger(__name__)

RESYNC_NAP_S = 1.0  # after the stream broke (engine restart): wait, list again, follow again


class ContainerCount:
    def __init__(
        self,
        list_containers: Callable[[], Iterable[SandboxInfo]],
        events_since: Callable[[float], Iterator[tuple[str, str]]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._list = list_containers
        self._events_since = events_since
        self._clock = clock
        self._ids: set[str] = set()
        self._synced = False
        self._lock = threading.Lock()

    def value(self) -> int | None:
        """The count, or None while it is not known (before the first listing, or the engine is away)."""
        with self._lock:
            return len(self._ids) if self._synced else None

    def start(self, stop: threading.Event) -> None:
        threading.Thread(target=self._follow, args=(stop,), name="container-count", daemon=True).start()

    def _follow(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.sync_once()
            except InfraError as exc:
                log.info("container count: engine event stream ended (%s); listing again", exc)
            except Exception:  # never let the thread die: the heartbeat would fall back to listing forever
                log.exception("container count: unexpected error; listing again")
            with self._lock:
                self._synced = False
            stop.wait(RESYNC_NAP_S)

    def sync_once(self) -> None:
        """List, then follow the events until the stream ends (returns) or fails (raises)."""
        since = self._clock() - 1.0  # the engine's seconds are whole: replay a little too much, never too little
        events = self._events_since(since)
        ids = {c.container_id for c in self._list()}
        with self._lock:
            self._ids, self._synced = ids, True
        for action, container_id in events:
            with self._lock:
                if action == "create":
                    self._ids.add(container_id)
                elif action == "destroy":
                    self._ids.discard(container_id)
