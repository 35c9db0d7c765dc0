"""Calls of a rollout in Redis: idempotency (stored results, in-flight claims), the tool
budget, and the trajectory the grader reads."""

from __future__ import annotations

import json
import logging
from typing import Any

from ..domain.calls import CallResult
from ..domain.outcomes import Outcome
from ..domain.rollout import ENDED_STATES, RolloutRecord
from . import scripts
from .archive import ArchiveStore
from .connection import Connection, translate_errors

log = logging.getLogger(__name__)

# What a call may keep of the arguments it was sent: the model's JSON (4 MiB at most) may carry
# fields no tool reads, and a call is stored twice (trajectory, replay) for the retention period.
# Past this, the record keeps the head of the JSON text and its size.
STORED_ARGUMENTS_BYTES = 64 * 1024
ABANDONED = "abandoned"  # the started mark of a call the API gave up on (QueueStore.abandon_unstarted)


class CallStore:
    def __init__(self, c: Connection) -> None:
        self.c = c
        self.k = c.keys
        self._budget = c.script(scripts.BUDGET)
        self._acquire_slot = c.script(scripts.ACQUIRE_RUN_SLOT)
        self._release_slot = c.script(scripts.RELEASE_RUN_SLOT)

    def context(self, rid: str, call_id: str) -> tuple[CallResult | None, RolloutRecord | None]:
        """A call arriving: its stored result (a retry) and the rollout's record, in one round trip."""
        with translate_errors():
            pipe = self.c.r.pipeline(transaction=False)
            pipe.hget(self.k.results(rid), call_id)
            pipe.hgetall(self.k.rollout(rid))
            raw, h = pipe.execute()
        return _result(raw), (RolloutRecord.from_hash(rid, h) if h else None)

    def stored_result(self, rid: str, call_id: str) -> CallResult | None:
        with translate_errors():
            raw = self.c.r.hget(self.k.results(rid), call_id)
        return _result(raw)

    def begin_execution(
        self, reply_id: str, rid: str, call_id: str
    ) -> tuple[bool, CallResult | None, RolloutRecord | None]:
        """A worker starting a call: mark it started, read its stored result and the record, in one
        round trip. False first: the API gave up on the call before (QueueStore.abandon_unstarted),
        so it must not run; the mark is set only if absent, which makes the two exclusive."""
        with translate_errors():
            pipe = self.c.r.pipeline(transaction=False)
            pipe.set(self.k.started(reply_id), "1", nx=True, ex=3600)
            pipe.get(self.k.started(reply_id))
            pipe.hget(self.k.results(rid), call_id)
            pipe.hgetall(self.k.rollout(rid))
            _, mark, raw, h = pipe.execute()
        # Already "1": a redelivery of a call a worker started (its stored result replays it).
        return mark != ABANDONED, _result(raw), (RolloutRecord.from_hash(rid, h) if h else None)

    def claim(self, rid: str, call_id: str, stale_s: float) -> bool:
        """Mark a call as running so a concurrent retry waits instead of running it again."""
        key = self.k.inflight(rid)
        now = self.c.clock.time()
        with translate_errors():
            if self.c.r.hsetnx(key, call_id, now):
                return True
            claimed = float(self.c.r.hget(key, call_id) or 0)
            if now - claimed > stale_s:  # its runner died; a new attempt may go
                self.c.r.hset(key, call_id, now)
                return True
            return False

    def consume_budget(self, rid: str, limit: int) -> bool:
        """Count one tool call against the rollout's budget; False (and nothing counted) past it."""
        with translate_errors():
            return bool(self._budget(keys=[self.k.rollout(rid)], args=[limit]))

    def refund_budget(self, rid: str) -> None:
        """A call that failed on our side did not use the model's budget."""
        with translate_errors():
            self.c.r.hincrby(self.k.rollout(rid), "budget_used", -1)

    def acquire_run_slot(self, rid: str, token: str, cap: int, hold_s: float) -> bool:
        """Take one of the rollout's `cap` run slots for up to `hold_s`; False when all are taken."""
        now = self.c.clock.time()
        with translate_errors():
            return bool(self._acquire_slot(keys=[self.k.running(rid)], args=[now, now + hold_s, cap, token]))

    def release_run_slot(self, rid: str, token: str) -> None:
        """Give the slot back and wake one call waiting for it."""
        with translate_errors():
            self._release_slot(keys=[self.k.running(rid), self.k.slot_free(rid)], args=[token])

    def wait_for_run_slot(self, rid: str, timeout_s: float) -> None:
        """Block until a slot of the rollout is given back, or `timeout_s` passes."""
        with translate_errors():
            self.c.blocking.blpop([self.k.slot_free(rid)], timeout=max(timeout_s, 0.01))

    def record(self, rid: str, result: CallResult, served: bool = False) -> None:
        """Append to the trajectory, keep the result for retries, count it; one transaction.

        Infra errors go into the trajectory (the grader must see them) but are not kept for
        replay: a retry after an infra error may run the call, since it never completed.
        """
        data = json.dumps(_bounded(result.to_dict()), ensure_ascii=False)
        k = self.k
        with translate_errors():
            pipe = self.c.r.pipeline(transaction=True)
            pipe.rpush(k.calls(rid), data)
            if result.outcome != Outcome.INFRA_ERROR:
                pipe.hset(k.results(rid), result.call_id, data)
            if served:  # the agent has now seen results from this sandbox
                pipe.hset(k.rollout(rid), "served", "1")
            pipe.hdel(k.inflight(rid), result.call_id)
            pipe.hincrby(k.rollout(rid), f"calls_{result.outcome}", 1)
            pipe.hset(k.rollout(rid), "last_used_at", result.finished_at)
            pipe.zadd(k.live, {rid: result.finished_at}, xx=True)
            pipe.hget(k.rollout(rid), "state")
            state = pipe.execute()[-1]
        if state in ENDED_STATES and self.c.archive is not None:
            # A call that finished after its rollout ended (released mid-call): archived again,
            # so the archive holds it too.
            try:
                ArchiveStore(self.c).save(rid)
            except OSError as exc:
                log.error("re-archiving rollout %s failed (it stays in Redis): %s", rid, exc)

    def count(self, rid: str) -> int:
        """How many calls the trajectory holds."""
        with translate_errors():
            return int(self.c.r.llen(self.k.calls(rid)))

    def trajectory(self, rid: str) -> list[dict[str, Any]]:
        """Every recorded call in order; from the archive once Redis no longer holds them."""
        with translate_errors():
            calls = [json.loads(x) for x in self.c.r.lrange(self.k.calls(rid), 0, -1)]
        if not calls:
            doc = ArchiveStore(self.c).load(rid)
            return list(doc["calls"]) if doc is not None else []
        return calls


def _result(raw: str | None) -> CallResult | None:
    return CallResult.from_dict(json.loads(raw)) if raw else None


def _bounded(record: dict[str, Any]) -> dict[str, Any]:
    """The record as stored: arguments past STORED_ARGUMENTS_BYTES cut to the head of their JSON."""
    text = json.dumps(record.get("arguments"), ensure_ascii=False)
    if len(text.encode()) <= STORED_ARGUMENTS_BYTES:
        return record
    head = text.encode()[:STORED_ARGUMENTS_BYTES].decode(errors="ignore")
    return {**record, "arguments": {"_truncated": {"bytes": len(text.encode()), "head": head}}}
