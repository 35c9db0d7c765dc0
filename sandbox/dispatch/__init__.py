"""How the services hand work to sandbox hosts, without knowing it is Celery.

`celery_dispatcher.CeleryDispatcher` implements it for both processes (the API queues
provisioning and calls, the workers pass work between hosts); tests/fakes/dispatcher.py
is an in-memory one for unit tests. Replies to calls come back through the store
(`store.queues.wait_reply`), so any API replica can wait for any worker.
"""

from __future__ import annotations

from typing import Protocol

from ..domain.messages import CallRequest, ForkRequest


class Dispatcher(Protocol):
    def provision(self, rollout_id: str, attempt: int, host: str = "") -> None:
        """Queue the creation of a rollout's container: on the shared provisioning queue
        (any host with room takes it), or on one host's own queue when placement chose it."""
        ...

    def execute(self, host: str, request: CallRequest, expires_s: float, first: bool = False) -> None:
        """Queue a tool call for the host that owns the rollout's container.

        A call not started within `expires_s` is answered `queue_timeout` without running,
        so a call the API gave up on never runs later behind its back. `first` calls (the
        rollout's first) go before the others: the trainer waits for every rollout to start.
        """
        ...

    def destroy(self, host: str, rollout_id: str, container_name: str) -> None:
        """Queue the removal of a container on its host."""
        ...

    def refill(self, host: str) -> None:
        """Ask a host to top up its warm pools (coalesced: many asks, one refill)."""
        ...

    def fork(self, host: str, request: ForkRequest) -> None:
        """Queue a fork on the parent's host (its layer is there); the reply comes through the store."""
        ...

    def reconcile(self, host: str) -> None:
        """Ask a host to compare its containers with the records."""
        ...
