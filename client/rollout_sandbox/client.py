"""The synchronous client: `Client` for the service, `Rollout` for one rollout's sandbox."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx

from . import _core
from ._core import CALL_SLACK_S, DEFAULT_TIMEOUT_S, ExecResult, Req, RetryPolicy, new_key
from .errors import SandboxError

T = TypeVar("T")


class Client:
    """The rollout sandbox service at `base_url` (default $ROLLOUT_SANDBOX_URL, else
    http://127.0.0.1:8000), with `token` (default $ROLLOUT_SANDBOX_TOKEN).

    Every call is retried on infrastructure failures by `retry`, with the same idempotency key
    (a retry of a call whose answer was lost gets that answer, the command does not run again).
    The server's version is checked once, before the first call (`ServerTooOld`).
    """

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        check_version: bool = True,
        http: httpx.Client | None = None,
    ) -> None:
        base_url = base_url or os.environ.get("ROLLOUT_SANDBOX_URL", "http://127.0.0.1:8000")
        token = token if token is not None else os.environ.get("ROLLOUT_SANDBOX_TOKEN", "")
        self.retry = retry or RetryPolicy()
        self._http = http or httpx.Client(
            base_url=base_url, limits=httpx.Limits(max_connections=256, max_keepalive_connections=64)
        )
        if token:
            self._http.headers["Authorization"] = f"Bearer {token}"
        self._version_checked = not check_version
        self._lock = threading.Lock()

    def rollout(self, rollout_id: str | None = None, item: dict[str, Any] | None = None) -> Rollout:
        """A rollout's handle (nothing is sent yet: its first call provisions it). A `with` block
        releases it at the end."""
        return Rollout(self, rollout_id or new_key("rollout"), item)

    def provision(self, rollout_ids: Sequence[str], item: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Start containers for a burst of rollouts at once (answered before they are ready)."""
        entries = [{"rollout_id": rid, **({"item": item} if item is not None else {})} for rid in rollout_ids]
        return list(self.send(Req("POST", "/v1/rollouts", json={"rollouts": entries})).json()["rollouts"])

    def health(self) -> dict[str, Any]:
        return dict(self._request(Req("GET", "/healthz", timeout_s=10.0)).json())

    def send(self, req: Req, consume: Callable[[httpx.Response], T] | None = None) -> Any:
        """Send with retries (the request carries its idempotency key already); raise the taxonomy's
        errors. With `consume`, the answer's body is streamed to it, and a body cut short is retried
        like no answer at all."""
        self._check_version()
        attempt = 0
        while True:
            try:
                return self._request(req, consume)
            except SandboxError as error:
                attempt += 1
                if attempt >= self.retry.attempts or not self.retry.allows(error):
                    raise
                time.sleep(self.retry.delay(attempt - 1, error))

    def _request(self, req: Req, consume: Callable[[httpx.Response], T] | None = None) -> Any:
        content = req.content() if callable(req.content) else req.content
        request = self._http.build_request(
            req.method, req.path, json=req.json, content=content, params=req.params, headers=req.headers,
            timeout=httpx.Timeout(req.timeout_s, connect=10.0),
        )  # fmt: skip
        try:
            response = self._http.send(request, stream=consume is not None)
            try:
                if response.status_code >= 400:
                    response.read()
                    raise _core.error_from(response)
                return consume(response) if consume is not None else response
            finally:
                response.close()
        except httpx.TransportError as exc:
            raise _core.transport_error(exc) from exc

    def _check_version(self) -> None:
        if self._version_checked:
            return
        with self._lock:
            if not self._version_checked:
                _core.check_health(self.health())
                self._version_checked = True

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Rollout:
    """One rollout's sandbox: its own container, its own recorded trajectory."""

    def __init__(self, client: Client, rollout_id: str, item: dict[str, Any] | None = None) -> None:
        self.client, self.id, self.item = client, rollout_id, item

    def _path(self, tail: str = "") -> str:
        return f"/v1/rollouts/{self.id}{tail}"

    def exec(
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
        """Run `command` (a string: bash; a sequence: argv) as the sandbox user.

        source "agent" (the default) counts against the rollout's tool budget and is what the
        graders see; "trainer" is for your own setup and checks (recorded, neither).
        """
        key = request_id or new_key()
        body = _core.exec_body(command, cwd=cwd, env=env, timeout=timeout, source=source,
                               merge_stderr=merge_stderr, request_id=key, item=self.item)  # fmt: skip
        wait = (timeout or DEFAULT_TIMEOUT_S) + CALL_SLACK_S
        return ExecResult.from_json(
            self.client.send(Req("POST", self._path("/exec"), json=body, timeout_s=wait)).json()
        )

    def shell(self, command: str, *, timeout: float | None = None, call_id: str | None = None) -> str:
        """The `shell` tool, as the model calls it: the text the model reads (exit code notes included)."""
        args: dict[str, Any] = {"command": command, **({"timeout": timeout} if timeout is not None else {})}
        return self._tool("shell", args, call_id, (timeout or DEFAULT_TIMEOUT_S) + CALL_SLACK_S)

    def read_file(
        self, path: str, start_line: int | None = None, end_line: int | None = None, *, call_id: str | None = None
    ) -> str:
        """The `read_file` tool, as the model calls it: the lines, or the model-visible reason why not."""
        args = {k: v for k, v in (("path", path), ("start_line", start_line), ("end_line", end_line)) if v is not None}
        return self._tool("read_file", args, call_id, DEFAULT_TIMEOUT_S + CALL_SLACK_S)

    def _tool(self, tool: str, args: dict[str, Any], call_id: str | None, wait: float) -> str:
        body = _core.tool_body(tool, self.id, args, call_id or new_key("call"), self.item)
        return str(self.client.send(Req("POST", f"/v1/tools/{tool}", json=body, timeout_s=wait)).json()["output"])

    def write_file(
        self, path: str, data: bytes | str, *, mode: int | None = None, request_id: str | None = None
    ) -> dict[str, Any]:
        """Write a file as the sandbox user (its parents made); `mode` e.g. 0o755."""
        content = data.encode() if isinstance(data, str) else bytes(data)
        params = {"path": path, "request_id": request_id or new_key(), **_core.mode_param(mode)}
        return self._put(params, content, "application/octet-stream")

    def read_bytes(self, path: str) -> bytes:
        """A file's bytes, read as the sandbox user."""
        return self._get(path).content

    def read_text(self, path: str, encoding: str = "utf-8") -> str:
        return self.read_bytes(path).decode(encoding)

    def upload_dir(
        self, local: str | os.PathLike[str], remote: str, *, request_id: str | None = None
    ) -> dict[str, Any]:
        """Copy a local directory's content into `remote` (made if missing), as the sandbox user.
        The tar stream is made while it is sent (and made again for a retry)."""
        params = {"path": remote, "request_id": request_id or new_key()}
        stream = _core.TarStream(local)
        return self._put(params, stream.chunks, "application/x-tar", {"Content-Length": str(stream.size)})

    def download_dir(self, remote: str, local: str | os.PathLike[str]) -> Path:
        """Copy the sandbox's directory `remote` into `local` (made if missing), unpacked as it arrives."""
        req = Req("GET", self._path("/files"), params={"path": remote}, headers=_core.item_header(self.item),
                  timeout_s=CALL_SLACK_S * 2)  # fmt: skip
        return self.client.send(req, lambda response: _core.extract_tar(response.iter_raw(), local))  # type: ignore[no-any-return]

    def _put(
        self, params: dict[str, str], content: Any, media: str, extra: dict[str, str] | None = None
    ) -> dict[str, Any]:
        headers = {"Content-Type": media, **_core.item_header(self.item), **(extra or {})}
        req = Req(
            "PUT", self._path("/files"), content=content, params=params, headers=headers, timeout_s=CALL_SLACK_S * 2
        )
        return dict(self.client.send(req).json())

    def _get(self, path: str) -> httpx.Response:
        req = Req("GET", self._path("/files"), params={"path": path}, headers=_core.item_header(self.item),
                  timeout_s=CALL_SLACK_S * 2)  # fmt: skip
        return self.client.send(req)

    def grade(self, sample: dict[str, Any] | None = None, item: dict[str, Any] | None = None) -> dict[str, Any]:
        """Score the rollout (POST /v1/grade); `item` defaults to the rollout's. An InfraError here
        (503, e.g. an infra-tainted rollout) means: discard it, do not score it 0."""
        body = {"sample": sample or {}, "item": item if item is not None else (self.item or {}), "trace_id": self.id}
        return dict(self.client.send(Req("POST", "/v1/grade", json=body, timeout_s=CALL_SLACK_S * 4)).json())

    def info(self) -> dict[str, Any]:
        return dict(self.client.send(Req("GET", self._path())).json())

    def trajectory(self) -> dict[str, Any]:
        return dict(self.client.send(Req("GET", self._path("/trajectory"))).json())

    def release(self) -> dict[str, Any]:
        """Remove the sandbox (idempotent); later calls get 409 rollout_released."""
        return dict(self.client.send(Req("DELETE", self._path())).json())

    def __enter__(self) -> Rollout:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        try:
            self.release()
        except SandboxError as error:
            # Never provisioned (no call made): nothing to release. Otherwise do not hide the
            # error that ended the block.
            if t is None and error.code != "rollout_not_found":
                raise
