"""Ended rollouts on disk: Redis holds live state, the archive holds what training needs later.

A training run of 500 rollouts x 30 calls x 8 KiB per step writes over 100 MB a step; a week of
it cannot live in Redis. So when a rollout ends, its record, trajectory and stored grade go to
one gzip-compressed JSON document on disk (a format every tool reads: `zcat | jq`), and its
Redis keys then expire after SANDBOX_ARCHIVE__REDIS_TTL_S instead of the full retention. The
views (GET /v1/rollouts/{id}, /trajectory, grading) read through: Redis first, then the archive.

Layout: `<dir>/<2 hex of sha256(id)>/<id's first 64 plain characters>--<32 hex of sha256(id)>.json.gz`,
so no directory holds more than 1/256 of the rollouts, any id makes a valid file name, and a
rollout's file is found from its id alone (no index). A file
is written whole to a temporary name and renamed into place: a reader sees the old or the new
document, never half of one. Several processes (API replicas, workers) may archive the same
rollout at once (a call recorded after its end, a grade): the last complete write wins, and
each is a full, consistent document of what Redis held at that moment.

Settings: SANDBOX_ARCHIVE__DIR (unset: no archive, ended rollouts stay in Redis for
SANDBOX_LIFECYCLE__RETENTION_S), SANDBOX_ARCHIVE__REDIS_TTL_S. Files are not pruned here: the
archive is the durable copy; prune it (or ship it to object storage) with the operator's tools.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..domain.errors import StoreUnavailable
from ..domain.rollout import RolloutRecord
from .connection import Connection, translate_errors

FORMAT = "rollout-sandbox-archive/1"
MAX_READABLE = 64  # characters of the id kept readable in its file's name


class RolloutArchive:
    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def path(self, rid: str) -> Path:
        # Named by the id's hash: any id (up to the API's limit, in any script) makes a valid
        # file name of fixed length; a readable prefix of the id's plain characters helps people.
        digest = hashlib.sha256(rid.encode()).hexdigest()
        readable = re.sub(r"[^A-Za-z0-9._-]", "_", rid[:MAX_READABLE])
        return self.dir / digest[:2] / f"{readable}--{digest[:32]}.json.gz"

    def write(self, rid: str, record: dict[str, Any], calls: list[dict[str, Any]], grade: Any) -> int:
        """Write (or replace) the rollout's document; its size in bytes. Raises OSError."""
        doc = {
            "format": FORMAT,
            "rollout_id": rid,
            "archived_at": time.time(),
            "record": record,
            "calls": calls,
            "grade": grade,
        }
        target = self.path(rid)
        target.parent.mkdir(parents=True, exist_ok=True)
        data = gzip.compress(json.dumps(doc, ensure_ascii=False).encode(), compresslevel=5)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return len(data)

    def read(self, rid: str) -> dict[str, Any] | None:
        """The rollout's document, or None if it was never archived. Raises OSError (unreadable)."""
        try:
            with gzip.open(self.path(rid), "rb") as f:
                doc: dict[str, Any] = json.loads(f.read())
        except FileNotFoundError:
            return None
        return doc


class ArchiveStore:
    """The store's side of the archive: what Redis holds of an ended rollout, written out, and
    read back when Redis no longer has it. A no-op without SANDBOX_ARCHIVE__DIR."""

    def __init__(self, c: Connection) -> None:
        self.c = c
        self.k = c.keys

    @property
    def enabled(self) -> bool:
        return self.c.archive is not None

    def save(self, rid: str) -> int:
        """Archive what Redis holds of the rollout now, then let its keys expire soon; the
        document's size (0: nothing to archive). Raises OSError (nothing shortened then)."""
        if self.c.archive is None:
            return 0
        k = self.k
        with translate_errors():
            pipe = self.c.r.pipeline(transaction=True)
            pipe.hgetall(k.rollout(rid))
            pipe.lrange(k.calls(rid), 0, -1)
            pipe.get(k.grade(rid))
            pipe.lrange(k.children(rid), 0, -1)
            record, calls, grade, children = pipe.execute()
        if not record:
            return 0
        record = {**record, "children": children}
        size = self.c.archive.write(rid, record, [json.loads(c) for c in calls], json.loads(grade) if grade else None)
        with translate_errors():
            pipe = self.c.r.pipeline(transaction=False)
            for key in (k.rollout(rid), k.calls(rid), k.results(rid), k.inflight(rid), k.children(rid), k.grade(rid)):
                pipe.expire(key, self.c.archived_ttl_s, lt=True)  # only ever sooner
            pipe.execute()
        return size

    def holds(self, rid: str) -> bool:
        """Whether the rollout was archived (it ended): a stat, not a read."""
        return self.c.archive is not None and self.c.archive.path(rid).exists()

    def record(self, rid: str) -> RolloutRecord | None:
        """The archived record of a rollout Redis no longer holds (with its children), or None."""
        doc = self.load(rid)
        if doc is None:
            return None
        h = dict(doc["record"])
        children = tuple(h.pop("children", ()))
        return replace(RolloutRecord.from_hash(rid, h), children=children)

    def load(self, rid: str) -> dict[str, Any] | None:
        """The archived document of a rollout Redis no longer holds, or None. Raises StoreUnavailable."""
        if self.c.archive is None:
            return None
        try:
            return self.c.archive.read(rid)
        except (OSError, ValueError) as exc:
            raise StoreUnavailable(f"the archive of rollout {rid!r} cannot be read: {exc}") from exc
