"""POST /v1/tools/{tool} and /v1/rollouts/{id}/tools/{tool}: the OpenAI Agent RFT tool endpoints."""

from __future__ import annotations

import json
from typing import Any

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from ...calls import CallResult, check_tool, parse_tool_call
from ...errors import BadRequest, SandboxError
from ..auth import require_token
from ..context import ApiContext

router = APIRouter(prefix="/v1", dependencies=[Depends(require_token)])
MAX_BODY_BYTES = 4 * 1024 * 1024


class PayloadTooLarge(SandboxError):
    code = "payload_too_large"
    http_status = 413


@router.post("/tools/{tool}")
async def call_tool(tool: str, request: Request) -> JSONResponse:
    return await _call(request, tool, path_rollout_id=None)


@router.post("/rollouts/{rollout_id}/tools/{tool}")
async def call_rollout_tool(rollout_id: str, tool: str, request: Request) -> JSONResponse:
    return await _call(request, tool, path_rollout_id=rollout_id)


async def _call(request: Request, tool: str, path_rollout_id: str | None) -> JSONResponse:
    ctx: ApiContext = request.app.state.ctx
    check_tool(tool)
    body = await read_json(request)
    call = parse_tool_call(
        tool, body, path_rollout_id=path_rollout_id, header_rollout_id=request.headers.get("x-rollout-id")
    )
    result: CallResult = await anyio.to_thread.run_sync(ctx.tools.handle, call, limiter=ctx.limiter)
    headers = {
        "X-Sandbox-Outcome": result.outcome,
        "X-Sandbox-Reason": result.reason,
        "X-Sandbox-Duration-Ms": f"{result.duration_ms:.1f}",
    }
    if result.exit_code is not None:
        headers["X-Sandbox-Exit-Code"] = str(result.exit_code)
    body_out = {"type": "function_call_output", "call_id": call.call_id, "id": call.item_id, "output": result.output}
    return JSONResponse(body_out, headers=headers)


async def read_json(request: Request) -> Any:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"request body larger than {MAX_BODY_BYTES} bytes")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise PayloadTooLarge(f"request body larger than {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise BadRequest("empty request body; send the function_call JSON object")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"malformed JSON body: {exc}") from exc
