"""Celery tasks. Like web views: take JSON, call the service layer, return JSON."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from celery import signals
from prometheus_client import start_http_server

from .. import metrics
from ..domain.errors import InfraError
from ..domain.hosts import views as host_views
from ..domain.messages import ForkRequest
from .app import worker_celery
from .runtime import runtime

celery_app = worker_celery()  # this module is imported by the worker at start (the app's `include`)

log = logging.getLogger(__name__)


@celery_app.task(name="sandbox.provision", acks_late=True)
def provision(rollout_id: str, attempt: int, placed: bool = False) -> str:
    # acks_late: if this worker dies mid-way the task is redelivered; it adopts the container by name.
    rt = runtime()
    if not placed:
        # Every host pulls from the shared queue; one that may not take new rollouts
        # (quarantined, full) hands the work to the host with the most room, if any.
        target = rt.placement_elsewhere()
        if target is not None:
            rt.dispatcher.provision(rollout_id, attempt, host=target)
            return f"placed on {target}"
    # A task placed on this host by another stays here (one hop at most, no ping-pong).
    return rt.provisioner.provision(rollout_id, attempt, may_move=not placed)


@celery_app.task(name="sandbox.fork", acks_late=False)
def fork(request: dict[str, Any]) -> bool:
    # Not acks_late: a fork redelivered after a worker died would copy a later state; the API
    # has answered 503 (worker_lost) by then and forgotten the children.
    rt = runtime()
    message = ForkRequest.from_wire(request)
    reply = rt.forker.fork(message)
    try:
        rt.store.queues.push_reply(message.reply_id, reply)
    except InfraError:
        log.error("cannot deliver the reply of fork %s: state store unavailable", message.reply_id)
    return reply.ok


@celery_app.task(name="sandbox.destroy", acks_late=True)
def destroy(rollout_id: str, container_name: str) -> bool:
    rt = runtime()
    # Removals share the creation slots: the engine's concurrency is bounded whatever the
    # work. Releasing 500 rollouts at once is 500 tasks; with 64 removals at a time (and
    # creations beside them) Docker 20.10 was seen to wedge.
    with rt.creation_slots:
        return rt.backend.destroy(container_name)


@celery_app.task(name="sandbox.reap")
def reap() -> int:
    return len(runtime().reaper.reap())


def _to_every_host(send: Callable[[str], None]) -> int:
    """Beat runs in one place; work on containers must run on each host's own queue."""
    serving = [h for h, view in host_views(runtime().store.hosts.registrations()).items() if view.serves]
    for host_id in serving:
        send(host_id)
    return len(serving)


@celery_app.task(name="sandbox.watch_hosts")
def watch_hosts() -> dict[str, int]:
    """End the rollouts of hosts that went down or lost their engine; re-place their provisioning."""
    rt = runtime()
    return rt.host_watch.sweep()


@celery_app.task(name="sandbox.reconcile_all")
def reconcile_all() -> int:
    """Fan the reconciler out to every registered host's own queue."""
    return _to_every_host(runtime().dispatcher.reconcile)


@celery_app.task(name="sandbox.refill")
def refill() -> dict[str, int]:
    return runtime().refiller.refill()


@celery_app.task(name="sandbox.refill_all")
def refill_all() -> int:
    """Ask every registered host to top up its warm pools."""
    return _to_every_host(runtime().dispatcher.refill)


@celery_app.task(name="sandbox.reconcile")
def reconcile() -> dict[str, int]:
    return runtime().reconciler.reconcile()


@signals.worker_ready.connect
def _on_worker_ready(**_: Any) -> None:
    rt = runtime()
    try:
        rt.backend  # noqa: B018 - built now: a missing guest binary means no sandbox could ever start
    except ValueError as exc:
        log.critical("the worker cannot serve: %s", exc)
        os._exit(78)  # EX_CONFIG; a signal handler's exception would only be logged, and the worker run on
    metrics.init_metrics()
    port = rt.settings.worker_metrics_port
    if port:
        start_http_server(port, addr=rt.settings.worker_metrics_host)
    if rt.data_port is not None:
        rt.data_port.start()  # before the first heartbeat, which tells the API where it is
    rt.start_heartbeat()
    rt.call_consumers.start()
    if rt.refiller.forget_refills():
        log.warning("dropped refill locks of host %s left by a worker that stopped mid-refill", rt.settings.host_id)
    rt.dispatcher.refill(rt.settings.host_id)  # fill the pools now, not at the first beat
    log.info("sandbox host %s serving queue %s", rt.settings.host_id, rt.settings.host_queue)


@signals.worker_shutdown.connect
def _on_worker_shutdown(**_: Any) -> None:
    rt = runtime()
    rt.stop()
    # Calls already taken run to the end, as Celery's warm shutdown does for its tasks.
    rt.call_consumers.join(rt.settings.shell.max_timeout_s + 5)
