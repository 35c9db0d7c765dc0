"""Tool calls waiting for their host, and the workers' replies (sandbox/worker/call_queue.py
says why calls take Redis lists and not Celery tasks).

Each host has two lists: first calls of rollouts, read first, and the others. A reply goes
on a list of its own that the API blocks on, so any API replica can wait for any worker.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from ..domain.messages import CallReply, CallRequest, ForkReply
from .calls import ABANDONED
from .connection import Connection, translate_errors


class QueueStore:
    def __init__(self, c: Connection) -> None:
        self.c = c
        self.k = c.keys

    def push_call(self, host: str, request: CallRequest, first: bool, ttl_s: int) -> None:
        """Queue a call for `host`; the list expires once no call was pushed for `ttl_s`
        (a host that never comes back leaves nothing behind)."""
        key = self.k.call_queue(host, first)
        with translate_errors():
            pipe = self.c.r.pipeline(transaction=False)
            pipe.rpush(key, json.dumps(request.to_wire(), ensure_ascii=False))
            pipe.expire(key, ttl_s)
            pipe.execute()

    def pop_call(self, host: str, timeout_s: float) -> CallRequest | None:
        """The next call for `host`, first calls of rollouts before the others; None after `timeout_s`."""
        keys = [self.k.call_queue(host, first=True), self.k.call_queue(host, first=False)]
        with translate_errors():
            got = self.c.blocking.blpop(keys, timeout=timeout_s)
        return CallRequest.from_wire(json.loads(got[1])) if got else None

    def depths(self, hosts: Iterable[str]) -> dict[str, tuple[int, int]]:
        """(first calls, other calls) waiting per host."""
        hosts = list(hosts)
        with translate_errors():
            pipe = self.c.r.pipeline(transaction=False)
            for host in hosts:
                pipe.llen(self.k.call_queue(host, first=True))
                pipe.llen(self.k.call_queue(host, first=False))
            n = pipe.execute()
        return {host: (n[2 * i], n[2 * i + 1]) for i, host in enumerate(hosts)}

    def push_reply(self, reply_id: str, reply: CallReply | ForkReply, ttl_s: int = 300) -> None:
        key = self.k.reply(reply_id)
        with translate_errors():
            pipe = self.c.r.pipeline(transaction=False)
            pipe.rpush(key, json.dumps(reply.to_wire(), ensure_ascii=False))
            pipe.expire(key, ttl_s)
            pipe.execute()

    def wait_reply(self, reply_id: str, timeout_s: float) -> CallReply | None:
        got = self._wait(reply_id, timeout_s)
        return CallReply.from_wire(got) if got is not None else None

    def wait_fork_reply(self, reply_id: str, timeout_s: float) -> ForkReply | None:
        got = self._wait(reply_id, timeout_s)
        return ForkReply.from_wire(got) if got is not None else None

    def mark_started(self, reply_id: str) -> None:
        with translate_errors():
            self.c.r.set(self.k.started(reply_id), "1", ex=3600)

    def _wait(self, reply_id: str, timeout_s: float) -> dict[str, Any] | None:
        with translate_errors():
            got = self.c.blocking.blpop([self.k.reply(reply_id)], timeout=max(timeout_s, 0.01))
        return json.loads(got[1]) if got else None

    def abandon_unstarted(self, reply_id: str) -> bool:
        """The API stops waiting for a call no worker has started: True if none had (then none
        ever will: CallStore.begin_execution sees the mark and does not run it)."""
        with translate_errors():
            return bool(self.c.r.set(self.k.started(reply_id), ABANDONED, nx=True, ex=3600))

    def was_started(self, reply_id: str) -> bool:
        """Whether a worker took the call (then no reply means the worker was lost)."""
        with translate_errors():
            return bool(self.c.r.exists(self.k.started(reply_id)))
