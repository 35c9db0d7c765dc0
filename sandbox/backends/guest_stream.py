"""Client of the guest's byte-stream ops, upload and download (sandbox/guest/guest_protocol_stream.py).

Like guest_client.py, one request per connection over the container's unix socket; the bytes
travel raw after (upload) or before (download) the JSON reply line, never inside it.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..domain.errors import InternalError
from ..guest.guest_protocol import PING
from ..guest.guest_protocol_stream import FRAME_MAX, MAX_REPLY_LINE, DownloadRequest, UploadRequest
from .guest_client import GuestProtocolError, GuestUnreachable, call_guest


def _connect(socket_path: Path, timeout_s: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        sock.connect(str(socket_path))
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        sock.close()
        raise GuestUnreachable(str(exc)) from exc
    return sock


def _reply(line: bytes) -> dict[str, Any]:
    if not line.endswith(b"\n"):
        raise GuestUnreachable("guest closed the connection without a reply")
    try:
        reply = json.loads(line)
    except json.JSONDecodeError as exc:
        raise GuestProtocolError(f"guest reply is not JSON: {exc}") from exc
    if not isinstance(reply, dict):
        raise GuestProtocolError("guest reply is not an object")
    return reply


def upload(socket_path: Path, header: UploadRequest, chunks: Iterable[bytes], timeout_s: float) -> dict[str, Any]:
    """Send the header line and then `header["size"]` bytes from `chunks`; return the guest's reply.

    The guest may answer before taking every byte (a request it refuses): a broken pipe while
    sending is not a failure by itself, the reply line decides.
    """
    sock = _connect(socket_path, timeout_s)
    try:
        with sock.makefile("rb") as rfile:
            try:
                sock.sendall(json.dumps(header).encode() + b"\n")
                for chunk in chunks:
                    sock.sendall(chunk)
                sock.shutdown(socket.SHUT_WR)  # fewer bytes than announced: the guest sees the end
            except (BrokenPipeError, ConnectionResetError):
                pass  # the reply says why the guest stopped reading
            try:
                return _reply(rfile.readline(MAX_REPLY_LINE))
            except ConnectionResetError as exc:
                raise GuestUnreachable(f"guest closed the connection: {exc}") from exc
    finally:
        sock.close()


def download(
    socket_path: Path, header: DownloadRequest, sink: Callable[[bytes], None], timeout_s: float
) -> dict[str, Any]:
    """Send the header line, hand each frame's bytes to `sink`, return the reply line.

    The reply's status says whether what `sink` got is the whole thing (only "ok" does).
    """
    sock = _connect(socket_path, timeout_s)
    try:
        with sock.makefile("rb") as rfile:
            sock.sendall(json.dumps(header).encode() + b"\n")
            try:
                while True:
                    line = rfile.readline(64)
                    if line.startswith(b"{"):  # an error reply, alone
                        return _reply(line + (b"" if line.endswith(b"\n") else rfile.readline(MAX_REPLY_LINE)))
                    try:
                        size = int(line, 16)
                    except ValueError as exc:
                        if not line:
                            raise GuestUnreachable("guest closed the connection mid-stream") from exc
                        raise GuestProtocolError(f"bad frame header from the guest: {line[:32]!r}") from exc
                    if size == 0:
                        return _reply(rfile.readline(MAX_REPLY_LINE))
                    if size > FRAME_MAX:
                        raise GuestProtocolError(f"guest frame of {size} bytes (at most {FRAME_MAX})")
                    data = rfile.read(size)
                    if len(data) != size:
                        raise GuestUnreachable("guest closed the connection mid-frame")
                    sink(data)
            except ConnectionResetError as exc:
                raise GuestUnreachable(f"guest closed the connection: {exc}") from exc
    finally:
        sock.close()


def guarded(
    socket_path: Path, send: Callable[[], dict[str, Any]], require_running: Callable[[], Any], wait_s: float = 3.0
) -> dict[str, Any]:
    """Run one stream op (`send`) against a guest that answers, mapping failures to the taxonomy.

    A byte stream has no `docker exec` fallback (the engine's exec cannot carry it at speed),
    so a guest that does not answer gets `wait_s` to come back (the container's loop restarts
    it within 0.2 s); past that, the container's state decides: gone is SandboxLost, still
    running is ours (InternalError). Nothing was sent before the guest answered a ping, so a
    failure there never leaves half a transfer behind.
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            if call_guest(socket_path, PING, 2.0).get("ok"):
                break
        except (GuestUnreachable, GuestProtocolError, OSError):
            pass
        require_running()  # SandboxLost when the container is gone
        if time.monotonic() >= deadline:
            raise InternalError(f"the sandbox's guest did not answer within {wait_s:g} s; a transfer needs it")
        time.sleep(0.1)
    try:
        return send()
    except TimeoutError as exc:
        require_running()
        raise InternalError("the sandbox's guest did not finish the transfer in time") from exc
    except GuestUnreachable as exc:
        require_running()
        raise InternalError(f"the sandbox's guest went away during the transfer: {exc}") from exc
    except GuestProtocolError as exc:
        raise InternalError(str(exc)) from exc
