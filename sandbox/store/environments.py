"""Environment definitions in Redis, so every API replica and worker sees the same ones, and
each host's preparation state of them."""

from __future__ import annotations

import json
from typing import Any

import redis

from ..domain.environment import Environment
from .connection import Connection, translate_errors

FILES_PER_COMMAND = 5000  # SADD arguments per command when storing a large workspace's file list


class EnvironmentStore:
    def __init__(self, c: Connection) -> None:
        self.c = c
        self.k = c.keys

    def save(self, env: Environment, files: list[str]) -> None:
        """Store a definition and its workspace's file list, in one transaction."""
        files_key = self.k.environment_files(env.definition_digest)
        with translate_errors():
            pipe = self.c.r.pipeline(transaction=True)
            pipe.delete(files_key)
            for i in range(0, len(files), FILES_PER_COMMAND):
                pipe.sadd(files_key, *files[i : i + FILES_PER_COMMAND])
            pipe.set(self.k.environment(env.name), env.model_dump_json())
            pipe.sadd(self.k.environments, env.name)
            pipe.execute()

    def delete(self, name: str) -> Environment | None:
        """Retire a definition: no new rollout can pick it; None when none is registered.

        The definition and its file list stay readable for the retention period under a retired
        key, so rollouts already using it keep working and grade against the right files. The
        file list is keyed by definition digest and may be shared with another environment of
        the same content: it only gets an expiry when no registered environment shares it. WATCH
        makes that check and the retirement one step against a racing registration.
        """
        key = self.k.environment(name)
        retention = self.c.retention_s
        with translate_errors(), self.c.r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(key, self.k.environments)
                    raw = pipe.get(key)
                    if not raw:
                        pipe.unwatch()
                        return None
                    env = Environment.model_validate_json(raw)
                    files_key = self.k.environment_files(env.definition_digest)
                    pipe.watch(files_key)
                    others = [self.k.environment(n) for n in pipe.smembers(self.k.environments) if n != name]
                    shared = any(
                        Environment.model_validate_json(o).definition_digest == env.definition_digest
                        for o in (pipe.mget(others) if others else [])
                        if o
                    )
                    pipe.multi()
                    pipe.set(self.k.retired_environment(name), raw, ex=retention)
                    pipe.delete(key, self.k.preparation(name))
                    pipe.srem(self.k.environments, name)
                    if not shared:
                        pipe.expire(files_key, retention)
                    pipe.execute()
                    return env
                except redis.WatchError:
                    continue  # a registration changed what we read: look again

    def load_retired(self, name: str) -> Environment | None:
        with translate_errors():
            raw = self.c.r.get(self.k.retired_environment(name))
        return Environment.model_validate_json(raw) if raw else None

    def load(self, name: str) -> Environment | None:
        with translate_errors():
            raw = self.c.r.get(self.k.environment(name))
        return Environment.model_validate_json(raw) if raw else None

    def names(self) -> set[str]:
        with translate_errors():
            return set(self.c.r.smembers(self.k.environments))

    def files(self, digest: str) -> set[str]:
        with translate_errors():
            return set(self.c.r.smembers(self.k.environment_files(digest)))

    def set_preparation(self, name: str, host: str, state: dict[str, Any]) -> None:
        with translate_errors():
            self.c.r.hset(self.k.preparation(name), host, json.dumps(state))

    def preparation(self, name: str) -> dict[str, Any]:
        with translate_errors():
            raw = self.c.r.hgetall(self.k.preparation(name))
        return {host: json.loads(v) for host, v in raw.items()}

    def lock_preparation(self, host: str, tag: str, token: str, ttl_s: int) -> bool:
        """Become the one process of `host` preparing image `tag`."""
        with translate_errors():
            return bool(self.c.r.set(self.k.preparation_lock(host, tag), token, nx=True, ex=ttl_s))

    def unlock_preparation(self, host: str, tag: str, token: str) -> None:
        """Release the lock if it is still ours (it may have expired and been taken)."""
        key = self.k.preparation_lock(host, tag)
        with translate_errors():
            if self.c.r.get(key) == token:
                self.c.r.delete(key)
