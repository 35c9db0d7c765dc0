"""The asynchronous client: `AsyncClient` and `AsyncRollout`, the same calls as client.py's, awaited."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from . import _core
from ._core import CALL_SLACK_S, DEFAULT_TIMEOUT_S, ExecResult, Req, RetryPolicy, new_key
from .errors import SandboxError


class AsyncClient:
    """As `Client`, for asyncio trainers: one instance serves many rollouts' calls at once."""

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        check_version: bool = True,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        base_url = base_url or os.environ.get("ROLLOUT_SANDBOX_URL", "http://127.0.0.1:8000")
        token = token if token is not None else os.environ.get("ROLLOUT_SANDBOX_TOKEN", "")
        self.retry = retry or RetryPolicy()
        self._http = http or httpx.AsyncClient(
            base_url=base_url, limits=httpx.Limits(max_connections=256, max_keepalive_connections=64)
        )
        if token:
            self._http.headers["Authorization"] = f"Bearer {token}"
        self._version_checked = not check_version
        self._lock = asyncio.Lock()

    def rollout(self, rollout_id: str | None = None, item: dict[str, Any] | None = None) -> AsyncRollout:
        return AsyncRollout(self, rollout_id or new_key("rollout"), item)

    async def provision(self, rollout_ids: Sequence[str], item: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        entries = [{"rollout_id": rid, **({"item": item} if item is not None else {})} for rid in rollout_ids]
        return list((await self.send(Req("POST", "/v1/rollouts", json={"rollouts": entries}))).json()["rollouts"])

    async def health(self) -> dict[str, Any]:
        return dict((await self._request(Req("GET", "/healthz", timeout_s=10.0))).json())

    async def send(self, req: Req) -> httpx.Response:
        await self._check_version()
        attempt = 0
        while True:
            try:
                return await self._request(req)
            except SandboxError as error:
                attempt += 1
                if attempt >= self.retry.attempts or not self.retry.allows(error):
                    raise
                await asyncio.sleep(self.retry.delay(attempt - 1, error))

    async def _request(self, req: Req) -> httpx.Response:
        content = _pieces(req.content) if callable(req.content) else req.content
        try:
            response = await self._http.request(
                req.method, req.path, json=req.json, content=content, params=req.params,
                headers=req.headers, timeout=httpx.Timeout(req.timeout_s, connect=10.0),
            )  # fmt: skip
        except httpx.TransportError as exc:
            raise _core.transport_error(exc) from exc
        if response.status_code >= 400:
            raise _core.error_from(response)
        return response

    async def _check_version(self) -> None:
        if self._version_checked:
            return
        async with self._lock:
            if not self._version_checked:
                _core.check_health(await self.health())
                self._version_checked = True

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncRollout:
    """As `Rollout`; `async with` releases it at the end."""

    def __init__(self, client: AsyncClient, rollout_id: str, item: dict[str, Any] | None = None) -> None:
        self.client, self.id, self.item = client, rollout_id, item

    def _path(self, tail: str = "") -> str:
        return f"/v1/rollouts/{self.id}{tail}"

    async def exec(
        self,
        command: str | Sequence[str],
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float | None = None,
        source: str = "agent",
        merge_stderr: bool = False,
        request_id: str | None = None,
    ) -> ExecResult:
        key = request_id or new_key()
        body = _core.exec_body(command, cwd=cwd, env=env, timeout=timeout, source=source,
                               merge_stderr=merge_stderr, request_id=key, item=self.item)  # fmt: skip
        wait = (timeout or DEFAULT_TIMEOUT_S) + CALL_SLACK_S
        response = await self.client.send(Req("POST", self._path("/exec"), json=body, timeout_s=wait))
        return ExecResult.from_json(response.json())

    async def shell(self, command: str, *, timeout: float | None = None, call_id: str | None = None) -> str:
        args: dict[str, Any] = {"command": command, **({"timeout": timeout} if timeout is not None else {})}
        return await self._tool("shell", args, call_id, (timeout or DEFAULT_TIMEOUT_S) + CALL_SLACK_S)

    async def read_file(
        self, path: str, start_line: int | None = None, end_line: int | None = None, *, call_id: str | None = None
    ) -> str:
        args = {k: v for k, v in (("path", path), ("start_line", start_line), ("end_line", end_line)) if v is not None}
        return await self._tool("read_file", args, call_id, DEFAULT_TIMEOUT_S + CALL_SLACK_S)

    async def _tool(self, tool: str, args: dict[str, Any], call_id: str | None, wait: float) -> str:
        body = _core.tool_body(tool, self.id, args, call_id or new_key("call"), self.item)
        response = await self.client.send(Req("POST", f"/v1/tools/{tool}", json=body, timeout_s=wait))
        return str(response.json()["output"])

    async def write_file(
        self, path: str, data: bytes | str, *, mode: int | None = None, request_id: str | None = None
    ) -> dict[str, Any]:
        content = data.encode() if isinstance(data, str) else bytes(data)
        params = {"path": path, "request_id": request_id or new_key(), **_core.mode_param(mode)}
        return await self._put(params, content, "application/octet-stream")

    async def read_bytes(self, path: str) -> bytes:
        return (await self._get(path)).content

    async def read_text(self, path: str, encoding: str = "utf-8") -> str:
        return (await self.read_bytes(path)).decode(encoding)

    async def upload_dir(
        self, local: str | os.PathLike[str], remote: str, *, request_id: str | None = None
    ) -> dict[str, Any]:
        stream = await asyncio.to_thread(_core.TarStream, local)  # made while sent, read in threads
        params = {"path": remote, "request_id": request_id or new_key()}
        return await self._put(params, stream.chunks, "application/x-tar", {"Content-Length": str(stream.size)})

    async def download_dir(self, remote: str, local: str | os.PathLike[str]) -> Path:
        data = (await self._get(remote)).content
        return await asyncio.to_thread(_core.extract_tar, data, local)

    async def _put(
        self, params: dict[str, str], content: Any, media: str, extra: dict[str, str] | None = None
    ) -> dict[str, Any]:
        headers = {"Content-Type": media, **_core.item_header(self.item), **(extra or {})}
        req = Req(
            "PUT", self._path("/files"), content=content, params=params, headers=headers, timeout_s=CALL_SLACK_S * 2
        )
        return dict((await self.client.send(req)).json())

    async def _get(self, path: str) -> httpx.Response:
        req = Req("GET", self._path("/files"), params={"path": path}, headers=_core.item_header(self.item),
                  timeout_s=CALL_SLACK_S * 2)  # fmt: skip
        return await self.client.send(req)

    async def grade(self, sample: dict[str, Any] | None = None, item: dict[str, Any] | None = None) -> dict[str, Any]:
        body = {"sample": sample or {}, "item": item if item is not None else (self.item or {}), "trace_id": self.id}
        return dict((await self.client.send(Req("POST", "/v1/grade", json=body, timeout_s=CALL_SLACK_S * 4))).json())

    async def info(self) -> dict[str, Any]:
        return dict((await self.client.send(Req("GET", self._path()))).json())

    async def trajectory(self) -> dict[str, Any]:
        return dict((await self.client.send(Req("GET", self._path("/trajectory")))).json())

    async def release(self) -> dict[str, Any]:
        return dict((await self.client.send(Req("DELETE", self._path()))).json())

    async def __aenter__(self) -> AsyncRollout:
        return self

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        try:
            await self.release()
        except SandboxError as error:
            if t is None and error.code != "rollout_not_found":
                raise


async def _pieces(make: Callable[[], Iterable[bytes]]) -> AsyncIterator[bytes]:
    """A fresh stream's pieces, each read in a thread (files must not stall the event loop)."""
    pieces = iter(make())
    while (piece := await asyncio.to_thread(next, pieces, None)) is not None:
        yield piece
