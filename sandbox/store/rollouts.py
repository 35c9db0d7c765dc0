"""The rollout state machine in Redis: records, single-flight provisioning, ends, taints.

Transitions are Lua scripts (scripts.py), so racing API replicas and workers see one order.
Methods raise StoreUnavailable when Redis does not answer.
"""

from __future__ import annotations

import json
from typing import Any

from ..domain.outcomes import InfraReason
from ..domain.rollout import ENDED_STATES, PROVISIONING, RolloutRecord
from . import scripts
from .connection import Connection, translate_errors


class RolloutStore:
    def __init__(self, c: Connection) -> None:
        self.c = c
        self.k = c.keys
        self._ensure = c.script(scripts.ENSURE)
        self._claim = c.script(scripts.CLAIM_PROVISIONING)
        self._ready = c.script(scripts.MARK_READY)
        self._failed = c.script(scripts.MARK_FAILED)
        self._end = c.script(scripts.END)
        self._taint = c.script(scripts.TAINT)
        self._unserve = c.script(scripts.UNSERVE)
        self._provision_host = c.script(scripts.PROVISION_HOST)
        self._create_child = c.script(scripts.CREATE_CHILD)
        self._forget_child = c.script(scripts.FORGET_CHILD)

    def get(self, rid: str) -> RolloutRecord | None:
        with translate_errors():
            h = self.c.r.hgetall(self.k.rollout(rid))
        return RolloutRecord.from_hash(rid, h) if h else None

    def ensure(self, rid: str, environment: str, item: dict[str, Any] | None) -> None:
        """Create the record (state pending) if missing; never touch an existing one."""
        with translate_errors():
            self._ensure(keys=[self.k.rollout(rid)], args=[self.c.clock.time(), environment, dump_item(item)])

    def claim_provisioning(
        self, rid: str, environment: str, item: dict[str, Any] | None, stale_s: float, take_over: int = 0
    ) -> tuple[bool, str, int]:
        """Try to become the one caller that provisions `rid`: (won, state, attempt).

        `take_over`: an attempt whose host is known dead; it may be claimed again at once.
        """
        with translate_errors():
            won, state, attempt = self._claim(
                keys=[self.k.rollout(rid), self.k.live, self.k.created, self.k.wake(rid)],
                args=[self.c.clock.time(), stale_s, environment, dump_item(item), rid, take_over or ""],
            )
        return bool(won), str(state), int(attempt)

    def wait_for_change(self, rid: str, timeout_s: float) -> None:
        """Block until the rollout's provisioning ends (ready or failed) or `timeout_s` passes.

        Waiting callers of a burst block here instead of polling the record (the API's CPU
        in a cold burst of 500 fell from 44.8 to 9.8 CPU-s, docs/benchmarks.md).
        """
        with translate_errors():
            self.c.blocking.blpop([self.k.wake(rid)], timeout=max(timeout_s, 0.01))

    def set_provision_host(self, rid: str, attempt: int, host: str) -> bool:
        """A worker took provisioning attempt `attempt`: name its host, so waiters notice if it dies."""
        with translate_errors():
            return bool(self._provision_host(keys=[self.k.rollout(rid)], args=[host, attempt]))

    def mark_ready(self, rid: str, attempt: int, host: str, container_id: str, container_name: str) -> bool:
        """provisioning -> ready, only for the attempt that is still current; wakes the waiters."""
        with translate_errors():
            return bool(
                self._ready(
                    keys=[self.k.rollout(rid), self.k.live, self.k.wake(rid)],
                    args=[host, container_id, container_name, self.c.clock.time(), attempt, rid],
                )
            )

    def mark_provision_failed(
        self, rid: str, attempt: int, message: str, reason: InfraReason = InfraReason.PROVISION_FAILED
    ) -> bool:
        """End a provisioning attempt; `reason` is the infra reason the waiting callers answer with."""
        with translate_errors():
            return bool(
                self._failed(
                    keys=[self.k.rollout(rid), self.k.live, self.k.created, self.k.wake(rid)],
                    args=[message[:2000], attempt, rid, reason.value],
                )
            )

    def end(self, rid: str, state: str, reason: str) -> str:
        """Move a live rollout to an ended state; return the state it left ('' if none).

        Its keys then expire after the retention period.
        """
        if state not in ENDED_STATES:
            raise ValueError(f"{state!r} is not an ended state")
        k = self.k
        with translate_errors():
            return str(
                self._end(
                    keys=[
                        k.rollout(rid),
                        k.calls(rid),
                        k.results(rid),
                        k.inflight(rid),
                        k.live,
                        k.created,
                        k.children(rid),
                    ],
                    args=[state, self.c.clock.time(), reason, self.c.retention_s, rid],
                )
                or ""
            )

    def fail_unserved(self, rid: str, message: str) -> bool:
        """A sandbox lost before it served anything: make the rollout provisionable again."""
        with translate_errors():
            return bool(self._unserve(keys=[self.k.rollout(rid), self.k.live], args=[message[:2000], rid]))

    def taint(self, rid: str, reason: str) -> bool:
        """Mark the rollout infra-tainted; True only the first time (so it is counted once)."""
        with translate_errors():
            return bool(self._taint(keys=[self.k.rollout(rid)], args=[reason]))

    def idle_since(self, cutoff: float, limit: int = 1000) -> list[str]:
        with translate_errors():
            return list(self.c.r.zrangebyscore(self.k.live, "-inf", cutoff, start=0, num=limit))

    def created_before(self, cutoff: float, limit: int = 1000) -> list[str]:
        with translate_errors():
            return list(self.c.r.zrangebyscore(self.k.created, "-inf", cutoff, start=0, num=limit))

    def live(self) -> list[RolloutRecord]:
        """Records of every rollout holding or awaiting a container (for gauges and the reconciler)."""
        with translate_errors():
            rids = self.c.r.zrange(self.k.live, 0, -1)
            pipe = self.c.r.pipeline(transaction=False)
            for rid in rids:
                pipe.hgetall(self.k.rollout(rid))
            hashes = pipe.execute()
        return [RolloutRecord.from_hash(rid, h) for rid, h in zip(rids, hashes, strict=True) if h]

    # --- forks ---
    def create_child(self, rid: str, parent: RolloutRecord, at_call: int | None, host: str) -> bool:
        """A fork's child, provisioning (attempt 1) on the parent's host; False if the id is taken."""
        now = self.c.clock.time()
        k = self.k
        args = [
            now,
            parent.environment,
            dump_item(parent.item),
            rid,
            parent.rollout_id,
            "" if at_call is None else at_call,
            host,
        ]
        with translate_errors():
            return bool(self._create_child(keys=[k.rollout(rid), k.live, k.created], args=args))

    def forget_child(self, rid: str, parent_id: str) -> bool:
        """Erase a child whose fork failed, while it is still the fork's provisioning attempt."""
        k = self.k
        with translate_errors():
            return bool(
                self._forget_child(keys=[k.rollout(rid), k.live, k.created, k.wake(rid)], args=[rid, parent_id])
            )

    def begin_fork(self, fork_id: str, ttl_s: float) -> None:
        """Mark a fork under way, so its fresh image is not taken for an unused one."""
        with translate_errors():
            self.c.r.set(self.k.forking(fork_id), "1", ex=max(1, int(ttl_s)))

    def end_fork(self, fork_id: str) -> None:
        with translate_errors():
            self.c.r.delete(self.k.forking(fork_id))

    def fork_under_way(self, fork_id: str) -> bool:
        with translate_errors():
            return bool(self.c.r.exists(self.k.forking(fork_id)))

    def add_children(self, parent_id: str, child_ids: list[str]) -> None:
        if child_ids:
            with translate_errors():
                self.c.r.rpush(self.k.children(parent_id), *child_ids)

    def children(self, parent_id: str) -> list[str]:
        with translate_errors():
            return list(self.c.r.lrange(self.k.children(parent_id), 0, -1))

    def live_on_host(self, host_id: str) -> list[RolloutRecord]:
        """Live rollouts whose container is on `host_id`, or whose provisioning that host took."""
        return [
            r for r in self.live() if r.host == host_id or (r.state == PROVISIONING and r.provision_host == host_id)
        ]


def dump_item(item: dict[str, Any] | None) -> str:
    return json.dumps(item, ensure_ascii=False) if item is not None else ""
