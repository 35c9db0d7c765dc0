"""How a rollout ends or is tainted, each counted once: shared by the API (release, a lost
host seen by a call) and the workers (reaper, reconciler, host watch, a lost sandbox)."""

from __future__ import annotations

import logging

from . import metrics
from .domain.outcomes import InfraReason
from .domain.rollout import LOST
from .store import Store

log = logging.getLogger(__name__)


def end_rollout(store: Store, rid: str, state: str, reason: str, how: str) -> bool:
    """End a live rollout and observe how it ended; False when it had ended already."""
    if not store.rollouts.end(rid, state, reason):
        return False
    rec = store.rollouts.get(rid)
    calls = sum((rec.calls or {}).values()) if rec else 0
    metrics.observe_rollout_end(how, calls, (rec.ended_at - rec.created_at) if rec else 0.0)
    archive(store, rid)
    return True


def archive(store: Store, rid: str) -> None:
    """Write an ended rollout to the archive (store/archive.py); on a failure it stays in Redis
    for the full retention, and the failure is logged and counted, never raised: the rollout
    ended either way."""
    if not store.archive.enabled:
        return
    try:
        size = store.archive.save(rid)
    except OSError as exc:
        log.error("archiving rollout %s failed (it stays in Redis): %s", rid, exc)
        metrics.ARCHIVE_WRITES.labels("failed").inc()
        return
    metrics.ARCHIVE_WRITES.labels("ok").inc()
    metrics.ARCHIVE_BYTES.inc(size)


def taint(store: Store, rid: str, reason: str) -> None:
    """Mark a rollout infra-tainted (the grader will refuse it), counted once per rollout."""
    if store.rollouts.taint(rid, reason):
        metrics.ROLLOUTS_TAINTED.labels(reason).inc()


def mark_lost(store: Store, rid: str, reason: str, cause: InfraReason = InfraReason.SANDBOX_LOST) -> bool:
    """A sandbox that served results vanished (or its host did): end the rollout as lost (and tainted), once."""
    taint(store, rid, cause.value)
    return end_rollout(store, rid, LOST, reason, "lost")
