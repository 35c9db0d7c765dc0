"""What the guest's shell and read_file ops share: request field checks, the output buffer.

Part of the guest executor (guest.py); stdlib only. The protocol: guest_protocol.py.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

CHUNK = 65536  # bytes per read from a command's pipe or a file


class BadRequest(Exception):
    """A request the client got wrong; answered with {"error": ...}."""


class HeadTailBuffer:
    """Keeps the first and last bytes of a stream so huge outputs use bounded memory."""

    def __init__(self, cap: int) -> None:
        self.head_cap = max(0, cap) // 2
        self.tail_cap = max(0, cap) - self.head_cap
        self.head, self.tail, self.total = bytearray(), bytearray(), 0

    def write(self, data: bytes) -> None:
        self.total += len(data)
        room = self.head_cap - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data and self.tail_cap:
            self.tail += data[-self.tail_cap :]
            excess = len(self.tail) - self.tail_cap
            if excess > 0:
                del self.tail[:excess]

    @property
    def dropped(self) -> int:
        return self.total - len(self.head) - len(self.tail)

    def text(self) -> str:
        """Assemble before decoding so a character cut at the seam becomes one U+FFFD."""
        middle = f"\n[... {self.dropped} bytes omitted ...]\n".encode() if self.dropped else b""
        return bytes(self.head + middle + self.tail).decode("utf-8", errors="replace")


def number_field(req: Mapping[str, Any], name: str, default: float) -> float:
    value = req.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRequest(f"'{name}' must be a finite number")
    return float(value)


def int_field(req: Mapping[str, Any], name: str, default: int) -> int:
    value = req.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequest(f"'{name}' must be a non-negative integer")
    return value
