"""POST /v1/tools/{tool} and /v1/rollouts/{id}/tools/{tool}: the OpenAI Agent RFT tool endpoints."""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse

from ...domain.calls import CallResult, check_tool, parse_json_body, parse_tool_call
from ...domain.errors import BadRequest, PayloadTooLarge
from ..auth import require_token
from ..context import ApiContext
from ..schemas import (
    ROLLOUT_ID_HEADER,
    TOOL_CALL_HEADERS,
    TOOL_PATH_SCHEMA_EXTRA,
    FunctionCall,
    ToolCallOutput,
    error_responses,
    request_body,
)

router = APIRouter(prefix="/v1", dependencies=[Depends(require_token)])
MAX_BODY_BYTES = 4 * 1024 * 1024

# The hot path: the routes return a JSONResponse, which FastAPI sends as is, so `response_model` only
# documents; the body is read by hand (size cap, plain 400s), so its schema is added to the document.
Tool = Annotated[str, Path(description="shell or read_file", json_schema_extra=TOOL_PATH_SCHEMA_EXTRA)]


def _tool_call_responses() -> dict[int | str, dict[str, Any]]:
    return {
        200: {"description": "Outcome ok or model_error; diagnostics in the headers", "headers": TOOL_CALL_HEADERS},
        **error_responses(
            400,
            401,
            404,
            409,
            413,
            503,
            descriptions={
                404: "Unknown tool (unknown_tool) or environment (unknown_environment)",
                409: "The same call_id is still running (call_in_progress) or was used for another tool "
                "(call_id_conflict), or the rollout was released",
                503: "Infrastructure failure (outcome infra_error): retry, then discard the rollout",
            },
        ),
    }


@router.post(
    "/tools/{tool}",
    response_model=ToolCallOutput,
    responses=_tool_call_responses(),
    openapi_extra={**request_body(FunctionCall), "parameters": [ROLLOUT_ID_HEADER]},
)
async def call_tool(tool: Tool, request: Request) -> JSONResponse:
    """Run one tool call of the rollout named by `trace_id` (or the X-Rollout-Id header)."""
    return await _call(request, tool, path_rollout_id=None)


@router.post(
    "/rollouts/{rollout_id}/tools/{tool}",
    response_model=ToolCallOutput,
    responses=_tool_call_responses(),
    openapi_extra=request_body(FunctionCall),
)
async def call_rollout_tool(rollout_id: str, tool: Tool, request: Request) -> JSONResponse:
    """Run one tool call of the rollout named in the path (it wins over `trace_id`)."""
    return await _call(request, tool, path_rollout_id=rollout_id)


async def _call(request: Request, tool: str, path_rollout_id: str | None) -> JSONResponse:
    ctx: ApiContext = request.app.state.ctx
    check_tool(tool)
    body = await read_json(request)
    call = parse_tool_call(
        tool, body, path_rollout_id=path_rollout_id, header_rollout_id=request.headers.get("x-rollout-id")
    )
    result: CallResult = await anyio.to_thread.run_sync(ctx.tools.handle, call, limiter=ctx.limiter)
    body_out = {"type": "function_call_output", "call_id": call.call_id, "id": call.item_id, "output": result.output}
    return JSONResponse(body_out, headers=diagnostic_headers(result))


def diagnostic_headers(result: CallResult) -> dict[str, str]:
    """The X-Sandbox-* headers of a call's answer (tool calls and the trainer API's exec)."""
    headers = {
        "X-Sandbox-Outcome": result.outcome,
        "X-Sandbox-Reason": result.reason,
        "X-Sandbox-Duration-Ms": f"{result.duration_ms:.1f}",
    }
    if result.exit_code is not None:
        headers["X-Sandbox-Exit-Code"] = str(result.exit_code)
    return headers


async def read_json(request: Request) -> Any:
    """The body as JSON, capped at MAX_BODY_BYTES; anything malformed is a 400 (PayloadTooLarge: 413)."""
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
    return parse_json_body(raw)  # 400 for what would fail later: NaN, deep nesting, 5000-digit integers
