"""The worker's data port: the trainer API's file bytes straight between the API and this host.

Why not Redis, like everything else between the API and a worker: a 50 MiB upload through
Redis is pushed in by the API, stored, read back out by the worker, with redis-py parsing
every byte on both sides, and none of it can start before the last byte is in; measured, it
took twice as long as `docker cp` of the same tree (docs/clients.md). Through this port the
API streams the body to the worker while it still arrives, the worker streams it into the
guest, and the guest into the sandbox's tar: every stage runs at once.

One TCP connection per transfer. The API connects, sends one line `{"transfer": ID}`, then
for an upload exactly the upload's size in bytes; for a download it reads frames (the guest's
framing, guest_protocol_stream.py) up to the 0-frame. The call thread running that transfer's
call (it came through the host's call queue as usual, with the same ID) claims the connection
by its ID. An ID is 128 random bits that travel only inside the call request, through Redis:
a connection naming no call's transfer is dropped after a wait, having touched nothing.

When the port is off (SANDBOX_WORKER_DATA_HOST empty), or the API cannot know where to reach
it, the bytes go through Redis instead (store/transfers.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..guest.guest_protocol_stream import FRAME_MAX, frame_header

log = logging.getLogger(__name__)
TRANSFER_ID = re.compile(r"[0-9a-f]{32}")
HEADER_TIMEOUT_S = 10.0  # for the API's first line
PARK_S = 180.0  # how long a connection waits for its call (queued behind others, at most the queue timeout)
IO_TIMEOUT_S = 60.0  # a peer that neither sends nor reads for this long is gone


@dataclass
class Slot:
    """One transfer's connection, parked until its call claims it."""

    sock: socket.socket
    rfile: Any
    parked_until: float  # monotonic; unclaimed by then, it is dropped
    claimed: bool = False
    done: threading.Event = field(default_factory=threading.Event)


class DataPort:
    def __init__(self, host: str, port: int, advertise: str = "") -> None:
        self.host, self.port, self.advertise = host, port, advertise
        self._slots: dict[str, Slot] = {}
        self._cond = threading.Condition()
        self._server: socketserver.ThreadingTCPServer | None = None

    def start(self) -> None:
        port = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                port._serve(self.connection, self.rfile)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True
            request_queue_size = 256

        self._server = Server((self.host, self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, name="data-port", daemon=True).start()

    @property
    def address(self) -> str:
        """host:port for the API ("" when it cannot be told: bound to every address, none advertised)."""
        if self._server is None:
            return ""
        host = self.advertise or ("" if self.host in ("0.0.0.0", "::") else self.host)
        return f"{host}:{self.port}" if host else ""

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _serve(self, sock: socket.socket, rfile: Any) -> None:
        sock.settimeout(HEADER_TIMEOUT_S)
        try:
            header = json.loads(rfile.readline(256))
            transfer = str(header["transfer"])
        except (OSError, ValueError, KeyError, TypeError):
            return
        if not TRANSFER_ID.fullmatch(transfer):
            return
        sock.settimeout(IO_TIMEOUT_S)
        slot = Slot(sock, rfile, time.monotonic() + PARK_S)
        with self._cond:
            self._slots[transfer] = slot
            self._cond.notify_all()
        try:
            # The call thread works on the connection; this thread only keeps it open meanwhile.
            while not slot.done.wait(1.0):
                with self._cond:
                    if not slot.claimed and time.monotonic() > slot.parked_until:
                        del self._slots[transfer]  # no call claimed it: dropped, nothing touched
                        return
        finally:
            with self._cond:
                if self._slots.get(transfer) is slot:
                    del self._slots[transfer]

    def claim(self, transfer: str, timeout_s: float) -> Slot | None:
        """The transfer's connection, waiting up to `timeout_s` for the API to connect; None if it never did.
        Set the slot's `done` when finished with it (the connection is then closed)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                slot = self._slots.get(transfer)
                if slot is not None and not slot.claimed:
                    slot.claimed = True
                    return slot
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)


def body_chunks(slot: Slot, size: int) -> Iterator[bytes]:
    """Exactly `size` bytes of an upload as they arrive (fewer if the API stops sending)."""
    left = size
    while left > 0:
        data = slot.rfile.read1(min(FRAME_MAX, left))
        if not data:
            return
        left -= len(data)
        yield data


def frame_sink(slot: Slot) -> tuple[Callable[[bytes], None], Callable[[], None]]:
    """A download's sink (each piece one frame to the API) and the call that ends the frames."""

    def write(data: bytes) -> None:
        slot.sock.sendall(frame_header(len(data)) + data)

    def end() -> None:
        with contextlib.suppress(OSError):
            slot.sock.sendall(frame_header(0))

    return write, end
