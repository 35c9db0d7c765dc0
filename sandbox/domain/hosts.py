"""Sandbox hosts: which are up, which take new rollouts, which are quarantined or down.

Each worker serves one Docker engine under a stable host id and renews its registration
in Redis every few seconds (`Store.register_host`): engine health, capacity, how many
containers it holds, and whether a spike of engine failures has quarantined it. Everyone
else reads those registrations as `HostView`s and derives the host's status from them,
so the API, beat and the workers agree without talking to each other:

  up           takes new rollouts and serves its live ones
  full         serves its live rollouts, takes no new ones (containers >= capacity)
  quarantined  takes no new rollouts. Reason `engine_unhealthy`: its engine does not
               answer, so its containers are gone or unreachable and its live rollouts
               are lost. Reason `failure_spike`: many engine operations failed lately;
               its live rollouts keep being served while it cools down.
  down         no heartbeat for `down_after_beats` intervals; its live rollouts are lost

A host that beats again with a healthy engine is up again: it rejoins by itself.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from dataclasses import dataclass

from .outcomes import InfraReason

UP, FULL, QUARANTINED, DOWN = "up", "full", "quarantined", "down"
STATUSES = (UP, FULL, QUARANTINED, DOWN)
ENGINE_UNHEALTHY, FAILURE_SPIKE, HEARTBEAT_LOST = "engine_unhealthy", "failure_spike", "heartbeat_lost"
HOST_LOST_REASON = InfraReason.HOST_UNAVAILABLE


@dataclass(frozen=True)
class HostView:
    """One host's registration as last written by its worker, judged at time `now`."""

    host_id: str
    info: dict[str, str]
    now: float

    @property
    def heartbeat_age_s(self) -> float:
        return self.now - float(self.info.get("heartbeat_at") or 0.0)

    @property
    def capacity(self) -> int:
        return int(self.info.get("capacity") or 0)

    @property
    def containers(self) -> int:
        return int(self.info.get("containers") or 0)

    @property
    def images(self) -> frozenset[str] | None:
        """Its engine's image tags and ids; None when it has not said (an older worker, an engine down)."""
        listed = self.info.get("images")
        return frozenset(i for i in listed.split(",") if i) if listed else None

    @property
    def cpus(self) -> int | None:
        """The CPUs its engine's machine has; None when it has not said (an older worker, an engine down)."""
        return int(self.info["cpus"]) if str(self.info.get("cpus") or "").isdigit() else None

    @property
    def runtimes(self) -> frozenset[str]:
        """The OCI runtimes its engine offers (runc; runsc where gVisor is set up)."""
        return frozenset(r for r in (self.info.get("runtimes") or "runc").split(",") if r)

    @property
    def room(self) -> float:
        """Containers it can still take; unlimited when it has no capacity set."""
        return float("inf") if self.capacity <= 0 else self.capacity - self.containers

    @property
    def status(self) -> str:
        return self._judge()[0]

    @property
    def reason(self) -> str:
        return self._judge()[1]

    def _judge(self) -> tuple[str, str]:
        down_after = float(self.info.get("down_after_s") or 20.0)
        if self.heartbeat_age_s > down_after:
            return DOWN, HEARTBEAT_LOST
        if self.info.get("engine_healthy") != "1":
            return QUARANTINED, ENGINE_UNHEALTHY
        if float(self.info.get("quarantined_until") or 0.0) > self.now:
            return QUARANTINED, FAILURE_SPIKE
        if self.room <= 0:
            return FULL, ""
        return UP, ""

    @property
    def takes_new_rollouts(self) -> bool:
        return self.status == UP

    @property
    def lost_its_sandboxes(self) -> bool:
        """Its live rollouts cannot be served any more: they are answered host_unavailable and ended lost."""
        status, reason = self._judge()
        return status == DOWN or (status == QUARANTINED and reason == ENGINE_UNHEALTHY)

    @property
    def serves(self) -> bool:
        """Counted as up (metrics, /readyz): it answers its rollouts' calls."""
        return not self.lost_its_sandboxes

    def public(self) -> dict[str, object]:
        """How /readyz shows the host."""
        return {
            "status": self.status,
            "reason": self.reason or None,
            "engine_healthy": self.info.get("engine_healthy") == "1",
            "heartbeat_age_s": round(self.heartbeat_age_s, 1),
            "containers": self.containers,
            "capacity": self.capacity or None,
            "runtimes": sorted(self.runtimes),
        }


def views(registrations: dict[str, dict[str, str]], now: float | None = None) -> dict[str, HostView]:
    at = time.time() if now is None else now
    return {h: HostView(h, info, at) for h, info in registrations.items()}


def pick_host(candidates: list[HostView], exclude: str = "") -> str | None:
    """The host with the most room among those taking new rollouts; ties broken at random."""
    eligible = [v for v in candidates if v.takes_new_rollouts and v.host_id != exclude]
    if not eligible:
        return None
    best = max(v.room for v in eligible)
    return random.choice([v.host_id for v in eligible if v.room == best])


class FailureWindow:
    """Engine operations (creations, executions) of this host in a sliding window.

    When at least `min_failures` failed and they are at least `ratio` of all operations
    in the window, the host quarantines itself for `quarantine_s`: a flaky engine stops
    taking new rollouts before it turns many of them into infra failures.
    """

    def __init__(self, window_s: float, min_failures: int, ratio: float, quarantine_s: float) -> None:
        self.window_s = window_s
        self.min_failures = min_failures
        self.ratio = ratio
        self.quarantine_s = quarantine_s
        self._events: deque[tuple[float, bool]] = deque()
        self._failures = 0
        self._until = 0.0
        self._lock = threading.Lock()

    def record(self, ok: bool, now: float | None = None) -> None:
        at = time.time() if now is None else now
        with self._lock:
            self._events.append((at, ok))
            self._failures += not ok
            while self._events and self._events[0][0] < at - self.window_s:
                _, old_ok = self._events.popleft()
                self._failures -= not old_ok
            if (
                not ok
                and self._failures >= self.min_failures
                and self._failures >= self.ratio * len(self._events)
                and at >= self._until
            ):
                self._until = at + self.quarantine_s
                self._events.clear()  # judge afresh after the cool-down
                self._failures = 0

    def quarantined_until(self) -> float:
        with self._lock:
            return self._until
