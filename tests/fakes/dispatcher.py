"""An in-memory dispatcher: records what the services hand to the hosts, and (when a test
wires `FakeHost` to it) runs the worker side in-process, in threads, as Celery and the call
queues would."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from sandbox.domain.messages import CallRequest, ForkRequest


@dataclass
class InMemoryDispatcher:
    provisioned: list[tuple[str, int, str]] = field(default_factory=list)  # (rollout, attempt, placed host)
    executed: list[tuple[str, CallRequest, bool]] = field(default_factory=list)  # (host, request, first)
    destroyed: list[tuple[str, str, str]] = field(default_factory=list)  # (host, rollout, container)
    refills: list[str] = field(default_factory=list)
    forks: list[tuple[str, ForkRequest]] = field(default_factory=list)  # (host, request)
    reconciles: list[str] = field(default_factory=list)
    # What a worker would do with each; None: only recorded.
    on_provision: Callable[[str, int, str], object] | None = None
    on_execute: Callable[[str, CallRequest, float], object] | None = None
    on_destroy: Callable[[str, str, str], object] | None = None
    on_fork: Callable[[str, ForkRequest], object] | None = None
    threads: list[threading.Thread] = field(default_factory=list)

    def provision(self, rollout_id: str, attempt: int, host: str = "") -> None:
        self.provisioned.append((rollout_id, attempt, host))
        if self.on_provision is not None:
            self._spawn(self.on_provision, rollout_id, attempt, host)

    def execute(self, host: str, request: CallRequest, expires_s: float, first: bool = False) -> None:
        self.executed.append((host, request, first))
        if self.on_execute is not None:
            self._spawn(self.on_execute, host, request, expires_s)

    def destroy(self, host: str, rollout_id: str, container_name: str) -> None:
        self.destroyed.append((host, rollout_id, container_name))
        if self.on_destroy is not None:
            self.on_destroy(host, rollout_id, container_name)

    def fork(self, host: str, request: ForkRequest) -> None:
        self.forks.append((host, request))
        if self.on_fork is not None:
            self._spawn(self.on_fork, host, request)

    def refill(self, host: str) -> None:
        self.refills.append(host)

    def reconcile(self, host: str) -> None:
        self.reconciles.append(host)

    def join(self, timeout_s: float = 10.0) -> None:
        """Wait for the work handed to the in-process host to finish."""
        for thread in list(self.threads):
            thread.join(timeout_s)

    def _spawn(self, fn: Callable[..., object], *args: object) -> None:
        thread = threading.Thread(target=fn, args=args, daemon=True)
        self.threads.append(thread)
        thread.start()
