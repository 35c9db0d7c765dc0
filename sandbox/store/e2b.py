"""E2B-compatible sandboxes: what E2B's API says about a sandbox that a rollout record does not.

A sandbox is a rollout of the same id (container, calls, metrics, reaper are the rollout's);
this keeps the rest: its template, metadata and sandbox-wide env vars, its envd access
token, when it started and when its timeout ends it, and the commands running now
(E2B names them by pid).
"""

from __future__ import annotations

import json
from typing import Any

from ..domain.e2b import SandboxRecord
from .connection import Connection, translate_errors


class E2BStore:
    def __init__(self, c: Connection) -> None:
        self.c = c
        self.k = c.keys

    def save(self, rec: SandboxRecord) -> None:
        with translate_errors():
            pipe = self.c.r.pipeline(transaction=True)
            pipe.hset(self.k.e2b(rec.sandbox_id), mapping=rec.to_hash())
            pipe.expire(self.k.e2b(rec.sandbox_id), self.c.retention_s)
            pipe.zadd(self.k.e2b_all, {rec.sandbox_id: rec.end_at})
            pipe.execute()

    def get(self, sid: str) -> SandboxRecord | None:
        with translate_errors():
            raw = self.c.r.hgetall(self.k.e2b(sid))
        return SandboxRecord.from_hash(sid, raw) if raw else None

    def set_end(self, sid: str, end_at: float) -> None:
        with translate_errors():
            pipe = self.c.r.pipeline(transaction=True)
            pipe.hset(self.k.e2b(sid), "end_at", repr(end_at))
            pipe.zadd(self.k.e2b_all, {sid: end_at}, xx=True)
            pipe.execute()

    def forget(self, sid: str) -> None:
        """Off the listing (killed, timed out, ended); the record stays for the retention period."""
        with translate_errors():
            pipe = self.c.r.pipeline(transaction=True)
            pipe.zrem(self.k.e2b_all, sid)
            pipe.delete(self.k.e2b_procs(sid), self.k.e2b_pid(sid))
            pipe.execute()

    def listed(self, limit: int = 10000) -> list[str]:
        with translate_errors():
            return list(self.c.r.zrange(self.k.e2b_all, 0, limit - 1))

    def timed_out(self, now: float, limit: int = 1000) -> list[str]:
        with translate_errors():
            return list(self.c.r.zrangebyscore(self.k.e2b_all, "-inf", now, start=0, num=limit))

    # --- the commands running now, by pid ---
    def start_process(self, sid: str, config: dict[str, Any]) -> int:
        with translate_errors():
            pid = int(self.c.r.incr(self.k.e2b_pid(sid)))
            pipe = self.c.r.pipeline(transaction=True)
            pipe.hset(self.k.e2b_procs(sid), str(pid), json.dumps(config))
            pipe.expire(self.k.e2b_procs(sid), self.c.retention_s)
            pipe.expire(self.k.e2b_pid(sid), self.c.retention_s)
            pipe.execute()
        return pid

    def end_process(self, sid: str, pid: int) -> None:
        with translate_errors():
            self.c.r.hdel(self.k.e2b_procs(sid), str(pid))

    def processes(self, sid: str) -> dict[int, dict[str, Any]]:
        with translate_errors():
            raw = self.c.r.hgetall(self.k.e2b_procs(sid))
        return {int(pid): json.loads(config) for pid, config in raw.items()}
