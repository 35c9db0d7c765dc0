"""Client of the in-container guest executor over its unix socket (protocol: sandbox/guest/guest_protocol.py).

One request per connection: a JSON line out, a JSON line back. No network is needed:
the socket lives in a host directory bind-mounted into the container.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from ..guest.guest_protocol import Request

MAX_REPLY_BYTES = 8 * 1024 * 1024


class GuestUnreachable(Exception):
    """Nothing listens on the socket: the guest (or its container) is gone."""


class GuestProtocolError(Exception):
    """The guest answered something that is not a reply."""


def call_guest(socket_path: Path, payload: Request, timeout_s: float) -> dict[str, Any]:
    """Send `payload` to the guest at `socket_path` and wait up to `timeout_s` for its reply."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        try:
            sock.connect(str(socket_path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise GuestUnreachable(str(exc)) from exc
        sock.sendall(json.dumps(payload).encode() + b"\n")
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError as exc:
                raise GuestUnreachable(f"guest closed the connection: {exc}") from exc
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if chunk.endswith(b"\n"):
                break
            if size > MAX_REPLY_BYTES:
                raise GuestProtocolError("guest reply too large")
    finally:
        sock.close()
    data = b"".join(chunks)
    if not data:
        raise GuestUnreachable("guest closed the connection without a reply")
    try:
        reply = json.loads(data)
    except json.JSONDecodeError as exc:
        raise GuestProtocolError(f"guest reply is not JSON: {exc}") from exc
    if not isinstance(reply, dict):
        raise GuestProtocolError("guest reply is not an object")
    return reply
