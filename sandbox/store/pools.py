"""Warm pools in Redis: per environment per host, a list of containers ready to be claimed.

A claim pops atomically (scripts.POOL_CLAIM), so two rollouts never get one container; a
claimed container belongs to its rollout for good and never returns to a pool.
"""

from __future__ import annotations

from collections.abc import Iterable

from . import scripts
from .connection import Connection, translate_errors

REFILL_LOCK_S = 900  # a refill of hundreds of containers finishes well within this


class PoolStore:
    def __init__(self, c: Connection) -> None:
        self.c = c
        self.k = c.keys
        self._claim = c.script(scripts.POOL_CLAIM)

    def push(self, env: str, host: str, name: str) -> None:
        with translate_errors():
            self.c.r.rpush(self.k.pool(env, host), name)

    def length(self, env: str, host: str) -> int:
        with translate_errors():
            return int(self.c.r.llen(self.k.pool(env, host)))

    def members(self, env: str, host: str) -> list[str]:
        with translate_errors():
            return list(self.c.r.lrange(self.k.pool(env, host), 0, -1))

    def remove(self, env: str, host: str, name: str) -> bool:
        """Take a container out of the pool; False if a claim took it first."""
        with translate_errors():
            return bool(self.c.r.lrem(self.k.pool(env, host), 0, name))

    def claim(self, env: str, hosts: list[str]) -> tuple[str, str] | None:
        """Take one warm container of `env` from the first of `hosts` that has one: (host, name)."""
        if not hosts:
            return None
        with translate_errors():
            got = self._claim(keys=[self.k.pool(env, h) for h in hosts], args=hosts)
        return (str(got[0]), str(got[1])) if got else None

    def sizes(self, hosts: Iterable[str], targets: dict[str, int]) -> dict[tuple[str, str], tuple[int, int]]:
        """(available, target) warm containers per (environment, host)."""
        pairs = [(env, host) for env in targets for host in hosts]
        with translate_errors():
            pipe = self.c.r.pipeline(transaction=False)
            for env, host in pairs:
                pipe.llen(self.k.pool(env, host))
            lengths = pipe.execute()
        return {pair: (n, targets[pair[0]]) for pair, n in zip(pairs, lengths, strict=True)}

    def drop_host(self, host_id: str, environments: list[str]) -> None:
        """A lost host's warm containers are gone with it: never hand them out."""
        with translate_errors():
            if environments:
                self.c.r.delete(*[self.k.pool(env, host_id) for env in environments])

    # --- refills ---
    def lock_refill(self, host: str, env: str) -> bool:
        """Become the one refill of this pool; False while another is under way."""
        with translate_errors():
            return bool(self.c.r.set(self.k.refilling(host, env), "1", nx=True, ex=REFILL_LOCK_S))

    def unlock_refill(self, host: str, env: str) -> None:
        with translate_errors():
            self.c.r.delete(self.k.refilling(host, env))

    def forget_refills(self, host: str, environments: Iterable[str]) -> int:
        """Drop the host's refill locks; return how many there were."""
        keys = [self.k.refilling(host, env) for env in environments]
        if not keys:
            return 0
        with translate_errors():
            return int(self.c.r.delete(*keys))

    def first_refill_ask(self, host: str, window_s: int) -> bool:
        """True for the first ask to refill `host` within `window_s`, across every API process."""
        with translate_errors():
            return bool(self.c.r.set(self.k.refill_asked(host), "1", nx=True, ex=window_s))
