"""Gradings that ran tests: their stored answers and the claim that makes them run once.

A test run changes the sandbox (restored files, hidden tests written) and takes seconds to
minutes, so a second request for the same rollout must get the first answer, and a
concurrent duplicate must wait for it rather than run the tests again.
"""

from __future__ import annotations

import json
from typing import Any

from .archive import ArchiveStore
from .connection import Connection, translate_errors


class GradeStore:
    def __init__(self, c: Connection) -> None:
        self.c = c
        self.k = c.keys

    def stored(self, rid: str) -> dict[str, Any] | None:
        """The stored answer; from the archive once Redis no longer holds it."""
        with translate_errors():
            raw = self.c.r.get(self.k.grade(rid))
        if raw:
            return dict(json.loads(raw))
        doc = ArchiveStore(self.c).load(rid)
        return doc.get("grade") if doc is not None else None

    def claim(self, rid: str, token: str, hold_s: float) -> bool:
        """Take the rollout's grading for `hold_s` (then a retry may take it over: its runner died)."""
        with translate_errors():
            return bool(self.c.r.set(self.k.grading(rid), token, nx=True, ex=max(1, int(hold_s))))

    def save(self, rid: str, response: dict[str, Any], token: str) -> None:
        """Keep the answer for the retention period and end the claim."""
        with translate_errors():
            pipe = self.c.r.pipeline(transaction=True)
            pipe.set(self.k.grade(rid), json.dumps(response), ex=self.c.retention_s)
            pipe.delete(self.k.grading(rid))
            pipe.execute()

    def abandon(self, rid: str, token: str) -> None:
        """Give the claim up without an answer (an infra failure): a retry finds the rollout tainted."""
        with translate_errors():
            if self.c.r.get(self.k.grading(rid)) == token:
                self.c.r.delete(self.k.grading(rid))
