"""Sandbox host registrations in Redis; domain.hosts judges them (up, full, quarantined, down)."""

from __future__ import annotations

from typing import Any

from .connection import Connection, translate_errors

HOST_RECORD_TTL_S = 86400  # a dead host's record stays a day, so it shows as down


class HostStore:
    def __init__(self, c: Connection) -> None:
        self.c = c
        self.k = c.keys

    def register(self, host_id: str, info: dict[str, Any]) -> None:
        """A worker's heartbeat. The record outlives the worker by a day, so a dead host shows as down."""
        record = {k: str(v) for k, v in info.items()} | {"heartbeat_at": str(self.c.clock.time())}
        with translate_errors():
            pipe = self.c.r.pipeline(transaction=True)
            pipe.hset(self.k.host(host_id), mapping=record)
            pipe.expire(self.k.host(host_id), HOST_RECORD_TTL_S)
            pipe.sadd(self.k.hosts, host_id)
            pipe.execute()

    def registrations(self) -> dict[str, dict[str, str]]:
        """Every host's latest registration, alive or not (domain.hosts.views judges them)."""
        with translate_errors():
            ids = sorted(self.c.r.smembers(self.k.hosts))
            pipe = self.c.r.pipeline(transaction=False)
            for host_id in ids:
                pipe.hgetall(self.k.host(host_id))
            infos = pipe.execute()
            gone = [h for h, info in zip(ids, infos, strict=True) if not info]
            if gone:  # silent for a day: forget it
                self.c.r.srem(self.k.hosts, *gone)
        return {h: info for h, info in zip(ids, infos, strict=True) if info}

    def mark_swept(self, host_id: str, heartbeat_at: str) -> bool:
        """Remember that a down host's rollouts were ended, once per outage: False if done already."""
        with translate_errors():
            return bool(self.c.r.set(self.k.swept(host_id, heartbeat_at), "1", nx=True, ex=HOST_RECORD_TTL_S))
