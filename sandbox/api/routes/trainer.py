"""The trainer API: POST /v1/rollouts/{id}/exec, PUT and GET /v1/rollouts/{id}/files."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from anyio.abc import SocketStream
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ...domain.errors import InfraError, InternalError, PayloadTooLarge
from ...store.transfers import CHUNK_BYTES
from ..auth import require_token
from ..context import ApiContext
from ..data_channel import CHANNEL_ERRORS, Outcome, Spool, open_channel, receive_frames, send_body
from ..schemas import error_responses, request_body
from ..schemas.tools import TOOL_CALL_HEADERS
from ..schemas.trainer import BINARY, DOWNLOAD_HEADERS, ITEM_HEADER, ExecBody, ExecResult, UploadResult
from ..trainer_service import TRANSFER_TTL_S, Upload, parse_item_header
from .tools import diagnostic_headers, read_json

router = APIRouter(prefix="/v1/rollouts", dependencies=[Depends(require_token)])

SandboxPath = Annotated[
    str, Query(min_length=1, description="a path in the sandbox; relative paths are relative to the workspace")
]
_FILE_ERRORS = {
    400: "Malformed path, mode or request_id, or (upload) a body sent as a tar that is not one (invalid_archive)",
    403: "The sandbox user may not read or write there (permission_denied)",
    404: "No such file or directory (file_not_found), no such rollout or environment",
    408: "The sandbox did not take or give the bytes within SANDBOX_FILES__TIMEOUT_S (transfer_timed_out)",
    409: "is_a_directory, not_a_directory, not_a_regular_file, transfer_failed (the sandbox's writer or reader "
    "failed; the message has its words); or the rollout was released",
    413: "Larger than a transfer may be (payload_too_large, download_too_large), or the sandbox's disk is full "
    "(no_space)",
    503: "Infrastructure failure (outcome infra_error): retry, then discard the rollout",
}


@router.post(
    "/{rollout_id}/exec",
    response_model=ExecResult,
    responses={
        200: {"description": "The command ran (whatever its exit code)", "headers": TOOL_CALL_HEADERS},
        **error_responses(
            400,
            401,
            404,
            409,
            413,
            503,
            descriptions={
                400: "The body is malformed: no retry can fix it, nothing ran",
                404: "Unknown environment (unknown_environment)",
                409: "The same request_id is still running (call_in_progress) or was used for another call "
                "(call_id_conflict), or the rollout was released",
                503: "Infrastructure failure (outcome infra_error): retry, then discard the rollout",
            },
        ),  # fmt: skip
    },
    openapi_extra={**request_body(ExecBody), "parameters": [ITEM_HEADER]},
)
async def exec_command(rollout_id: str, request: Request) -> JSONResponse:
    """Run a command or a program in the rollout's sandbox, as the sandbox user; stdout and stderr apart."""
    ctx: ApiContext = request.app.state.ctx
    body = await read_json(request)
    item = request.headers.get("x-rollout-item")
    answer, result = await anyio.to_thread.run_sync(ctx.trainer.exec, rollout_id, body, item, limiter=ctx.limiter)
    return JSONResponse(answer, headers=diagnostic_headers(result))


@router.put(
    "/{rollout_id}/files",
    response_model=UploadResult,
    responses=error_responses(400, 401, 403, 404, 408, 409, 413, 503, descriptions=_FILE_ERRORS),
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "the file's bytes; with Content-Type application/x-tar, a tar stream unpacked into the "
            "directory `path` (made if missing)",
            "content": {"application/octet-stream": BINARY, "application/x-tar": BINARY},
        },
        "parameters": [ITEM_HEADER],
    },
)
async def put_files(
    rollout_id: str,
    request: Request,
    path: SandboxPath,
    mode: Annotated[str | None, Query(description="a file's permission bits in octal, e.g. 755")] = None,
    request_id: Annotated[str | None, Query(description="idempotency key: the same one is written once")] = None,
) -> JSONResponse:
    """Write a file, or unpack a tar stream into a directory, as the sandbox user (parents made, owned by it)."""
    ctx: ApiContext = request.app.state.ctx
    limit = ctx.settings.files.max_upload_bytes
    declared = request.headers.get("content-length")
    size = int(declared) if declared and declared.isdigit() else None
    if size is not None and size > limit:
        raise PayloadTooLarge(f"the upload is {size} bytes; at most {limit} are taken")
    plan = ctx.trainer.plan_upload(
        rollout_id, path, request.headers.get("content-type"), mode, request_id, request.headers.get("x-rollout-item")
    )
    # Straight to the host's data port when its length is known and the host has one: the bytes
    # flow on while they arrive. Else through the store, whole, first.
    address = None
    if size is not None:
        address = await anyio.to_thread.run_sync(ctx.trainer.data_address, plan.rollout_id, plan.item)
    channel = None
    if address is not None:
        with contextlib.suppress(OSError):  # the port does not answer: the store still does
            channel = await open_channel(address, plan.args.transfer)
    if channel is not None:
        return JSONResponse(await _upload_direct(ctx, request, plan, size or 0, channel))
    return JSONResponse(await _upload_via_store(ctx, request, plan, limit))


async def _upload_direct(ctx: ApiContext, request: Request, plan: Upload, size: int, channel: SocketStream) -> Any:
    outcome = Outcome()
    async with channel, anyio.create_task_group() as tg:

        async def call() -> None:
            try:
                upload = ctx.trainer.upload
                outcome.answer = await anyio.to_thread.run_sync(upload, plan, size, True, limiter=ctx.limiter)
            except Exception as exc:  # raised below, once the body is no longer being sent
                outcome.error = exc
            tg.cancel_scope.cancel()  # answered (a replay, a failure): the rest of the body is not wanted

        tg.start_soon(call)
        with contextlib.suppress(*CHANNEL_ERRORS):  # the worker stopped reading: its reply says why
            await send_body(channel, request.stream(), size)
        await anyio.sleep_forever()  # until the call's answer ends the group
    return outcome.result()


async def _upload_via_store(ctx: ApiContext, request: Request, plan: Upload, limit: int) -> Any:
    transfer = plan.args.transfer
    try:
        size, pending = 0, bytearray()
        async for piece in request.stream():  # one chunk in memory at a time, whatever the size
            size += len(piece)
            if size > limit:
                raise PayloadTooLarge(f"the upload is larger than {limit} bytes")
            pending += piece
            if len(pending) >= CHUNK_BYTES:
                await anyio.to_thread.run_sync(ctx.store.transfers.append, transfer, bytes(pending), TRANSFER_TTL_S)
                pending.clear()
        if pending:
            await anyio.to_thread.run_sync(ctx.store.transfers.append, transfer, bytes(pending), TRANSFER_TTL_S)
        return await anyio.to_thread.run_sync(ctx.trainer.upload, plan, size, limiter=ctx.limiter)
    finally:
        with contextlib.suppress(InfraError):
            await anyio.to_thread.run_sync(ctx.store.transfers.delete, transfer)


@router.get(
    "/{rollout_id}/files",
    responses={
        200: {
            "description": "A file's bytes, or a directory's content as a tar stream",
            "content": {"application/octet-stream": BINARY, "application/x-tar": BINARY},
            "headers": DOWNLOAD_HEADERS,
        },
        **error_responses(400, 401, 403, 404, 408, 409, 413, 503, descriptions=_FILE_ERRORS),
    },
    openapi_extra={"parameters": [ITEM_HEADER]},
    response_class=StreamingResponse,
)
async def get_files(rollout_id: str, request: Request, path: SandboxPath) -> StreamingResponse:
    """Read a file, or a directory as a tar stream, as the sandbox user."""
    ctx: ApiContext = request.app.state.ctx
    item = parse_item_header(request.headers.get("x-rollout-item"))
    address = await anyio.to_thread.run_sync(ctx.trainer.data_address, rollout_id, item)
    channel = None
    if address is not None:
        transfer = ctx.store.transfers.new_id()
        with contextlib.suppress(OSError):
            channel = await open_channel(address, transfer)
    if channel is not None:
        info, body = await _download_direct(ctx, rollout_id, path, item, transfer, channel)
    else:
        call = ctx.trainer.download
        info = await anyio.to_thread.run_sync(call, rollout_id, path, item, limiter=ctx.limiter)
        body = _drain(ctx, info["transfer"])
    directory = info["kind"] == "directory"
    return StreamingResponse(
        body,
        media_type="application/x-tar" if directory else "application/octet-stream",
        headers={"Content-Length": str(info["bytes"]), "X-Sandbox-Kind": info["kind"]},
    )


async def _download_direct(
    ctx: ApiContext, rollout_id: str, path: str, item: Any, transfer: str, channel: SocketStream
) -> tuple[dict[str, Any], AsyncIterator[bytes]]:
    outcome, spool, received = Outcome(), Spool(), -1
    async with channel, anyio.create_task_group() as tg:

        async def call() -> None:
            try:
                outcome.answer = await anyio.to_thread.run_sync(
                    ctx.trainer.download, rollout_id, path, item, transfer, limiter=ctx.limiter
                )
            except Exception as exc:
                outcome.error = exc
            tg.cancel_scope.cancel()

        tg.start_soon(call)
        with contextlib.suppress(*CHANNEL_ERRORS):  # the worker went away: its reply says why
            received = await receive_frames(channel, spool)
        await anyio.sleep_forever()
    try:
        info: dict[str, Any] = outcome.result()
        if received != info["bytes"]:  # the connection broke although the reader finished
            raise InternalError(f"the download lost bytes on its way from the host ({received} of {info['bytes']})")
    except BaseException:
        spool.close()
        raise
    return info, spool.read()


async def _drain(ctx: ApiContext, transfer: str) -> AsyncIterator[bytes]:
    """The transfer's chunks, each taken off the store as it is sent (the store frees them as it goes)."""
    try:
        while (chunk := await anyio.to_thread.run_sync(ctx.store.transfers.pop, transfer)) is not None:
            yield chunk
    finally:
        with contextlib.suppress(InfraError):  # a client that went away: the rest goes now (or expires)
            ctx.store.transfers.delete(transfer)
