"""The Connect RPC wire format, as E2B's SDK speaks it to envd: JSON codec, no compression.

Unary: a POST with a JSON body, answered 200 with the JSON message, or an error status with
`{"code": "<connect code>", "message": ...}`. Server streaming: the request and every answer
message are envelopes (1 flag byte, 4-byte big-endian length, payload); the answer's content
type is exactly `application/connect+json` (the SDK compares it without parameters), and its
last envelope has flag 0x02 and carries `{}` or `{"error": {...}}`.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from fastapi.responses import JSONResponse

STREAM_CONTENT_TYPE = "application/connect+json"
END_STREAM = 0x02
_HEADER = struct.Struct(">BI")
MAX_REQUEST_BYTES = 4 * 1024 * 1024

# Connect codes and the HTTP status each maps to when answered outside a stream.
HTTP_STATUS = {
    "invalid_argument": 400,
    "unauthenticated": 401,
    "permission_denied": 403,
    "not_found": 404,
    "already_exists": 409,
    "failed_precondition": 412,
    "resource_exhausted": 429,
    "internal": 500,
    "unimplemented": 501,
    "unavailable": 503,
    "deadline_exceeded": 504,
}


class RpcError(Exception):
    """An RPC's failure, in Connect's terms (code: a key of HTTP_STATUS)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}


def unary_error(exc: RpcError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=HTTP_STATUS.get(exc.code, 500))


def envelope(message: dict[str, Any], flags: int = 0) -> bytes:
    payload = json.dumps(message, separators=(",", ":")).encode()
    return _HEADER.pack(flags, len(payload)) + payload


def end_of_stream(error: RpcError | None = None) -> bytes:
    return envelope({"error": error.body()} if error is not None else {}, END_STREAM)


def parse_unary(body: bytes) -> dict[str, Any]:
    """A unary request's JSON message. Raises RpcError(invalid_argument)."""
    return _message(body or b"{}")


def parse_stream_request(body: bytes) -> dict[str, Any]:
    """The one message of a server-streaming request. Raises RpcError(invalid_argument)."""
    if len(body) < _HEADER.size:
        raise RpcError("invalid_argument", "the request is not a Connect envelope")
    flags, length = _HEADER.unpack_from(body)
    if flags & 0x01:
        raise RpcError("unimplemented", "compressed messages are not supported; send identity")
    payload = body[_HEADER.size : _HEADER.size + length]
    if len(payload) != length:
        raise RpcError("invalid_argument", "the request's envelope is cut short")
    return _message(payload)


def _message(payload: bytes) -> dict[str, Any]:
    try:
        message = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RpcError("invalid_argument", f"the message is not JSON: {exc}") from exc
    if not isinstance(message, dict):
        raise RpcError("invalid_argument", "the message must be a JSON object")
    return message
