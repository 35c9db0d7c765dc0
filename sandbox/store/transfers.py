"""The trainer API's file bytes on their way between the API and the worker of the rollout's host.

The API and the workers share nothing but Redis (no worker listens for HTTP, and on Kubernetes
they are different pods), so an upload's body goes into a list of about-1-MiB chunks, which the
worker streams into the sandbox; a download comes back the same way. The API never holds more
than one chunk of a transfer in memory, nor does the worker. A transfer lives only as long as
its call: the API removes it when it answered, and it expires in any case.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

from .connection import Connection, translate_errors

CHUNK_BYTES = 1024 * 1024  # what one list element holds (the last one may be smaller)
READ_AHEAD = 4  # chunks fetched per round trip when reading a transfer


class TransferStore:
    def __init__(self, c: Connection) -> None:
        self.c = c
        self.k = c.keys

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex

    def append(self, transfer_id: str, data: bytes, ttl_s: int) -> None:
        """Add a chunk at the end of the transfer (and keep it from expiring for `ttl_s`)."""
        key = self.k.transfer(transfer_id)
        with translate_errors():
            pipe = self.c.raw.pipeline(transaction=False)
            pipe.rpush(key, data)
            pipe.expire(key, ttl_s)
            pipe.execute()

    def chunks(self, transfer_id: str, start: int = 0) -> Iterator[bytes]:
        """The transfer's chunks in order, a few per round trip."""
        key = self.k.transfer(transfer_id)
        index = start
        while True:
            with translate_errors():
                batch = self.c.raw.lrange(key, index, index + READ_AHEAD - 1)
            yield from batch
            if len(batch) < READ_AHEAD:
                return
            index += READ_AHEAD

    def pop(self, transfer_id: str) -> bytes | None:
        """Take the first chunk off the transfer (None when none is left): a reader that sends each
        on as it comes frees the store's memory as it goes."""
        with translate_errors():
            data: bytes | None = self.c.raw.lpop(self.k.transfer(transfer_id))
        return data

    def delete(self, transfer_id: str) -> None:
        with translate_errors():
            self.c.raw.delete(self.k.transfer(transfer_id))


class ChunkBuffer:
    """Collects small pieces into CHUNK_BYTES chunks before they go to the store (fewer round trips)."""

    def __init__(self, store: TransferStore, transfer_id: str, ttl_s: int) -> None:
        self.store, self.transfer_id, self.ttl_s = store, transfer_id, ttl_s
        self.pending = bytearray()
        self.total = 0

    def write(self, data: bytes) -> None:
        self.pending += data
        self.total += len(data)
        while len(self.pending) >= CHUNK_BYTES:
            self.store.append(self.transfer_id, bytes(self.pending[:CHUNK_BYTES]), self.ttl_s)
            del self.pending[:CHUNK_BYTES]

    def flush(self) -> None:
        if self.pending:
            self.store.append(self.transfer_id, bytes(self.pending), self.ttl_s)
            self.pending.clear()
