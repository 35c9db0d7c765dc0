"""Keeping Redis and the engines in agreement: the reaper and the reconciler.

The platform never says a rollout is finished, so idle and lifetime limits end them.
The reconciler heals both directions of drift: containers nobody owns (e.g. a worker
died between create and record) and records whose container vanished.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from . import metrics
from .backends.base import LABEL_HOST, LABEL_INSTANCE, Backend
from .config import Settings
from .dispatch import Dispatcher
from .rollouts import end_rollout, mark_lost
from .store import EXPIRED, LIVE_STATES, PROVISIONING, READY, Store

log = logging.getLogger(__name__)
# Records are written before containers are created, so a container without one is an
# orphan; the grace only spares one whose record is being written this very moment.
ORPHAN_GRACE_S = 10.0


@dataclass
class Reaper:
    store: Store
    dispatcher: Dispatcher
    settings: Settings

    def reap(self) -> list[str]:
        """Expire rollouts idle past the TTL or older than the max lifetime; return their ids."""
        now = time.time()
        life = self.settings.lifecycle
        idle = self.store.rollouts_idle_since(now - life.idle_ttl_s)
        old = self.store.rollouts_created_before(now - life.max_lifetime_s)
        expired = []
        for rid in dict.fromkeys(idle + old):
            rec = self.store.get_rollout(rid)
            reason = "max lifetime reached" if rid in old else "idle TTL reached"
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

    def reconcile(self) -> dict[str, int]:
        """Compare this host's labelled containers with the records; fix and count drift."""
        s = self.settings
        listed_at = time.time()
        containers = self.backend.list({LABEL_INSTANCE: s.instance, LABEL_HOST: s.host_id})
        names = {c.name for c in containers}
        removed = lost = 0
        for c in containers:
            rec = self.store.get_rollout(c.rollout_id) if c.rollout_id else None
            owned = (
                rec is not None
                and rec.state in LIVE_STATES
                and (rec.state == PROVISIONING or rec.container_name == c.name)
            )
            if owned and rec is not None:
                if rec.state == READY and not c.running:
                    if mark_lost(self.store, rec.rollout_id, "the container stopped"):
                        metrics.RECONCILER_ACTIONS.labels("record_lost").inc()
                        lost += 1
                    self.backend.destroy(c.name)
                continue
            if rec is None and listed_at - c.created_at < ORPHAN_GRACE_S:
                continue
            log.info("removing orphan container %s (rollout %s)", c.name, c.rollout_id)
            self.backend.destroy(c.name)
            metrics.RECONCILER_ACTIONS.labels("orphan_removed").inc()
            removed += 1
        for rec in self.store.live_rollouts():
            # Only records that were ready before the listing: a newer one is not in it yet.
            if (
                rec.state == READY
                and rec.host == s.host_id
                and rec.ready_at < listed_at
                and rec.container_name not in names
                and mark_lost(self.store, rec.rollout_id, "the container vanished")
            ):
                metrics.RECONCILER_ACTIONS.labels("record_lost").inc()
                lost += 1
        self._remove_stale_socket_dirs(names)
        return {"orphans_removed": removed, "records_lost": lost}

    def _remove_stale_socket_dirs(self, names: set[str]) -> None:
        prefix = f"sbx-{self.settings.instance}-"
        run_dir = self.settings.run_dir
        if not run_dir.is_dir():
            return
        for entry in run_dir.iterdir():
            if entry.name.startswith(prefix) and entry.name not in names:
                age = time.time() - entry.stat().st_mtime
                if age > ORPHAN_GRACE_S:
                    for child in entry.iterdir():
                        child.unlink(missing_ok=True)
                    entry.rmdir()
