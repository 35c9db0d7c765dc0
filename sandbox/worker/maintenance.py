"""Keeping Redis and the engines in agreement: the reaper, the reconciler, the host watch.

The platform never says a rollout is finished, so idle and lifetime limits end them.
The reconciler heals both directions of drift: containers nobody owns (e.g. a worker
died between create and record) and records whose container vanished. The host watch
ends the rollouts of a host that went down or lost its engine, even if no call of
theirs arrives to notice it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .. import metrics
from ..backends.base import Backend
from ..clock import SYSTEM_CLOCK, Clock
from ..config import Settings
from ..dispatch import Dispatcher
from ..domain.container import LABEL_FORK_ID, LABEL_ROLE, ROLE_FORK, host_labels
from ..domain.hosts import DOWN, HOST_LOST_REASON, views
from ..domain.rollout import (
    DEFAULT_ENVIRONMENT,
    ENDED_STATES,
    EXPIRED,
    FAILED,
    PROVISIONING,
    READY,
    RolloutRecord,
    container_name,
)
from ..endings import end_rollout, mark_lost
from ..environments import EnvironmentRegistry
from ..store import Store

log = logging.getLogger(__name__)


@dataclass
class Reaper:
    store: Store
    dispatcher: Dispatcher
    settings: Settings
    clock: Clock = SYSTEM_CLOCK

    def reap(self) -> list[str]:
        """Expire rollouts idle past the TTL or older than the max lifetime; return their ids."""
        now = self.clock.time()
        life = self.settings.lifecycle
        idle = self.store.rollouts.idle_since(now - life.idle_ttl_s)
        old = self.store.rollouts.created_before(now - life.max_lifetime_s)
        e2b_timed_out = self.store.e2b.timed_out(now)  # an E2B sandbox's own timeout (api/e2b/)
        expired = []
        for rid in dict.fromkeys(idle + old + e2b_timed_out):
            rec = self.store.rollouts.get(rid)
            reason = (
                "max lifetime reached" if rid in old else "idle TTL reached" if rid in idle else "E2B timeout reached"
            )
            if rid in e2b_timed_out:
                self.store.e2b.forget(rid)
                if rec is not None and rid not in idle and rid not in old:
                    metrics.E2B_SANDBOXES.labels("timed_out").inc()
            if rec is None or not end_rollout(self.store, rid, EXPIRED, reason, "expired"):
                continue
            expired.append(rid)
            if rec.host and rec.container_name:
                self.dispatcher.destroy(rec.host, rid, rec.container_name)
        return expired


@dataclass
class Reconciler:
    store: Store
    backend: Backend
    settings: Settings
    registry: EnvironmentRegistry
    clock: Clock = SYSTEM_CLOCK

    def reconcile(self) -> dict[str, int]:
        """Compare this host's labelled containers with the records; fix and count drift.

        A container is kept when a live record owns it (a ready rollout's container, or the
        deterministic name of one being provisioned) or it waits in a warm pool; anything
        else older than the grace period is an orphan.
        """
        s = self.settings
        listed_at = self.clock.time()
        containers = self.backend.list(host_labels(s))
        names = {c.name for c in containers}
        live = self.store.rollouts.live()
        owned: dict[str, RolloutRecord] = {}
        for rec in live:
            if rec.state == READY and rec.host == s.host_id:
                owned[rec.container_name] = rec
            elif rec.state == PROVISIONING:
                owned[container_name(s.instance, rec.rollout_id)] = rec
        pooled = {
            name: env for env in self.registry.pool_targets() for name in self.store.pools.members(env, s.host_id)
        }
        removed = lost = 0
        for c in containers:
            owner = owned.get(c.name)
            if owner is not None:
                # Judge only rollouts ready before the listing: a container still starting
                # when listed may have become ready (and running) since.
                if owner.state == READY and owner.ready_at < listed_at and not c.running:
                    lost += self._gone(owner.rollout_id, "the container stopped")
                    self.backend.destroy(c.name)
                continue
            if c.name in pooled:
                if not c.running and self.store.pools.remove(pooled[c.name], s.host_id, c.name):
                    self.backend.destroy(c.name)
                continue
            if listed_at - c.created_at < s.lifecycle.orphan_grace_s:
                continue  # being created right now (a pool refill or a provisioning task)
            ended = self.store.rollouts.get(c.rollout_id) if c.rollout_id else None
            if ended is not None and ended.state in ENDED_STATES and ended.container_name in ("", c.name):
                self.backend.destroy(c.name)  # released or expired: its destroy task is just behind
                continue
            log.info("removing orphan container %s", c.name)
            self.backend.destroy(c.name)
            metrics.RECONCILER_ACTIONS.labels("orphan_removed").inc()
            removed += 1
        for rec in live:
            # Only records that were ready before the listing: a newer one is not in it yet.
            if (
                rec.state == READY
                and rec.host == s.host_id
                and rec.ready_at < listed_at
                and rec.container_name not in names
            ):
                lost += self._gone(rec.rollout_id, "the container vanished")
        self._remove_stale_socket_dirs(names)
        images = self._remove_unused_fork_images({c.image_id for c in containers}, listed_at)
        return {"orphans_removed": removed, "records_lost": lost, "fork_images_removed": images}

    def _remove_unused_fork_images(self, in_use: set[str], listed_at: float) -> int:
        """A fork's image is needed while its fork runs or a child's container uses it; then it goes."""
        s = self.settings
        removed = 0
        for image in self.backend.list_images({**host_labels(s), LABEL_ROLE: ROLE_FORK}):
            if image.image_id in in_use or listed_at - image.created_at < s.lifecycle.orphan_grace_s:
                continue
            if self.store.rollouts.fork_under_way(image.labels.get(LABEL_FORK_ID, "")):
                continue
            if self.backend.remove_image(image.image_id):  # False: a child image or a container still uses it
                metrics.RECONCILER_ACTIONS.labels("fork_image_removed").inc()
                removed += 1
        return removed

    def _gone(self, rid: str, message: str) -> int:
        """A ready rollout's container is gone: lost if it served the agent, else provisionable again."""
        if self.store.rollouts.fail_unserved(rid, message):
            return 0
        if mark_lost(self.store, rid, message):
            metrics.RECONCILER_ACTIONS.labels("record_lost").inc()
            return 1
        return 0

    def _remove_stale_socket_dirs(self, names: set[str]) -> None:
        prefix = f"sbx-{self.settings.instance}-"
        run_dir = self.settings.host_run_dir  # this host's own: never another host's sockets
        if not run_dir.is_dir():
            return
        for entry in run_dir.iterdir():
            if entry.name.startswith(prefix) and entry.name not in names:
                age = self.clock.time() - entry.stat().st_mtime
                if age > self.settings.lifecycle.orphan_grace_s:
                    for child in entry.iterdir():
                        child.unlink(missing_ok=True)
                    entry.rmdir()


@dataclass
class HostWatch:
    store: Store
    dispatcher: Dispatcher
    settings: Settings
    registry: EnvironmentRegistry
    clock: Clock = SYSTEM_CLOCK

    def sweep(self) -> dict[str, int]:
        """For every lost host: end its served rollouts as lost, provision the others elsewhere."""
        counts = {"lost": 0, "replaced": 0}
        for host, view in views(self.store.hosts.registrations(), self.clock.time()).items():
            if not view.lost_its_sandboxes:
                continue
            # A down host changes nothing until it beats again: one sweep per outage is enough.
            if view.status == DOWN and not self.store.hosts.mark_swept(host, view.info.get("heartbeat_at", "")):
                continue
            self.store.pools.drop_host(host, list(self.registry.pool_targets()))
            why = f"the rollout's sandbox host {host!r} is {view.status} ({view.reason})"
            for rec in self.store.rollouts.live_on_host(host):
                if rec.state == READY and not self.store.rollouts.fail_unserved(rec.rollout_id, why):
                    counts["lost"] += mark_lost(self.store, rec.rollout_id, why, HOST_LOST_REASON)
                    continue
                counts["replaced"] += self._provision_elsewhere(rec)
            if any(counts.values()):
                log.warning("host %s is %s (%s): %s", host, view.status, view.reason, counts)
        return counts

    def _provision_elsewhere(self, rec: RolloutRecord) -> bool:
        """Nothing was served from it: claim a new attempt, which any healthy host may take.

        Never for a fork's child still waiting for its fork: only the fork can make its
        container (the parent's layer was on the lost host); the fork fails and forgets it.
        """
        fresh = self.store.rollouts.get(rec.rollout_id)
        if fresh is None or fresh.state not in (PROVISIONING, FAILED) or fresh.parent:
            return False
        won, _, attempt = self.store.rollouts.claim_provisioning(
            rec.rollout_id,
            fresh.environment or DEFAULT_ENVIRONMENT,
            fresh.item,
            self.settings.timeouts.provision_stale_s,
            take_over=fresh.provision_attempt if fresh.state == PROVISIONING else 0,
        )
        if won:
            self.dispatcher.provision(rec.rollout_id, attempt)
        return won
