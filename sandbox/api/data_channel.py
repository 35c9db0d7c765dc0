"""API side of a worker's data port (worker/data_port.py): an upload's body streamed on to the
worker while it still arrives from the client, a download's frames taken in as the sandbox's
reader sends them.

A download is spooled (in memory up to SPOOL_MEMORY_BYTES, then in a temporary file) before any
byte goes to the client: the answer's status must say whether the reader got the whole thing
(a 404, a 413 when a tree is too large, a 403 for an unreadable file inside it), and only the
worker's reply, after the last frame, says that. The upload, whose answer comes after its
last byte anyway, needs no spool.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import AsyncIterator
from typing import IO, Any

import anyio
from anyio.abc import SocketStream

CONNECT_TIMEOUT_S = 5.0
SPOOL_MEMORY_BYTES = 64 * 1024 * 1024  # per download in flight; larger ones go to a temporary file
RECEIVE_BYTES = 1024 * 1024
SEND_BYTES = 1024 * 1024  # a download is sent on to the client in pieces of this size
# What a dead or vanished worker connection raises; the call's own reply then says what happened.
CHANNEL_ERRORS = (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream,
                  anyio.IncompleteRead, ValueError)  # fmt: skip


async def open_channel(address: str, transfer: str) -> SocketStream:
    """Connect to a worker's data port ("host:port") and name the transfer. Raises OSError."""
    host, _, port = address.rpartition(":")
    with anyio.fail_after(CONNECT_TIMEOUT_S):
        try:
            stream = await anyio.connect_tcp(host, int(port))
        except TimeoutError as exc:
            raise OSError(f"no connection to {address}") from exc
    await stream.send(json.dumps({"transfer": transfer}).encode() + b"\n")
    return stream


async def send_body(stream: SocketStream, body: AsyncIterator[bytes], size: int) -> int:
    """Pass the request body on as it arrives; at most `size` bytes (the declared length)."""
    sent = 0
    async for piece in body:
        piece = piece[: size - sent]
        if piece:
            await stream.send(piece)
            sent += len(piece)
    with contextlib.suppress(*CHANNEL_ERRORS):
        await stream.send_eof()
    return sent


async def receive_frames(stream: SocketStream, spool: Spool) -> int:
    """Frames into the spool up to the 0-frame; the bytes received. Each piece read goes to the
    spool as it is (no frame is put together in memory first). Raises anyio.EndOfStream when the
    connection ends before the 0-frame, ValueError for a frame header that is not one."""
    pending = b""  # bytes read past the end of a frame: the next header, maybe data after it
    total = 0
    while True:
        while b"\n" not in pending:
            if len(pending) > 32:
                raise ValueError("bad frame header from the worker")
            pending += await stream.receive(RECEIVE_BYTES)
        header, _, pending = pending.partition(b"\n")
        left = int(header, 16)
        if left == 0:
            return total
        total += left
        while left:
            data = pending or await stream.receive(min(left, RECEIVE_BYTES))
            pending = data[left:]
            piece = data[:left] if len(data) > left else data
            spool.write(piece)
            left -= len(piece)


class Spool:
    """A download's bytes as they came: the pieces themselves in memory (no copy), or past
    `memory_bytes` a temporary file."""

    def __init__(self, memory_bytes: int = SPOOL_MEMORY_BYTES) -> None:
        self.memory_bytes = memory_bytes
        self.pieces: list[bytes] = []
        self.size = 0
        self.file: IO[bytes] | None = None

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.file is None and self.size <= self.memory_bytes:
            self.pieces.append(data)
            return
        if self.file is None:
            self.file = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
            for piece in self.pieces:
                self.file.write(piece)
            self.pieces.clear()
        self.file.write(data)

    async def read(self) -> AsyncIterator[bytes]:
        """Its bytes from the start; then it is closed (its file gone)."""
        try:
            if self.file is None:
                for piece in self.pieces:
                    yield piece
                return
            self.file.seek(0)
            while data := await anyio.to_thread.run_sync(self.file.read, SEND_BYTES):
                yield data
        finally:
            self.close()

    def close(self) -> None:
        self.pieces.clear()
        if self.file is not None:
            self.file.close()


class Outcome:
    """What a call run in a thread beside a channel ended with (an answer, or the exception to raise)."""

    def __init__(self) -> None:
        self.answer: Any = None
        self.error: BaseException | None = None

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.answer
