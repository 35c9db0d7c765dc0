"""What the scrape-time gauges show (metrics.StateCollector), read from Redis and the broker in
a few round trips: live sandboxes, the provisioning backlog, queue depths, hosts, warm pools."""

from __future__ import annotations

from typing import Any

from ..config import Settings, host_queue_name
from ..dispatch.celery_dispatcher import CeleryDispatcher
from ..domain.hosts import views
from ..domain.rollout import PROVISIONING, READY
from ..environments import EnvironmentRegistry
from ..store import Store


def state_snapshot(
    store: Store, dispatcher: CeleryDispatcher, registry: EnvironmentRegistry, settings: Settings
) -> dict[str, Any]:
    live: dict[tuple[str, str], int] = {}
    backlog = 0
    for rec in store.rollouts.live():
        key = (rec.state, rec.host or "unplaced")
        live[key] = live.get(key, 0) + 1
        backlog += rec.state == PROVISIONING
    hosts = views(store.hosts.registrations())
    for host in hosts:
        live.setdefault((READY, host), 0)
    live.setdefault((PROVISIONING, "unplaced"), 0)
    s = settings
    queues = dispatcher.queue_depths(
        [s.provision_queue, s.maintenance_queue] + [host_queue_name(s.instance, h) for h in hosts]
    )
    # Tool calls wait on lists of their own: <instance>.host.<id>.calls and .first-calls.
    for host, (first, rest) in store.queues.depths(hosts).items():
        queues[f"{host_queue_name(s.instance, host)}.first-calls"] = first
        queues[f"{host_queue_name(s.instance, host)}.calls"] = rest
    pools = store.pools.sizes(hosts, registry.pool_targets())
    return {"live": live, "backlog": backlog, "queues": queues, "hosts": hosts, "pools": pools}
