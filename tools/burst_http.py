"""The burst benchmark's HTTP client for the measured calls: a minimal keep-alive HTTP/1.1
connection (Conn) and one tool call over it (post_call), answered as a Call.

On a small machine the load generator competes with the service it measures, and httpx costs
~30x the CPU per call; control calls (environments, releases) still use httpx (Session.client).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import docker
import httpx

from tools.burst_measure import Progress

HTTP_TIMEOUT_S = 900.0  # longer than any server-side deadline: we record the service's answer


@dataclass
class Call:
    index: int
    status: int
    outcome: str
    reason: str
    start: float
    end: float

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.outcome == "ok"


@dataclass
class Session:
    url: str
    headers: dict[str, str]
    progress: Progress
    engine: docker.DockerClient
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    live: set[str] = field(default_factory=set)  # rollouts this run holds a container for
    roots: dict[str, int] = field(default_factory=dict)  # the API and worker processes

    def client(self, connections: int) -> httpx.AsyncClient:
        n = connections + 8
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
        return httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=HTTP_TIMEOUT_S, limits=limits)

    def rollout_ids(self, phase: str, n: int) -> list[str]:
        return [f"bench-{self.tag}-{phase}-{i}" for i in range(n)]


def tool_body(tool: str, rid: str, args: dict[str, Any], item: dict[str, Any] | None) -> dict[str, Any]:
    body = {
        "type": "function_call",
        "id": f"fc_{uuid.uuid4().hex[:8]}",
        "call_id": f"call_{uuid.uuid4().hex}",
        "name": tool,
        "arguments": json.dumps(args),
        "trace_id": rid,
    }
    return {**body, "item": item} if item is not None else body


def parse_answer(status: int, headers: Any, body: bytes) -> tuple[int, str, str]:
    """(HTTP status, outcome header, reason header or the JSON error code)."""
    reason = headers.get("x-sandbox-reason", "")
    if not reason and status != 200:
        try:
            reason = str(json.loads(body)["error"]["code"])
        except (ValueError, KeyError, TypeError):
            reason = "unparsable_error_body"
    return status, headers.get("x-sandbox-outcome", ""), reason


class Conn:
    """One keep-alive HTTP/1.1 connection for the measured calls. The load generator shares the
    machine with the service: httpx spends ~5 ms of CPU per call here, this ~0.2 ms."""

    def __init__(self, s: Session) -> None:
        url = httpx.URL(s.url)
        self.host, self.port = url.host, url.port or 80
        fixed = {"Host": f"{self.host}:{self.port}", "Content-Type": "application/json", **s.headers}
        self.fixed = "".join(f"{k}: {v}\r\n" for k, v in fixed.items())
        self.io: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        data = json.dumps(body).encode()
        request = f"POST {path} HTTP/1.1\r\n{self.fixed}Content-Length: {len(data)}\r\n\r\n".encode() + data
        try:
            async with asyncio.timeout(HTTP_TIMEOUT_S):
                head, reader = await self._send(request)
                lines = head.decode("latin-1").split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
                if "content-length" not in headers:  # uvicorn sends it with every JSON answer
                    raise ValueError(f"answer without Content-Length: {lines[0]}")
                payload = await reader.readexactly(int(headers["content-length"]))
        except BaseException:
            self.close()  # never reuse a connection with an answer half read
            raise
        if headers.get("connection", "").lower() == "close":
            self.close()
        return int(lines[0].split()[1]), headers, payload

    async def _send(self, request: bytes) -> tuple[bytes, asyncio.StreamReader]:
        """Send and read the answer's head; once more on a new connection if the server had closed an idle one
        (safe: a call_id never runs twice)."""
        reused = self.io is not None
        if self.io is None:
            self.io = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.io
        try:
            writer.write(request)
            return await reader.readuntil(b"\r\n\r\n"), reader
        except (ConnectionError, asyncio.IncompleteReadError):
            if not reused:
                raise
            self.close()
            return await self._send(request)

    def close(self) -> None:
        if self.io is not None:
            self.io[1].close()
            self.io = None


async def post_call(conn: Conn, tool: str, rid: str, args: dict[str, Any], item: Any = None) -> Call:
    t = time.perf_counter()
    try:
        status, outcome, reason = parse_answer(*await conn.post(f"/v1/tools/{tool}", tool_body(tool, rid, args, item)))
    except (OSError, EOFError, TimeoutError, ValueError, asyncio.LimitOverrunError) as exc:  # incl. IncompleteRead
        status, outcome, reason = 0, "client_error", type(exc).__name__
    return Call(0, status, outcome, reason, t, time.perf_counter())
