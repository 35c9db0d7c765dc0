"""envd, E2B's in-sandbox daemon, under /e2b/envd: commands (process.Process), filesystem
calls (filesystem.Filesystem) and file transfers (/files), for the sandbox each request names
in its E2b-Sandbox-Id header, authenticated by its X-Access-Token.

Every command is a trainer API exec through the host's queue and the guest (the agent's call:
recorded, budgeted, graded); the filesystem calls are small programs run the same way as
trainer calls (outside the agent's budget); /files is the trainer API's files. How errors
reach E2B's SDK (what its users' retry logic keys on):
  infrastructure failure     RPC `unavailable` / HTTP 502 -> SandboxUnreachableException (retry)
  sandbox gone               HTTP 502 "... was not found" -> SandboxNotRunningException
  command's or path's fault  ordinary results, or not_found / invalid_argument / ...
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import gzip
import io
import logging
import posixpath
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ... import metrics
from ...domain import e2b as shapes
from ...domain.errors import (
    BadRequest,
    FileNotFound,
    FilePermissionDenied,
    InfraError,
    IsADirectory,
    NoSpace,
    PayloadTooLarge,
    RolloutReleased,
    SandboxError,
    SandboxLost,
)
from ..context import ApiContext
from .connect import (
    MAX_REQUEST_BYTES,
    STREAM_CONTENT_TYPE,
    RpcError,
    end_of_stream,
    envelope,
    parse_stream_request,
    parse_unary,
    unary_error,
)
from .service import PID_VARIABLE, SIGNALS, E2BService, Sandbox, SandboxGone

log = logging.getLogger(__name__)
router = APIRouter(prefix="/e2b/envd", include_in_schema=False)  # envd's API, documented by E2B
DEFAULT_KEEPALIVE_S = 50.0


def _gone(sid: str) -> JSONResponse:
    # E2B's edge answers this for a sandbox that no longer runs; "was not found" is what the SDK
    # matches to raise SandboxNotRunningException (killed or timed out: do not retry).
    return JSONResponse({"code": 502, "message": f"The sandbox {sid} was not found"}, status_code=502)


def _rpc_error_of(exc: Exception) -> RpcError:
    """This service's errors in Connect's terms."""
    if isinstance(exc, RpcError):
        return exc
    if isinstance(exc, SandboxLost | RolloutReleased):  # the sandbox cannot continue
        return RpcError("unavailable", f"The sandbox was not found: {exc}")
    if isinstance(exc, InfraError):  # retry: never phrased as "not found"
        return RpcError("unavailable", f"sandbox temporarily unavailable ({exc.code}): {exc.message}")
    if isinstance(exc, FileNotFound):
        return RpcError("not_found", exc.message)
    if isinstance(exc, FilePermissionDenied):
        return RpcError("permission_denied", exc.message)
    if isinstance(exc, BadRequest):
        return RpcError("invalid_argument", exc.message)
    if isinstance(exc, SandboxError):
        return RpcError("failed_precondition", exc.message)
    log.exception("envd: unexpected error", exc_info=exc)
    return RpcError("internal", "internal error; see the service log")


def _count(exc: Exception | None) -> None:
    infra = isinstance(exc, InfraError) or (isinstance(exc, RpcError) and exc.code in ("unavailable", "internal"))
    result = "ok" if exc is None else "infra_error" if infra else "client_error"
    metrics.E2B_REQUESTS.labels("envd", result).inc()


async def _sandbox(request: Request) -> Sandbox:
    """Raises SandboxGone, PermissionError."""
    service: E2BService = request.app.state.e2b
    sid, token = request.headers.get("e2b-sandbox-id"), request.headers.get("x-access-token")
    return await anyio.to_thread.run_sync(service.sandbox, sid, token)


async def _in_thread(request: Request, fn: Callable[..., Any], *args: Any) -> Any:
    ctx: ApiContext = request.app.state.ctx
    return await anyio.to_thread.run_sync(fn, *args, limiter=ctx.limiter)


async def _read_body(request: Request) -> bytes:
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > MAX_REQUEST_BYTES:
            raise RpcError("resource_exhausted", f"the request is larger than {MAX_REQUEST_BYTES} bytes")
    return bytes(body)


# --- health ---------------------------------------------------------------------------------
@router.get("/health")
async def health(request: Request) -> Response:
    try:
        await _sandbox(request)
    except SandboxGone:
        return _gone(request.headers.get("e2b-sandbox-id", ""))
    except PermissionError as exc:
        return JSONResponse({"code": 401, "message": str(exc)}, status_code=401)
    return Response(status_code=204)


# --- process.Process ------------------------------------------------------------------------
async def _answer(request: Request, work: Callable[[], Awaitable[dict[str, Any] | Response]]) -> Response:
    """An RPC's answer: its JSON, or its error in Connect's terms, counted either way (a stream
    counts itself when it ends)."""
    try:
        answer = await work()
    except SandboxGone:
        _count(RpcError("not_found", ""))
        return _gone(request.headers.get("e2b-sandbox-id", ""))
    except PermissionError as exc:
        _count(RpcError("unauthenticated", ""))
        return unary_error(RpcError("unauthenticated", str(exc)))
    except Exception as exc:
        error = _rpc_error_of(exc)
        _count(error)
        return unary_error(error)
    if isinstance(answer, Response):
        return answer
    _count(None)
    return JSONResponse(answer)


@router.post("/process.Process/{method}")
async def process(method: str, request: Request) -> Response:
    async def work() -> dict[str, Any] | Response:
        box = await _sandbox(request)
        body = await _read_body(request)
        if method == "Start":
            return await _start(request, box, parse_stream_request(body))
        message = parse_unary(body)
        if method == "List":
            running = await _in_thread(request, box.ctx.store.e2b.processes, box.id)
            return {"processes": [{"pid": pid, "config": config} for pid, config in running.items()]}
        if method == "SendSignal":
            answer: dict[str, Any] = await _in_thread(request, _send_signal, box, message)
            return answer
        if method in _UNSUPPORTED_PROCESS:
            raise RpcError("unimplemented", _UNSUPPORTED_PROCESS[method])
        raise RpcError("unimplemented", f"process.Process/{method} is not a method of envd")

    return await _answer(request, work)


_UNSUPPORTED_PROCESS = {
    "Connect": "re-attaching to a running command is not supported: keep the first stream (a command "
    "runs to its end or its timeout whatever happens to the stream)",
    "SendInput": "stdin is not supported: commands read an empty stdin",
    "StreamInput": "stdin is not supported: commands read an empty stdin",
    "CloseStdin": "stdin is not supported: commands read an empty stdin",
    "Update": "PTYs are not supported",
}


def _send_signal(box: Sandbox, message: dict[str, Any]) -> dict[str, Any]:
    """Signal a running command: every process of the sandbox user carrying its pid variable."""
    pid = _pid_of(message)
    if pid not in box.ctx.store.e2b.processes(box.id):
        raise RpcError("not_found", f"no running process with pid {pid}")
    signal = SIGNALS.get(message.get("signal", "SIGNAL_SIGKILL"))
    if signal is None:
        raise RpcError("invalid_argument", f"signal {message.get('signal')!r}: SIGNAL_SIGKILL or SIGNAL_SIGTERM")
    script = (
        f'for d in /proc/[0-9]*; do tr "\\0" "\\n" < "$d/environ" 2>/dev/null | grep -qx "{PID_VARIABLE}=$1" '
        f'&& kill -{signal} "${{d#/proc/}}" 2>/dev/null; done; exit 0'
    )
    E2BService(box.ctx).run_helper(box, ["sh", "-c", script, "e2b", str(pid)])
    return {}


def _pid_of(message: dict[str, Any]) -> int:
    selector = message.get("process")
    pid = selector.get("pid") if isinstance(selector, dict) else None
    if isinstance(pid, str) and pid.isdigit():
        pid = int(pid)
    if not isinstance(pid, int) or isinstance(pid, bool):
        raise RpcError("invalid_argument", 'name the process by pid: {"process": {"pid": N}}')
    return pid


async def _start(request: Request, box: Sandbox, message: dict[str, Any]) -> Response:
    """Run a command; its events as a Connect stream: start (pid), keepalives while it runs, its
    output, and its end. The output comes at the end, whole (head + tail capped): the guest
    returns a command's output when it ends, not while it runs."""
    if message.get("stdin"):
        raise RpcError("unimplemented", _UNSUPPORTED_PROCESS["SendInput"] + " (start it with stdin=False)")
    if message.get("pty"):
        raise RpcError("unimplemented", _UNSUPPORTED_PROCESS["Update"])
    config = message.get("process")
    if not isinstance(config, dict) or not isinstance(config.get("cmd"), str) or not config["cmd"]:
        raise RpcError("invalid_argument", 'process.cmd must name the program to run, e.g. "/bin/bash"')
    args, envs, cwd = config.get("args") or [], config.get("envs") or {}, config.get("cwd")
    if not isinstance(args, list) or not isinstance(envs, dict):
        raise RpcError("invalid_argument", "process.args must be a list and process.envs an object")
    settings = box.ctx.settings
    timeout = _deadline_s(request.headers.get("connect-timeout-ms"), settings.exec.max_timeout_s)
    keepalive = _keepalive_s(request.headers.get("keepalive-ping-interval"))
    recorded = {"cmd": config["cmd"], "args": args, "envs": envs, **({"cwd": cwd} if cwd else {})}
    pid = await _in_thread(request, box.ctx.store.e2b.start_process, box.id, recorded)
    body = {
        "argv": [config["cmd"], *args],
        "env": {**box.record.env_vars, **envs, PID_VARIABLE: str(pid)},
        "timeout": timeout,
        "request_id": f"e2b-{pid}-{uuid.uuid4().hex[:12]}",
        **({"cwd": cwd} if cwd else {}),
    }
    service: E2BService = request.app.state.e2b
    # The command runs to its end even if the client goes away (as on E2B); its pid is freed then.
    task = asyncio.ensure_future(_in_thread(request, service.run, box, body))
    task.add_done_callback(lambda _: _forget_pid(box, pid))
    return StreamingResponse(_events(task, pid, timeout, keepalive), media_type=STREAM_CONTENT_TYPE)


def _forget_pid(box: Sandbox, pid: int) -> None:
    try:
        box.ctx.store.e2b.end_process(box.id, pid)
    except InfraError:  # the record expires with the sandbox's
        log.warning("could not free pid %s of %s", pid, box.id)


async def _events(task: asyncio.Future[Any], pid: int, timeout: float, keepalive: float) -> AsyncIterator[bytes]:
    yield envelope({"event": {"start": {"pid": pid}}})
    while True:
        done, _ = await asyncio.wait({task}, timeout=keepalive)
        if done:
            break
        yield envelope({"event": {"keepalive": {}}})
    try:
        answer, result = task.result()
    except Exception as exc:
        error = _rpc_error_of(exc)
        _count(error)
        yield end_of_stream(error)
        return
    for stream in ("stdout", "stderr"):
        if answer.get(stream):
            data = base64.b64encode(answer[stream].encode("utf-8", "replace")).decode()
            yield envelope({"event": {"data": {stream: data}}})
    if answer.get("timed_out"):
        _count(None)  # the command's own doing: it ran past its deadline
        yield end_of_stream(RpcError("deadline_exceeded", f"the command ran past its {timeout:g} s and was killed"))
        return
    code, signal = answer.get("exit_code"), (result.extra.get("exec") or {}).get("signal")
    end: dict[str, Any] = {"exited": code is not None, "status": f"exit status {code}"}
    if signal:  # as envd (Go's ProcessState) says it: exit code -1, "signal: killed"
        oom = " (out of memory)" if answer.get("oom_killed") else ""
        words = f"signal: {_SIGNAL_WORDS.get(signal, signal)}{oom}"
        end.update(exitCode=-1, status=words, error=words)
    elif code is None:  # it never ran (tool budget used up, process table full): stderr says why
        end.update(exitCode=-1, status="not started", error=(answer.get("stderr") or "not started").strip()[:500])
    elif code != 0:
        end.update(exitCode=code, error=f"exit status {code}")
    _count(None)
    yield envelope({"event": {"end": end}})
    yield end_of_stream()


_SIGNAL_WORDS = {9: "killed", 15: "terminated", 2: "interrupt", 6: "aborted", 11: "segmentation fault"}


def _deadline_s(header: str | None, cap: float) -> float:
    """The command's deadline: the SDK's `timeout` arrives as Connect's timeout header (none: no
    limit on E2B; here the trainer API's longest, SANDBOX_EXEC__MAX_TIMEOUT_S)."""
    if header and header.isdigit() and int(header) > 0:
        return min(int(header) / 1000, cap)
    return cap


def _keepalive_s(header: str | None) -> float:
    try:
        return max(1.0, float(header)) if header else DEFAULT_KEEPALIVE_S
    except ValueError:
        return DEFAULT_KEEPALIVE_S


# --- filesystem.Filesystem ------------------------------------------------------------------
@router.post("/filesystem.Filesystem/{method}")
async def filesystem(method: str, request: Request) -> Response:
    async def work() -> dict[str, Any]:
        box = await _sandbox(request)
        message = parse_unary(await _read_body(request))
        handler = _FILESYSTEM.get(method)
        if handler is None:
            raise RpcError("unimplemented", _UNSUPPORTED_FS.get(method, f"filesystem.Filesystem/{method} is unknown"))
        answer: dict[str, Any] = await _in_thread(request, handler, box, message)
        return answer

    return await _answer(request, work)


_UNSUPPORTED_FS = {
    name: "watching directories is not supported: list the directory again (files.list)"
    for name in ("WatchDir", "CreateWatcher", "GetWatcherEvents", "RemoveWatcher")
}


def _path(message: dict[str, Any], key: str = "path") -> str:
    path = message.get(key)
    if not isinstance(path, str) or not path or "\x00" in path:
        raise RpcError("invalid_argument", f"{key} must be a non-empty path")
    return path


def _helper(box: Sandbox, argv: list[str]) -> list[dict[str, Any]]:
    answer = E2BService(box.ctx).run_helper(box, argv)
    code, stderr = answer.get("exit_code"), (answer.get("stderr") or "").strip()
    if answer.get("timed_out") or code is None:
        raise RpcError("deadline_exceeded", f"the filesystem call did not finish: {stderr[:300]}")
    if code == shapes.EXIT_NOT_FOUND:
        raise RpcError("not_found", f"path not found: {argv[-1]}")
    if code == shapes.EXIT_EXISTS:
        raise RpcError("already_exists", f"path already exists: {argv[-1]}")
    if code == shapes.EXIT_NOT_DIR:
        raise RpcError("invalid_argument", f"path is not a directory: {argv[-1]}")
    if code != 0:
        kind = "permission_denied" if "ermission denied" in stderr else "failed_precondition"
        raise RpcError(kind, stderr[:500] or f"exit status {code}")
    return shapes.parse_entries(answer.get("stdout") or "")


def _stat(box: Sandbox, m: dict[str, Any]) -> dict[str, Any]:
    entries = _helper(box, shapes.stat_program(_path(m)))
    return {"entry": entries[0]} if entries else {}


def _list_dir(box: Sandbox, m: dict[str, Any]) -> dict[str, Any]:
    depth = m.get("depth") or 1
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
        raise RpcError("invalid_argument", "depth must be a positive integer")
    return {"entries": _helper(box, shapes.list_program(_path(m), min(depth, 64)))}


def _make_dir(box: Sandbox, m: dict[str, Any]) -> dict[str, Any]:
    entries = _helper(box, shapes.make_dir_program(_path(m)))
    return {"entry": entries[0]} if entries else {}


def _remove(box: Sandbox, m: dict[str, Any]) -> dict[str, Any]:
    _helper(box, shapes.remove_program(_path(m)))
    return {}


def _move(box: Sandbox, m: dict[str, Any]) -> dict[str, Any]:
    entries = _helper(box, shapes.move_program(_path(m, "source"), _path(m, "destination")))
    return {"entry": entries[0]} if entries else {}


_FILESYSTEM: dict[str, Callable[[Sandbox, dict[str, Any]], dict[str, Any]]] = {
    "Stat": _stat,
    "ListDir": _list_dir,
    "MakeDir": _make_dir,
    "Remove": _remove,
    "Move": _move,
}


# --- /files ---------------------------------------------------------------------------------
def _files_error(exc: Exception, sid: str) -> JSONResponse:
    """/files errors as the SDK reads them (status first, then the JSON message)."""
    if isinstance(exc, SandboxGone | SandboxLost | RolloutReleased):
        return _gone(sid)
    if isinstance(exc, PermissionError):
        status, message = 401, str(exc)
    elif isinstance(exc, InfraError):  # 502 (not 503): the SDK's SandboxUnreachableException, a retry
        status, message = 502, f"sandbox temporarily unavailable ({exc.code}): {exc.message}"
    elif isinstance(exc, FileNotFound):
        status, message = 404, exc.message
    elif isinstance(exc, NoSpace):
        status, message = 507, exc.message
    elif isinstance(exc, BadRequest | IsADirectory):
        status, message = 400, exc.message
    elif isinstance(exc, SandboxError):
        status, message = exc.http_status, exc.message
    else:
        log.exception("envd /files: unexpected error", exc_info=exc)
        status, message = 500, "internal error; see the service log"
    _count(exc if status >= 500 and status != 507 else RpcError("invalid_argument", ""))
    return JSONResponse({"code": status, "message": message}, status_code=status)


@router.get("/files")
async def read_file(request: Request) -> Response:
    sid = request.headers.get("e2b-sandbox-id", "")
    try:
        box = await _sandbox(request)
        path = request.query_params.get("path")
        if not path:
            raise BadRequest("path is required")
        data = await _in_thread(request, _download, box, path)
    except Exception as exc:
        return _files_error(exc, sid)
    _count(None)
    return Response(data, media_type="application/octet-stream")


def _download(box: Sandbox, path: str) -> bytes:
    kind, data = box.ctx.trainer.read_bytes(box.id, path)
    if kind == "directory":
        raise IsADirectory(f"{path} is a directory; list it (files.list) or read its files")
    return data


@router.post("/files")
async def write_files(request: Request) -> Response:
    sid = request.headers.get("e2b-sandbox-id", "")
    try:
        box = await _sandbox(request)
        limit = box.ctx.settings.files.max_upload_bytes
        path = request.query_params.get("path")
        content_type = request.headers.get("content-type", "")
        files: list[tuple[str, bytes]] = []
        if content_type.startswith("multipart/form-data"):
            async with request.form(max_part_size=limit) as form:
                parts = form.getlist("file")
                for part in parts:
                    if isinstance(part, str):
                        raise BadRequest("each 'file' part must be a file")
                    target = path if path and len(parts) == 1 else part.filename
                    if not target:
                        raise BadRequest("name each file's path: the part's filename, or ?path= for one file")
                    files.append((target, await part.read()))
        else:
            if not path:
                raise BadRequest("path is required")
            data = await _read_limited(request, limit)
            if request.headers.get("content-encoding", "").lower() == "gzip":
                data = _gunzip(data, limit)
            files.append((path, data))
        if not files:
            raise BadRequest("no file in the request: send multipart parts named 'file', or one octet-stream body")
        written = [await _in_thread(request, _upload, box, target, data) for target, data in files]
    except Exception as exc:
        return _files_error(exc, sid)
    _count(None)
    return JSONResponse(written)


async def _read_limited(request: Request, limit: int) -> bytes:
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            raise PayloadTooLarge(f"the upload is larger than {limit} bytes")
    return bytes(body)


def _gunzip(data: bytes, limit: int) -> bytes:
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
            out = f.read(limit + 1)
    except (OSError, EOFError, binascii.Error) as exc:
        raise BadRequest(f"the body is not gzip: {exc}") from exc
    if len(out) > limit:
        raise PayloadTooLarge(f"the upload is larger than {limit} bytes")
    return out


def _upload(box: Sandbox, path: str, data: bytes) -> dict[str, Any]:
    written = str(box.ctx.trainer.write_bytes(box.id, path, data).get("path") or path)
    return {"name": posixpath.basename(written), "type": "file", "path": written}
